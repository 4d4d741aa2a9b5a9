//! Low-precision matmul kernels for the CPU backend, `out = x · wᵀ` with bf16 or int8
//! weights and f32 accumulation: a GEMM micro-kernel over packed panels (native
//! `vdpbf16ps`, an emulated variant for CPUs without AVX512_BF16, and AMX `tdpbf16ps`
//! where the CPU has AMX-BF16) and decode GEMVs
//! that stream weight rows. They are shape-independent, so one module per process holds
//! them all (`compile_lowp`); the runtime (`encdecc_runtime::cpu::lowp`) packs and blocks.

#[cfg(feature = "llvm")]
mod amx;
#[cfg(feature = "llvm")]
mod gemv;
#[cfg(feature = "llvm")]
mod microkernel;
#[cfg(feature = "llvm")]
mod module;
#[cfg(feature = "llvm")]
mod store;
#[cfg(feature = "llvm")]
mod text;

use crate::Emit;

/// How the GEMM micro-kernel forms the k-pair products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// `llvm.x86.avx512bf16.dpbf16ps.512`; needs AVX512_BF16.
    Native,
    /// Shift/mask to f32, then FMA; any CPU with FMA (best with AVX-512).
    Emulated,
    /// AMX tiles, `llvm.x86.tdpbf16ps`; needs AMX-TILE and AMX-BF16, and the process's
    /// permission to use the tile data (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM)`, the
    /// runtime's to request). Its A panel layout differs (see `GemmFn`).
    Amx,
}

/// A micro-kernel's tile: `mr` rows of `x`, `nr` columns of `w` (a multiple of 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub mr: usize,
    pub nr: usize,
}

/// `(kp, a, b, c, ldc, rows, cols, accumulate, scales)`: the `Tile` of `C` at `c` (row
/// stride `ldc`) from `kp` k-pairs of packed `a` (`kp · mr` bf16 pairs) and `b` (`kp · nr`
/// pairs); writes rows `< rows`, columns `< cols`, times `scales[col]` unless `scales` is
/// null, added to `C` when `accumulate != 0`.
///
/// For `GemmVariant::Amx` (`mr = nr = 32`) `kp` is a multiple of 16 and `a` is grouped by
/// 16 pairs: `[kp/16][mr][16]` pairs, so that a tile row (16 pairs of one row) is
/// contiguous; `b` is as above.
pub type GemmFn =
    unsafe extern "C" fn(i64, *const u32, *const u32, *mut f32, i64, i64, i64, i32, *const f32);

/// `(x, m, k, w, scales, out, n, j_begin, j_end)`: `out[i·n + j] = scales[j] · Σ_t
/// x[i·k + t] · w[j·k + t]` for `i < m`, `j_begin ≤ j < j_end`; null `scales` means 1.
pub type GemvFn<W> =
    unsafe extern "C" fn(*const f32, i64, i64, *const W, *const f32, *mut f32, i64, i64, i64);

/// `()`: loads (`AmxKernel::configure`) or releases (`AmxKernel::release`) the calling
/// thread's AMX tile configuration.
pub type TileFn = unsafe extern "C" fn();

/// The AMX micro-kernel and the calls around it: a thread runs `configure` before its
/// first `gemm` call and `release` after its last (the kernel does not configure the
/// tiles itself: `ldtilecfg` costs as much as a small call's arithmetic).
#[derive(Clone, Copy, Debug)]
pub struct AmxKernel {
    pub gemm: GemmKernel,
    pub configure: TileFn,
    pub release: TileFn,
}

/// One compiled micro-kernel and the tile it computes (the runtime packs to it).
#[derive(Clone, Copy, Debug)]
pub struct GemmKernel {
    pub variant: GemmVariant,
    pub tile: Tile,
    pub f: GemmFn,
}

/// The compiled kernels; valid for the process (see `compile_lowp`).
pub struct LowpKernels {
    /// `None` where the CPU lacks AVX512_BF16 (LLVM cannot select `vdpbf16ps` there).
    pub native: Option<GemmKernel>,
    pub emulated: GemmKernel,
    /// `None` where the CPU (as LLVM sees it) lacks AMX-TILE or AMX-BF16. Calling it
    /// without the OS's permission for tile data kills the process (SIGILL).
    pub amx: Option<AmxKernel>,
    /// Weights as raw bf16 bits.
    pub gemv_bf16: GemvFn<u16>,
    pub gemv_int8: GemvFn<i8>,
    #[cfg(feature = "llvm")]
    _module: crate::jit::CompiledModule,
}

/// The kernels compiled for this CPU, once per process (later calls return the first
/// result, error included).
pub fn compile_lowp() -> Result<&'static LowpKernels, String> {
    #[cfg(feature = "llvm")]
    {
        static KERNELS: std::sync::OnceLock<Result<LowpKernels, String>> =
            std::sync::OnceLock::new();
        KERNELS
            .get_or_init(module::compile)
            .as_ref()
            .map_err(Clone::clone)
    }
    #[cfg(not(feature = "llvm"))]
    Err(crate::WITHOUT_LLVM.into())
}

/// The module `compile_lowp` builds, printed: as generated, optimised, or as assembly.
pub fn emit_lowp(what: Emit) -> Result<String, String> {
    #[cfg(feature = "llvm")]
    return module::emit(what);
    #[cfg(not(feature = "llvm"))]
    {
        let _ = what;
        Err(crate::WITHOUT_LLVM.into())
    }
}

#[cfg(all(test, feature = "llvm"))]
mod tests;
