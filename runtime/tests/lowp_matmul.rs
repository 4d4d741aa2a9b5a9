//! `cpu::lowp::matmul_xwt` on every route against an f64 product of the same operands
//! the route multiplies: `x` rounded to bf16 where the route rounds it (the GEMM routes),
//! the weights' exact bf16 or int8 values, the int8 scale applied to the sum.
//!
//! The bound is f32 accumulation's: a sum of `k` products accumulated in f32 (in any
//! order, in blocks) is within `k · u · Σ|x||w|` of the exact sum (`u = 2⁻²⁴`), the
//! products themselves being exact (bf16 × bf16, f32 × bf16 and f32 × int8 all fit in f32's
//! 24 bits… for f32 × bf16 up to one rounding each, counted as one more term); the scale's
//! multiplication and the sum of scaled k-blocks add a few `u` more. So
//! `|got - want| ≤ (k + 4) · u · s · Σ|x||w|`, plus the subnormals' absolute error that
//! `vdpbf16ps` flushes (none here: the values are ≥ 2⁻¹⁰ in magnitude or zero).

use encdecc_runtime::cpu::lowp::{
    bf16_from_f32, matmul_xwt, matmul_xwt_with, quantize_int8, rounds_activations, Variant,
    WeightRef,
};
use encdecc_runtime::rng::Rng;
use half::bf16;

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    dims: (usize, usize, usize),
}

impl Case {
    fn new(seed: u64, (m, k, n): (usize, usize, usize)) -> Case {
        let mut rng = Rng::new(seed);
        let mut value = || {
            let v = rng.uniform() * 2.0 - 1.0;
            if v.abs() < 1.0 / 1024.0 {
                0.0
            } else {
                v
            }
        };
        let x = (0..m * k).map(|_| value()).collect();
        let w = (0..n * k).map(|_| value()).collect();
        Case {
            x,
            w,
            dims: (m, k, n),
        }
    }
}

/// The weights as the route sees them: exact values per element and per-row scales.
enum Weights {
    Bf16(Vec<bf16>),
    Int8(Vec<i8>, Vec<f32>),
}

impl Weights {
    fn as_ref(&self) -> WeightRef<'_> {
        match self {
            Weights::Bf16(w) => WeightRef::Bf16(w),
            Weights::Int8(q, scales) => WeightRef::Int8 { q, scales },
        }
    }
    fn value(&self, i: usize) -> f64 {
        match self {
            Weights::Bf16(w) => w[i].to_f64(),
            Weights::Int8(q, _) => q[i] as f64,
        }
    }
    fn scale(&self, j: usize) -> f64 {
        match self {
            Weights::Bf16(_) => 1.0,
            Weights::Int8(_, s) => s[j] as f64,
        }
    }
}

/// Runs `variant` on `threads` and compares every output with the bound above.
fn check(case: &Case, w: &Weights, variant: Variant, threads: usize) {
    let (m, k, n) = case.dims;
    let mut out = vec![f32::NAN; m * n];
    matmul_xwt_with(&case.x, w.as_ref(), &mut out, case.dims, threads, variant).unwrap();
    let rounded = rounds_activations(m, variant);
    let x: Vec<f64> = case
        .x
        .iter()
        .map(|&v| {
            if rounded {
                bf16::from_f32(v).to_f64()
            } else {
                v as f64
            }
        })
        .collect();
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0f64, 0f64);
            for t in 0..k {
                let p = x[i * k + t] * w.value(j * k + t);
                sum += p;
                mag += p.abs();
            }
            let s = w.scale(j);
            let want = sum * s;
            let tol = (k as f64 + 4.0) * U * mag * s;
            let got = out[i * n + j] as f64;
            assert!(
                (got - want).abs() <= tol,
                "{variant:?} on {threads} threads, {m}x{k}x{n}, {} weights, [{i}, {j}]: \
                 {got} vs {want} (tolerance {tol:e})",
                match w {
                    Weights::Bf16(_) => "bf16",
                    Weights::Int8(..) => "int8",
                }
            );
        }
    }
}

fn weights(case: &Case) -> [Weights; 2] {
    let (_, k, n) = case.dims;
    let (q, s) = quantize_int8(&case.w, n, k);
    [Weights::Bf16(bf16_from_f32(&case.w)), Weights::Int8(q, s)]
}

const MS: [usize; 9] = [1, 2, 3, 5, 16, 17, 64, 129, 300];
const KS: [usize; 7] = [1, 2, 7, 64, 65, 300, 1024];
const NS: [usize; 7] = [1, 3, 16, 31, 32, 100, 513];

/// The micro-kernels this build and CPU have: none without LLVM, the native one only with
/// AVX512_BF16, AMX only with AMX-BF16 and the OS's permission (elsewhere they are errors,
/// checked below).
fn compiled_variants() -> Vec<Variant> {
    let mut v = match encdecc_codegen::compile_lowp() {
        Ok(k) if k.native.is_some() => vec![Variant::Emulated, Variant::Native],
        Ok(_) => vec![Variant::Emulated],
        Err(_) => vec![],
    };
    if amx_runs() {
        v.push(Variant::Amx);
    }
    v
}

/// Whether the AMX route runs here; prints why not where it does not, so that a skipped
/// AMX test says so (to stderr itself: the harness hides a passing test's `eprintln!`).
fn amx_runs() -> bool {
    let case = Case::new(1, (32, 8, 8));
    let w = Weights::Bf16(bf16_from_f32(&case.w));
    let mut out = vec![0f32; 32 * 8];
    let r = matmul_xwt_with(&case.x, w.as_ref(), &mut out, (32, 8, 8), 1, Variant::Amx);
    if let Err(e) = &r {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipping the AMX route: {e}");
    }
    r.is_ok()
}

#[test]
fn every_shape_on_the_automatic_route_on_two_threads() {
    for (s, &m) in MS.iter().enumerate() {
        for &k in &KS {
            for &n in &NS {
                let case = Case::new(s as u64 * 1000 + k as u64 * 7 + n as u64, (m, k, n));
                for w in &weights(&case) {
                    check(&case, w, Variant::Auto, 2);
                }
            }
        }
    }
}

#[test]
fn both_micro_kernels_on_one_and_two_threads() {
    for variant in compiled_variants() {
        for &m in &[1, 5, 17, 64, 129, 300] {
            for &k in &[1, 2, 7, 65, 300] {
                for &n in &[1, 31, 32, 100, 513] {
                    let case = Case::new((m * 31 + k * 7 + n) as u64, (m, k, n));
                    for w in &weights(&case) {
                        for threads in [1, 2] {
                            check(&case, w, variant, threads);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_amx_kernel_on_every_shape_on_one_and_two_threads() {
    if !amx_runs() {
        return;
    }
    for (s, &m) in MS.iter().enumerate() {
        for &k in &KS {
            for &n in &NS {
                let case = Case::new(s as u64 * 1000 + k as u64 * 7 + n as u64, (m, k, n));
                for w in &weights(&case) {
                    for threads in [1, 2] {
                        check(&case, w, Variant::Amx, threads);
                    }
                }
            }
        }
    }
}

/// Linux grants the tile permission per process and allocates a thread's tile state on
/// its first tile instruction: a thread started before the request (as the pool's workers
/// may be) and one started after both run the kernel. (Run alone, this test is the one
/// that makes the request; among the others it may come after it.)
#[test]
fn threads_started_before_and_after_the_amx_request_run_the_kernel() {
    let case = Case::new(3, (64, 96, 48));
    let w = Weights::Bf16(bf16_from_f32(&case.w));
    let (case, w) = (&case, &w);
    let (go, wait) = std::sync::mpsc::channel::<bool>();
    std::thread::scope(|s| {
        let before = s.spawn(move || {
            if wait.recv() == Ok(true) {
                check(case, w, Variant::Amx, 1);
            }
        });
        let runs = amx_runs();
        go.send(runs).unwrap();
        before.join().unwrap();
        if runs {
            s.spawn(|| check(case, w, Variant::Amx, 1)).join().unwrap();
        }
    });
}

#[test]
fn a_k_longer_than_one_block_accumulates_across_blocks() {
    // 1024 and 1025 values of k are 4 and 5 k-blocks of the zmm kernels, 2 and 3 of AMX's
    // (whose 2048 is 4).
    for variant in compiled_variants() {
        for &(m, k, n) in &[
            (17, 1024, 33),
            (64, 1025, 300),
            (300, 2048, 64),
            (96, 1056, 544),
        ] {
            let case = Case::new(k as u64, (m, k, n));
            for w in &weights(&case) {
                check(&case, w, variant, 2);
            }
        }
    }
}

#[test]
fn an_empty_k_gives_zeros_on_every_route() {
    for variant in compiled_variants()
        .into_iter()
        .chain([Variant::Auto, Variant::Portable])
    {
        for m in [1, 40] {
            let case = Case::new(0, (m, 0, 20));
            for w in &weights(&case) {
                check(&case, w, variant, 2);
            }
        }
    }
}

#[test]
fn the_portable_route() {
    for &m in &[1, 3, 17, 64] {
        for &k in &[1, 7, 65, 300] {
            for &n in &[1, 16, 31, 100] {
                let case = Case::new((m + k + n) as u64, (m, k, n));
                for w in &weights(&case) {
                    check(&case, w, Variant::Portable, 1);
                }
            }
        }
    }
}

#[test]
fn matmul_xwt_is_the_automatic_route() {
    let case = Case::new(5, (129, 65, 100));
    for w in &weights(&case) {
        let mut a = vec![0f32; 129 * 100];
        let mut b = vec![1f32; 129 * 100];
        matmul_xwt(&case.x, w.as_ref(), &mut a, case.dims, 2);
        matmul_xwt_with(&case.x, w.as_ref(), &mut b, case.dims, 2, Variant::Auto).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn the_native_kernel_is_an_error_where_the_cpu_has_none() {
    let case = Case::new(1, (32, 8, 8));
    let w = Weights::Bf16(bf16_from_f32(&case.w));
    let mut out = vec![0f32; 32 * 8];
    let r = matmul_xwt_with(
        &case.x,
        w.as_ref(),
        &mut out,
        (32, 8, 8),
        1,
        Variant::Native,
    );
    let native = encdecc_codegen::compile_lowp().map(|k| k.native.is_some());
    assert_eq!(r.is_ok(), native == Ok(true), "{r:?}");
}

#[test]
fn the_amx_kernel_is_an_error_where_the_cpu_has_none() {
    let has = encdecc_codegen::compile_lowp().map(|k| k.amx.is_some());
    if has == Ok(true) {
        // Linux may still refuse the permission; then it is an error too.
        let _ = amx_runs();
        return;
    }
    assert!(!amx_runs());
}

#[test]
fn quantize_int8_round_trips_within_half_a_step() {
    let mut rng = Rng::new(9);
    let (n, k) = (40, 77);
    let mut w: Vec<f32> = (0..n * k).map(|_| (rng.uniform() - 0.5) * 6.0).collect();
    w[3 * k..4 * k].fill(0.0); // a zero row
    w[5 * k + 2] = -100.0; // an outlier sets its row's scale
    let (q, s) = quantize_int8(&w, n, k);
    for j in 0..n {
        let row = &w[j * k..(j + 1) * k];
        let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(s[j], max / 127.0, "row {j}");
        for t in 0..k {
            let back = q[j * k + t] as f32 * s[j];
            assert!(
                (back - row[t]).abs() <= s[j] * 0.5 * (1.0 + 1e-6),
                "[{j}, {t}]"
            );
            assert!(q[j * k + t] != i8::MIN, "-128 is never used (symmetric)");
        }
    }
    assert!(q[3 * k..4 * k].iter().all(|&v| v == 0) && s[3] == 0.0);
    assert_eq!(q[5 * k + 2], -127);
}

#[test]
fn bf16_from_f32_rounds_to_nearest_even() {
    let ties = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -(1.0 + 1.0 / 256.0)];
    let got: Vec<f32> = bf16_from_f32(&ties).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got, [1.0, 1.0 + 4.0 / 256.0, -1.0]);
}
