//! What several commands share: model selection flags and loading + elaboration with
//! code-framed diagnostics.

use clap::Args;
use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated};
use encdecc_dsl::load_program;
use encdecc_runtime::weights::TensorFiles;
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// The model source (`models/t5gemma.edl`, …).
    pub model: PathBuf,
    /// A preset of the model file (`s-s`, `2b-2b`, …).
    #[arg(long)]
    pub preset: Option<String>,
    /// Override a config field, e.g. `--set encoder.num_hidden_layers=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Read the config from an HF `config.json`.
    #[arg(long, value_name = "FILE")]
    pub hf_config: Option<PathBuf>,
    /// An HF model directory: its config.json (and, for `run`, model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub hf: Option<PathBuf>,
    /// Which model of the file, when it has several.
    #[arg(long = "model-name")]
    pub model_name: Option<String>,
    /// The entry point to compile (`forward`, `encode`, …).
    #[arg(long, default_value = "forward")]
    pub entry: String,
    /// Load weights that hold NaN or ±Inf (by default an error naming the tensor and index).
    #[arg(long)]
    pub allow_non_finite: bool,
}

pub fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("error: cannot read `{}`: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("error: `{}` is not valid JSON: {e}", path.display()))
}

/// Loads and elaborates a model; errors come back rendered with code frames.
pub fn build(
    m: &ModelArgs,
    hf_config: Option<serde_json::Value>,
    inputs: Option<Vec<String>>,
    probes: bool,
) -> Result<Elaborated, String> {
    let hf_config = match (hf_config, &m.hf_config) {
        (Some(j), _) => Some(j),
        (None, Some(p)) => Some(read_json(p)?),
        (None, None) => match &m.hf {
            Some(dir) => Some(read_json(&dir.join("config.json"))?),
            None => None,
        },
    };
    let prog = load_program(&m.model).map_err(|(sources, d)| d.render(&sources))?;
    let opts = ElabOptions {
        model: m.model_name.clone(),
        preset: m.preset.clone(),
        hf_config,
        sets: m.sets.clone(),
        entry: Some(m.entry.clone()),
        inputs,
        probes,
    };
    elaborate(&prog, &opts).map_err(|d| d.render(&prog.sources))
}

/// Reads an inputs file (safetensors: `input_ids`, `attention_mask`, `labels`, …).
pub fn read_inputs(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let files = TensorFiles::open(path).map_err(|e| format!("error: {e}"))?;
    let mut inputs = HashMap::new();
    for name in files.names() {
        let t = files
            .get(&name)
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: `{name}` vanished from `{}`", path.display()))?;
        inputs.insert(name, t);
    }
    Ok(inputs)
}

/// Integer inputs of the model must come as integer tensors.
pub fn check_input_dtypes(
    model: &Elaborated,
    inputs: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), String> {
    for info in &model.inputs {
        if let Some(t) = inputs.get(&info.name) {
            if t.as_i64().is_none() && info.ty.dtype == encdecc_compiler::ir::DType::I64 {
                return Err(format!(
                    "error: input `{}` in `{}` is {}, expected an integer tensor (int32 or int64)",
                    info.name,
                    path.display(),
                    t.dtype_name()
                ));
            }
        }
    }
    Ok(())
}

/// An HF model directory given with `--hf`, checked to exist.
pub fn hf_dir(m: &ModelArgs, command: &str) -> Result<PathBuf, String> {
    let hf = m.hf.clone().ok_or(format!(
        "error: `{command}` needs --hf DIR (an HF model directory)"
    ))?;
    if !hf.is_dir() {
        return Err(format!(
            "error: `{}` is not a directory (expected an HF model directory)",
            hf.display()
        ));
    }
    Ok(hf)
}

/// `--dtype`: f32, or bf16 — on cuda bf16 storage with f32 accumulation (weights rounded
/// once when uploaded), on the host a graph lowered to bf16 weights and matmul operands
/// (`encdecc_compiler::precision`); outputs come back as f32 either way.
pub fn parse_dtype(dtype: &str) -> Result<encdecc_runtime::cuda::Precision, String> {
    encdecc_runtime::cuda::Precision::parse(dtype).map_err(|e| format!("error: --dtype: {e}"))
}

/// What a run checks besides the usual (`--check-finite`), flattened into the commands
/// that run a model.
#[derive(Args, Clone, Debug, Default)]
pub struct CheckArgs {
    /// Fail when an output holds a NaN or an infinity, naming the op that first produced
    /// one (slow: every value is scanned, and on cuda the steps run one by one). The
    /// reference backend always checks.
    #[arg(long)]
    pub check_finite: bool,
}

impl CheckArgs {
    pub fn checks(&self) -> encdecc_runtime::finite::Checks {
        encdecc_runtime::finite::Checks {
            finite: self.check_finite,
        }
    }
}
