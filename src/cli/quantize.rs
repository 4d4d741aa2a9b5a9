//! `encdecc quantize`: an HF checkpoint rewritten with its matmul weights stored in bf16
//! or int8 (per-row scales beside them, `<name>_scale`), as the host backends' `--dtype`
//! lowering reads them: `run`/`generate --dtype int8 --hf OUT` then load it directly,
//! without an f32 copy or quantising again.

use super::common::{build, hf_dir, parse_dtype, ModelArgs};
use clap::Args;
use encdecc_compiler::precision::{lower, scale_path, Precision};
use encdecc_runtime::weights::{load_params_as, write_atomic, write_safetensors, TensorFiles};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// `int8` (weight-only, symmetric per row) or `bf16`.
    #[arg(long)]
    pub dtype: String,
    /// The output directory: `model.safetensors` and the source's config files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Files of an HF model directory that travel with its weights.
const CONFIG_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub fn quantize(a: QuantizeArgs) -> Result<(), String> {
    let precision = parse_dtype(&a.dtype)?;
    if precision == Precision::F32 {
        return Err(
            "error: --dtype f32 leaves the checkpoint as it is; quantize writes int8 or bf16"
                .into(),
        );
    }
    let hf = hf_dir(&a.model, "quantize")?;
    if same_dir(&hf, &a.out) {
        return Err(format!(
            "error: --out `{}` is the source directory; quantize writes a new one",
            a.out.display()
        ));
    }
    let mut model = build(&a.model, None, None, false)?;
    let lowered = lower(&mut model.graph, precision);
    if lowered.stored.is_empty() {
        return Err(format!(
            "error: `{}` has no matmul weights to store in {}",
            model.model,
            precision.name()
        ));
    }
    let stored: HashMap<String, _> = lowered.stored.into_iter().collect();
    let files = TensorFiles::open_dir(&hf)
        .map_err(|e| format!("error: {e}"))?
        .allow_non_finite(a.model.allow_non_finite);
    let (mut params, unexpected) =
        load_params_as(&files, &model.params, &stored).map_err(|e| format!("error: {e}"))?;
    // Checkpoint names: every param under its own, an int8 weight's scales beside it.
    let mut out = BTreeMap::new();
    for p in &model.params {
        if let Some(t) = params.remove(&p.path) {
            out.insert(p.ckpt.clone(), t);
        }
        if let Some(s) = params.remove(&scale_path(&p.path)) {
            out.insert(scale_path(&p.ckpt), s);
        }
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("error: cannot create `{}`: {e}", a.out.display()))?;
    for name in CONFIG_FILES {
        let src = hf.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src)
                .map_err(|e| format!("error: cannot read `{}`: {e}", src.display()))?;
            write_atomic(&a.out.join(name), &bytes).map_err(|e| format!("error: {e}"))?;
        }
    }
    write_safetensors(&a.out.join("model.safetensors"), &out).map_err(|e| format!("error: {e}"))?;
    let bytes: u64 = out
        .values()
        .map(|t| {
            let dtype = encdecc_compiler::ir::DType::from_name(t.dtype_name());
            t.numel() as u64 * dtype.map_or(4, |d| d.bytes())
        })
        .sum();
    println!(
        "{} tensors ({} stored in {}) written to {} ({:.1} MB){}",
        out.len(),
        stored.len(),
        precision.name(),
        a.out.join("model.safetensors").display(),
        bytes as f64 / 1e6,
        match unexpected.len() {
            0 => String::new(),
            n => format!("; {n} tensor(s) of the source that no parameter uses were left out"),
        }
    );
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
