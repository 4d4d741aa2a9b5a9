//! `encdecc sweep`: one model variant per point of a grid of config overrides; for each,
//! parameters, FLOPs per token, measured encode and decode latency (KV-cached generation on
//! random weights) and peak memory. Writes `results.csv`, `results.json` and SVG plots;
//! finished variants are recorded in `DIR/variants/` and kept when the sweep is rerun.

mod plot;

use super::common::{read_json, ModelArgs};
use clap::Args;
use encdecc_compiler::summary::{matmul_flops, parameter_count};
use encdecc_runtime::forward::Backend;
use encdecc_runtime::generate::{GenModels, GenerateOptions, Generator};
use encdecc_runtime::rng::Rng;
use encdecc_runtime::weights::write_atomic;
use encdecc_runtime::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A grid axis: a config key as for `--set` and its values (repeatable; the variants are
    /// every combination).
    #[arg(long = "grid", value_name = "KEY=V1,V2,…", required = true)]
    pub grid: Vec<String>,
    /// Where results, plots and the per-variant records go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub src_len: usize,
    #[arg(long, default_value_t = 16)]
    pub new_tokens: usize,
    /// Timed generations per variant (after one warm-up); latencies are their medians.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Generate in `f32` or `bf16` (weights and matmul operands; see `run --dtype`).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also train every variant from random weights as this run file says (its data,
    /// objective, optimizer and evaluation; model and config come from the sweep) and report
    /// its held-out loss.
    #[arg(long, value_name = "RUN.json")]
    pub train: Option<PathBuf>,
    /// Steps of that training per variant.
    #[arg(long, default_value_t = 100)]
    pub train_steps: u64,
}

/// A variant as the training hook sees it: the overrides that define it and its compiled
/// generation entries (config, parameters).
#[allow(dead_code)] // `models` is for hooks that need the compiled entries
pub struct Variant<'a> {
    /// A file-name-safe name of the grid point.
    pub slug: &'a str,
    pub sets: &'a [String],
    pub models: &'a GenModels,
}

/// Held-out loss of a variant after training it; `None` when the sweep does not train.
/// The training option plugs in here: every record gets a `loss` column when it returns one.
pub type LossHook<'a> = &'a dyn Fn(&Variant) -> Result<Option<f64>, String>;

/// No training: no loss column.
pub fn no_training(_: &Variant) -> Result<Option<f64>, String> {
    Ok(None)
}

pub fn sweep(a: SweepArgs) -> Result<(), String> {
    match a.train.clone() {
        None => sweep_with(a, &no_training),
        Some(run) => {
            let (a2, dir) = (a.clone_settings(), a.out.join("variants"));
            sweep_with(a, &|v: &Variant| {
                train_variant(&a2, &run, &dir, v).map(Some)
            })
        }
    }
}

/// What a variant's training needs of the sweep's arguments.
struct TrainSettings {
    model: ModelArgs,
    seed: u64,
    steps: u64,
}

impl SweepArgs {
    fn clone_settings(&self) -> TrainSettings {
        TrainSettings {
            model: self.model.clone(),
            seed: self.seed,
            steps: self.train_steps,
        }
    }
}

/// Trains a variant from random weights with the run file's data and objective; the run's
/// outputs go to `variants/<variant>-train/`. Returns the final held-out loss.
fn train_variant(s: &TrainSettings, run: &Path, dir: &Path, v: &Variant) -> Result<f64, String> {
    use super::train::runfile::{Init, RunFile};
    let mut rf = RunFile::load(run)?;
    rf.model = s.model.model.clone();
    rf.preset = s.model.preset.clone();
    rf.config = s.model.hf_config.clone();
    rf.set = v.sets.to_vec();
    rf.init = Init::Random {
        seed: s.seed,
        std: 0.02,
    };
    let args = super::train::TrainArgs {
        run: run.to_path_buf(),
        out: dir.join(format!("{}-train", v.slug)),
        resume: false,
        steps: Some(s.steps),
        stop_after: None,
        init: None,
        teacher_dir: None,
        allow_non_finite: s.model.allow_non_finite,
        quiet: true,
        checks: Default::default(),
    };
    super::train::run(rf, &args)
}

pub fn sweep_with(a: SweepArgs, loss: LossHook) -> Result<(), String> {
    if a.model.hf.is_some() {
        return Err("error: `sweep` measures random weights; give the config with --hf-config FILE or --preset".into());
    }
    if a.batch == 0 || a.src_len == 0 || a.new_tokens == 0 || a.iters == 0 {
        return Err("error: --batch, --src-len, --new-tokens and --iters must be positive".into());
    }
    let axes = parse_grid(&a.grid)?;
    let base_json = a.model.hf_config.as_deref().map(read_json).transpose()?;
    let variants = combinations(&axes);
    let dir = &a.out;
    std::fs::create_dir_all(dir.join("variants"))
        .map_err(|e| format!("error: cannot create `{}`: {e}", dir.display()))?;
    let settings = json!({
        "model": a.model.model,
        "preset": a.model.preset,
        "hf_config": a.model.hf_config,
        "sets": a.model.sets,
        "batch": a.batch,
        "src_len": a.src_len,
        "new_tokens": a.new_tokens,
        "iters": a.iters,
        "seed": a.seed,
        "train": a.train,
        "train_steps": a.train.as_ref().map(|_| a.train_steps),
    });
    let bar = ProgressBar::new(variants.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let mut records = vec![];
    for point in &variants {
        let name = point
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        bar.set_message(name.clone());
        let file = dir.join("variants").join(format!("{}.json", slug(point)));
        let kept = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|r| r["settings"] == settings);
        let record = match kept {
            Some(r) => r,
            None => {
                let r = measure(&a, point, base_json.as_ref(), &settings, loss)
                    .map_err(|e| format!("{e}\n  (variant {name})"))?;
                let text = serde_json::to_string_pretty(&r).expect("json");
                write_atomic(&file, text.as_bytes()).map_err(|e| format!("error: {e}"))?;
                r
            }
        };
        records.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let keys: Vec<&str> = axes.iter().map(|(k, _)| k.as_str()).collect();
    let has_loss = records.iter().any(|r| r["loss"].is_number());
    let mut columns: Vec<&str> = keys.clone();
    columns.extend([
        "parameters",
        "encode_flops_per_token",
        "decode_flops_per_token",
        "encode_ms",
        "decode_ms_per_token",
        "peak_memory_bytes",
    ]);
    if has_loss {
        columns.push("loss");
    }
    let csv = to_csv(&columns, &records);
    write_atomic(&dir.join("results.csv"), csv.as_bytes()).map_err(|e| format!("error: {e}"))?;
    let all = json!({"settings": settings, "grid": keys, "variants": records});
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&all).expect("json").as_bytes(),
    )
    .map_err(|e| format!("error: {e}"))?;
    let points: Vec<plot::Point> = records
        .iter()
        .map(|r| plot::Point {
            label: keys
                .iter()
                .map(|k| format!("{k}={}", cell(&r[*k])))
                .collect::<Vec<_>>()
                .join(", "),
            parameters: r["parameters"].as_f64().unwrap_or(0.0),
            encode_ms: r["encode_ms"].as_f64().unwrap_or(0.0),
            decode_ms: r["decode_ms_per_token"].as_f64().unwrap_or(0.0),
            loss: r["loss"].as_f64(),
        })
        .collect();
    let mut plots = vec!["latency_vs_parameters.svg"];
    write_atomic(
        &dir.join(plots[0]),
        plot::latency_vs_parameters(&points).as_bytes(),
    )
    .map_err(|e| format!("error: {e}"))?;
    if has_loss {
        plots.push("loss_vs_decode_latency.svg");
        write_atomic(
            &dir.join(plots[1]),
            plot::loss_vs_latency(&points).as_bytes(),
        )
        .map_err(|e| format!("error: {e}"))?;
    }
    println!(
        "{} variant(s) in {}: results.csv, results.json, {}",
        records.len(),
        dir.display(),
        plots.join(", ")
    );
    println!("{csv}");
    Ok(())
}

/// `KEY=V1,V2` → (KEY, [V1, V2]).
fn parse_grid(grid: &[String]) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut axes: Vec<(String, Vec<String>)> = vec![];
    for g in grid {
        let (k, vs) = g.split_once('=').ok_or(format!(
            "error: `--grid {g}`: expected KEY=V1,V2,…, e.g. --grid decoder.num_hidden_layers=2,4"
        ))?;
        let k = k.trim();
        let vs: Vec<String> = vs.split(',').map(|v| v.trim().to_string()).collect();
        if k.is_empty() || vs.iter().any(|v| v.is_empty()) {
            return Err(format!("error: `--grid {g}`: empty key or value"));
        }
        if axes.iter().any(|(a, _)| a == k) {
            return Err(format!("error: `--grid {k}` is given twice"));
        }
        axes.push((k.to_string(), vs));
    }
    Ok(axes)
}

/// Every combination, the first axis varying slowest.
fn combinations(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![vec![]];
    for (k, vs) in axes {
        out = out
            .into_iter()
            .flat_map(|p| {
                vs.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((k.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    out
}

fn slug(point: &[(String, String)]) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `--set`s of a variant. An HF config lists `layer_types` per layer, so a new layer
/// count also gets that list, its pattern repeated (sliding/full as in the config).
fn variant_sets(base: &ModelArgs, point: &[(String, String)], hf: Option<&Value>) -> Vec<String> {
    let mut sets = base.sets.clone();
    for (k, v) in point {
        sets.push(format!("{k}={v}"));
        let Some(stack) = k.strip_suffix(".num_hidden_layers") else {
            continue;
        };
        let types = hf
            .and_then(|j| j.pointer(&format!("/{}/layer_types", stack.replace('.', "/"))))
            .and_then(Value::as_array);
        if let (Some(types), Ok(n)) = (types, v.parse::<usize>()) {
            if !types.is_empty() {
                let list: Vec<Value> = (0..n).map(|i| types[i % types.len()].clone()).collect();
                sets.push(format!("{stack}.layer_types={}", Value::Array(list)));
            }
        }
    }
    sets
}

fn measure(
    a: &SweepArgs,
    point: &[(String, String)],
    hf: Option<&Value>,
    settings: &Value,
    loss: LossHook,
) -> Result<Value, String> {
    reset_peak_rss();
    let mut m = a.model.clone();
    m.sets = variant_sets(&a.model, point, hf);
    let models = super::generate::build_generation(&m)?;
    let (b, s, n) = (a.batch, a.src_len, a.new_tokens);
    let per_token = |g: &encdecc_compiler::ir::Graph, dims: &[(&str, u64)]| {
        let d: HashMap<String, u64> = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        matmul_flops(g, &d)
    };
    // Encode: per source token (batch 1, one token). Decode: one token attending to the
    // sweep's source length and a full cache.
    let encode_flops = per_token(&models.cross_kv.graph, &[("B", 1), ("S", 1)]);
    let decode_flops = per_token(
        &models.step.graph,
        &[
            ("B", 1),
            ("S", s as u64),
            ("CS", n as u64),
            ("CF", n as u64),
        ],
    );
    let mut rng = Rng::new(a.seed);
    let precision = super::common::parse_dtype(&a.dtype)?;
    let generator = Generator::with_precision(&models, Backend::Cpu, precision)
        .map_err(|e| format!("error: {e}"))?;
    let params = super::bench::random_params(&models.step.params, &mut rng, &generator.stored());
    let vocab = models
        .step
        .params
        .iter()
        .find(|p| p.path == "decoder.embed_tokens.weight")
        .map(|p| p.shape[0] as usize)
        .unwrap_or(4)
        .max(4);
    let ids = Tensor::i64(
        vec![b, s],
        (0..b * s)
            .map(|_| 3 + rng.below(vocab - 3) as i64)
            .collect(),
    );
    let opts = GenerateOptions {
        max_new_tokens: n,
        eos_token_ids: vec![],
        pad_token_id: 0,
        decoder_start_token_id: 2,
        sampling: None,
        keep_logits: false,
    };
    let (mut enc, mut dec) = (vec![], vec![]);
    let t0 = Instant::now();
    generator
        .load_params(&params)
        .map_err(|e| format!("error: {e}"))?;
    for i in 0..=a.iters {
        let g = generator
            .generate_loaded(&params, &ids, None, &opts)
            .map_err(|e| format!("error: {e}"))?;
        // The first run warms caches and compiled kernels.
        if i > 0 {
            enc.push(g.encode_ms);
            dec.push(g.step_ms.iter().sum::<f64>() / g.step_ms.len() as f64);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let loss = loss(&Variant {
        slug: &slug(point),
        sets: &m.sets,
        models: &models,
    })?;
    let mut r = Map::new();
    for (k, v) in point {
        r.insert(
            k.clone(),
            encdecc_compiler::elab::config::parse_set_value(v).to_json(),
        );
    }
    r.insert("parameters".into(), parameter_count(&models.step).into());
    r.insert("encode_flops_per_token".into(), encode_flops.into());
    r.insert("decode_flops_per_token".into(), decode_flops.into());
    r.insert("dtype".into(), precision.name().into());
    r.insert("encode_ms".into(), median(&mut enc).into());
    r.insert("decode_ms_per_token".into(), median(&mut dec).into());
    r.insert(
        "peak_memory_bytes".into(),
        peak_rss_bytes().map_or(Value::Null, Value::from),
    );
    r.insert("loss".into(), loss.map_or(Value::Null, Value::from));
    r.insert("sets".into(), json!(m.sets));
    r.insert("measure_s".into(), wall.into());
    r.insert("settings".into(), settings.clone());
    Ok(Value::Object(r))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Linux: resets the process's peak resident set (VmHWM), so each variant reports its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn to_csv(columns: &[&str], records: &[Value]) -> String {
    let quote = |s: String| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = columns
        .iter()
        .map(|c| quote(c.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in records {
        let row: Vec<String> = columns.iter().map(|c| quote(cell(&r[*c]))).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}
