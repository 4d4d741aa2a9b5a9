//! Code generation: `LoopKernel`s → LLVM IR → machine code for this CPU.
//!
//! The LLVM backend sits behind the `llvm` feature (on by default). Builds for machines
//! without libLLVM (the GPU hosts) turn it off; the API stays and reports that LLVM is
//! missing instead of failing to link.
//!
//! `compile` keeps what it compiles in an on-disk cache (`$ENCDECC_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/encdecc/kernels` or `~/.cache/encdecc/kernels`; `off` disables it), so
//! that another process compiling the same kernels loads a shared library instead of
//! running LLVM; see `cache.rs`. `compile_with` takes the cache directory explicitly.

#[cfg(feature = "llvm")]
mod check;
#[cfg(feature = "llvm")]
mod llvm_ir;
#[cfg(feature = "llvm")]
mod scalar;

pub use encdecc_compiler::kernel::KernelFn;

mod config;
/// CUDA C for the GPU backend (text only; no toolkit needed).
pub mod cuda;
/// Low-precision (bf16, int8) matmul kernels for the CPU backend.
pub mod lowp;
pub use config::{CacheConfig, CACHE_DIR_ENV};

#[cfg(feature = "llvm")]
mod cache;
#[cfg(feature = "llvm")]
mod emit;
#[cfg(feature = "llvm")]
mod jit;
#[cfg(feature = "llvm")]
mod target;

#[cfg(feature = "llvm")]
pub use emit::{emit, emit_llvm_ir, Emit};
#[cfg(feature = "llvm")]
pub use jit::{compile, compile_with, CompiledKernels};
pub use lowp::{compile_lowp, emit_lowp, LowpKernels};

#[cfg(not(feature = "llvm"))]
mod without_llvm;
#[cfg(not(feature = "llvm"))]
pub use without_llvm::{compile, compile_with, emit, emit_llvm_ir, CompiledKernels, Emit};

/// The error every LLVM entry point returns in a build without the `llvm` feature.
pub const WITHOUT_LLVM: &str =
    "encdecc-codegen was built without LLVM (feature `llvm` off); the CPU backend is unavailable in this build";
