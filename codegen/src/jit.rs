//! Compiling kernels to machine code and handing out entry points: from the on-disk cache
//! (a shared library, see `cache.rs`) when it has them or can store them, else in this
//! process (MCJIT).

use crate::cache;
use crate::config::CacheConfig;
use crate::llvm_ir::{module_text, unique_kernels, UniqueKernel};
use crate::target;
use encdecc_compiler::kernel::{KernelFn, LoopKernel};
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::OptimizationLevel;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Machine code for a set of kernels, owning what holds it: a JIT or a loaded library.
pub struct CompiledKernels {
    fns: HashMap<String, KernelFn>,
    functions: usize,
    backend: Backend,
}

/// inkwell ties the engine to `&'ctx Context`; to keep both in one value the context is
/// boxed and owned through a raw pointer, and the engine is typed `'static`. This is sound
/// because (1) the box never moves or is freed while the engine lives: `Drop` drops the
/// engine first, then frees the context; (2) nothing else borrows the context: the module
/// and every other LLVM object made from it are dropped inside `compile`, and no field is
/// exposed; (3) the raw pointer (not a `Box` field) means moving `CompiledKernels` does not
/// assert uniqueness of a box that the engine still points into.
enum Backend {
    Jit {
        engine: ManuallyDrop<ExecutionEngine<'static>>,
        context: NonNull<Context>,
    },
    /// A cache entry; unloaded when dropped, after the entry points are gone.
    Library {
        _library: libloading::Library,
        path: PathBuf,
        from_cache: bool,
    },
}

// SAFETY: the engine and context are only touched again in `Drop`, by whoever owns the
// value, and the engine's `Rc` has no clone outside it (the module's clone was dropped in
// `compile`), so moving the pair to another thread is fine. A loaded library is a plain
// handle. `get` reads a plain map of addresses resolved in `compile`, so sharing is fine;
// the code itself is immutable.
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

    /// Whether the code was found in the on-disk cache (LLVM did not optimise or generate
    /// code in this compile).
    pub fn from_cache(&self) -> bool {
        matches!(
            self.backend,
            Backend::Library {
                from_cache: true,
                ..
            }
        )
    }

    /// The cache entry the code was loaded from, whether found there or just stored; `None`
    /// when compiled in process.
    pub fn cache_file(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Library { path, .. } => Some(path),
            Backend::Jit { .. } => None,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Jit { engine, context } = self {
            // SAFETY: see `Backend`; the engine goes first and is not used again.
            unsafe {
                ManuallyDrop::drop(engine);
                drop(Box::from_raw(context.as_ptr()));
            }
        }
    }
}

/// Machine code for a module written as text elsewhere in this crate (not from
/// `LoopKernel`s: the low-precision matmul kernels, `lowp`), compiled in process.
pub struct CompiledModule {
    addresses: HashMap<String, usize>,
    _backend: Backend,
}

// SAFETY: as for `CompiledKernels`: the backend is only touched again in `Drop`, and the
// addresses are plain numbers into immutable code.
unsafe impl Send for CompiledModule {}
unsafe impl Sync for CompiledModule {}

impl CompiledModule {
    /// The address of `symbol`, one of those `compile_module` was asked for; valid while
    /// `self` lives.
    pub fn address(&self, symbol: &str) -> Option<usize> {
        self.addresses.get(symbol).copied()
    }
}

/// Parses, verifies, optimises (as `compile` does) and JIT-compiles `text`, and resolves
/// `symbols` in it.
pub fn compile_module(text: &str, symbols: &[&str]) -> Result<CompiledModule, String> {
    let context = NonNull::from(Box::leak(Box::new(Context::create())));
    // SAFETY: as in `jit`.
    let ctx: &'static Context = unsafe { &*context.as_ptr() };
    let built = engine_for(ctx, text).and_then(|engine| {
        let mut addresses = HashMap::new();
        for &symbol in symbols {
            let address = engine
                .get_function_address(symbol)
                .map_err(|e| format!("JIT has no function `{symbol}`: {e:?}"))?;
            addresses.insert(symbol.to_string(), address);
        }
        Ok((engine, addresses))
    });
    match built {
        Ok((engine, addresses)) => Ok(CompiledModule {
            addresses,
            _backend: Backend::Jit {
                engine: ManuallyDrop::new(engine),
                context,
            },
        }),
        Err(e) => {
            // SAFETY: the engine (if any) was dropped inside the closure above.
            unsafe { drop(Box::from_raw(context.as_ptr())) };
            Err(e)
        }
    }
}

/// Compiles `kernels` for this CPU at O3 with vectorisation, through the on-disk cache that
/// `CacheConfig::from_env` names. Kernels identical up to their name are compiled once and
/// share an entry point.
pub fn compile(kernels: &[LoopKernel]) -> Result<CompiledKernels, String> {
    compile_with(kernels, &CacheConfig::from_env())
}

/// `compile` with the cache given: a hit loads the cached library, a miss compiles and
/// stores one; when the cache cannot be used (disabled, unwritable, no linker, …) the
/// kernels are compiled in process. Errors are the kernels' own, never the cache's.
pub fn compile_with(
    kernels: &[LoopKernel],
    cache: &CacheConfig,
) -> Result<CompiledKernels, String> {
    let tm = target::host_machine()?;
    let unique = unique_kernels(kernels)?;
    let spec = target::spec(&tm);
    let text = module_text(&unique, &spec)?;
    if let Some(dir) = &cache.dir {
        let key = cache::Key::new(&text, &spec, target::vector_math()?);
        let symbols: Vec<&str> = unique.iter().map(|u| u.kernel.name.as_str()).collect();
        let loaded = match cache::load(dir, &key, &symbols) {
            Ok(hit) => Some((hit, true)),
            // A miss or an invalid entry: build (or rebuild) it.
            Err(_) => cache::store(dir, &key, &symbols, || target::object(&text))
                .ok()
                .map(|stored| (stored, false)),
        };
        if let Some((loaded, from_cache)) = loaded {
            return Ok(from_library(&unique, loaded, from_cache));
        }
    }
    jit(&unique, &text)
}

fn from_library(
    unique: &[UniqueKernel],
    loaded: cache::Loaded,
    from_cache: bool,
) -> CompiledKernels {
    let mut fns = HashMap::new();
    for (u, &address) in unique.iter().zip(&loaded.addresses) {
        // SAFETY: the library's key holds this module text, where `u.kernel.name` is
        // defined by `llvm_ir::function` with `KernelFn`'s signature.
        let f = unsafe { std::mem::transmute::<usize, KernelFn>(address) };
        for name in &u.names {
            fns.insert(name.to_string(), f);
        }
    }
    CompiledKernels {
        fns,
        functions: unique.len(),
        backend: Backend::Library {
            _library: loaded.library,
            path: loaded.path,
            from_cache,
        },
    }
}

/// Compiles the module text in this process.
fn jit(unique: &[UniqueKernel], text: &str) -> Result<CompiledKernels, String> {
    let context = NonNull::from(Box::leak(Box::new(Context::create())));
    // SAFETY: the context lives until `CompiledKernels::drop` or the error arm below, and
    // everything borrowing it is dropped before then (see `Backend`).
    let ctx: &'static Context = unsafe { &*context.as_ptr() };
    match build(ctx, unique, text) {
        Ok((engine, fns)) => Ok(CompiledKernels {
            fns,
            functions: unique.len(),
            backend: Backend::Jit {
                engine: ManuallyDrop::new(engine),
                context,
            },
        }),
        Err(e) => {
            // SAFETY: `build` dropped every LLVM object of this context before returning.
            unsafe { drop(Box::from_raw(context.as_ptr())) };
            Err(e)
        }
    }
}

type Built<'ctx> = (ExecutionEngine<'ctx>, HashMap<String, KernelFn>);

fn build<'ctx>(
    ctx: &'ctx Context,
    unique: &[UniqueKernel],
    text: &str,
) -> Result<Built<'ctx>, String> {
    let engine = engine_for(ctx, text)?;
    let mut fns = HashMap::new();
    for u in unique {
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
    Ok((engine, fns))
}

/// The module text parsed, optimised and handed to a JIT engine.
fn engine_for<'ctx>(ctx: &'ctx Context, text: &str) -> Result<ExecutionEngine<'ctx>, String> {
    let tm = target::host_machine()?;
    let module = target::parse(ctx, text)?;
    target::optimize(&module, &tm)?;
    // The engine's own target machine is a generic x86-64; the functions' target-cpu and
    // target-features attributes are what make it emit AVX2 (see `llvm_ir::TargetSpec`).
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| format!("LLVM could not create a JIT: {e}"))?;
    // Dropping the module wrapper drops its clone of the engine's Rc (the engine owns the
    // module), which leaves `engine` the only handle.
    drop(module);
    Ok(engine)
}
