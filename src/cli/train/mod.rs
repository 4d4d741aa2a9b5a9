//! `encdecc train RUN.json --out DIR`: trains a model as its run file says — objective,
//! teacher, data, steps, schedule, phases, evaluation — with a progress bar, JSONL metrics,
//! atomic checkpoints with exact resume (`--resume`), a loss plot and the final model as an
//! HF directory.

mod metrics;
pub mod runfile;
mod teacher;

use super::common::{build, parse_dtype, read_json, CheckArgs, ModelArgs};
use clap::Args;
use encdecc_compiler::adapt::NamePattern;
use encdecc_compiler::elab::Elaborated;
use encdecc_compiler::objective::{add_distillation, Distillation, TRAIN_LOSS};
use encdecc_compiler::optim::AdamW;
use encdecc_runtime::data::{Batch, Batcher, Corpus, ObjectiveConfig, Order};
use encdecc_runtime::forward::Backend;
use encdecc_runtime::tokenizer::Tokenizer;
use encdecc_runtime::train::checkpoint;
use encdecc_runtime::train::init::random_params;
use encdecc_runtime::train::schedule::{Decay, Schedule};
use encdecc_runtime::train::{TrainPhase, TrainSetup, TrainState, Trainer};
use encdecc_runtime::weights::{load_params, TensorFiles};
use encdecc_runtime::Tensor;
use metrics::{open_metrics, Outputs};
use runfile::{Init, RunFile};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use teacher::load_teacher;

#[derive(Args)]
pub struct TrainArgs {
    /// The run file (JSON; see examples/recipe/*.json).
    pub run: PathBuf,
    /// Output directory: metrics.jsonl, loss.svg, checkpoint/, final/ (an HF model directory).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue from DIR/checkpoint, exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Override the run file's number of steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Stop after this many steps in total, leaving a checkpoint to `--resume` from (the
    /// schedule still spans all the steps).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<u64>,
    /// Start from this HF directory instead of the run file's `init`.
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Read the teacher's weights and config from this directory instead of the run file's.
    #[arg(long, value_name = "DIR")]
    pub teacher_dir: Option<PathBuf>,
    /// Load weights (`init`, the teacher's, a checkpoint to resume) that hold NaN or ±Inf
    /// (by default an error naming the tensor).
    #[arg(long)]
    pub allow_non_finite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub checks: CheckArgs,
}

pub(super) fn e(msg: impl std::fmt::Display) -> String {
    format!("error: {msg}")
}

/// The inputs a model reads for an objective.
fn student_inputs(o: &ObjectiveConfig) -> Vec<String> {
    let names: &[&str] = match o {
        ObjectiveConfig::CausalLm(_) => &["input_ids", "attention_mask", "labels"],
        _ => &[
            "input_ids",
            "attention_mask",
            "decoder_input_ids",
            "decoder_attention_mask",
            "labels",
        ],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The same objective reading the held-out stream in order, for evaluation.
fn for_eval(o: &ObjectiveConfig) -> ObjectiveConfig {
    let mut o = o.clone();
    match &mut o {
        ObjectiveConfig::CausalLm(c) => c.order = Order::Sequential,
        ObjectiveConfig::PrefixLm(c) => c.order = Order::Sequential,
        ObjectiveConfig::Ul2(c) => c.order = Order::Sequential,
    }
    o
}

/// A PrefixLM batch as a decoder-only model sees it: prefix and target in one sequence,
/// only the target tokens scored (the model shifts labels inside its loss).
fn continuation_batch(b: &Batch) -> Result<Batch, String> {
    let get = |k: &str| b.get(k).ok_or(format!("internal: batch has no `{k}`"));
    let ids = get("teacher_input_ids")?;
    let pos = get("teacher_label_positions")?.as_i64().expect("i64");
    let labels = get("labels")?.as_i64().expect("i64");
    let (rows, len) = (ids.shape[0], ids.shape[1]);
    let t = labels.len() / rows;
    let mut out = vec![-100i64; rows * len];
    for r in 0..rows {
        for j in 0..t {
            let y = labels[r * t + j];
            if y != -100 {
                out[r * len + pos[r * t + j] as usize + 1] = y;
            }
        }
    }
    Ok(HashMap::from([
        ("input_ids".to_string(), ids.clone()),
        (
            "attention_mask".to_string(),
            get("teacher_attention_mask")?.clone(),
        ),
        ("labels".to_string(), Tensor::i64(vec![rows, len], out)),
    ]))
}

/// Tokens a batch feeds the model (ones in its attention masks).
fn batch_tokens(b: &Batch) -> usize {
    ["attention_mask", "decoder_attention_mask"]
        .iter()
        .filter_map(|k| b.get(*k))
        .map(|t| {
            t.as_i64()
                .map(|v| v.iter().filter(|&&x| x != 0).count())
                .unwrap_or(0)
        })
        .sum()
}

/// The phases of the run, resolved to the checkpoint names each one trains.
fn resolve_phases(rf: &RunFile, model: &Elaborated) -> Result<Vec<TrainPhase>, String> {
    let declared: Vec<runfile::Phase> = match (&rf.phases, &rf.init) {
        (Some(p), _) => p.clone(),
        (None, Init::Hf { dir }) if dir.join("adapt.json").exists() => {
            let j = read_json(&dir.join("adapt.json"))?;
            serde_json::from_value(j["phases"].clone()).map_err(|err| {
                e(format!(
                    "{}: bad `phases`: {err}",
                    dir.join("adapt.json").display()
                ))
            })?
        }
        _ => vec![runfile::Phase {
            name: "all".into(),
            steps: None,
            trainable: vec!["*".into()],
        }],
    };
    let mut out = vec![];
    for p in declared {
        let pats: Vec<NamePattern> = p
            .trainable
            .iter()
            .map(|t| {
                if t == "*" {
                    Ok(NamePattern::all())
                } else {
                    NamePattern::parse(t)
                        .ok_or_else(|| e(format!("phase `{}`: bad name pattern `{t}`", p.name)))
                }
            })
            .collect::<Result<_, _>>()?;
        let trainable: Vec<String> = model
            .params
            .iter()
            .filter(|q| pats.iter().any(|pat| pat.matches(&q.ckpt)))
            .map(|q| q.ckpt.clone())
            .collect();
        if trainable.is_empty() {
            return Err(e(format!(
                "phase `{}` matches no parameter of the model (patterns: {})",
                p.name,
                p.trainable.join(", ")
            )));
        }
        out.push(TrainPhase {
            name: p.name,
            steps: p.steps,
            trainable,
        });
    }
    Ok(out)
}

/// The HF config.json to save with the weights: the initial directory's or the run file's,
/// with the run's `set` overrides applied where the key exists.
fn hf_config(rf: &RunFile) -> Result<Option<serde_json::Value>, String> {
    let mut cfg = match (&rf.init, &rf.config) {
        (Init::Hf { dir }, _) => read_json(&dir.join("config.json"))?,
        (_, Some(c)) => read_json(c)?,
        _ => return Ok(None),
    };
    for s in &rf.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| e(format!("`set` entry `{s}` is not KEY=VALUE")))?;
        let mut node = &mut cfg;
        for part in k.split('.') {
            node = node
                .get_mut(part)
                .ok_or_else(|| e(format!("`set` key `{k}` is not in the HF config")))?;
        }
        *node = serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.into()));
    }
    Ok(Some(cfg))
}

pub fn train(a: TrainArgs) -> Result<(), String> {
    let rf = RunFile::load(&a.run)?;
    run(rf, &a).map(|_| ())
}

/// Trains as `rf` says, with the command line's overrides; returns the final held-out loss.
pub fn run(mut rf: RunFile, a: &TrainArgs) -> Result<f64, String> {
    if let Some(dir) = &a.init {
        rf.init = Init::Hf { dir: dir.clone() };
    }
    if let Some(dir) = &a.teacher_dir {
        match &mut rf.teacher {
            Some(t) => t.dir = dir.clone(),
            None => return Err(e("--teacher-dir given, but the run file has no teacher")),
        }
    }
    let steps = a.steps.unwrap_or(rf.steps);
    let backend = Backend::parse(&rf.backend).map_err(e)?;
    let precision = parse_dtype(&rf.dtype)?;
    encdecc_runtime::forward::check_train_precision(backend, precision).map_err(e)?;
    let tok = Tokenizer::load(&rf.tokenizer).map_err(e)?;
    let corpus = Corpus::load(&rf.corpus, &tok).map_err(e)?;

    let config = hf_config(&rf)?;
    let margs = ModelArgs {
        model: rf.model.clone(),
        preset: rf.preset.clone(),
        sets: rf.set.clone(),
        hf_config: None,
        hf: None,
        model_name: None,
        entry: "forward".into(),
        allow_non_finite: a.allow_non_finite,
    };
    let model = build(
        &margs,
        config.clone(),
        Some(student_inputs(&rf.objective)),
        false,
    )?;
    let logits = model
        .graph
        .output("logits")
        .ok_or_else(|| e("the model has no `logits` output"))?;
    let vocab = model
        .graph
        .node(logits)
        .ty
        .shape
        .0
        .last()
        .and_then(|d| d.known())
        .unwrap_or(0) as usize;
    if vocab < tok.vocab_size() {
        return Err(e(format!(
            "the model's vocabulary ({vocab}) is smaller than the tokenizer's ({})",
            tok.vocab_size()
        )));
    }
    let params = match &rf.init {
        Init::Random { seed, std } => random_params(&model.params, *seed, *std),
        Init::Hf { dir } => {
            let files = TensorFiles::open_dir(dir)
                .map_err(e)?
                .allow_non_finite(a.allow_non_finite);
            load_params(&files, &model.params).map_err(e)?.0
        }
    };
    let teacher = match &rf.teacher {
        Some(t) => Some(load_teacher(t, vocab, a.allow_non_finite)?),
        None => None,
    };
    let mut graph = model.graph.clone();
    let loss = match &rf.teacher {
        Some(t) => {
            add_distillation(
                &mut graph,
                &Distillation {
                    temperature: t.temperature,
                    alpha: t.alpha,
                },
                -100,
            )
            .map_err(e)?;
            TRAIN_LOSS.to_string()
        }
        None => "loss".to_string(),
    };
    let o = &rf.optimizer;
    let setup = TrainSetup {
        graph,
        loss,
        eval_loss: "loss".into(),
        params: model.params.clone(),
        opt: AdamW {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            max_grad_norm: o.max_grad_norm,
        },
        schedule: Schedule {
            peak_lr: o.lr,
            warmup_steps: o.warmup_steps,
            total_steps: steps,
            decay: Decay::parse(&o.decay).map_err(e)?,
            min_lr_ratio: o.min_lr_ratio,
        },
        phases: resolve_phases(&rf, &model)?,
        backend,
    };
    let special = tok.special().clone();
    let mut batcher = rf
        .objective
        .batcher(corpus.train.clone(), &special)
        .map_err(|m| {
            e(format!(
                "corpus {} (its train split): {m}",
                rf.corpus.path.display()
            ))
        })?;
    std::fs::create_dir_all(&a.out)
        .map_err(|err| e(format!("cannot create `{}`: {err}", a.out.display())))?;
    let ckpt_dir = a.out.join("checkpoint");
    let mut state = TrainState {
        step: 0,
        params,
        m: HashMap::new(),
        v: HashMap::new(),
    };
    if a.resume {
        let (s, extra) =
            checkpoint::load(&ckpt_dir, &model.params, a.allow_non_finite).map_err(e)?;
        batcher.restore(&extra["batcher"]).map_err(e)?;
        state = s;
    }
    let start = state.step;
    let mut trainer = Trainer::new(setup, state).map_err(e)?;
    trainer.set_precision(precision).map_err(e)?;
    trainer.set_checks(a.checks.checks());

    let eval_obj = for_eval(rf.eval.objective.as_ref().unwrap_or(&rf.objective));
    let decoder_only = matches!(rf.objective, ObjectiveConfig::CausalLm(_));
    let eval_batches: Vec<Batch> = {
        let mut b = eval_obj
            .batcher(corpus.heldout.clone(), &special)
            .map_err(|m| {
                e(format!(
                    "corpus {} (its held-out split, heldout_fraction {}): {m}",
                    rf.corpus.path.display(),
                    rf.corpus.heldout_fraction
                ))
            })?;
        (0..rf.eval.batches.unwrap_or(4))
            .map(|_| {
                let x = b.next_batch();
                if decoder_only && matches!(eval_obj, ObjectiveConfig::PrefixLm(_)) {
                    continuation_batch(&x)
                } else {
                    Ok(x)
                }
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Outputs {
        dir: a.out.clone(),
        metrics: open_metrics(&a.out, a.resume.then_some(start))?,
    };
    let evaluate = |t: &mut Trainer| -> Result<f64, String> {
        let mut total = 0.0;
        for b in &eval_batches {
            total += t.eval_loss(b).map_err(e)?;
        }
        Ok(total / eval_batches.len().max(1) as f64)
    };
    let save = |t: &mut Trainer, b: &dyn Batcher| -> Result<(), String> {
        let extra = serde_json::json!({"batcher": b.state(), "run": a.run});
        t.fetch_state().map_err(e)?;
        checkpoint::save(
            &ckpt_dir,
            &t.setup.params,
            t.state().map_err(e)?,
            config.as_ref(),
            &extra,
        )
        .map_err(e)
    };

    if start == 0 {
        // The starting point: what adaptation alone gives, before any training.
        let l = evaluate(&mut trainer)?;
        out.log(serde_json::json!({"step": 0, "eval_loss": l}))?;
    }
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(steps)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    bar.set_position(start);
    let mut last_eval = None;
    let t0 = Instant::now();
    let mut tokens_seen = 0usize;
    for _ in start..steps {
        let ts = Instant::now();
        let mut batch = batcher.next_batch();
        if let Some(t) = &teacher {
            let p = t.probs(&batch).map_err(e)?;
            batch.insert("teacher_probs".into(), p);
        }
        let phase = trainer.phase().name.clone();
        let m = trainer.step(&batch).map_err(e)?;
        let tokens = batch_tokens(&batch);
        tokens_seen += tokens;
        let dt = ts.elapsed().as_secs_f64();
        let mut line = serde_json::json!({
            "step": m.step, "loss": m.loss, "grad_norm": m.grad_norm, "lr": m.lr,
            "phase": phase, "tokens": tokens, "tokens_per_s": tokens as f64 / dt,
        });
        let stop = a.stop_after.is_some_and(|n| m.step >= n);
        let last = m.step == steps;
        if (rf.eval.every > 0 && m.step % rf.eval.every == 0) || last {
            let l = evaluate(&mut trainer)?;
            line["eval_loss"] = l.into();
            last_eval = Some(l);
        }
        out.log(line)?;
        if (rf.checkpoint_every > 0 && m.step % rf.checkpoint_every == 0) || last || stop {
            out.sync()?;
            save(&mut trainer, batcher.as_ref())?;
        }
        bar.set_message(format!(
            "loss {:.4} held-out {} {:.0} tok/s",
            m.loss,
            last_eval
                .map(|l| format!("{l:.4}"))
                .unwrap_or_else(|| "-".into()),
            tokens_seen as f64 / t0.elapsed().as_secs_f64()
        ));
        bar.inc(1);
        if stop && !last {
            bar.finish_and_clear();
            out.plot(&format!("{} (stopped)", a.run.display()))?;
            println!(
                "{}",
                serde_json::json!({"stopped_at": m.step, "steps": steps, "checkpoint": ckpt_dir})
            );
            return Ok(last_eval.unwrap_or(f64::NAN));
        }
    }
    bar.finish_and_clear();
    let eval_loss = match last_eval {
        Some(l) => l,
        None => evaluate(&mut trainer)?,
    };
    let title = format!(
        "{} — {}",
        a.run.file_stem().unwrap_or_default().to_string_lossy(),
        rf.model.file_name().unwrap_or_default().to_string_lossy()
    );
    out.plot(&title)?;
    // The final model as an HF directory (config + weights).
    let fin = a.out.join("final");
    std::fs::create_dir_all(&fin)
        .map_err(|err| e(format!("cannot create `{}`: {err}", fin.display())))?;
    trainer.fetch_state().map_err(e)?;
    let state = trainer.state().map_err(e)?;
    let weights: std::collections::BTreeMap<String, Tensor> = trainer
        .setup
        .params
        .iter()
        .map(|p| (p.ckpt.clone(), state.params[&p.path].clone()))
        .collect();
    encdecc_runtime::weights::write_safetensors(&fin.join("model.safetensors"), &weights)
        .map_err(e)?;
    if let Some(c) = &config {
        let text = serde_json::to_string_pretty(c).expect("json") + "\n";
        encdecc_runtime::weights::write_atomic(&fin.join("config.json"), text.as_bytes())
            .map_err(e)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "steps": steps, "eval_loss": eval_loss, "out": a.out,
            "seconds": t0.elapsed().as_secs_f64(),
            "tokens_per_s": tokens_seen as f64 / t0.elapsed().as_secs_f64(),
        })
    );
    Ok(eval_loss)
}
