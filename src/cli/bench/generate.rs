//! `encdecc bench --mode generate`: KV-cached generation timed against the memory-bandwidth
//! bound of a decode step.

use super::{random_params, BenchArgs};
use encdecc_compiler::ir::{DType, Dim};
use encdecc_runtime::cpu;
use encdecc_runtime::cuda::Precision;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::generate::cache::LayerKind;
use encdecc_runtime::generate::{layer_kinds, GenModels, GenerateOptions, Generator};
use encdecc_runtime::rng::Rng;
use encdecc_runtime::weights::{load_params_as, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::time::Instant;

/// `--mode generate`: median over iterations of one whole generation (encoder + N steps),
/// the decode step's latency, and the step against the memory-bandwidth bound: a step must
/// at least read the decoder weights it uses, the lm head and the caches once.
pub(super) fn bench_generate(
    a: &BenchArgs,
    backend: Backend,
    precision: Precision,
) -> Result<(), String> {
    let (b, s, n) = (
        a.batch,
        a.src_len.ok_or("error: --mode generate needs --src-len")?,
        a.new_tokens,
    );
    if b == 0 || s == 0 || n == 0 {
        return Err("error: --batch, --src-len and --new-tokens must be positive".into());
    }
    let t0 = Instant::now();
    let models = crate::cli::generate::build_generation(&a.model)?;
    let mut generator = Generator::with_precision(&models, backend, precision)
        .map_err(|e| format!("error: {e}"))?;
    let stored = generator.stored();
    generator.set_checks(a.checks.checks());
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut rng = Rng::new(a.seed);
    let params = match &a.model.hf {
        Some(dir) => {
            let files = TensorFiles::open_dir(dir)
                .map_err(|e| format!("error: {e}"))?
                .allow_non_finite(a.model.allow_non_finite);
            load_params_as(&files, &models.step.params, &stored)
                .map_err(|e| format!("error: {e}"))?
                .0
        }
        None => random_params(&models.step.params, &mut rng, &stored),
    };
    let vocab = models
        .step
        .params
        .iter()
        .find(|p| p.path == "decoder.embed_tokens.weight")
        .map(|p| p.shape[0] as usize)
        .unwrap_or(4);
    // Ids above the special tokens, so no row is padding.
    let ids = (0..b * s)
        .map(|_| 3 + rng.below(vocab.max(4) - 3) as i64)
        .collect();
    let ids = Tensor::i64(vec![b, s], ids);
    let opts = GenerateOptions {
        max_new_tokens: n,
        eos_token_ids: vec![],
        pad_token_id: 0,
        decoder_start_token_id: 2.min(vocab as i64 - 1),
        sampling: None,
        keep_logits: false,
    };
    // The weights go to the device once, as PyTorch's stay there between its calls.
    generator
        .load_params(&params)
        .map_err(|e| format!("error: {e}"))?;
    let gen = || {
        generator
            .generate_loaded(&params, &ids, None, &opts)
            .map_err(|e| format!("error: {e}"))
    };
    for _ in 0..a.warmup {
        gen()?;
    }
    let (mut total, mut encode, mut step) = (vec![], vec![], vec![]);
    for i in 0..a.iters.max(1) {
        let t = Instant::now();
        let g = gen()?;
        total.push(t.elapsed().as_secs_f64() * 1e3);
        encode.push(g.encode_ms);
        step.push(g.step_ms.iter().sum::<f64>() / g.step_ms.len() as f64);
        if !a.json {
            eprint!("\riter {}/{}: {:.1} ms", i + 1, a.iters.max(1), total[i]);
        }
    }
    if !a.json {
        eprintln!();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (median_ms, encode_ms, step_ms) =
        (median(&mut total), median(&mut encode), median(&mut step));
    let bytes = decode_bytes_per_step(&models, &stored, b, s, n);
    // The bandwidth of the memory the step reads: the GPU's, or the host's.
    let (bandwidth, read_bandwidth, memory) = match generator.device_bandwidth_gbs() {
        // A device copy's rate counts reads and writes alike; HBM reads run at about it.
        Some(gbs) => {
            let gbs = gbs.map_err(|e| format!("error: {e}"))?;
            (gbs, gbs, "gpu")
        }
        // A step only reads; streaming reads run faster than a copy on most machines.
        None => (
            copy_bandwidth_gbs(cpu::threads()),
            read_bandwidth_gbs(cpu::threads()),
            "host",
        ),
    };
    let bound_ms = bytes as f64 / (bandwidth * 1e9) * 1e3;
    let read_bound_ms = bytes as f64 / (read_bandwidth * 1e9) * 1e3;
    let out = serde_json::json!({
        "model": models.step.model,
        "mode": "generate",
        "backend": a.backend,
        "dtype": precision.name(),
        "batch": b,
        "src_len": s,
        "new_tokens": n,
        "threads": cpu::threads(),
        "compile_ms": compile_ms,
        "median_ms": median_ms,
        "min_ms": total[0],
        "max_ms": total[total.len() - 1],
        "encode_ms": encode_ms,
        "decode_ms_per_token": step_ms,
        "tokens_per_s": (b * n) as f64 / (median_ms / 1e3),
        "decode_bytes_per_token": bytes,
        "memory": memory,
        "memory_bandwidth_gbs": bandwidth,
        "bandwidth_bound_ms_per_token": bound_ms,
        "share_of_bandwidth_bound": bound_ms / step_ms,
        "read_bandwidth_gbs": read_bandwidth,
        "read_bound_ms_per_token": read_bound_ms,
        "share_of_read_bound": read_bound_ms / step_ms,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} generate, batch {b}, {s} source + {n} new tokens: median {median_ms:.1} ms ({:.1} tokens/s), encode {encode_ms:.1} ms, {step_ms:.2} ms per decode step ({:.0}% of the {bound_ms:.2} ms copy-bandwidth bound at {bandwidth:.1} GB/s; {:.0}% of the {read_bound_ms:.2} ms read bound at {read_bandwidth:.1} GB/s)",
            models.step.model,
            (b * n) as f64 / (median_ms / 1e3),
            100.0 * bound_ms / step_ms,
            100.0 * read_bound_ms / step_ms
        );
    }
    Ok(())
}

/// Bytes a decode step must read at least: every parameter the step graph uses (the
/// embedding, which is also the lm head, once), the cross-attention keys and values, and
/// the self-attention caches at their capacity.
/// Weights count in the dtype they are `stored` in.
fn decode_bytes_per_step(
    m: &GenModels,
    stored: &HashMap<String, DType>,
    b: usize,
    s: usize,
    n: usize,
) -> u64 {
    let g = &m.step.graph;
    let weights: u64 = g
        .params()
        .into_iter()
        .filter(|&p| !g.users(p).is_empty())
        .map(|p| {
            let dtype = match &g.node(p).op {
                encdecc_compiler::ir::Op::Param { path, .. } => {
                    stored.get(path).copied().unwrap_or(DType::F32)
                }
                _ => DType::F32,
            };
            dtype.bytes() * g.node(p).ty.shape.numel().unwrap_or(0)
        })
        .sum();
    let window = layer_kinds(&m.step.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|k| match k {
            LayerKind::Sliding { window } => Some(window),
            LayerKind::Full => None,
        })
        .unwrap_or(n);
    // The rings' capacities, as runtime::generate sizes them.
    let dims = HashMap::from([("B", b), ("S", s), ("CF", n), ("CS", window.min(n))]);
    let caches: u64 = g
        .inputs()
        .into_iter()
        .filter(|&i| g.node(i).ty.dtype == DType::F32)
        .map(|i| {
            let size: usize = g
                .node(i)
                .ty
                .shape
                .0
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => *k as usize,
                    Dim::Sym(x) => dims.get(x.as_str()).copied().unwrap_or(1),
                })
                .product();
            4 * size as u64
        })
        .sum();
    weights + caches
}

/// Read bandwidth of this machine, GB/s: the best of a few sums over 256 MiB, split over
/// `threads` (eight partial sums per thread, so the loads are not serialised).
fn read_bandwidth_gbs(threads: usize) -> f64 {
    let n: usize = 64 << 20;
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|sc| {
            let hs: Vec<_> = src
                .chunks(chunk)
                .map(|s| {
                    sc.spawn(move || {
                        let mut acc = [0f32; 8];
                        for c in s.chunks_exact(8) {
                            for l in 0..8 {
                                acc[l] += c[l];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (4 * n) as f64 / best / 1e9
}

/// Memory bandwidth of this machine, GB/s counting bytes read plus bytes written: the best
/// of a few copies of 256 MiB, split over `threads`.
fn copy_bandwidth_gbs(threads: usize) -> f64 {
    let n = 64 << 20; // f32s: 256 MiB
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let chunk = n.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|sc| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * (4 * n) as f64 / best / 1e9
}
