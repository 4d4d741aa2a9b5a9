//! `--check-finite` end to end: a checkpoint edited so that a matmul overflows makes `run`
//! and `grad` fail naming that matmul (the reference backend always checks), and a train
//! run whose learning rate blows the weights up says which op first overflowed.

mod common;

use common::cli::{check, copy_fixture, edit_tensors, find, s, succeeds};
use common::root;
use safetensors::Dtype;
use serde_json::json;
use std::path::Path;

/// Sets every element of the f32 tensor `name` in a safetensors file to `value`.
fn fill_tensor(path: &Path, name: &str, value: f32) {
    edit_tensors(path, |entries| {
        let e = find(entries, name);
        assert_eq!(e.1, Dtype::F32);
        e.3 = value.to_le_bytes().repeat(e.3.len() / 4);
    });
}

/// The tiny T5Gemma with its first encoder MLP's up projection at 3e38: `x · W` overflows.
fn overflowing() -> tempfile::TempDir {
    let d = copy_fixture("t5gemma-tiny");
    fill_tensor(
        &d.path().join("model.safetensors"),
        "model.encoder.layers.0.mlp.up_proj.weight",
        3e38,
    );
    d
}

fn args(command: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        command.to_string(),
        s(&root().join("models/t5gemma.edl")),
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

/// What every report of the overflowing checkpoint says: the matmul that read the edited
/// weight, its inputs finite, and an output it reaches.
const OVERFLOW: &[&str] = &[
    "error: non-finite value (",
    "first produced by `%",
    "from `encoder.layers.0.h`, `encoder.layers.0.mlp.up_proj.weight`",
    "(op matmul) — operands were finite; it reaches output `",
];

#[test]
fn run_names_the_overflowing_matmul() {
    let d = overflowing();
    check(
        &args("run", d.path(), &["--backend", "cpu", "--check-finite"]),
        OVERFLOW,
    );
    // Always on for the reference backend.
    check(
        &args("run", d.path(), &["--backend", "reference"]),
        OVERFLOW,
    );
    // Off by default on the cpu: the NaN outputs are written as before.
    succeeds(&args("run", d.path(), &["--backend", "cpu"]));
}

#[test]
fn run_of_a_finite_checkpoint_passes_the_check() {
    let d = copy_fixture("t5gemma-tiny");
    succeeds(&args(
        "run",
        d.path(),
        &["--backend", "cpu", "--check-finite"],
    ));
    succeeds(&args("run", d.path(), &["--backend", "reference"]));
}

#[test]
fn grad_names_the_overflowing_matmul() {
    let d = overflowing();
    check(
        &args("grad", d.path(), &["--backend", "cpu", "--check-finite"]),
        OVERFLOW,
    );
}

/// A two-layer Gemma 2 trained with a learning rate that makes each update ~1e30 per
/// weight. Unchecked, step 3's loss is the first sign; checked, step 2 already fails: its
/// loss is finite, but its backward overflows (a norm's sum of squares) and the NaN reaches
/// the gradient norm, which would have made every weight NaN.
#[test]
fn train_names_the_first_op_when_the_loss_diverges() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("data/shakespeare.txt")).unwrap();
    let cut = text.char_indices().nth(20_000).unwrap().0;
    std::fs::write(tmp.path().join("corpus.txt"), &text[..cut]).unwrap();
    let run = json!({
        "model": root().join("models/gemma2.edl"),
        "config": root().join("examples/recipe/gemma2-small.json"),
        "set": ["num_hidden_layers=2", "layer_types=[\"sliding_attention\",\"full_attention\"]"],
        "init": {"kind": "random", "seed": 5},
        "corpus": {"path": tmp.path().join("corpus.txt"), "heldout_fraction": 0.1},
        "objective": {"objective": "causal_lm", "batch_size": 2, "seq_len": 16},
        "steps": 3,
        "optimizer": {"lr": 1e30, "warmup_steps": 0},
        "eval": {"every": 100, "batches": 1},
    });
    let path = tmp.path().join("run.json");
    std::fs::write(&path, serde_json::to_string_pretty(&run).unwrap()).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "train".to_string(),
            s(&path),
            "--out".into(),
            s(&tmp.path().join(out)),
            "--quiet".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // Without the check: the divergence, as before.
    check(
        &train("plain", &[]),
        &["error: step 3: the loss is NaN (diverged; lower the learning rate?)"],
    );
    check(
        &train("checked", &["--check-finite"]),
        &[
            "error: step 2: non-finite value (NaN at ",
            "(loop kernel `k",
            "— its inputs were finite; it reaches output `grad_norm`",
        ],
    );
}
