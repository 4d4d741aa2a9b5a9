//! `out = x · wᵀ` with low-precision weights: bf16, or int8 with a per-output-channel
//! scale, always accumulated in f32. The kernels are the codegen crate's `lowp` module;
//! this module chooses one, packs the operands into its panels, blocks for the caches
//! and splits the output over the worker pool.
//!
//! Routes, by the number of rows `m` of `x`:
//! - `m ≤ GEMV_MAX_ROWS` (a decode step): `gemv`, which streams each weight row once and
//!   keeps `x` in f32.
//! - larger `m`: `gemm`, the packed micro-kernel (AMX tiles where the CPU and OS allow
//!   them, see `amx`; else the emulated zmm kernel), with `x` rounded to bf16 (round to
//!   nearest even) while it is packed. Int8 weights are exact in bf16, so they are packed
//!   as bf16 integers and their scales multiply the f32 sums at the store.
//! - no LLVM (or it failed): `portable`, scalar Rust, `x` in f32.

mod amx;
mod gemm;
mod gemv;
mod pack;
mod portable;

use encdecc_codegen::lowp::{AmxKernel, GemmKernel, LowpKernels};
use half::bf16;

/// Up to this many rows of `x` take the GEMV route.
pub const GEMV_MAX_ROWS: usize = 16;

/// A weight `[n, k]`, row-major.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    Bf16(&'a [bf16]),
    /// `w[j, t] = q[j, t] · scales[j]`.
    Int8 {
        q: &'a [i8],
        scales: &'a [f32],
    },
}

/// Which kernels compute the product; `Auto` is what `matmul_xwt` runs, the others exist
/// so tests (and benchmarks) can run every route on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The compiled kernels when there are any, else `Portable`; for `m > GEMV_MAX_ROWS`
    /// the fastest micro-kernel as measured: `Amx` where the CPU has AMX-BF16 and Linux
    /// permits it, else `Emulated`. Not `Native` even with AVX512_BF16: on the one CPU
    /// measured with both (a Sapphire Rapids, 2 threads) `vdpbf16ps` issued only every
    /// other cycle and the native kernel ran at 165–177 GFLOP/s against the emulated one's
    /// 200–214.
    Auto,
    /// `vdpbf16ps` for `m > GEMV_MAX_ROWS`.
    Native,
    /// The emulated (shift + FMA) micro-kernel for `m > GEMV_MAX_ROWS`.
    Emulated,
    /// AMX tiles (`tdpbf16ps`) for `m > GEMV_MAX_ROWS`.
    Amx,
    /// Scalar Rust, whatever `m`.
    Portable,
}

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` for `x` `[m, k]`, `w` `[n, k]`, `out` `[m, n]` (all
/// contiguous), on up to `threads` threads.
pub fn matmul_xwt(
    x: &[f32],
    w: WeightRef,
    out: &mut [f32],
    dims: (usize, usize, usize),
    threads: usize,
) {
    matmul_xwt_with(x, w, out, dims, threads, Variant::Auto)
        .expect("the automatic route always has a kernel");
}

/// `matmul_xwt` through the kernels of `variant`; an error when they are not available
/// here (no LLVM, `Native` on a CPU without AVX512_BF16, `Amx` without AMX-BF16 or the
/// OS's permission for it). Panics when a slice is shorter
/// than its shape says.
pub fn matmul_xwt_with(
    x: &[f32],
    w: WeightRef,
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
    variant: Variant,
) -> Result<(), String> {
    assert!(x.len() >= m * k, "x has {} values, not {m}×{k}", x.len());
    assert!(
        out.len() >= m * n,
        "out has {} values, not {m}×{n}",
        out.len()
    );
    match w {
        WeightRef::Bf16(w) => assert!(w.len() >= n * k, "w has {} values, not {n}×{k}", w.len()),
        WeightRef::Int8 { q, scales } => {
            assert!(q.len() >= n * k, "q has {} values, not {n}×{k}", q.len());
            assert!(scales.len() >= n, "{} scales for {n} rows", scales.len());
        }
    }
    let dims = (m, k, n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // No k-block for the micro-kernel to store; the sums are empty.
        out[..m * n].fill(0.0);
        return Ok(());
    }
    let kernels = match variant {
        Variant::Portable => None,
        Variant::Auto => encdecc_codegen::compile_lowp().ok(),
        _ => Some(encdecc_codegen::compile_lowp()?),
    };
    let Some(kernels) = kernels else {
        portable::matmul_xwt(x, w, out, dims);
        return Ok(());
    };
    if m <= GEMV_MAX_ROWS {
        gemv::matmul_xwt(kernels, x, w, out, dims, threads);
        return Ok(());
    }
    let (kernel, amx) = micro_kernel(kernels, variant)?;
    gemm::matmul_xwt(kernel, amx, x, w, out, dims, threads);
    Ok(())
}

/// The micro-kernel for `variant`, and the AMX calls around it when it is AMX's.
fn micro_kernel(
    kernels: &LowpKernels,
    variant: Variant,
) -> Result<(GemmKernel, Option<AmxKernel>), String> {
    let amx = || kernels.amx.filter(|_| amx::permitted());
    let with_amx = |k: AmxKernel| (k.gemm, Some(k));
    match variant {
        Variant::Native => kernels
            .native
            .map(|k| (k, None))
            .ok_or_else(|| "this CPU lacks AVX512_BF16 (no native bf16 kernel)".into()),
        Variant::Amx => amx().map(with_amx).ok_or_else(|| match kernels.amx {
            None => "this CPU lacks AMX-BF16 (no AMX kernel)".into(),
            Some(_) => "the OS did not permit AMX tile data (arch_prctl)".into(),
        }),
        Variant::Auto => Ok(amx().map_or((kernels.emulated, None), with_amx)),
        Variant::Emulated | Variant::Portable => Ok((kernels.emulated, None)),
    }
}

/// Whether the route `variant` takes for `m` rows rounds `x` to bf16 (the GEMM routes);
/// the others multiply the f32 values. For the tests' reference.
pub fn rounds_activations(m: usize, variant: Variant) -> bool {
    let compiled = match variant {
        Variant::Portable => false,
        Variant::Auto => encdecc_codegen::compile_lowp().is_ok(),
        Variant::Native | Variant::Emulated | Variant::Amx => true,
    };
    compiled && m > GEMV_MAX_ROWS
}

/// Symmetric per-output-channel int8: `scales[j] = max_t |w[j, t]| / 127` and `q[j, t] =
/// round(w[j, t] / scales[j])`, so `|w - q·s| ≤ s/2`. A zero row gets scale 0 and zeros;
/// non-finite values are the caller's to avoid (they make the row's scale non-finite).
pub fn quantize_int8(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    assert!(w.len() >= n * k, "w has {} values, not {n}×{k}", w.len());
    if k == 0 {
        return (vec![], vec![0.0; n]);
    }
    // The loader's rule, so that a weight quantised here and one quantised at load agree.
    crate::weights::quantize_rows(&w[..n * k], k)
}

/// `w` rounded to bf16, to nearest even.
pub fn bf16_from_f32(w: &[f32]) -> Vec<bf16> {
    w.iter().map(|&v| bf16::from_f32(v)).collect()
}
