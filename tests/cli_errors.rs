//! Every broken input to the `encdecc` binary gives a non-zero exit code, no panic, and a
//! message that names the tensor, file, field or source line at fault. Broken inputs are
//! built as edited copies of the HF fixtures in a temporary directory.

mod common;

use common::cli::{args, check, copy_fixture, edit_tensors, find, model, read_entries, s};
use common::root;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use std::process::Command;

/// `encdecc run` arguments for an HF directory laid out like a fixture.
fn run_args(edl: &str, dir: &Path) -> Vec<String> {
    vec![
        "run".into(),
        edl.into(),
        "--hf".into(),
        s(dir),
        "--inputs".into(),
        s(&dir.join("inputs.safetensors")),
        "--out".into(),
        s(&dir.join("out.safetensors")),
    ]
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(&p, serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

// ---------------------------------------------------------------- weights

#[test]
fn missing_tensor() {
    let d = copy_fixture("t5gemma-tiny");
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        e.retain(|x| x.0 != "model.decoder.norm.weight")
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &["missing", "model.decoder.norm.weight", "[64]"],
    );
}

#[test]
fn transposed_tensor() {
    // q_proj of t5gemma-tiny is square; the unbalanced fixture's encoder q_proj is [128, 96].
    let d = copy_fixture("t5gemma-unbalanced");
    let name = "model.encoder.layers.0.self_attn.q_proj.weight";
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        let t = find(e, name);
        assert_eq!(t.2, vec![128, 96]);
        t.2 = vec![96, 128];
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[name, "[96, 128]", "expected [128, 96]", "transposed"],
    );
}

#[test]
fn wrong_length_vector() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        let t = find(e, "model.norm.weight");
        t.2 = vec![32];
        t.3.truncate(32 * 4);
    });
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["model.norm.weight", "[32]", "expected [64]"],
    );
}

#[test]
fn rank_two_for_a_vector() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        find(e, "model.norm.weight").2 = vec![8, 8];
    });
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["model.norm.weight", "[8, 8]", "expected [64]"],
    );
}

#[test]
fn wrong_dtype_tensor() {
    let d = copy_fixture("t5gemma-tiny");
    let name = "model.decoder.layers.0.self_attn.q_proj.weight";
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        let t = find(e, name);
        let n: usize = t.2.iter().product();
        t.1 = Dtype::I64;
        t.3 = vec![0u8; n * 8];
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[name, "I64", "float"],
    );
}

#[test]
fn truncated_model_file() {
    let d = copy_fixture("t5gemma-tiny");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(&p), "truncated"],
    );
}

#[test]
fn missing_model_file() {
    let d = copy_fixture("t5gemma-tiny");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(d.path()), "model.safetensors"],
    );
}

// ---------------------------------------------------------------- config.json

#[test]
fn malformed_config_json() {
    let d = copy_fixture("t5gemma-tiny");
    let p = d.path().join("config.json");
    std::fs::write(
        &p,
        "{\n  \"model_type\": \"t5gemma\",\n  \"encoder\": {,\n}\n",
    )
    .unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(&p), "not valid JSON", "line 3"],
    );
}

#[test]
fn config_json_field_of_wrong_type() {
    let d = copy_fixture("gemma2-tiny");
    edit_config(d.path(), |j| j["hidden_size"] = "big".into());
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["hidden_size", "expected int", "big"],
    );
}

#[test]
fn config_json_nested_field_of_wrong_type() {
    let d = copy_fixture("t5gemma-tiny");
    edit_config(d.path(), |j| j["encoder"]["hidden_size"] = "big".into());
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &["encoder.hidden_size", "expected int", "big"],
    );
}

#[test]
fn compile_hf_config_malformed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config.json");
    std::fs::write(&p, "{ \"hidden_size\": 64, ").unwrap();
    check(
        &args(&["compile", &model("gemma2.edl"), "--hf-config", &s(&p)]),
        &[&s(&p), "not valid JSON"],
    );
}

#[test]
fn compile_hf_config_missing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nope.json");
    check(
        &args(&["compile", &model("gemma2.edl"), "--hf-config", &s(&p)]),
        &[&s(&p), "cannot read"],
    );
}

// ---------------------------------------------------------------- inputs

#[test]
fn token_id_out_of_vocab() {
    let d = copy_fixture("t5gemma-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        let t = find(e, "input_ids");
        assert_eq!(t.1, Dtype::I64);
        t.3[8..16].copy_from_slice(&300i64.to_le_bytes());
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &["input_ids", "300", "256"],
    );
}

#[test]
fn negative_token_id() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        let t = find(e, "input_ids");
        t.3[0..8].copy_from_slice(&(-5i64).to_le_bytes());
    });
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["input_ids", "-5"],
    );
}

#[test]
fn float_input_ids() {
    let d = copy_fixture("t5gemma-tiny");
    let inputs = d.path().join("inputs.safetensors");
    edit_tensors(&inputs, |e| {
        let t = find(e, "input_ids");
        let ids: Vec<i64> =
            t.3.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
        t.1 = Dtype::F32;
        t.3 = ids.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &["input_ids", &s(&inputs), "f32", "integer"],
    );
}

#[test]
fn missing_inputs_file() {
    let d = copy_fixture("t5gemma-tiny");
    let inputs = d.path().join("inputs.safetensors");
    std::fs::remove_file(&inputs).unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(&inputs), "cannot open"],
    );
}

#[test]
fn truncated_inputs_file() {
    let d = copy_fixture("t5gemma-tiny");
    let inputs = d.path().join("inputs.safetensors");
    let bytes = std::fs::read(&inputs).unwrap();
    std::fs::write(&inputs, &bytes[..bytes.len() - 10]).unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(&inputs), "truncated"],
    );
}

#[test]
fn missing_hf_dir() {
    let d = copy_fixture("t5gemma-tiny");
    let mut a = run_args(&model("t5gemma.edl"), d.path());
    let gone = d.path().join("no-such-dir");
    a[3] = s(&gone);
    check(&a, &[&s(&gone), "not a directory"]);
}

#[test]
fn hf_dir_without_config() {
    let d = copy_fixture("t5gemma-tiny");
    let cfg = d.path().join("config.json");
    std::fs::remove_file(&cfg).unwrap();
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &[&s(&cfg), "cannot read"],
    );
}

#[test]
fn label_out_of_vocab() {
    let d = copy_fixture("t5gemma-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        let t = find(e, "labels");
        t.3[0..8].copy_from_slice(&300i64.to_le_bytes());
    });
    check(
        &run_args(&model("t5gemma.edl"), d.path()),
        &["labels", "300"],
    );
}

#[test]
fn input_ids_of_wrong_rank() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        let t = find(e, "input_ids");
        t.2 = vec![24];
    });
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["input_ids", "[24]"],
    );
}

#[test]
fn attention_mask_of_wrong_length() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        let t = find(e, "attention_mask");
        t.2 = vec![2, 11];
        t.3.truncate(2 * 11 * 8);
    });
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["attention_mask", "[2, 11]"],
    );
}

#[test]
fn missing_input_ids() {
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("inputs.safetensors"), |e| {
        e.retain(|x| x.0 != "input_ids")
    });
    check(&run_args(&model("gemma2.edl"), d.path()), &["input_ids"]);
}

#[test]
fn empty_inputs_file() {
    let d = copy_fixture("t5gemma-tiny");
    let inputs = d.path().join("inputs.safetensors");
    std::fs::write(&inputs, b"").unwrap();
    check(&run_args(&model("t5gemma.edl"), d.path()), &[&s(&inputs)]);
}

#[test]
fn sharded_index_names_missing_shard() {
    let d = copy_fixture("gemma2-tiny");
    let m = d.path().join("model.safetensors");
    std::fs::rename(&m, d.path().join("model-00001-of-00002.safetensors")).unwrap();
    let names: Vec<String> = read_entries(&d.path().join("model-00001-of-00002.safetensors"))
        .into_iter()
        .map(|e| e.0)
        .collect();
    let mut map = serde_json::Map::new();
    for (i, n) in names.iter().enumerate() {
        let shard = if i == 0 {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        map.insert(n.clone(), shard.into());
    }
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &["model-00002-of-00002.safetensors", "cannot open"],
    );
}

#[test]
fn sharded_index_malformed() {
    let d = copy_fixture("gemma2-tiny");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let idx = d.path().join("model.safetensors.index.json");
    std::fs::write(&idx, "{\"weight_map\": [").unwrap();
    check(
        &run_args(&model("gemma2.edl"), d.path()),
        &[&s(&idx), "not valid JSON"],
    );
}

#[test]
fn header_claims_more_data_than_file() {
    // A valid header whose last tensor's offsets point past the end of the file.
    let d = copy_fixture("gemma2-tiny");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    check(&run_args(&model("gemma2.edl"), d.path()), &[&s(&p)]);
}

#[test]
fn bf16_weights_run() {
    // Not an error: BF16 weights load. Kept beside the dtype errors as their counterpart.
    let d = copy_fixture("gemma2-tiny");
    edit_tensors(&d.path().join("model.safetensors"), |e| {
        for t in e.iter_mut() {
            t.1 = Dtype::BF16;
            t.3 = t.3.chunks_exact(4).flat_map(|c| c[2..4].to_vec()).collect();
        }
    });
    let o = Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(run_args(&model("gemma2.edl"), d.path()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

// ---------------------------------------------------------------- .edl sources

/// t5gemma.edl and the gemma.edl it imports, copied into a temp dir.
fn copy_models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["t5gemma.edl", "gemma.edl"] {
        std::fs::copy(root().join("models").join(f), d.path().join(f)).unwrap();
    }
    d
}

#[test]
fn edl_garbage_line() {
    let d = copy_models();
    let p = d.path().join("t5gemma.edl");
    let mut lines: Vec<String> = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // At top level, right after the `import` line.
    let at = 1 + lines
        .iter()
        .position(|l| l.starts_with("import "))
        .expect("t5gemma.edl imports gemma.edl");
    lines.insert(at, "  %%% garbage ~~~".into());
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    check(
        &args(&["compile", &s(&p), "--preset", "s-s"]),
        &[&format!("t5gemma.edl:{}:3", at + 1), "%%% garbage"],
    );
}

#[test]
fn edl_garbage_line_in_import() {
    let d = copy_models();
    let g = d.path().join("gemma.edl");
    let text = std::fs::read_to_string(&g).unwrap();
    std::fs::write(&g, format!("{text}\n}} }} )\n")).unwrap();
    let line = text.lines().count() + 2;
    check(
        &args(&[
            "compile",
            &s(&d.path().join("t5gemma.edl")),
            "--preset",
            "s-s",
        ]),
        &[&format!("gemma.edl:{line}:1")],
    );
}

#[test]
fn edl_truncated() {
    let d = copy_models();
    let p = d.path().join("t5gemma.edl");
    let text = std::fs::read_to_string(&p).unwrap();
    // Cut inside the first `config` block, leaving it unclosed.
    let cut = text.find("vocab_size: int").expect("config body");
    std::fs::write(&p, &text[..cut]).unwrap();
    check(
        &args(&["compile", &s(&p), "--preset", "s-s"]),
        &["t5gemma.edl:"],
    );
}

#[test]
fn edl_missing_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nothere.edl");
    check(&args(&["compile", &s(&p)]), &[&s(&p), "cannot read"]);
}

#[test]
fn edl_missing_import() {
    let d = copy_models();
    std::fs::remove_file(d.path().join("gemma.edl")).unwrap();
    check(
        &args(&[
            "compile",
            &s(&d.path().join("t5gemma.edl")),
            "--preset",
            "s-s",
        ]),
        &["gemma.edl", "cannot read", "t5gemma.edl:4:8"],
    );
}

// ---------------------------------------------------------------- flags

#[test]
fn unknown_preset() {
    check(
        &args(&["compile", &model("t5gemma.edl"), "--preset", "zz"]),
        &["unknown preset `zz`", "s-s", "2b-2b"],
    );
}

#[test]
fn set_unknown_field() {
    check(
        &args(&[
            "compile",
            &model("t5gemma.edl"),
            "--preset",
            "s-s",
            "--set",
            "encoder.no_such_field=3",
        ]),
        &["encoder.no_such_field", "hidden_size"],
    );
}

#[test]
fn set_wrong_type() {
    check(
        &args(&[
            "compile",
            &model("t5gemma.edl"),
            "--preset",
            "s-s",
            "--set",
            "encoder.hidden_size=abc",
        ]),
        &["encoder.hidden_size", "expected int", "abc"],
    );
}

#[test]
fn set_without_equals() {
    check(
        &args(&[
            "compile",
            &model("t5gemma.edl"),
            "--preset",
            "s-s",
            "--set",
            "encoder.hidden_size",
        ]),
        &["encoder.hidden_size"],
    );
}

#[test]
fn unknown_backend() {
    let d = copy_fixture("t5gemma-tiny");
    let mut a = run_args(&model("t5gemma.edl"), d.path());
    a.extend(["--backend".into(), "zz".into()]);
    check(&a, &["unknown backend `zz`", "reference"]);
}

#[test]
fn output_into_missing_dir() {
    let d = copy_fixture("t5gemma-tiny");
    let mut a = run_args(&model("t5gemma.edl"), d.path());
    let out = d.path().join("no-such-dir/out.safetensors");
    a[7] = s(&out);
    check(&a, &["no-such-dir", "cannot write"]);
}

// ---------------------------------------------------------------- success

#[test]
fn run_writes_outputs_atomically() {
    let d = copy_fixture("t5gemma-tiny");
    let out = d.path().join("out.safetensors");
    let a = run_args(&model("t5gemma.edl"), d.path());
    let mut before = None;
    let mut inode = None;
    for round in 0..2 {
        let o = Command::new(env!("CARGO_BIN_EXE_encdecc"))
            .args(&a)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = std::fs::read(&out).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let logits = st.tensor("logits").unwrap();
        assert_eq!(logits.shape(), &[2, 8, 256]);
        assert_eq!(logits.dtype(), Dtype::F32);
        if let Some(b) = &before {
            assert_eq!(b, &bytes, "second run gives the same file");
        }
        before = Some(bytes);
        // A rename over the old file gives a new inode; writing in place would keep it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(&out).unwrap().ino();
            assert_ne!(
                inode,
                Some(ino),
                "round {round}: output replaced by a rename"
            );
            inode = Some(ino);
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "inputs.safetensors",
                "model.safetensors",
                "out.safetensors"
            ],
            "round {round}: no leftover temp files"
        );
    }
}

/// Issue 19: an absurd layer count ends as a diagnostic naming the `--set` field, before
/// anything that size is allocated (it once aborted allocating 2.4 TB for the layer list).
#[test]
fn set_absurd_layer_count_is_a_diagnostic() {
    compile_s_s_with(
        &["encoder.num_hidden_layers=100000000000"],
        &[
            "the range 0..100000000000 would have 100000000000 elements",
            "--set encoder.num_hidden_layers=100000000000",
            "encoder.layer_types",
        ],
    );
}

/// `encdecc compile` of the t5gemma `s-s` preset with each of `sets` as a `--set`: fails
/// (see `check`) with every expected substring, within 20 seconds.
fn compile_s_s_with(sets: &[&str], expect: &[&str]) {
    let t = std::time::Instant::now();
    let mut a = args(&["compile", &model("t5gemma.edl"), "--preset", "s-s"]);
    for s in sets {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    check(&a, expect);
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

/// Issue 19: a `--set` integer past i64 is an error naming the override.
#[test]
fn set_integer_out_of_range_is_a_diagnostic() {
    compile_s_s_with(
        &["encoder.hidden_size=99999999999999999999"],
        &[
            "--set encoder.hidden_size=99999999999999999999",
            "integers must fit in 64 bits",
        ],
    );
}

/// Issue 19: a `--set` size that makes a parameter absurd names the parameter.
#[test]
fn set_absurd_hidden_size_names_the_parameter() {
    compile_s_s_with(
        &[
            "encoder.hidden_size=1000000000000",
            "decoder.hidden_size=1000000000000",
        ],
        &["parameter `", "more than the limit of 1099511627776"],
    );
}

/// Issue 19: a layer count under the list limit is stopped by the parameter budget within a
/// second, naming the parameter and the `--set` (it once took gigabytes and minutes).
#[test]
fn set_large_layer_count_hits_the_parameter_budget() {
    compile_s_s_with(
        &["encoder.num_hidden_layers=1000000"],
        &[
            "more than the limit of 65536",
            "parameter `encoder.layers.",
            "the model was configured with --set encoder.num_hidden_layers=1000000",
        ],
    );
}
