//! The host target and the pass pipeline for it: parse the module text, verify, optimise.

use crate::llvm_ir::TargetSpec;
use inkwell::context::Context;
use inkwell::llvm_sys::support::LLVMParseCommandLineOptions;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::support::load_library_permanently;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine,
};
use inkwell::OptimizationLevel;
use std::path::Path;
use std::sync::OnceLock;

/// Registers the native target and the vector math library, once per process (inkwell
/// also serialises target registration, and `create_jit_execution_engine` repeats it; it
/// is idempotent). Returns whether the vector math library is in use.
fn init() -> Result<bool, String> {
    static INIT: OnceLock<Result<bool, String>> = OnceLock::new();
    INIT.get_or_init(|| {
        Target::initialize_native(&InitializationConfig::default())
            .map_err(|e| format!("LLVM has no native target: {e}"))?;
        Ok(use_vector_math())
    })
    .clone()
}

/// Whether the loop vectoriser may call libmvec (see `use_vector_math`); part of the cache
/// key, since it changes the code.
pub fn vector_math() -> Result<bool, String> {
    init()
}

/// Lets the loop vectoriser call glibc's vector math (libmvec: `_ZGVdN8v_expf`, …) for
/// `llvm.exp/log/sin/cos/pow` instead of scalarising them into one libm call per lane;
/// softmax's exp-bound stages run several times faster. libmvec's results are within a
/// few ulp of libm's (the interpreter's), not bit-equal. Skipped, leaving scalar libm
/// calls, where libmvec cannot be loaded (the JIT must resolve its symbols in-process) or
/// the CPU lacks AVX2 (LLVM 14 only maps the SSE and AVX2 variants).
fn use_vector_math() -> bool {
    let avx2 = TargetMachine::get_host_cpu_features()
        .to_string()
        .contains("+avx2");
    if !avx2 || load_library_permanently(Path::new("libmvec.so.1")).is_err() {
        return false;
    }
    // LLVM reads the vector library from a command-line option only; it is process-global,
    // which is why this runs once, before any module is optimised.
    let args = [c"encdecc".as_ptr(), c"-vector-library=LIBMVEC-X86".as_ptr()];
    // SAFETY: two valid NUL-terminated strings; LLVM copies what it keeps.
    unsafe { LLVMParseCommandLineOptions(2, args.as_ptr(), std::ptr::null()) };
    true
}

/// A target machine for this CPU, its name and features included (not a generic x86-64).
pub fn host_machine() -> Result<TargetMachine, String> {
    machine(RelocMode::Default, CodeModel::JITDefault)
}

/// The host machine for code that goes into a shared library (position independent), for
/// the on-disk cache; see `cache.rs`.
pub fn library_machine() -> Result<TargetMachine, String> {
    machine(RelocMode::PIC, CodeModel::Default)
}

fn machine(reloc: RelocMode, code_model: CodeModel) -> Result<TargetMachine, String> {
    init()?;
    let triple = TargetMachine::get_default_triple();
    let target =
        Target::from_triple(&triple).map_err(|e| format!("no LLVM target for the host: {e}"))?;
    let cpu = TargetMachine::get_host_cpu_name();
    let features = TargetMachine::get_host_cpu_features();
    target
        .create_target_machine(
            &triple,
            &cpu.to_string(),
            &features.to_string(),
            OPT_LEVEL,
            reloc,
            code_model,
        )
        .ok_or_else(|| "LLVM could not create a target machine for the host".to_string())
}

pub fn spec(tm: &TargetMachine) -> TargetSpec {
    TargetSpec {
        triple: tm.get_triple().as_str().to_string_lossy().into_owned(),
        data_layout: tm
            .get_target_data()
            .get_data_layout()
            .as_str()
            .to_string_lossy()
            .into_owned(),
        cpu: tm.get_cpu().to_string(),
        features: tm.get_feature_string().to_string_lossy().into_owned(),
    }
}

/// Parses and verifies module text that `llvm_ir` printed. A failure is a bug in this
/// crate, so the error carries the offending text's line for the report.
pub fn parse<'ctx>(ctx: &'ctx Context, text: &str) -> Result<Module<'ctx>, String> {
    let buffer = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), "encdecc");
    let module = ctx
        .create_module_from_ir(buffer)
        .map_err(|e| format!("LLVM rejected the generated IR (a codegen bug): {e}"))?;
    module
        .verify()
        .map_err(|e| format!("generated IR does not verify (a codegen bug): {e}"))?;
    Ok(module)
}

/// The code generator's optimisation level.
const OPT_LEVEL: OptimizationLevel = OptimizationLevel::Aggressive;

/// The pass pipeline that `optimize` runs.
const PIPELINE: &str = "default<O3>";

/// Everything about `optimize` and the target machines that changes the code, for the cache
/// key: change it together with them (or bump `cache::FORMAT`).
pub const PIPELINE_DESCRIPTION: &str =
    "default<O3> loop-vectorize slp-vectorize interleave unroll; codegen O3";

/// The new pass manager's O3 with loop and SLP vectorisation. The target machine supplies
/// the cost model (TargetTransformInfo): without it the vectoriser assumes no vector
/// registers and leaves the loops scalar.
pub fn optimize(module: &Module, tm: &TargetMachine) -> Result<(), String> {
    let options = PassBuilderOptions::create();
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_interleaving(true);
    options.set_loop_unrolling(true);
    module
        .run_passes(PIPELINE, tm, options)
        .map_err(|e| format!("LLVM optimisation failed: {e}"))
}

/// The module text compiled, as an object file for a shared library (the cache's entries).
pub fn object(text: &str) -> Result<Vec<u8>, String> {
    let tm = library_machine()?;
    let ctx = Context::create();
    let module = parse(&ctx, text)?;
    optimize(&module, &tm)?;
    let buffer = tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| format!("LLVM could not emit an object file: {e}"))?;
    Ok(buffer.as_slice().to_vec())
}
