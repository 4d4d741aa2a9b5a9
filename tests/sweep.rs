//! `encdecc sweep`: a 2×2 grid over encoder and decoder depth on the tiny T5Gemma config
//! writes the CSV, JSON and plots with exact parameter counts, and a rerun keeps finished
//! variants (and measures only the missing ones).

mod common;

use common::root;
use std::path::Path;
use std::process::Command;

fn sweep(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args([
            "sweep",
            "models/t5gemma.edl",
            "--hf-config",
            "tests/fixtures/hf/t5gemma-tiny/config.json",
            "--grid",
            "encoder.num_hidden_layers=2,4",
            "--grid",
            "decoder.num_hidden_layers=1,2",
            "--src-len",
            "8",
            "--new-tokens",
            "4",
            "--iters",
            "1",
            "--out",
        ])
        .arg(out)
        .current_dir(root())
        .output()
        .unwrap()
}

fn variants(dir: &Path) -> Vec<serde_json::Value> {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    j["variants"].as_array().unwrap().clone()
}

#[test]
fn a_two_by_two_sweep_writes_results_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let o = sweep(&dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        &header[..3],
        &[
            "encoder.num_hidden_layers",
            "decoder.num_hidden_layers",
            "parameters"
        ]
    );
    let ms: Vec<usize> = (0..header.len())
        .filter(|&i| header[i].contains("ms"))
        .collect();
    assert!(ms.len() >= 2, "latency columns: {header:?}");
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    // Exact counts: t5gemma-tiny with 2 encoder / 1 decoder layers has 156 672 parameters; an
    // encoder layer adds 37 120 (attention 12 288, GeGLU 24 576, 4 norms), a decoder layer
    // 49 536 (self and cross attention, GeGLU, 6 norms).
    for r in &rows {
        let (e, d) = (r[0], r[1]);
        let want = 156_672.0 + (e - 2.0) * 37_120.0 + (d - 1.0) * 49_536.0;
        assert_eq!(r[2], want, "parameters of encoder {e} / decoder {d}");
        for &i in &ms {
            assert!(r[i] > 0.0 && r[i].is_finite(), "{}: {}", header[i], r[i]);
        }
    }
    let vs = variants(&dir);
    assert_eq!(vs.len(), 4);
    for v in &vs {
        for k in [
            "encode_flops_per_token",
            "decode_flops_per_token",
            "peak_memory_bytes",
        ] {
            assert!(v[k].as_u64().is_some_and(|x| x > 0), "{k}: {v}");
        }
    }
    let svg = std::fs::read_to_string(dir.join("latency_vs_parameters.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Two series of four points, plus two legend markers.
    assert_eq!(svg.matches("<circle").count(), 10);
    assert!(
        !dir.join("loss_vs_decode_latency.svg").exists(),
        "no loss without training"
    );

    // Resume: a recorded variant is kept as it is (a marker survives), a missing one is
    // measured again.
    let records = dir.join("variants");
    let mut files: Vec<_> = std::fs::read_dir(&records)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    let mut kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    kept["measure_s"] = serde_json::json!(-1.0);
    std::fs::write(&files[0], kept.to_string()).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let o = sweep(&dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vs = variants(&dir);
    assert_eq!(vs.len(), 4);
    assert_eq!(
        vs.iter().filter(|v| v["measure_s"] == -1.0).count(),
        1,
        "kept variant"
    );
    assert!(files[1].exists(), "the missing variant is measured again");
}

#[test]
fn bad_grids_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (grid, needle) in [
        ("decoder.num_hidden_layers", "KEY=V1,V2"),
        ("decoder.num_hidden_layers=1,", "empty"),
        ("decoder.no_such_field=1", "no_such_field"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_encdecc"))
            .args(["sweep", "models/t5gemma.edl", "--hf-config"])
            .arg("tests/fixtures/hf/t5gemma-tiny/config.json")
            .args(["--grid", grid, "--out"])
            .arg(tmp.path().join("x"))
            .current_dir(root())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{grid}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--train RUN.json`: every variant is trained from random weights on the bundled corpus
/// and its held-out loss becomes a column, with the loss-vs-latency plot.
#[test]
fn a_training_sweep_adds_held_out_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run.json");
    std::fs::write(
        &run,
        serde_json::json!({
            "model": "unused: the sweep's model is trained",
            "init": {"kind": "random"},
            "corpus": {"path": root().join("data/shakespeare.txt")},
            "objective": {"objective": "prefix_lm", "batch_size": 2, "seq_len": 32},
            "steps": 1,
            "optimizer": {"lr": 3e-3},
            "eval": {"batches": 1},
        })
        .to_string(),
    )
    .unwrap();
    let dir = tmp.path().join("sweep");
    let cfg = root().join("examples/recipe/gemma2-small.json");
    // A T5Gemma config with the byte tokenizer's vocabulary: both stacks from the recipe's.
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let t5 =
        serde_json::json!({"model_type": "t5gemma", "encoder": g, "decoder": g, "vocab_size": 384});
    let t5_path = tmp.path().join("t5.json");
    std::fs::write(&t5_path, t5.to_string()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(["sweep", "models/t5gemma.edl", "--hf-config"])
        .arg(&t5_path)
        .args([
            "--grid",
            "decoder.num_hidden_layers=1,2",
            "--src-len",
            "8",
            "--new-tokens",
            "2",
        ])
        .args(["--iters", "1", "--train"])
        .arg(&run)
        .args(["--train-steps", "3", "--out"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = variants(&dir);
    assert_eq!(v.len(), 2);
    for x in &v {
        let loss = x["loss"].as_f64().expect("a loss per variant");
        // Three steps from random weights: about ln(384) = 5.95 nats per byte.
        assert!(loss > 3.0 && loss < 6.5, "{x}");
    }
    let plot = std::fs::read_to_string(dir.join("loss_vs_decode_latency.svg")).unwrap();
    assert!(plot.contains("Pareto front"));
}
