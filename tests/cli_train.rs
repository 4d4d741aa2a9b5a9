//! `encdecc train` end to end on a slice of the bundled corpus: metrics, plot, an HF
//! directory that `encdecc run` reads, bit-identical resume, distillation and phases, and
//! clear errors for broken run files.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn encdecc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(args)
        .output()
        .expect("spawn encdecc")
}

fn ok(args: &[&str]) -> String {
    let o = encdecc(args);
    assert!(
        o.status.success(),
        "encdecc {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A run file for a tiny Gemma 2 on the first 60 kB of the corpus.
fn gemma_run(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("data/shakespeare.txt")).unwrap();
    let cut = text.char_indices().nth(60_000).unwrap().0;
    std::fs::write(dir.join("corpus.txt"), &text[..cut]).unwrap();
    json!({
        "model": root().join("models/gemma2.edl"),
        "config": root().join("examples/recipe/gemma2-small.json"),
        "set": ["num_hidden_layers=2", "layer_types=[\"sliding_attention\",\"full_attention\"]"],
        "init": {"kind": "random", "seed": 5},
        "corpus": {"path": dir.join("corpus.txt"), "heldout_fraction": 0.1},
        "objective": {"objective": "causal_lm", "batch_size": 2, "seq_len": 32},
        "steps": 4,
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 2, "batches": 2,
                 "objective": {"objective": "prefix_lm", "batch_size": 2, "seq_len": 32}},
    })
}

fn write(dir: &Path, name: &str, v: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p.display().to_string()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trains_logs_plots_and_writes_an_hf_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write(tmp.path(), "run.json", &gemma_run(tmp.path()));
    let out = tmp.path().join("out");
    let summary = ok(&["train", &run, "--out", out.to_str().unwrap(), "--quiet"]);
    let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    let m = metrics(&out);
    // step 0 (evaluation before training), then steps 1..=4
    assert_eq!(m.len(), 5);
    assert_eq!(m[0]["step"], 0);
    let first = m[0]["eval_loss"].as_f64().unwrap();
    // Random weights: about ln(vocab) per token.
    assert!(
        (first - (384f64).ln()).abs() < 0.3,
        "initial held-out loss {first}"
    );
    for (i, l) in m[1..].iter().enumerate() {
        assert_eq!(l["step"], i as u64 + 1);
        assert!(l["loss"].as_f64().unwrap().is_finite());
    }
    assert_eq!(m[4]["eval_loss"], s["eval_loss"]);
    assert!(std::fs::read_to_string(out.join("loss.svg"))
        .unwrap()
        .contains("<polyline"));
    // The final model is an HF directory the other commands read.
    let fin = out.join("final");
    assert!(fin.join("config.json").exists() && fin.join("model.safetensors").exists());
    let cfg = read_json(&fin.join("config.json"));
    assert_eq!(cfg["num_hidden_layers"], 2);
    let inputs = tmp.path().join("in.safetensors");
    let ids = encdecc_runtime::Tensor::i64(vec![1, 5], vec![2, 40, 41, 42, 43]);
    encdecc_runtime::weights::write_safetensors(
        &inputs,
        &std::collections::BTreeMap::from([("input_ids".to_string(), ids)]),
    )
    .unwrap();
    ok(&[
        "run",
        root().join("models/gemma2.edl").to_str().unwrap(),
        "--hf",
        fin.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        tmp.path().join("o.safetensors").to_str().unwrap(),
    ]);
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn resume_gives_bit_identical_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write(tmp.path(), "run.json", &gemma_run(tmp.path()));
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(&["train", &run, "--out", a.to_str().unwrap(), "--quiet"]);
    ok(&[
        "train",
        &run,
        "--out",
        b.to_str().unwrap(),
        "--quiet",
        "--stop-after",
        "2",
    ]);
    assert_eq!(metrics(&b).len(), 3);
    assert!(!b.join("final").exists());
    ok(&[
        "train",
        &run,
        "--out",
        b.to_str().unwrap(),
        "--quiet",
        "--resume",
    ]);
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "loss", "grad_norm", "lr", "eval_loss"] {
            assert_eq!(x[k], y[k], "`{k}` at step {}", x["step"]);
        }
    }
    let wa = read_all(&a.join("final/model.safetensors"));
    let wb = read_all(&b.join("final/model.safetensors"));
    assert_eq!(wa, wb, "weights after resume");
}

#[test]
fn distills_into_an_adapted_model_with_a_frozen_warmup() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write(tmp.path(), "run.json", &gemma_run(tmp.path()));
    let g = tmp.path().join("g");
    ok(&[
        "train",
        &run,
        "--out",
        g.to_str().unwrap(),
        "--quiet",
        "--steps",
        "2",
    ]);
    let t5 = tmp.path().join("t5");
    ok(&[
        "adapt",
        root().join("models/t5gemma_adapt.edl").to_str().unwrap(),
        "--from",
        g.join("final").to_str().unwrap(),
        "--out",
        t5.to_str().unwrap(),
    ]);
    let mut r = gemma_run(tmp.path());
    r["model"] = json!(root().join("models/t5gemma.edl"));
    r.as_object_mut().unwrap().remove("config");
    r.as_object_mut().unwrap().remove("set");
    r["init"] = json!({"kind": "hf", "dir": t5});
    r["objective"] = json!({"objective": "prefix_lm", "batch_size": 2, "seq_len": 32});
    r["teacher"] =
        json!({"model": root().join("models/gemma2.edl"), "dir": g.join("final"), "top_k": 8});
    r["phases"] = json!([
        {"name": "cross", "steps": 2, "trainable": ["model.decoder.layers.{i}.cross_attn.*"]},
        {"name": "full", "trainable": ["*"]}
    ]);
    let run2 = write(tmp.path(), "kd.json", &r);
    let out = tmp.path().join("kd");
    ok(&[
        "train",
        &run2,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--steps",
        "3",
    ]);
    let m = metrics(&out);
    let phases: Vec<&str> = m[1..]
        .iter()
        .map(|l| l["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["cross", "cross", "full"]);
    // Only cross-attention moved during the warm-up: compare with the adapted weights.
    let before = read_all(&t5.join("model.safetensors"));
    let after = read_all(&out.join("checkpoint/model.safetensors"));
    assert_ne!(
        before["model.encoder.layers.0.mlp.up_proj.weight"],
        after["model.encoder.layers.0.mlp.up_proj.weight"]
    );
    let kd_loss = m[1]["loss"].as_f64().unwrap();
    assert!(kd_loss.is_finite() && kd_loss > 0.0);
}

#[test]
fn broken_run_files_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let good = gemma_run(tmp.path());
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"model": "x.edl"}), "missing field"),
        (
            {
                let mut r = good.clone();
                r["steps"] = json!(0);
                r
            },
            "`steps` must be at least 1",
        ),
        (
            {
                let mut r = good.clone();
                r["objective"]["objective"] = json!("mlm");
                r
            },
            "unknown variant `mlm`",
        ),
        (
            {
                let mut r = good.clone();
                r["optimizer"]["decay"] = json!("step");
                r
            },
            "unknown decay `step`",
        ),
        (
            {
                let mut r = good.clone();
                r["phases"] = json!([{"name": "p", "trainable": ["nope.*"]}]);
                r
            },
            "phase `p` matches no parameter",
        ),
        (
            {
                let mut r = good.clone();
                r["corpus"]["path"] = json!("/nonexistent/corpus.txt");
                r
            },
            "/nonexistent/corpus.txt",
        ),
        (
            {
                let mut r = good.clone();
                r["set"] = json!(["vocab_size=100"]);
                r
            },
            "smaller than the tokenizer's",
        ),
        (
            {
                let mut r = good.clone();
                r["bogus"] = json!(1);
                r
            },
            "unknown field `bogus`",
        ),
        (
            {
                let mut r = good.clone();
                r["dtype"] = json!("bf16");
                r
            },
            "trains on the cuda backend only",
        ),
        (
            {
                let mut r = good.clone();
                r["dtype"] = json!("f16");
                r
            },
            "f16",
        ),
    ];
    for (i, (r, want)) in cases.iter().enumerate() {
        let run = write(tmp.path(), &format!("r{i}.json"), r);
        let o = encdecc(&[
            "train",
            &run,
            "--out",
            tmp.path().join(format!("o{i}")).to_str().unwrap(),
            "--quiet",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && !err.contains("panicked"),
            "case {i}: {err}"
        );
        assert!(
            err.contains(want),
            "case {i}: stderr lacks {want:?}:\n{err}"
        );
    }
    let o = encdecc(&["train", "/nonexistent/run.json", "--out", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read run file"));
}
