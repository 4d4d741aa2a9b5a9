//! `encdecc grad`: the loss and its gradient with respect to every parameter, written under
//! the HF names and shapes.

use super::common::{build, check_input_dtypes, hf_dir, read_inputs, CheckArgs, ModelArgs};
use clap::Args;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::grad::run_grad_with;
use encdecc_runtime::weights::{write_safetensors, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct GradArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Inputs under HF names, `labels` included (int32 or int64).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Where to write `loss` and one gradient per parameter (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// `cpu` (fused, JIT-compiled) or `reference` (the interpreter, the oracle).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn grad(a: GradArgs) -> Result<(), String> {
    let backend = Backend::parse(&a.backend).map_err(|e| format!("error: {e}"))?;
    let hf = hf_dir(&a.model, "grad")?;
    let inputs = read_inputs(&a.inputs)?;
    if !inputs.contains_key("labels") {
        return Err(format!(
            "error: `{}` has no `labels`: the gradient is that of the loss, which needs labels",
            a.inputs.display()
        ));
    }
    let names: Vec<String> = inputs.keys().cloned().collect();
    let model = build(&a.model, None, Some(names), false)?;
    check_input_dtypes(&model, &inputs, &a.inputs)?;
    let weights = TensorFiles::open_dir(&hf)
        .map_err(|e| format!("error: {e}"))?
        .allow_non_finite(a.model.allow_non_finite);
    let r = run_grad_with(&model, &weights, &inputs, backend, a.checks.checks())
        .map_err(|e| format!("error: {e}"))?;
    if !r.unexpected.is_empty() {
        eprintln!(
            "warning: {} checkpoint tensor(s) not used by the model: {}",
            r.unexpected.len(),
            r.unexpected.join(", ")
        );
    }
    let loss = r.outputs["loss"].clone();
    let mut out: BTreeMap<String, Tensor> = r.grads;
    let norm = out
        .values()
        .flat_map(|t| t.to_f64())
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt();
    let count = out.len();
    out.insert("loss".into(), loss.clone());
    write_safetensors(&a.out, &out).map_err(|e| format!("error: {e}"))?;
    let l = loss.to_f64()[0];
    if a.json {
        println!(
            "{}",
            serde_json::json!({"loss": l, "gradients": count, "grad_norm": norm, "out": a.out})
        );
    } else {
        println!(
            "loss {l:.6}; wrote {count} gradients (global norm {norm:.6}) to {}",
            a.out.display()
        );
    }
    Ok(())
}
