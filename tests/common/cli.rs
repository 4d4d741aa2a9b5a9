//! Helpers shared by the tests of the `encdecc` binary: running it and asserting how it
//! exits, and building broken inputs as edited copies of the HF fixtures in a temp dir.

use super::root;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A case of the shared HF fixtures (`tests/fixtures/hf`).
pub fn hf_fixture(case: &str) -> PathBuf {
    root().join("tests/fixtures/hf").join(case)
}

/// The path of a model source in `models/`, as an argument.
pub fn model(name: &str) -> String {
    root().join("models").join(name).display().to_string()
}

/// A path as an argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// Runs the binary; returns its output and a description of the run (the command line, exit
/// code, stderr and stdout), also printed (shown with `--nocapture`, to read every message
/// at once).
pub fn encdecc(args: &[String]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(args)
        .output()
        .expect("spawn encdecc");
    let ctx = format!(
        "encdecc {}\n--- exit: {:?}\n--- stderr:\n{}\n--- stdout:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    println!("{ctx}");
    (out, ctx)
}

/// Runs the binary; asserts a non-zero exit code (not a signal: no abort), no panic, and
/// that stderr contains every expected substring.
pub fn check(args: &[String], expect: &[&str]) {
    let (out, ctx) = encdecc(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "expected a failing exit code\n{ctx}"
    );
    assert!(!stderr.contains("panicked"), "panicked\n{ctx}");
    for e in expect {
        assert!(stderr.contains(e), "stderr lacks {e:?}\n{ctx}");
    }
}

/// Runs the binary; asserts it succeeds.
pub fn succeeds(args: &[String]) {
    let (out, ctx) = encdecc(args);
    assert!(out.status.success(), "expected success\n{ctx}");
}

/// A temp copy of a fixture directory (config.json, model.safetensors, inputs.safetensors).
pub fn copy_fixture(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "inputs.safetensors"] {
        std::fs::copy(hf_fixture(case).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// One tensor of a safetensors file: name, dtype, shape and raw bytes.
pub type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors file, by name.
pub fn read_entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn write_entries(path: &Path, entries: &[Entry]) {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, dt, sh, b)| (n.clone(), TensorView::new(*dt, sh.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// Rewrites one safetensors file in place through `edit`.
pub fn edit_tensors(path: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let mut e = read_entries(path);
    edit(&mut e);
    write_entries(path, &e);
}

pub fn find<'a>(e: &'a mut [Entry], name: &str) -> &'a mut Entry {
    e.iter_mut()
        .find(|x| x.0 == name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}
