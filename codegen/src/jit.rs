//! Compiling kernels to machine code in this process (MCJIT) and handing out entry points.

use crate::llvm_ir::{module_text, unique_kernels};
use crate::target;
use encdecc_compiler::kernel::{KernelFn, LoopKernel};
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::OptimizationLevel;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

/// Machine code for a set of kernels, owning the JIT that holds it.
///
/// inkwell ties the engine to `&'ctx Context`; to keep both in one value the context is
/// boxed and owned through a raw pointer, and the engine is typed `'static`. This is sound
/// because (1) the box never moves or is freed while the engine lives: `Drop` drops the
/// engine first, then frees the context; (2) nothing else borrows the context: the module
/// and every other LLVM object made from it are dropped inside `compile`, and no field is
/// exposed; (3) the raw pointer (not a `Box` field) means moving `CompiledKernels` does not
/// assert uniqueness of a box that the engine still points into.
pub struct CompiledKernels {
    fns: HashMap<String, KernelFn>,
    functions: usize,
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: NonNull<Context>,
}

// SAFETY: the engine and context are only touched again in `Drop`, by whoever owns the
// value, and the engine's `Rc` has no clone outside it (the module's clone was dropped in
// `compile`), so moving the pair to another thread is fine. `get` reads a plain map of
// addresses resolved in `compile`, so sharing is fine; the code itself is immutable.
unsafe impl Send for CompiledKernels {}
unsafe impl Sync for CompiledKernels {}

impl CompiledKernels {
    /// The entry point of the kernel named `name`; valid while `self` lives.
    pub fn get(&self, name: &str) -> Option<KernelFn> {
        self.fns.get(name).copied()
    }

    /// How many machine-code functions back the kernels (kernels identical up to their name
    /// share one).
    pub fn function_count(&self) -> usize {
        self.functions
    }
}

impl Drop for CompiledKernels {
    fn drop(&mut self) {
        // SAFETY: see the type's comment; the engine goes first and is not used again.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            drop(Box::from_raw(self.context.as_ptr()));
        }
    }
}

/// Compiles `kernels` for this CPU at O3 with vectorisation. Kernels identical up to their
/// name are compiled once and share an entry point.
pub fn compile(kernels: &[LoopKernel]) -> Result<CompiledKernels, String> {
    let context = NonNull::from(Box::leak(Box::new(Context::create())));
    // SAFETY: the context lives until `CompiledKernels::drop` or the error arm below, and
    // everything borrowing it is dropped before then (see `CompiledKernels`).
    let ctx: &'static Context = unsafe { &*context.as_ptr() };
    match build(ctx, kernels) {
        Ok((engine, fns, functions)) => Ok(CompiledKernels {
            fns,
            functions,
            engine: ManuallyDrop::new(engine),
            context,
        }),
        Err(e) => {
            // SAFETY: `build` dropped every LLVM object of this context before returning.
            unsafe { drop(Box::from_raw(context.as_ptr())) };
            Err(e)
        }
    }
}

type Built<'ctx> = (ExecutionEngine<'ctx>, HashMap<String, KernelFn>, usize);

fn build<'ctx>(ctx: &'ctx Context, kernels: &[LoopKernel]) -> Result<Built<'ctx>, String> {
    let tm = target::host_machine()?;
    let unique = unique_kernels(kernels)?;
    let text = module_text(&unique, &target::spec(&tm))?;
    let module = target::parse(ctx, &text)?;
    target::optimize(&module, &tm)?;
    // The engine's own target machine is a generic x86-64; the functions' target-cpu and
    // target-features attributes are what make it emit AVX2 (see `llvm_ir::TargetSpec`).
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| format!("LLVM could not create a JIT: {e}"))?;
    // Dropping the module wrapper drops its clone of the engine's Rc (the engine owns the
    // module), which leaves `engine` the only handle.
    drop(module);
    let mut fns = HashMap::new();
    for u in &unique {
        let symbol = u.kernel.name.as_str();
        let address = engine
            .get_function_address(symbol)
            .map_err(|e| format!("JIT has no function `{symbol}`: {e:?}"))?;
        // SAFETY: `symbol` was defined by `llvm_ir::function` with `KernelFn`'s signature.
        let f = unsafe { std::mem::transmute::<usize, KernelFn>(address) };
        for name in &u.names {
            fns.insert(name.to_string(), f);
        }
    }
    Ok((engine, fns, unique.len()))
}
