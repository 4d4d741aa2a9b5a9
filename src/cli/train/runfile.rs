//! The run file of `encdecc train`: one JSON document that says everything about a run, so
//! a run is reproducible from the file alone. Paths are relative to the run file.

use encdecc_runtime::data::{CorpusConfig, ObjectiveConfig};
use encdecc_runtime::tokenizer::TokenizerConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// The model source (`models/gemma2.edl`, `models/t5gemma.edl`).
    pub model: PathBuf,
    /// A preset of the model file, or an HF config.json (`config`); with `init.kind = "hf"`
    /// the config comes from that directory.
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// `KEY=VALUE` overrides, as `--set`.
    #[serde(default)]
    pub set: Vec<String>,
    pub init: Init,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    pub corpus: CorpusConfig,
    /// The training objective and its batching (`{"objective": "prefix_lm", …}`).
    pub objective: ObjectiveConfig,
    #[serde(default)]
    pub teacher: Option<Teacher>,
    pub steps: u64,
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Training phases; by default the ones `encdecc adapt` recorded in the initial
    /// directory's `adapt.json`, else one phase training everything.
    #[serde(default)]
    pub phases: Option<Vec<Phase>>,
    #[serde(default)]
    pub eval: Eval,
    /// Steps between checkpoints (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// `cpu`, `reference` or `cuda`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// `f32`, or `bf16` (the cuda backend only): bf16 compute with f32 accumulation, f32
    /// master weights and optimizer state.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_dtype() -> String {
    "f32".into()
}

fn default_backend() -> String {
    "cpu".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Init {
    /// Fresh weights: N(0, std) matrices, zero norm scales.
    Random {
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_std")]
        std: f64,
    },
    /// An HF model directory (a checkpoint, or what `encdecc adapt` wrote).
    Hf { dir: PathBuf },
}

fn default_std() -> f64 {
    0.02
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teacher {
    pub model: PathBuf,
    /// HF directory with the teacher's config.json and weights.
    pub dir: PathBuf,
    #[serde(default = "one")]
    pub temperature: f64,
    /// Keep the teacher's k most likely tokens (renormalised); all when absent.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Weight of the distillation term against the label loss.
    #[serde(default = "one")]
    pub alpha: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Optimizer {
    pub lr: f64,
    pub warmup_steps: u64,
    /// `constant`, `linear` or `cosine`.
    pub decay: String,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for Optimizer {
    fn default() -> Optimizer {
        Optimizer {
            lr: 1e-3,
            warmup_steps: 0,
            decay: "cosine".into(),
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    #[serde(default)]
    pub steps: Option<u64>,
    /// Name patterns (`model.decoder.layers.{i}.cross_attn.*`; `*` alone is everything).
    pub trainable: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Eval {
    /// Steps between evaluations (0: only at the end).
    pub every: u64,
    /// Held-out batches per evaluation. Default 4.
    pub batches: Option<usize>,
    /// The held-out task; by default the training objective. A decoder-only model given a
    /// `prefix_lm` task is scored on the same target tokens with the prefix in context.
    pub objective: Option<ObjectiveConfig>,
}

impl RunFile {
    pub fn load(path: &Path) -> Result<RunFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("error: cannot read run file `{}`: {e}", path.display()))?;
        RunFile::parse(&text, path)
    }

    /// A run file from its text; `path` names it in errors and anchors its relative paths.
    /// Any text gives a run file or an error, never a panic (fuzzed:
    /// `fuzz/fuzz_targets/run_file.rs`).
    pub fn parse(text: &str, path: &Path) -> Result<RunFile, String> {
        let mut r: RunFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "error: {}:{}:{}: {}",
                path.display(),
                e.line(),
                e.column(),
                e
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut r.model);
        if let Some(c) = &mut r.config {
            fix(c);
        }
        if let Init::Hf { dir } = &mut r.init {
            fix(dir);
        }
        if let TokenizerConfig::Hf { path } = &mut r.tokenizer {
            fix(path);
        }
        fix(&mut r.corpus.path);
        if let Some(t) = &mut r.teacher {
            fix(&mut t.model);
            fix(&mut t.dir);
        }
        if r.steps == 0 {
            return Err(format!(
                "error: {}: `steps` must be at least 1",
                path.display()
            ));
        }
        Ok(r)
    }
}
