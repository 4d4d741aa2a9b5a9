//! `encdecc generate`: KV-cached generation on HF weights, as HF `generate` (greedy or
//! sampled), from token ids in a safetensors file or from a text prompt.

use super::common::{parse_dtype, read_json, CheckArgs, ModelArgs};
use clap::Args;
use encdecc_compiler::elab::{ElabOptions, Value};
use encdecc_dsl::load_program;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::generate::sampling::Sampling;
use encdecc_runtime::generate::{elaborate_generation, GenerateOptions, Generator};
use encdecc_runtime::tokenizer::{Tokenizer, TokenizerConfig};
use encdecc_runtime::weights::{load_params_as, write_safetensors, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Encoder inputs under HF names: `input_ids` [B, S] and optionally `attention_mask`.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub inputs: Option<PathBuf>,
    /// Text mode: the encoder input as text (batch 1), through `--tokenizer`.
    #[arg(long)]
    pub prompt: Option<String>,
    /// An HF `tokenizer.json` for `--prompt` (default: DIR/tokenizer.json when present,
    /// else the built-in byte-level tokenizer).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub max_new_tokens: usize,
    /// Stop a row at this token (repeatable; default: the generation config's / model config's).
    #[arg(long = "eos-token-id", value_name = "ID")]
    pub eos_token_id: Vec<i64>,
    /// Sample instead of greedy decoding (HF defaults: temperature 1, top-k 50, top-p 1).
    #[arg(long)]
    pub do_sample: bool,
    #[arg(long, default_value_t = 1.0, requires = "do_sample")]
    pub temperature: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 50, requires = "do_sample")]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0, requires = "do_sample")]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write `sequences` (int64 [B, 1 + new tokens], start token included).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// `f32`, or `bf16`: bf16 weights and matmul operands with f32 accumulation (on cpu
    /// and reference the weights are loaded as bf16: half the memory and bytes per token).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<(), String> {
    let backend = Backend::parse(&a.backend).map_err(|e| format!("error: {e}"))?;
    let precision = parse_dtype(&a.dtype)?;
    let hf = a
        .model
        .hf
        .clone()
        .ok_or("error: `generate` needs --hf DIR (an HF model directory)")?;
    if !hf.is_dir() {
        return Err(format!(
            "error: `{}` is not a directory (expected an HF model directory)",
            hf.display()
        ));
    }
    let tokenizer = match &a.prompt {
        Some(_) => Some(load_tokenizer(a.tokenizer.as_deref(), &hf)?),
        None => None,
    };
    let (input_ids, attention_mask) = match (&a.inputs, &a.prompt, &tokenizer) {
        (Some(path), _, _) => read_inputs(path)?,
        (None, Some(text), Some(tok)) => {
            let ids = tok.encode(text).map_err(|e| format!("error: {e}"))?;
            if ids.is_empty() {
                return Err("error: --prompt encodes to no tokens".into());
            }
            (Tensor::i64(vec![1, ids.len()], ids), None)
        }
        _ => return Err("error: `generate` needs --inputs FILE or --prompt TEXT".into()),
    };

    let models = build_generation(&a.model)?;
    let mut generator = Generator::with_precision(&models, backend, precision)
        .map_err(|e| format!("error: {e}"))?;
    generator.set_checks(a.checks.checks());
    let gen_config = read_generation_config(&hf)?;
    let config = &models.step.config;
    let eos = if a.eos_token_id.is_empty() {
        token_ids(gen_config.get("eos_token_id"))
            .or_else(|| token_ids(config_field(config, "eos_token_id").as_ref()))
            .unwrap_or_default()
    } else {
        a.eos_token_id.clone()
    };
    let id_of = |key: &str| -> Result<i64, String> {
        token_ids(gen_config.get(key))
            .or_else(|| token_ids(config_field(config, key).as_ref()))
            .and_then(|v| v.first().copied())
            .ok_or(format!(
                "error: neither the generation config nor the model config gives `{key}`"
            ))
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        eos_token_ids: eos,
        pad_token_id: id_of("pad_token_id")?,
        decoder_start_token_id: id_of("decoder_start_token_id")?,
        sampling: a.do_sample.then(|| Sampling {
            temperature: a.temperature,
            top_k: (a.top_k > 0).then_some(a.top_k),
            top_p: (a.top_p < 1.0).then_some(a.top_p),
            seed: a.seed,
        }),
        keep_logits: false,
    };
    let files = TensorFiles::open_dir(&hf)
        .map_err(|e| format!("error: {e}"))?
        .allow_non_finite(a.model.allow_non_finite);
    let (params, _) = load_params_as(&files, &models.step.params, &generator.stored())
        .map_err(|e| format!("error: {e}"))?;
    let g = generator
        .generate(&params, &input_ids, attention_mask.as_ref(), &opts)
        .map_err(|e| format!("error: {e}"))?;
    let seqs = g.sequences.clone();
    let out = BTreeMap::from([("sequences".to_string(), g.sequences)]);
    write_safetensors(&a.out, &out).map_err(|e| format!("error: {e}"))?;
    let rows: Vec<&[i64]> = seqs.as_i64().expect("i64").chunks(seqs.shape[1]).collect();
    let texts: Option<Vec<String>> = match &tokenizer {
        Some(t) => Some(
            rows.iter()
                .map(|r| t.decode(&r[1..]))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("error: {e}"))?,
        ),
        None => None,
    };
    let decode_ms: f64 = g.step_ms.iter().sum();
    let steps = g.step_ms.len();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "sequences": rows,
                "text": texts,
                "out": a.out,
                "encode_ms": g.encode_ms,
                "decode_ms_per_token": decode_ms / steps.max(1) as f64,
                "steps": steps,
            })
        );
    } else {
        println!(
            "wrote sequences {:?} to {} (encode {:.1} ms, {steps} steps, {:.2} ms per token)",
            seqs.shape,
            a.out.display(),
            g.encode_ms,
            decode_ms / steps.max(1) as f64
        );
        for (i, r) in rows.iter().enumerate() {
            match &texts {
                Some(t) => println!("[{i}] {:?}", t[i]),
                None => println!("[{i}] {r:?}"),
            }
        }
    }
    Ok(())
}

/// Elaborates the model's `cross_kv` and `decode_step` entries, errors rendered.
pub(super) fn build_generation(
    m: &ModelArgs,
) -> Result<encdecc_runtime::generate::GenModels, String> {
    let hf_config = match (&m.hf_config, &m.hf) {
        (Some(p), _) => Some(read_json(p)?),
        (None, Some(dir)) => Some(read_json(&dir.join("config.json"))?),
        (None, None) => None,
    };
    let prog = load_program(&m.model).map_err(|(sources, d)| d.render(&sources))?;
    let opts = ElabOptions {
        model: m.model_name.clone(),
        preset: m.preset.clone(),
        hf_config,
        sets: m.sets.clone(),
        ..Default::default()
    };
    elaborate_generation(&prog, &opts).map_err(|d| d.render(&prog.sources))
}

fn read_inputs(path: &Path) -> Result<(Tensor, Option<Tensor>), String> {
    let f = TensorFiles::open(path).map_err(|e| format!("error: {e}"))?;
    let get = |name: &str| -> Result<Option<Tensor>, String> {
        let t = f.get(name).map_err(|e| format!("error: {e}"))?;
        match t {
            Some(t) if t.as_i64().is_none() => Err(format!(
                "error: input `{name}` in `{}` is {}, expected an integer tensor (int32 or int64)",
                path.display(),
                t.dtype_name()
            )),
            t => Ok(t),
        }
    };
    let ids = get("input_ids")?.ok_or(format!(
        "error: `{}` has no `input_ids` (it holds: {})",
        path.display(),
        f.names().join(", ")
    ))?;
    Ok((ids, get("attention_mask")?))
}

fn load_tokenizer(file: Option<&Path>, hf: &Path) -> Result<Tokenizer, String> {
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| Some(hf.join("tokenizer.json")).filter(|p| p.is_file()));
    let config = match path {
        Some(path) => TokenizerConfig::Hf { path },
        None => TokenizerConfig::default(),
    };
    Tokenizer::load(&config).map_err(|e| format!("error: {e}"))
}

fn read_generation_config(hf: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let p = hf.join("generation_config.json");
    if !p.is_file() {
        return Ok(Default::default());
    }
    match read_json(&p)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(format!("error: `{}` is not a JSON object", p.display())),
    }
}

/// A token id or a list of them, from JSON.
fn token_ids(v: Option<&serde_json::Value>) -> Option<Vec<i64>> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64().map(|x| vec![x]),
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_i64()).collect(),
        _ => None,
    }
}

/// A top-level field of the resolved model config, as JSON.
fn config_field(config: &Value, name: &str) -> Option<serde_json::Value> {
    let Value::Record(r) = config else {
        return None;
    };
    match r.get(name)? {
        Value::Int(n) => Some((*n).into()),
        Value::List(l) => l
            .iter()
            .map(|x| match x {
                Value::Int(n) => Some(serde_json::Value::from(*n)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(serde_json::Value::Array),
        _ => None,
    }
}
