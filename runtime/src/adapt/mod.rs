//! Applying an adaptation plan (`encdecc_compiler::adapt::Plan`) to checkpoints: source
//! inventories for planning, then `model.safetensors` written tensor by tensor (copies are
//! bitwise, fresh tensors seeded per name), `config.json`, and `adapt.json` (what was done,
//! and the training phases). Sources are only read.

pub mod config;
pub mod init;
pub mod write;

use crate::weights::{write_atomic, TensorFiles};
use encdecc_compiler::adapt::{Plan, SourceInventory, SourceTensor, TensorInit};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// What a source checkpoint holds, for planning.
pub fn inventory(role: &str, origin: &Path, files: &TensorFiles) -> SourceInventory {
    let tensors = files
        .names()
        .into_iter()
        .filter_map(|n| {
            let (dtype, shape, _) = files.raw(&n)?;
            let t = SourceTensor {
                shape: shape.iter().map(|&d| d as u64).collect(),
                dtype: format!("{dtype:?}"),
            };
            Some((n, t))
        })
        .collect();
    SourceInventory {
        role: role.to_string(),
        origin: origin.display().to_string(),
        tensors,
    }
}

/// How far writing has got, for progress output.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub tensors_done: usize,
    pub tensors: usize,
    pub bytes_done: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub tensors: usize,
    pub copied: usize,
    pub fresh: usize,
    pub bytes: u64,
}

/// The run's settings beyond the plan.
pub struct ApplyOptions<'a> {
    /// Seeds every fresh tensor (with its name).
    pub seed: u64,
    /// The source checkpoints by role.
    pub sources: &'a [(String, &'a TensorFiles)],
    /// Called after each tensor.
    pub progress: &'a mut dyn FnMut(Progress),
}

/// Writes `out/model.safetensors` from the plan. Tensors are sorted by name in the file.
pub fn write_weights(plan: &Plan, out: &Path, opts: ApplyOptions) -> Result<Summary, String> {
    let dtype = parse_dtype(&plan.dtype)?;
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by(|&a, &b| plan.tensors[a].name.cmp(&plan.tensors[b].name));
    let entries: Vec<write::Entry> = order
        .iter()
        .map(|&k| {
            let t = &plan.tensors[k];
            write::Entry {
                name: t.name.clone(),
                dtype,
                shape: t.shape.iter().map(|&d| d as usize).collect(),
            }
        })
        .collect();
    let total: u64 = entries.iter().map(|e| e.bytes()).sum();
    let mut w = write::Writer::create(&out.join("model.safetensors"), &entries)?;
    let mut summary = Summary {
        tensors: entries.len(),
        bytes: total,
        ..Summary::default()
    };
    let mut done = 0u64;
    for (n, (&k, e)) in order.iter().zip(&entries).enumerate() {
        let t = &plan.tensors[k];
        match &t.init {
            TensorInit::Copy { role, name } => {
                let files = opts
                    .sources
                    .iter()
                    .find(|(r, _)| r == role)
                    .map(|(_, f)| *f)
                    .ok_or(format!("no checkpoint for source `{role}`"))?;
                let (dt, shape, bytes) = files.raw(name).ok_or(format!(
                    "source tensor `{name}` disappeared from the `{role}` checkpoint"
                ))?;
                // The plan checked these against the same files; a change since is a race.
                if dt != dtype || shape != e.shape {
                    return Err(format!(
                        "source tensor `{name}` of the `{role}` checkpoint changed while adapting"
                    ));
                }
                w.tensor(bytes)?;
                summary.copied += 1;
            }
            init => {
                let numel = e.shape.iter().product();
                let values = init::fresh(init, &t.name, numel, opts.seed).expect("not a copy");
                w.tensor(&encode(&values, dtype))?;
                summary.fresh += 1;
            }
        }
        done += e.bytes();
        (opts.progress)(Progress {
            tensors_done: n + 1,
            tensors: entries.len(),
            bytes_done: done,
            bytes: total,
        });
    }
    w.finish()?;
    Ok(summary)
}

/// `config.json`, atomically, as transformers writes it (indent 2, newline at the end).
pub fn write_config(out: &Path, config: &serde_json::Value) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(config).expect("JSON");
    text.push('\n');
    write_atomic(&out.join("config.json"), text.as_bytes())
}

/// `adapt.json`: the rules used, the sources, the seed, how each tensor was made and the
/// training phases, so that a trainer resuming from this directory knows what to freeze.
pub fn manifest(
    plan: &Plan,
    rules_file: &str,
    sources: &[(String, String)],
    seed: u64,
) -> serde_json::Value {
    let tensors: BTreeMap<&str, String> = plan
        .tensors
        .iter()
        .map(|t| {
            let how = match &t.init {
                TensorInit::Copy { role, name } => format!("{role}:{name}"),
                TensorInit::Normal { mean, std } => format!("normal(std: {std}, mean: {mean})"),
                TensorInit::Zeros => "zeros()".into(),
                TensorInit::Ones => "ones()".into(),
            };
            (t.name.as_str(), how)
        })
        .collect();
    let sources: BTreeMap<&str, &str> = sources
        .iter()
        .map(|(r, d)| (r.as_str(), d.as_str()))
        .collect();
    serde_json::json!({
        "adapt": plan.adapt,
        "model": plan.model,
        "rules_file": rules_file,
        "sources": sources,
        "seed": seed,
        "dtype": plan.dtype,
        "phases": plan.phases.to_json(),
        "tensors": tensors,
    })
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    Ok(match s {
        "F32" => Dtype::F32,
        "BF16" => Dtype::BF16,
        "F16" => Dtype::F16,
        other => return Err(format!("cannot write tensors of dtype {other}")),
    })
}

/// f32 values in the output dtype (round to nearest even for the 16-bit ones).
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
