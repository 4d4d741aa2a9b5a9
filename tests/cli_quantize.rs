//! `encdecc quantize` and `--dtype` at the command line: a quantised checkpoint holds int8
//! (or bf16) matmul weights with per-row scales, and `run --dtype int8` on it gives exactly
//! what quantising at load gives; asking a checkpoint for a dtype it cannot serve, an
//! unknown dtype, int8 training and overwriting the source are clear errors.

mod common;
use common::cli::*;
use common::root;
use safetensors::Dtype;

fn run_args(hf: &str, dtype: &str, out: &str) -> Vec<String> {
    args(&[
        "run",
        &model("t5gemma.edl"),
        "--hf",
        hf,
        "--inputs",
        &s(&hf_fixture("t5gemma-tiny").join("inputs.safetensors")),
        "--dtype",
        dtype,
        "--out",
        out,
    ])
}

/// What `quantize --dtype DTYPE` writes, then what `run --dtype DTYPE` computes from it and
/// from the source checkpoint: identical bytes.
fn check(dtype: &str, stored: Dtype) {
    let tmp = tempfile::tempdir().unwrap();
    let src = s(&hf_fixture("t5gemma-tiny"));
    let q = tmp.path().join("q");
    succeeds(&args(&[
        "quantize",
        &model("t5gemma.edl"),
        "--hf",
        &src,
        "--dtype",
        dtype,
        "--out",
        &s(&q),
    ]));
    assert!(q.join("config.json").is_file());
    let e = read_entries(&q.join("model.safetensors"));
    let get = |n: &str| {
        e.iter()
            .find(|x| x.0 == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let w = get("model.encoder.layers.0.self_attn.q_proj.weight");
    assert_eq!(w.1, stored, "{dtype}: the projection's dtype");
    assert_eq!(get("model.encoder.norm.weight").1, Dtype::F32);
    let scale = e
        .iter()
        .find(|x| x.0 == "model.encoder.layers.0.self_attn.q_proj.weight_scale");
    match stored {
        Dtype::I8 => {
            let s = scale.expect("int8 weights have their scales");
            assert_eq!((s.1, s.2.clone()), (Dtype::F32, vec![w.2[0], 1]));
        }
        _ => assert!(scale.is_none()),
    }
    let (a, b) = (tmp.path().join("a.st"), tmp.path().join("b.st"));
    succeeds(&run_args(&s(&q), dtype, &s(&a)));
    succeeds(&run_args(&src, dtype, &s(&b)));
    assert_eq!(
        read_entries(&a),
        read_entries(&b),
        "{dtype}: a quantised checkpoint computes what quantising at load does"
    );
    if stored == Dtype::I8 {
        check_args(
            &run_args(&s(&q), "f32", &s(&tmp.path().join("c.st"))),
            &[
                "model.encoder.embed_tokens.weight",
                "is int8",
                "--dtype int8",
            ],
        );
        assert!(!tmp.path().join("c.st").exists());
    }
}

fn check_args(a: &[String], expect: &[&str]) {
    common::cli::check(a, expect)
}

#[test]
fn int8_checkpoints_run_as_quantised_at_load() {
    check("int8", Dtype::I8);
}

#[test]
fn bf16_checkpoints_run_as_rounded_at_load() {
    check("bf16", Dtype::BF16);
}

#[test]
fn dtype_errors_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let src = s(&hf_fixture("t5gemma-tiny"));
    check_args(
        &run_args(&src, "f16", &s(&tmp.path().join("o.st"))),
        &["--dtype", "unknown dtype `f16`", "int8"],
    );
    check_args(
        &args(&[
            "quantize",
            &model("t5gemma.edl"),
            "--hf",
            &src,
            "--dtype",
            "int8",
            "--out",
            &src,
        ]),
        &["is the source directory"],
    );
    check_args(
        &args(&[
            "bench",
            &model("t5gemma.edl"),
            "--hf-config",
            &s(&root().join("tests/fixtures/hf/t5gemma-tiny/config.json")),
            "--batch",
            "1",
            "--src-len",
            "4",
            "--tgt-len",
            "4",
            "--mode",
            "train",
            "--dtype",
            "int8",
        ]),
        &["--dtype int8", "int8 is for inference"],
    );
}
