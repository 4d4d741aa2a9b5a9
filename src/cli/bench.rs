//! `encdecc bench`: times a full forward pass with random weights (or HF weights) and
//! reports throughput and achieved FLOP/s against the measured GEMM peak of this machine.

use super::common::{build, ModelArgs};
use clap::{Args, ValueEnum};
use encdecc_compiler::ir::{DType, Dim};
use encdecc_compiler::summary::matmul_flops;
use encdecc_runtime::cpu;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::rng::Rng;
use encdecc_runtime::weights::{load_params, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Forward,
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
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs) -> Result<(), String> {
    let backend = Backend::parse(&a.backend).map_err(|e| format!("error: {e}"))?;
    let mut dims: HashMap<String, usize> = HashMap::from([("B".to_string(), a.batch)]);
    if let Some(s) = a.src_len {
        dims.insert("S".into(), s);
    }
    if let Some(t) = a.tgt_len.or(a.seq_len) {
        dims.insert("T".into(), t);
    }
    // Token inputs only: masks default to "all valid" by being absent.
    let probe = build(&a.model, None, None, false)?;
    let wanted: Vec<String> = probe
        .inputs
        .iter()
        .filter(|i| i.name == "input_ids" || i.name == "decoder_input_ids")
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
    let params: HashMap<String, Tensor> = match &a.model.hf {
        Some(dir) => {
            let files = TensorFiles::open_dir(dir).map_err(|e| format!("error: {e}"))?;
            load_params(&files, &model.params)
                .map_err(|e| format!("error: {e}"))?
                .0
        }
        None => model
            .params
            .iter()
            .map(|p| {
                let n: usize = p.shape.iter().map(|&d| d as usize).product();
                let scale = 0.04
                    / (p.shape.last().copied().unwrap_or(1) as f32)
                        .sqrt()
                        .max(1.0)
                    * 8.0;
                let v = (0..n).map(|_| (rng.uniform() - 0.5) * scale).collect();
                (
                    p.path.clone(),
                    Tensor::f32(p.shape.iter().map(|&d| d as usize).collect(), v),
                )
            })
            .collect(),
    };
    let flops = matmul_flops(
        &model.graph,
        &dims.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
    );
    let tokens: usize = inputs.values().map(|t| t.numel()).sum();
    let t0 = Instant::now();
    let mut memory = serde_json::Value::Null;
    let run: Box<dyn Fn() -> Result<(), String>> = match backend {
        Backend::Cpu => {
            let m = cpu::prepare(&model.graph)?;
            let b = encdecc_runtime::interp::bind_inputs(&m.program.graph, &inputs)?;
            let p = cpu::plan::plan(&m, &b)?;
            memory = serde_json::json!({"arena_bytes": p.arena_bytes, "live_peak_bytes": p.live_peak_bytes});
            Box::new(move || m.run(&params, &inputs).map(|_| ()))
        }
        Backend::Reference => {
            let mut g = model.graph.clone();
            encdecc_compiler::decompose::decompose(&mut g)?;
            Box::new(move || encdecc_runtime::interp::run(&g, &params, &inputs).map(|_| ()))
        }
    };
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..a.warmup {
        run().map_err(|e| format!("error: {e}"))?;
    }
    let mut times = vec![];
    for i in 0..a.iters.max(1) {
        let t = Instant::now();
        run().map_err(|e| format!("error: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !a.json {
            eprint!("\riter {}/{}: {:.1} ms", i + 1, a.iters.max(1), times[i]);
        }
    }
    if !a.json {
        eprintln!();
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = flops as f64 / median / 1e6;
    let peak = gemm_peak_gflops(cpu::threads());
    let out = serde_json::json!({
        "model": model.model,
        "mode": "forward",
        "backend": a.backend,
        "batch": a.batch,
        "dims": dims,
        "threads": cpu::threads(),
        "compile_ms": compile_ms,
        "median_ms": median,
        "min_ms": times[0],
        "max_ms": times[times.len() - 1],
        "tokens_per_s": tokens as f64 / (median / 1e3),
        "flops": flops,
        "gflops": gflops,
        "gemm_peak_gflops": peak,
        "share_of_gemm_peak": gflops / peak,
        "memory_plan": memory,
        "weights_bytes": model.params.iter().map(|p| 4 * p.shape.iter().product::<u64>()).sum::<u64>(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} forward, batch {}: median {median:.1} ms, {:.0} tokens/s, {gflops:.1} GFLOP/s ({:.0}% of the {peak:.0} GFLOP/s GEMM peak)",
            model.model,
            a.batch,
            tokens as f64 / (median / 1e3),
            100.0 * gflops / peak
        );
    }
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
