//! A forward run: compile a model for the inputs at hand, load its weights, execute.

use crate::interp;
use crate::tensor::Tensor;
use crate::weights::{load_params, TensorFiles};
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::elab::Elaborated;
use std::collections::HashMap;

/// Which executor runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Reference,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s {
            "reference" => Ok(Backend::Reference),
            "cpu" | "cuda" => Err(format!(
                "backend `{s}` is not built yet; use --backend reference"
            )),
            other => Err(format!("unknown backend `{other}` (backends: reference)")),
        }
    }
}

pub struct RunResult {
    pub outputs: HashMap<String, Tensor>,
    /// Checkpoint tensors no parameter used.
    pub unexpected: Vec<String>,
}

/// Runs an elaborated graph with weights from `files`.
pub fn run_forward(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
) -> Result<RunResult, String> {
    let (params, unexpected) = load_params(files, &model.params)?;
    let mut g = model.graph.clone();
    decompose(&mut g)?;
    let outputs = match backend {
        Backend::Reference => interp::run(&g, &params, inputs)?,
    };
    Ok(RunResult {
        outputs,
        unexpected,
    })
}
