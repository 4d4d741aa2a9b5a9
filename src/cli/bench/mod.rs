//! `encdecc bench`: times a full forward pass with random weights (or HF weights) and
//! reports throughput and achieved FLOP/s against the measured GEMM peak of this machine;
//! `--mode generate` times KV-cached generation against the memory-bandwidth bound.

mod generate;

use super::common::{build, parse_dtype, CheckArgs, ModelArgs};
use clap::{Args, ValueEnum};
use encdecc_compiler::elab::ParamInfo;
use encdecc_compiler::ir::{DType, Dim};
use encdecc_compiler::summary::matmul_flops;
use encdecc_runtime::cpu;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::rng::Rng;
use encdecc_runtime::weights::{load_params_as, store_as, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Forward,
    /// Encoder once, then `--new-tokens` decode steps (greedy, no EOS).
    Generate,
    /// One training step: forward, loss, backward and the AdamW update (random labels).
    Train,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "forward")]
    pub mode: Mode,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Encoder length (`S`).
    #[arg(long)]
    pub src_len: Option<usize>,
    /// Decoder length (`T`).
    #[arg(long)]
    pub tgt_len: Option<usize>,
    /// Sequence length of a decoder-only model (`T`).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Tokens to generate (`--mode generate`).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// `f32`, or `bf16` (cuda only: bf16 activations and GEMMs with f32 accumulation; a
    /// train step keeps f32 master weights and AdamW state).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Times a checked run (`--check-finite`: every value scanned; slow).
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs) -> Result<(), String> {
    let backend = Backend::parse(&a.backend).map_err(|e| format!("error: {e}"))?;
    let precision = parse_dtype(&a.dtype)?;
    if backend == Backend::Cuda {
        // Before random weights are made: a machine without a GPU fails at once.
        encdecc_runtime::cuda::libraries_present().map_err(|e| format!("error: {e}"))?;
    }
    if a.mode == Mode::Generate {
        return generate::bench_generate(&a, backend, precision);
    }
    let mut dims: HashMap<String, usize> = HashMap::from([("B".to_string(), a.batch)]);
    if let Some(s) = a.src_len {
        dims.insert("S".into(), s);
    }
    if let Some(t) = a.tgt_len.or(a.seq_len) {
        dims.insert("T".into(), t);
    }
    // Token inputs only: masks default to "all valid" by being absent; training adds labels.
    let probe = build(&a.model, None, None, false)?;
    let wanted: Vec<String> = probe
        .inputs
        .iter()
        .filter(|i| {
            i.name == "input_ids"
                || i.name == "decoder_input_ids"
                || (a.mode == Mode::Train && i.name == "labels")
        })
        .map(|i| i.name.clone())
        .collect();
    let model = build(&a.model, None, Some(wanted.clone()), false)?;
    let vocab = model
        .params
        .iter()
        .find(|p| p.path.ends_with("embed_tokens.weight"))
        .map(|p| p.shape[0])
        .unwrap_or(2);
    let mut rng = Rng::new(a.seed);
    let mut inputs = HashMap::new();
    for info in model.inputs.iter().filter(|i| wanted.contains(&i.name)) {
        let shape = info
            .ty
            .shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Known(n) => Ok(*n as usize),
                Dim::Sym(s) => dims.get(s).copied().ok_or_else(|| {
                    format!("error: input `{}` needs `{s}`: pass --src-len/--tgt-len (encoder-decoder) or --seq-len", info.name)
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n: usize = shape.iter().product();
        if info.ty.dtype != DType::I64 {
            return Err(format!(
                "error: bench feeds token ids, but input `{}` is {}",
                info.name, info.ty
            ));
        }
        let ids = (0..n)
            .map(|_| rng.below(vocab.max(1) as usize) as i64)
            .collect();
        inputs.insert(info.name.clone(), Tensor::i64(shape, ids));
    }
    if a.mode == Mode::Train {
        encdecc_runtime::forward::check_train_precision(backend, precision)
            .map_err(|e| format!("error: --dtype {}: {e}", a.dtype))?;
    }
    // The host backends run the graph lowered to `precision`, with its weights stored so.
    let (graph, stored) = encdecc_runtime::forward::host_graph(&model.graph, backend, precision);
    let params: HashMap<String, Tensor> = match &a.model.hf {
        Some(dir) => {
            let files = TensorFiles::open_dir(dir)
                .map_err(|e| format!("error: {e}"))?
                .allow_non_finite(a.model.allow_non_finite);
            load_params_as(&files, &model.params, &stored)
                .map_err(|e| format!("error: {e}"))?
                .0
        }
        None => random_params(&model.params, &mut rng, &stored),
    };
    let flops = matmul_flops(
        &model.graph,
        &dims.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
    );
    let tokens: usize = inputs
        .iter()
        .filter(|(k, _)| *k != "labels")
        .map(|(_, t)| t.numel())
        .sum();
    if a.mode == Mode::Train {
        // Backward costs two matmuls per forward one.
        return bench_train(
            &a,
            backend,
            precision,
            model,
            params,
            inputs,
            3 * flops,
            tokens,
        );
    }
    // In the dtypes the weights are stored in (int8: with their scales).
    let weights_bytes: u64 = params.values().map(|t| t.bytes()).sum();
    let t0 = Instant::now();
    let mut memory = serde_json::Value::Null;
    // The cuda backend's peak is cuBLAS's on the GPU, not the CPU's.
    let mut device_peak: Option<f64> = None;
    // The CPU program, kept to read the peak its runs really held.
    let mut cpu_model: Option<std::rc::Rc<cpu::CpuModel>> = None;
    let run: Box<dyn Fn() -> Result<(), String>> = match backend {
        Backend::Cpu => {
            let mut m = cpu::prepare(&graph)?;
            m.checks = a.checks.checks();
            let b = encdecc_runtime::interp::bind_inputs(&m.program.graph, &inputs)?;
            let p = cpu::plan::plan(&m, &b)?;
            memory = serde_json::json!({"arena_bytes": p.arena_bytes, "live_peak_bytes": p.live_peak_bytes});
            let m = std::rc::Rc::new(m);
            cpu_model = Some(m.clone());
            Box::new(move || m.run(&params, &inputs).map(|_| ()))
        }
        Backend::Cuda => {
            let err = |e: String| format!("error: {e}");
            let mut m =
                encdecc_runtime::cuda::prepare_with(&model.graph, precision).map_err(err)?;
            m.upload_params(&params).map_err(err)?;
            m.set_checks(a.checks.checks());
            let b = encdecc_runtime::interp::bind_inputs(&m.program.graph, &inputs)?;
            let p = m.plan(&b)?;
            memory = serde_json::json!({"arena_bytes": p.arena_bytes, "live_peak_bytes": p.live_peak_bytes});
            device_peak = Some(m.gemm_peak_gflops().map_err(err)?);
            // Timed as PyTorch's forward is: until the GPU has finished, the logits left on
            // the device (their copy to the host would dominate on a 256k vocabulary).
            // A checked run brings its values back anyway (`run_on_device` checks nothing).
            let checked = a.checks.check_finite;
            Box::new(move || match checked {
                true => m.run(&inputs).map(|_| ()),
                false => m.run_on_device(&inputs),
            })
        }
        Backend::Reference => {
            let mut g = graph.clone().into_owned();
            encdecc_compiler::decompose::decompose(&mut g)?;
            let checks = encdecc_runtime::forward::REFERENCE_CHECKS;
            Box::new(move || {
                encdecc_runtime::interp::run_with(&g, &params, &inputs, checks)?
                    .into_result()
                    .map(|_| ())
            })
        }
    };
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let times = measure(&a, a.warmup, &mut || run())?;
    if let (Some(m), serde_json::Value::Object(o)) = (&cpu_model, &mut memory) {
        // Not the plan's arena: the executor allocates each value and frees it after its
        // last use, and this is the most it held at once.
        o.insert("measured_peak_bytes".into(), m.last_peak_bytes().into());
    }
    let peak = device_peak.unwrap_or_else(|| gemm_peak_gflops(cpu::threads()));
    report(
        &a,
        &model,
        Timing {
            mode: "forward",
            label: "forward",
            times,
            compile_ms,
            flops,
            tokens,
            peak,
            extra: serde_json::json!({"dims": dims, "memory_plan": memory, "weights_bytes": weights_bytes}),
        },
    );
    Ok(())
}

/// What `report` prints of a timed run.
struct Timing<'a> {
    mode: &'a str,
    label: &'a str,
    /// Sorted, in ms.
    times: Vec<f64>,
    compile_ms: f64,
    flops: u64,
    tokens: usize,
    peak: f64,
    /// More fields for the JSON object.
    extra: serde_json::Value,
}

/// One JSON object (`--json`) or one line: median, tokens/s, GFLOP/s against the GEMM peak.
fn report(a: &BenchArgs, model: &encdecc_compiler::elab::Elaborated, t: Timing) {
    let median = t.times[t.times.len() / 2];
    let gflops = t.flops as f64 / median / 1e6;
    let tokens_per_s = t.tokens as f64 / (median / 1e3);
    let mut out = serde_json::json!({
        "model": model.model,
        "mode": t.mode,
        "backend": a.backend,
        "batch": a.batch,
        "threads": cpu::threads(),
        "compile_ms": t.compile_ms,
        "median_ms": median,
        "min_ms": t.times[0],
        "max_ms": t.times[t.times.len() - 1],
        "tokens_per_s": tokens_per_s,
        "flops": t.flops,
        "gflops": gflops,
        "gemm_peak_gflops": t.peak,
        "share_of_gemm_peak": gflops / t.peak,
        "dtype": a.dtype,
        "weights_bytes": model.params.iter().map(|p| 4 * p.shape.iter().product::<u64>()).sum::<u64>(),
    });
    if let (Some(o), Some(extra)) = (out.as_object_mut(), t.extra.as_object()) {
        o.extend(extra.clone());
    }
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} {}, batch {}: median {median:.1} ms, {tokens_per_s:.0} tokens/s, {gflops:.1} GFLOP/s ({:.0}% of the {:.0} GFLOP/s GEMM peak)",
            model.model,
            t.label,
            a.batch,
            100.0 * gflops / t.peak,
            t.peak
        );
    }
}

/// Runs `step` `warmup` times, then `--iters` timed times: the times in ms, sorted.
fn measure(
    a: &BenchArgs,
    warmup: usize,
    step: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    for _ in 0..warmup {
        step().map_err(|e| format!("error: {e}"))?;
    }
    let mut times = vec![];
    for i in 0..a.iters.max(1) {
        let t = Instant::now();
        step().map_err(|e| format!("error: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !a.json {
            eprint!("\riter {}/{}: {:.1} ms", i + 1, a.iters.max(1), times[i]);
        }
    }
    if !a.json {
        eprintln!();
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// `--mode train`: the median of whole training steps (forward, loss, backward, global-norm
/// clipping and AdamW, every parameter trained), as one compiled program.
#[allow(clippy::too_many_arguments)]
fn bench_train(
    a: &BenchArgs,
    backend: Backend,
    precision: encdecc_runtime::cuda::Precision,
    model: encdecc_compiler::elab::Elaborated,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
    flops: u64,
    tokens: usize,
) -> Result<(), String> {
    use encdecc_runtime::train::schedule::{Decay, Schedule};
    use encdecc_runtime::train::{TrainSetup, TrainState, Trainer};
    let err = |e: String| format!("error: {e}");
    if model.graph.output("loss").is_none() {
        return Err("error: --mode train needs a model with a `loss` output".into());
    }
    if backend == Backend::Cuda {
        return bench_train_cuda(a, precision, model, params, inputs, flops, tokens).map_err(err);
    }
    let t0 = Instant::now();
    let schedule = Schedule {
        peak_lr: 1e-4,
        warmup_steps: 0,
        total_steps: (a.warmup + a.iters) as u64,
        decay: Decay::Constant,
        min_lr_ratio: 1.0,
    };
    let opt = encdecc_compiler::optim::AdamW::default();
    let setup = TrainSetup::everything(&model, opt, schedule, backend);
    let state = TrainState {
        step: 0,
        params,
        m: HashMap::new(),
        v: HashMap::new(),
    };
    let mut trainer = Trainer::new(setup, state).map_err(err)?;
    trainer.set_precision(precision).map_err(err)?;
    trainer.set_checks(a.checks.checks());
    // The first step compiles the program.
    trainer.step(&inputs).map_err(err)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let times = measure(a, a.warmup.saturating_sub(1), &mut || {
        trainer.step(&inputs).map(|_| ())
    })?;
    let peak = gemm_peak_gflops(cpu::threads());
    report(
        a,
        &model,
        Timing {
            mode: "train",
            label: "train step",
            times,
            compile_ms,
            flops,
            tokens,
            peak,
            extra: serde_json::json!({}),
        },
    );
    Ok(())
}

/// `--mode train --backend cuda`: the same step program as the `Trainer` compiles (batch
/// shape specialised, every parameter trained, AdamW with clipping), with weights and AdamW
/// moments kept on the GPU from step to step (`CudaModel::set_carry`), as a GPU trainer
/// keeps them; only the batch and the per-step scalars cross PCIe.
fn bench_train_cuda(
    a: &BenchArgs,
    precision: encdecc_runtime::cuda::Precision,
    model: encdecc_compiler::elab::Elaborated,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
    flops: u64,
    tokens: usize,
) -> Result<(), String> {
    use encdecc_compiler::optim::{
        new_m, new_param, new_v, state_m, state_v, step_scalars, train_step, AdamW, Trainable,
    };
    use encdecc_runtime::cuda::Carry;
    let t0 = Instant::now();
    let dims = encdecc_runtime::interp::bind_inputs(&model.graph, &inputs)?;
    let forward = encdecc_compiler::ir::specialize::specialize(&model.graph, &dims)?;
    let trainable: Vec<Trainable> = model
        .params
        .iter()
        .map(|p| Trainable {
            path: p.path.clone(),
            decay: encdecc_runtime::train::decays(p),
        })
        .collect();
    let opt = AdamW::default();
    let g = train_step(&forward, "loss", &trainable, &opt)?;
    let mut m = encdecc_runtime::cuda::prepare_with(&g, precision)?;
    m.upload_params(&params)?;
    m.set_checks(a.checks.checks());
    let mut feed = inputs;
    let mut carry = vec![];
    for t in &trainable {
        let zeros = Tensor::f32(
            params[&t.path].shape.clone(),
            vec![0.0; params[&t.path].numel()],
        );
        feed.insert(state_m(&t.path), zeros.clone());
        feed.insert(state_v(&t.path), zeros);
        carry.push((new_param(&t.path), Carry::Param(t.path.clone())));
        carry.push((new_m(&t.path), Carry::Input(state_m(&t.path))));
        carry.push((new_v(&t.path), Carry::Input(state_v(&t.path))));
    }
    m.set_carry(carry)?;
    let mut step = 0u64;
    let mut run = || -> Result<(), String> {
        step += 1;
        for (name, v) in step_scalars(&opt, step, 1e-4) {
            feed.insert(name.into(), Tensor::f32(vec![1], vec![v]));
        }
        // `run` returns once the loss is back on the host: the GPU has finished the step.
        let out = m.run(&feed)?;
        let loss = out["loss"].to_f64()[0];
        if !loss.is_finite() {
            return Err(format!("step {step}: the loss is {loss}"));
        }
        Ok(())
    };
    // The first step compiles nothing more but touches every buffer once.
    run()?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let times = measure(a, a.warmup.saturating_sub(1), &mut run)?;
    let peak = m.gemm_peak_gflops()?;
    report(
        a,
        &model,
        Timing {
            mode: "train",
            label: "train step",
            times,
            compile_ms,
            flops,
            tokens,
            peak,
            extra: serde_json::json!({"state": "on the GPU between steps"}),
        },
    );
    Ok(())
}

/// This machine's f32 GEMM rate (n = 1024 square, the same `gemm` the backend uses).
fn gemm_peak_gflops(threads: usize) -> f64 {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![1.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let view = cpu::matmul::MatView {
        rs: n as isize,
        cs: 1,
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        cpu::matmul::batched(
            &a,
            view,
            &|_| 0,
            &b,
            view,
            &|_| 0,
            &mut c,
            1,
            (n, n, n),
            threads,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Random weights for `params`, uniform and scaled by the fan-in, reproducible per seed.
/// Each is stored as `stored` says (bf16, or int8 with its scales) as soon as it is made,
/// so that a model whose f32 weights would not fit in memory (2B-2B: 22 GB) can be timed
/// in bf16 or int8.
pub(super) fn random_params(
    params: &[ParamInfo],
    rng: &mut Rng,
    stored: &HashMap<String, DType>,
) -> HashMap<String, Tensor> {
    const CHUNK: usize = 1 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    params
        .iter()
        .flat_map(|p| {
            let n: usize = p.shape.iter().map(|&d| d as usize).product();
            let scale = 0.04
                / (p.shape.last().copied().unwrap_or(1) as f32)
                    .sqrt()
                    .max(1.0)
                * 8.0;
            let mut v = vec![0f32; n];
            let mut work: Vec<(&mut [f32], u64)> =
                v.chunks_mut(CHUNK).map(|c| (c, rng.next_u64())).collect();
            let fill = |work: &mut [(&mut [f32], u64)]| {
                for (c, seed) in work {
                    let mut r = Rng::new(*seed);
                    for x in c.iter_mut() {
                        *x = (r.uniform() - 0.5) * scale;
                    }
                }
            };
            if work.len() <= 1 {
                fill(&mut work);
            } else {
                let per = work.len().div_ceil(threads);
                std::thread::scope(|s| {
                    for group in work.chunks_mut(per) {
                        s.spawn(move || fill(group));
                    }
                });
            }
            let t = Tensor::f32(p.shape.iter().map(|&d| d as usize).collect(), v);
            store_as(HashMap::from([(p.path.clone(), t)]), stored)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(path: &str, shape: Vec<u64>) -> ParamInfo {
        ParamInfo {
            path: path.into(),
            ckpt: path.into(),
            shape,
            node: encdecc_compiler::ir::NodeId::new(0),
        }
    }

    /// The same seed gives the same weights, chunk seeds in order whatever the cores; a
    /// weight of several chunks repeats none; values stay within the scale.
    #[test]
    fn random_params_are_reproducible_and_scaled() {
        let ps = [param("big", vec![3, 1 << 19]), param("norm", vec![64])];
        let a = random_params(&ps, &mut Rng::new(5), &HashMap::new());
        assert_eq!(a, random_params(&ps, &mut Rng::new(5), &HashMap::new()));
        assert_ne!(
            a["big"],
            random_params(&ps, &mut Rng::new(6), &HashMap::new())["big"]
        );
        let big = a["big"].as_f32().unwrap();
        assert_eq!(big.len(), 3 << 19);
        let chunk = 1 << 20;
        assert_ne!(&big[..16], &big[chunk..chunk + 16], "chunks share a seed");
        let bound = 0.5 * 0.04 / ((1u64 << 19) as f32).sqrt() * 8.0;
        assert!(big.iter().all(|x| x.abs() <= bound));
        let spread = big.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(spread > 0.9 * bound, "{spread} of {bound}");
        let norm = a["norm"].as_f32().unwrap();
        assert!(norm.iter().all(|x| x.abs() <= 0.5 * 0.04 / 8.0 * 8.0));
    }
}
