//! A gradient run: the loss and its gradient with respect to every parameter, under the
//! checkpoint names and shapes (what `encdecc grad` writes).

use crate::finite::Checks;
use crate::forward::{check_labels, Backend, REFERENCE_CHECKS};
use crate::interp;
use crate::tensor::Tensor;
use crate::weights::{load_params, TensorFiles};
use encdecc_compiler::autodiff::{differentiate, GradGraph, GradRequest};
use encdecc_compiler::elab::Elaborated;
use std::collections::{BTreeMap, HashMap};

pub struct GradResult {
    /// Every output of the differentiated graph (`loss`, `logits`, …), gradients excluded.
    pub outputs: HashMap<String, Tensor>,
    /// d(loss)/d(parameter) by checkpoint name. A tied parameter appears once, under its
    /// owner's name, and its gradient includes every use (a tied lm head's part included).
    pub grads: BTreeMap<String, Tensor>,
    /// Checkpoint tensors no parameter used.
    pub unexpected: Vec<String>,
}

/// The forward graph of `model` extended with the gradient of `loss` w.r.t. every parameter.
pub fn grad_graph(model: &Elaborated, loss: &str) -> Result<GradGraph, String> {
    if model.graph.output(loss).is_none() {
        return Err(format!(
            "the model computes no `{loss}` with these inputs (a loss needs `labels`)"
        ));
    }
    differentiate(
        &model.graph,
        &GradRequest {
            loss: loss.into(),
            wrt: None,
        },
    )
}

/// Runs the loss and its gradients with weights from `files`.
pub fn run_grad(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
) -> Result<GradResult, String> {
    run_grad_with(model, files, inputs, backend, Checks::default())
}

/// `run_grad` with `checks` (the reference backend always checks finiteness).
pub fn run_grad_with(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
    checks: Checks,
) -> Result<GradResult, String> {
    check_labels(&model.graph, inputs)?;
    let gg = grad_graph(model, "loss")?;
    let (params, unexpected) = load_params(files, &model.params)?;
    let mut outputs = match backend {
        Backend::Reference => {
            interp::run_with(&gg.graph, &params, inputs, REFERENCE_CHECKS)?.into_result()?
        }
        Backend::Cpu => {
            let mut m = crate::cpu::prepare(&gg.graph)?;
            m.checks = checks;
            m.run(&params, inputs)?
        }
        Backend::Cuda => {
            let mut m = crate::cuda::prepare(&gg.graph)?;
            m.set_checks(checks);
            m.upload_params(&params)?;
            m.run(inputs)?
        }
    };
    let mut grads = BTreeMap::new();
    for p in &model.params {
        let name = encdecc_compiler::autodiff::grad_output(&p.path);
        let t = outputs
            .remove(&name)
            .ok_or_else(|| format!("internal: no gradient computed for `{}`", p.path))?;
        grads.insert(p.ckpt.clone(), t);
    }
    Ok(GradResult {
        outputs,
        grads,
        unexpected,
    })
}
