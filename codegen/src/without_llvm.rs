//! The LLVM API of a build without the `llvm` feature: same signatures, every call says
//! why it cannot work, so callers need no `cfg` of their own.

use crate::{CacheConfig, WITHOUT_LLVM};
use encdecc_compiler::kernel::{KernelFn, LoopKernel};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    LlvmIr,
    OptimizedIr,
    Asm,
}

/// Never constructed in this build (`compile` always fails).
pub struct CompiledKernels {
    _never: (),
}

impl CompiledKernels {
    pub fn get(&self, _name: &str) -> Option<KernelFn> {
        None
    }
    pub fn function_count(&self) -> usize {
        0
    }
    pub fn from_cache(&self) -> bool {
        false
    }
    pub fn cache_file(&self) -> Option<&std::path::Path> {
        None
    }
}

pub fn compile(_kernels: &[LoopKernel]) -> Result<CompiledKernels, String> {
    Err(WITHOUT_LLVM.into())
}

pub fn compile_with(
    _kernels: &[LoopKernel],
    _cache: &CacheConfig,
) -> Result<CompiledKernels, String> {
    Err(WITHOUT_LLVM.into())
}

pub fn emit_llvm_ir(_kernels: &[LoopKernel]) -> Result<String, String> {
    Err(WITHOUT_LLVM.into())
}

pub fn emit(_kernels: &[LoopKernel], _what: Emit) -> Result<String, String> {
    Err(WITHOUT_LLVM.into())
}
