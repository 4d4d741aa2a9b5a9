//! Broken input files to the `encdecc` binary (safetensors headers that lie, non-finite
//! weights, absurd config.json values, empty corpora, malformed tokenizer.json): a
//! non-zero exit code, no panic or abort, and a message naming the file and the tensor,
//! field or problem. Broken inputs are edited copies of the HF fixtures in a temp dir.

mod common;

use common::cli::{check, copy_fixture, edit_tensors, encdecc, find, model, s, succeeds};
use common::root;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::path::Path;

/// `encdecc run` arguments for an HF directory laid out like a fixture.
fn run_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "run".into(),
        model("gemma2.edl"),
        "--hf".into(),
        s(dir),
        "--inputs".into(),
        s(&dir.join("inputs.safetensors")),
        "--out".into(),
        s(&dir.join("out.safetensors")),
    ];
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// Rewrites the JSON header of a safetensors file in place, keeping its data section.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Value, u64)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut j: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    edit(&mut j, data.len() as u64);
    let header = j.to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Sets element `at` of an f32 tensor to `value`, rewriting the file.
fn poison(path: &Path, name: &str, at: usize, value: f32) {
    edit_tensors(path, |entries| {
        let e = find(entries, name);
        assert_eq!(e.1, Dtype::F32);
        e.3[at * 4..at * 4 + 4].copy_from_slice(&value.to_le_bytes());
    });
}

const EMBED: &str = "model.embed_tokens.weight";
const UP: &str = "model.layers.0.mlp.up_proj.weight";

// ---------------------------------------------------------------- safetensors headers

#[test]
fn shape_overflowing_64_bits() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    edit_header(&p, |j, _| {
        j[EMBED]["shape"] = json!([4294967296u64, 4294967296u64, 16]);
    });
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), EMBED, "more elements than fit in 64 bits"],
    );
}

#[test]
fn shape_of_2_to_the_40_elements() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    edit_header(&p, |j, _| {
        j[EMBED]["shape"] = json!([1u64 << 40]);
        j[EMBED]["data_offsets"] = json!([0, 4u64 << 40]);
    });
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), EMBED, "1099511627776 elements", "data section"],
    );
}

#[test]
fn offsets_past_the_end() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    let mut last = String::new();
    edit_header(&p, |j, len| {
        let (name, e) = j
            .as_object_mut()
            .unwrap()
            .iter_mut()
            .find(|(_, e)| e["data_offsets"][1] == json!(len))
            .unwrap();
        last = name.clone();
        let (a, b) = (e["data_offsets"][0].as_u64().unwrap(), len);
        e["data_offsets"] = json!([a + 8, b + 8]);
    });
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), &last, "run past the end"],
    );
}

#[test]
fn offsets_inconsistent_with_the_shape() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    edit_header(&p, |j, _| {
        let rows = j[EMBED]["shape"][0].as_u64().unwrap();
        j[EMBED]["shape"][0] = json!(rows / 2);
    });
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), EMBED, "hold", "bytes, but shape"],
    );
}

#[test]
fn unknown_dtype() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    edit_header(&p, |j, _| j[EMBED]["dtype"] = json!("Q4_K"));
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), EMBED, "unknown dtype \"Q4_K\""],
    );
}

#[test]
fn header_length_past_the_end() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), "past the end of the file"],
    );
}

#[test]
fn header_not_json() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8] = b'!';
    std::fs::write(&p, bytes).unwrap();
    check(&run_args(d.path(), &[]), &[&s(&p), "not valid JSON"]);
}

#[test]
fn inputs_file_header_problems() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("inputs.safetensors");
    edit_header(&p, |j, _| {
        j["input_ids"]["shape"] = json!([1u64 << 40, 1u64 << 40]);
    });
    check(
        &run_args(d.path(), &[]),
        &[&s(&p), "input_ids", "more elements than fit in 64 bits"],
    );
}

// ---------------------------------------------------------------- non-finite weights

#[test]
fn nan_weight_is_named() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    poison(&p, UP, 5, f32::NAN);
    check(
        &run_args(d.path(), &[]),
        &[
            &s(&p),
            UP,
            "non-finite value (NaN) at index [0, 5]",
            "--allow-non-finite",
        ],
    );
    succeeds(&run_args(d.path(), &["--allow-non-finite"]));
}

#[test]
fn inf_weight_is_named() {
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    poison(&p, EMBED, 64 + 3, f32::NEG_INFINITY);
    check(
        &run_args(d.path(), &[]),
        &[EMBED, "non-finite value (-inf) at index [1, 3]"],
    );
}

#[test]
fn nan_weight_in_grad_generate_and_adapt() {
    let d = copy_fixture("gemma2-tiny");
    poison(&d.path().join("model.safetensors"), UP, 0, f32::INFINITY);
    let mut grad = run_args(d.path(), &[]);
    grad[0] = "grad".into();
    check(&grad, &[UP, "non-finite value (inf)"]);
    let out = d.path().join("adapted");
    let adapt = vec![
        "adapt".into(),
        model("t5gemma_adapt.edl"),
        "--from".into(),
        s(d.path()),
        "--out".into(),
        s(&out),
    ];
    check(
        &adapt,
        &["--from", UP, "non-finite value (inf) at index [0, 0]"],
    );
    let mut allowed = adapt.clone();
    allowed.push("--allow-non-finite".into());
    succeeds(&allowed);
}

// ---------------------------------------------------------------- config.json

#[test]
fn absurd_config_json_values() {
    for (key, value, expect) in [
        (
            "num_hidden_layers",
            json!(100000000000u64),
            "num_hidden_layers",
        ),
        ("num_hidden_layers", json!(-3), "sizes must be positive"),
        ("num_hidden_layers", json!(2.5), "expected int"),
        ("vocab_size", json!(100000000000u64), "100000000000"),
        ("hidden_size", json!(1e300), "expected int"),
    ] {
        let d = copy_fixture("gemma2-tiny");
        let p = d.path().join("config.json");
        let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j[key] = value;
        std::fs::write(&p, j.to_string()).unwrap();
        check(&run_args(d.path(), &[]), &[expect]);
    }
}

#[test]
fn adapt_from_absurd_layer_count() {
    // The default layer_types has one entry per layer: this used to abort allocating 3 TB.
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("config.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["num_hidden_layers"] = json!(100000000000u64);
    j.as_object_mut().unwrap().remove("layer_types");
    std::fs::write(&p, j.to_string()).unwrap();
    check(
        &[
            "adapt".into(),
            model("t5gemma_adapt.edl"),
            "--from".into(),
            s(d.path()),
            "--out".into(),
            s(&d.path().join("adapted")),
        ],
        &[
            &s(&p),
            "num_hidden_layers 100000000000 is more than any model has",
        ],
    );
}

// ---------------------------------------------------------------- corpus and tokenizer

/// A run file for a tiny Gemma 2 on `corpus`.
fn train_run(dir: &Path, corpus: &str, tokenizer: Value) -> String {
    let text = corpus.to_string();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let r = json!({
        "model": root().join("models/gemma2.edl"),
        "config": root().join("examples/recipe/gemma2-small.json"),
        "set": ["num_hidden_layers=2", "layer_types=[\"sliding_attention\",\"full_attention\"]"],
        "init": {"kind": "random", "seed": 5},
        "tokenizer": tokenizer,
        "corpus": {"path": dir.join("corpus.txt"), "heldout_fraction": 0.1},
        "objective": {"objective": "causal_lm", "batch_size": 2, "seq_len": 32},
        "steps": 2,
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 2, "batches": 1},
    });
    let p = dir.join("run.json");
    std::fs::write(&p, r.to_string()).unwrap();
    s(&p)
}

fn train(run: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "train".to_string(),
        run.to_string(),
        "--out".into(),
        s(out),
        "--quiet".into(),
    ];
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

#[test]
fn empty_corpus_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let corpus = s(&d.path().join("corpus.txt"));
    let byte = json!({"kind": "byte"});
    let run = train_run(d.path(), "", byte.clone());
    check(
        &train(&run, &d.path().join("o"), &[]),
        &[&corpus, "is empty"],
    );
    let run = train_run(d.path(), "To be.\n", byte);
    check(
        &train(&run, &d.path().join("o"), &[]),
        &[&corpus, "train split", "fewer than one window of"],
    );
}

#[test]
fn malformed_tokenizer_json_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let tok = d.path().join("tokenizer.json");
    let run = train_run(d.path(), "To be.\n", json!({"kind": "hf", "path": tok}));
    for text in [
        "{\"model\": ",
        "[]",
        // The tokenizers crate parses a Precompiled charsmap with `expect`.
        r#"{"version": "1.0", "added_tokens": [], "normalizer": {"type": "Precompiled", "precompiled_charsmap": "/////w=="},
            "pre_tokenizer": null, "post_processor": null, "decoder": null, "truncation": null, "padding": null,
            "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2}, "unk_token": "<pad>"}}"#,
        r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": null, "truncation": null, "padding": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}"#,
    ] {
        std::fs::write(&tok, text).unwrap();
        check(&train(&run, &d.path().join("o"), &[]), &[&s(&tok)]);
    }
}

#[test]
fn non_finite_checkpoint_on_resume_and_init() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("data/shakespeare.txt")).unwrap();
    let cut = text.char_indices().nth(20_000).unwrap().0;
    let run = train_run(d.path(), &text[..cut], json!({"kind": "byte"}));
    let out = d.path().join("o");
    succeeds(&train(&run, &out, &["--stop-after", "1"]));
    let ckpt = out.join("checkpoint/model.safetensors");
    let name = {
        let bytes = std::fs::read(&ckpt).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n.ends_with("up_proj.weight"))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names[0].clone()
    };
    poison(&ckpt, &name, 2, f32::NAN);
    check(
        &train(&run, &out, &["--resume"]),
        &[&s(&ckpt), &name, "non-finite value (NaN)"],
    );
    let init = s(&out.join("checkpoint"));
    check(
        &train(&run, &d.path().join("o2"), &["--init", &init]),
        &[&s(&ckpt), &name, "non-finite value (NaN)"],
    );
    let (o, ctx) = encdecc(&train(&run, &out, &["--resume", "--allow-non-finite"]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("non-finite value"), "{ctx}");
    assert!(
        !stderr.contains("panicked") && o.status.code().is_some(),
        "{ctx}"
    );
}
