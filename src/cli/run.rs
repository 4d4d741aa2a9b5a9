//! `encdecc run`: the forward pass on HF weights and inputs.

use super::common::{
    build, check_input_dtypes, hf_dir, parse_dtype, read_inputs, CheckArgs, ModelArgs,
};
use clap::Args;
use encdecc_runtime::forward::{run_forward_opts, Backend, ForwardOptions};
use encdecc_runtime::weights::{write_safetensors, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Inputs under HF names (input_ids, attention_mask, decoder_input_ids, …; int32 or int64).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Where to write the outputs (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// `cpu` (fused, JIT-compiled), `cuda` (an NVIDIA GPU) or `reference` (the
    /// interpreter, the oracle).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// `f32`, or `bf16` (cuda only): activations and GEMM operands stored as bf16, f32
    /// accumulation, outputs written as f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Also write per-layer states and attention masks.
    #[arg(long)]
    pub probes: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RunArgs) -> Result<(), String> {
    let backend = Backend::parse(&a.backend).map_err(|e| format!("error: {e}"))?;
    let precision = parse_dtype(&a.dtype)?;
    let hf = hf_dir(&a.model, "run")?;
    let inputs = read_inputs(&a.inputs)?;
    let names: Vec<String> = inputs.keys().cloned().collect();
    let model = build(&a.model, None, Some(names), a.probes)?;
    check_input_dtypes(&model, &inputs, &a.inputs)?;
    let weights = TensorFiles::open_dir(&hf)
        .map_err(|e| format!("error: {e}"))?
        .allow_non_finite(a.model.allow_non_finite);
    let o = ForwardOptions {
        backend,
        precision,
        checks: a.checks.checks(),
    };
    let r = run_forward_opts(&model, &weights, &inputs, &o).map_err(|e| format!("error: {e}"))?;
    if !r.unexpected.is_empty() {
        eprintln!(
            "warning: {} checkpoint tensor(s) not used by the model: {}",
            r.unexpected.len(),
            r.unexpected.join(", ")
        );
    }
    let outputs: BTreeMap<String, Tensor> = r.outputs.into_iter().collect();
    write_safetensors(&a.out, &outputs).map_err(|e| format!("error: {e}"))?;
    let loss = outputs.get("loss").and_then(|t| t.as_f32()).map(|v| v[0]);
    let argmax = outputs.get("logits").map(argmax_rows);
    if a.json {
        let shapes: BTreeMap<&String, &Vec<usize>> =
            outputs.iter().map(|(k, t)| (k, &t.shape)).collect();
        println!(
            "{}",
            serde_json::json!({"outputs": shapes, "loss": loss, "argmax": argmax, "out": a.out})
        );
    } else {
        println!("wrote {} output(s) to {}", outputs.len(), a.out.display());
        for (k, t) in &outputs {
            println!("  {k:<28} {} {:?}", t.dtype_name(), t.shape);
        }
        if let Some(l) = loss {
            println!("loss {l:.6}");
        }
        if let Some(rows) = argmax {
            for (i, r) in rows.iter().enumerate() {
                println!("argmax[{i}] {r:?}");
            }
        }
    }
    Ok(())
}

/// The most likely token at every position: `[B, T, V]` → B rows of T ids.
fn argmax_rows(t: &Tensor) -> Vec<Vec<usize>> {
    let Some(v) = t.as_f32() else { return vec![] };
    let [b, n, vocab] = t.shape[..] else {
        return vec![];
    };
    (0..b)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let row = &v[(i * n + j) * vocab..(i * n + j + 1) * vocab];
                    row.iter()
                        .enumerate()
                        .fold(0, |best, (k, &x)| if x > row[best] { k } else { best })
                })
                .collect()
        })
        .collect()
}
