//! Helpers shared by the end-to-end tests: fixture paths, compiling a model for a fixture
//! case and running it on the reference interpreter.
#![allow(dead_code)]

pub mod cli;
pub mod skip;

use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated};
use encdecc_dsl::load_program;
use encdecc_runtime::forward::{run_forward, Backend};
use encdecc_runtime::weights::TensorFiles;
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture case: the shared HF fixtures, or the extra ones (`hf-extra`, same format,
/// other dimensions) generated with the same script.
pub fn fixture(case: &str) -> PathBuf {
    let main = root().join("tests/fixtures/hf").join(case);
    if main.exists() {
        main
    } else {
        root().join("tests/fixtures/hf-extra").join(case)
    }
}

/// The model source that reads an HF config of this `model_type`.
pub fn model_for(dir: &Path) -> PathBuf {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    match cfg["model_type"].as_str() {
        Some("gemma2") => root().join("models/gemma2.edl"),
        _ => root().join("models/t5gemma.edl"),
    }
}

pub fn read_all(path: &Path) -> HashMap<String, Tensor> {
    let f = TensorFiles::open(path).unwrap();
    f.names()
        .into_iter()
        .map(|n| (n.clone(), f.get(&n).unwrap().unwrap()))
        .collect()
}

pub fn compile(
    dir: &Path,
    sets: &[&str],
    inputs: &HashMap<String, Tensor>,
    probes: bool,
) -> Elaborated {
    let prog = load_program(&model_for(dir)).unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
    let cfg =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let opts = ElabOptions {
        hf_config: Some(cfg),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        inputs: Some(inputs.keys().cloned().collect()),
        probes,
        ..ElabOptions::default()
    };
    elaborate(&prog, &opts).unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)))
}

/// Compiles the model for `dir`'s config and runs it on `inputs` with the reference backend.
pub fn run_case(
    dir: &Path,
    sets: &[&str],
    inputs: &HashMap<String, Tensor>,
) -> HashMap<String, Tensor> {
    run_case_on(dir, sets, inputs, Backend::Reference)
}

pub fn run_case_on(
    dir: &Path,
    sets: &[&str],
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
) -> HashMap<String, Tensor> {
    let model = compile(dir, sets, inputs, true);
    let weights = TensorFiles::open_dir(dir).unwrap();
    run_forward(&model, &weights, inputs, backend)
        .unwrap()
        .outputs
}

/// Largest absolute difference, after checking shapes agree.
pub fn max_abs_diff(name: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    got.to_f64()
        .iter()
        .zip(want.to_f64())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.to_f64().iter().fold(0.0, |m, x| m.max(x.abs()))
}
