//! Printed forms of the compiled module, for `--emit` and for checking what LLVM made of it.

use crate::llvm_ir::{module_text, unique_kernels};
use crate::target;
use encdecc_compiler::kernel::LoopKernel;
use inkwell::context::Context;
use inkwell::targets::FileType;

/// Which printed form `emit` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The module as generated (deterministic; what the snapshots hold).
    LlvmIr,
    /// After the O3 pipeline: shows whether the loops were vectorised (`<8 x float>`).
    OptimizedIr,
    /// The host target machine's assembly of the optimised module. The JIT's code equals
    /// this only because every function names the host CPU; see `llvm_ir::TargetSpec`.
    Asm,
}

/// The textual LLVM IR of a module with one function per distinct kernel.
pub fn emit_llvm_ir(kernels: &[LoopKernel]) -> Result<String, String> {
    emit(kernels, Emit::LlvmIr)
}

pub fn emit(kernels: &[LoopKernel], what: Emit) -> Result<String, String> {
    let tm = target::host_machine()?;
    let text = module_text(&unique_kernels(kernels)?, &target::spec(&tm))?;
    let ctx = Context::create();
    // Parsed even for `LlvmIr`, so that emitted text is always text LLVM accepts.
    let module = target::parse(&ctx, &text)?;
    if what == Emit::LlvmIr {
        return Ok(text);
    }
    target::optimize(&module, &tm)?;
    match what {
        Emit::Asm => {
            let buffer = tm
                .write_to_memory_buffer(&module, FileType::Assembly)
                .map_err(|e| format!("LLVM could not emit assembly: {e}"))?;
            Ok(String::from_utf8_lossy(buffer.as_slice()).into_owned())
        }
        _ => Ok(module.print_to_string().to_string()),
    }
}
