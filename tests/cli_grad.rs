//! `encdecc grad` end to end: the written file holds `loss` and every HF gradient, equal to
//! torch's on an unseen case; broken requests fail with a clear message.

mod common;
use common::*;
use std::process::Command;

fn encdecc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(args)
        .output()
        .expect("spawn encdecc")
}

#[test]
fn writes_every_gradient_under_hf_names() {
    let dir = fixture("t5g-odd");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grads.safetensors");
    let o = encdecc(&[
        "grad",
        root().join("models/t5gemma.edl").to_str().unwrap(),
        "--hf",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = read_all(&out);
    let want = read_all(&dir.join("grads.safetensors"));
    assert_eq!(got.len(), want.len() + 1, "every gradient plus `loss`");
    let loss = read_all(&dir.join("outputs.safetensors"))["loss"].to_f64()[0];
    assert!((got["loss"].to_f64()[0] - loss).abs() <= 1e-4);
    for (name, w) in &want {
        let d = max_abs_diff(name, &got[name], w);
        assert!(d <= 1e-4 * max_abs(w), "`{name}` differs by {d:e}");
    }
}

#[test]
fn inputs_without_labels_are_refused() {
    let dir = fixture("t5gemma-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let no_labels: std::collections::BTreeMap<_, _> =
        inputs.into_iter().filter(|(k, _)| k != "labels").collect();
    let path = tmp.path().join("in.safetensors");
    encdecc_runtime::weights::write_safetensors(&path, &no_labels).unwrap();
    let o = encdecc(&[
        "grad",
        root().join("models/t5gemma.edl").to_str().unwrap(),
        "--hf",
        dir.to_str().unwrap(),
        "--inputs",
        path.to_str().unwrap(),
        "--out",
        tmp.path().join("g.safetensors").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("no `labels`"), "{err}");
    assert!(!tmp.path().join("g.safetensors").exists());
}
