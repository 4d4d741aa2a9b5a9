//! What several commands share: model selection flags and loading + elaboration with
//! code-framed diagnostics.

use clap::Args;
use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated};
use encdecc_dsl::load_program;
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
