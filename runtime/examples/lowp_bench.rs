//! GFLOP/s of `cpu::lowp::matmul_xwt` (bf16 and int8 weights, every micro-kernel) beside
//! the f32 `gemm` crate,
//! and GB/s of the decode GEMVs beside the f32 GEMV and a plain f32 streaming sum (the
//! memory bandwidth bound), all in one run on the same threads.
//!
//! `cargo run --release -p encdecc-runtime --example lowp_bench [threads]`

use encdecc_runtime::cpu::lowp::{
    bf16_from_f32, matmul_xwt_with, quantize_int8, Variant, WeightRef,
};
use encdecc_runtime::cpu::{gemv, matmul, pool};
use encdecc_runtime::rng::Rng;
use std::time::Instant;

/// The best of several runs lasting together at least ~0.5 s, in seconds.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || (start.elapsed().as_secs_f64() < 0.5 && runs < 200) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform() - 0.5).collect()
}

fn f32_gemm(x: &[f32], w: &[f32], out: &mut [f32], (m, k, n): (usize, usize, usize), t: usize) {
    let av = matmul::MatView {
        rs: k as isize,
        cs: 1,
    };
    let bv = matmul::MatView {
        rs: 1,
        cs: k as isize,
    };
    matmul::batched(x, av, &|_| 0, w, bv, &|_| 0, out, 1, (m, k, n), t);
}

/// GB/s of summing `bytes` of f32 on `threads` parts (sixteen lanes each, so it
/// vectorises).
fn stream(bytes: usize, threads: usize) -> f64 {
    let data = random(bytes / 4, 1);
    let parts = threads.max(1);
    let per = data.len().div_ceil(parts);
    let sums: Vec<std::sync::Mutex<f32>> = (0..parts).map(|_| 0f32.into()).collect();
    let t = time(|| {
        pool::run(parts, &|p| {
            let chunk = &data[p * per..((p + 1) * per).min(data.len())];
            let mut s = [0f32; 16];
            for c in chunk.chunks_exact(16) {
                for l in 0..16 {
                    s[l] += c[l];
                }
            }
            *sums[p].lock().unwrap() = s.iter().sum();
        })
    });
    std::hint::black_box(&sums);
    bytes as f64 / t / 1e9
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let kernels = encdecc_codegen::compile_lowp().expect("the lowp kernels compile");
    let native = kernels.native.is_some();
    // Asks for the OS's permission once; an error here means no AMX column.
    let amx = {
        let mut out = vec![0f32; 32];
        let w = bf16_from_f32(&[0.0; 32]);
        let x = [0f32; 32 * 32];
        let dims = (32, 32, 1);
        matmul_xwt_with(&x, WeightRef::Bf16(&w), &mut out, dims, 1, Variant::Amx).is_ok()
    };
    println!(
        "threads {threads}; micro-kernels: native {:?}, emulated {:?}, amx {:?} (runs: {amx})",
        kernels.native.map(|k| k.tile),
        kernels.emulated.tile,
        kernels.amx.map(|k| k.gemm.tile),
    );
    println!(
        "\nGEMM GFLOP/s              f32 gemm  bf16 dpbf16  bf16 emul  bf16 amx  int8 dpbf16  int8 emul  int8 amx"
    );
    let shapes = [
        ("1024^3", (1024, 1024, 1024)),
        ("attn 1024x512x512", (1024, 512, 512)),
        ("mlp 1024x512x1536", (1024, 512, 1536)),
        ("mlp 1024x1536x512", (1024, 1536, 512)),
        ("lm head 1024x512x32000", (1024, 512, 32000)),
    ];
    for (name, (m, k, n)) in shapes {
        let x = random(m * k, 2);
        let w = random(n * k, 3);
        let wb = bf16_from_f32(&w);
        let (q, s) = quantize_int8(&w, n, k);
        let mut out = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let gf = |t: f64| flops / t / 1e9;
        let f32_t = time(|| f32_gemm(&x, &w, &mut out, (m, k, n), threads));
        let mut run = |w: WeightRef, v: Variant| {
            if (v == Variant::Native && !native) || (v == Variant::Amx && !amx) {
                return f64::NAN;
            }
            gf(time(|| {
                matmul_xwt_with(&x, w, &mut out, (m, k, n), threads, v).unwrap()
            }))
        };
        let bn = run(WeightRef::Bf16(&wb), Variant::Native);
        let be = run(WeightRef::Bf16(&wb), Variant::Emulated);
        let ba = run(WeightRef::Bf16(&wb), Variant::Amx);
        let int8 = WeightRef::Int8 { q: &q, scales: &s };
        let qn = run(int8, Variant::Native);
        let qe = run(int8, Variant::Emulated);
        let qa = run(int8, Variant::Amx);
        println!(
            "{name:<24} {:>9.1} {bn:>12.1} {be:>10.1} {ba:>9.1} {qn:>12.1} {qe:>10.1} {qa:>9.1}",
            gf(f32_t)
        );
    }

    println!("\nGEMV (m=1), GB/s of weights read       f32 gemv   bf16   int8   (µs each)");
    for (n, k) in [(32000, 512), (1536, 512)] {
        let x = random(k, 4);
        let w = random(n * k, 5);
        let wb = bf16_from_f32(&w);
        let (q, s) = quantize_int8(&w, n, k);
        let mut out = vec![0f32; n];
        let f = time(|| gemv::gemv_t(&x, &w, &mut out, (1, k, n), threads));
        let b = time(|| {
            let w = WeightRef::Bf16(&wb);
            matmul_xwt_with(&x, w, &mut out, (1, k, n), threads, Variant::Auto).unwrap()
        });
        let i = time(|| {
            let w = WeightRef::Int8 { q: &q, scales: &s };
            matmul_xwt_with(&x, w, &mut out, (1, k, n), threads, Variant::Auto).unwrap()
        });
        let elems = (n * k) as f64;
        println!(
            "n={n:<6} k={k:<4} (f32 {:>5.1} MB)       {:>8.1} {:>6.1} {:>6.1}   ({:.0} {:.0} {:.0})",
            elems * 4.0 / 1e6,
            elems * 4.0 / f / 1e9,
            elems * 2.0 / b / 1e9,
            elems / i / 1e9,
            f * 1e6,
            b * 1e6,
            i * 1e6
        );
    }
    println!("\nf32 streaming sum GB/s (the bound), by buffer size");
    for mb in [1, 3, 16, 32, 64, 1024] {
        println!("{mb:>5} MiB: {:>6.1}", stream(mb << 20, threads));
    }
}
