//! The lowp module for this CPU: which kernels (the `Plan`), their text, compiled.

use super::amx;
use super::gemv::{self, WeightKind};
use super::microkernel;
use super::text;
use super::{AmxKernel, GemmFn, GemmKernel, GemmVariant, GemvFn, LowpKernels, Tile, TileFn};
use crate::jit::compile_module;
use crate::llvm_ir::TargetSpec;
use crate::target;
use crate::Emit;
use inkwell::context::Context;
use inkwell::targets::FileType;

/// What the module is built from: which micro-kernels, for this CPU's registers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    native: Option<Tile>,
    emulated: Tile,
    amx: bool,
}

impl Plan {
    /// Tiles that fill the 32 zmm registers: native 14×32 is 28 accumulators and 2
    /// panel vectors (the row broadcasts fold into `vdpbf16ps`'s memory operand); the
    /// emulated kernel also needs the panel's two widened halves and a row's, so 12×32.
    /// Without AVX-512 (16 ymm, each 16-lane vector two of them) 3×16. The AMX kernel's
    /// tile is fixed (`amx::TILE`).
    fn for_features(features: &str) -> Plan {
        let has = |f: &str| features.split(',').any(|x| x == format!("+{f}"));
        let emulated = if has("avx512f") {
            Tile { mr: 12, nr: 32 }
        } else {
            Tile { mr: 3, nr: 16 }
        };
        Plan {
            native: has("avx512bf16").then_some(Tile { mr: 14, nr: 32 }),
            emulated,
            amx: has("amx-tile") && has("amx-bf16"),
        }
    }

    fn module_text(&self, spec: &TargetSpec) -> String {
        let mut body = String::new();
        if let Some(t) = self.native {
            body.push_str(&microkernel::function(GemmVariant::Native, t));
        }
        body.push_str(&microkernel::function(GemmVariant::Emulated, self.emulated));
        if self.amx {
            body.push_str(&amx::function());
        }
        body.push_str(&gemv::functions(WeightKind::Bf16));
        body.push_str(&gemv::functions(WeightKind::Int8));
        text::module(&body, spec)
    }

    fn symbols(&self) -> Vec<String> {
        let mut s = vec![];
        if let Some(t) = self.native {
            s.push(microkernel::symbol(GemmVariant::Native, t));
        }
        s.push(microkernel::symbol(GemmVariant::Emulated, self.emulated));
        if self.amx {
            s.extend([amx::symbol(), amx::CONFIGURE.into(), amx::RELEASE.into()]);
        }
        s.push(gemv::symbol(WeightKind::Bf16));
        s.push(gemv::symbol(WeightKind::Int8));
        s
    }
}

fn host() -> Result<(Plan, TargetSpec), String> {
    let tm = target::host_machine()?;
    let spec = target::spec(&tm);
    Ok((Plan::for_features(&spec.features), spec))
}

pub fn compile() -> Result<LowpKernels, String> {
    let (plan, spec) = host()?;
    let symbols = plan.symbols();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let module = compile_module(&plan.module_text(&spec), &refs)?;
    let address = |s: &str| {
        module
            .address(s)
            .ok_or_else(|| format!("the lowp module has no `{s}`"))
    };
    // SAFETY (all transmutes): each symbol was defined by `microkernel::function`,
    // `amx::function` or `gemv::functions` with exactly the signature of the type it
    // becomes.
    let gemm = |variant, tile| -> Result<GemmKernel, String> {
        let symbol = match variant {
            GemmVariant::Amx => amx::symbol(),
            _ => microkernel::symbol(variant, tile),
        };
        let a = address(&symbol)?;
        Ok(GemmKernel {
            variant,
            tile,
            f: unsafe { std::mem::transmute::<usize, GemmFn>(a) },
        })
    };
    let native = match plan.native {
        Some(t) => Some(gemm(GemmVariant::Native, t)?),
        None => None,
    };
    let emulated = gemm(GemmVariant::Emulated, plan.emulated)?;
    let tile_fn = |s: &str| -> Result<TileFn, String> {
        Ok(unsafe { std::mem::transmute::<usize, TileFn>(address(s)?) })
    };
    let amx = match plan.amx {
        true => Some(AmxKernel {
            gemm: gemm(GemmVariant::Amx, amx::TILE)?,
            configure: tile_fn(amx::CONFIGURE)?,
            release: tile_fn(amx::RELEASE)?,
        }),
        false => None,
    };
    let gemv_bf16 = address(&gemv::symbol(WeightKind::Bf16))?;
    let gemv_int8 = address(&gemv::symbol(WeightKind::Int8))?;
    Ok(LowpKernels {
        native,
        emulated,
        amx,
        gemv_bf16: unsafe { std::mem::transmute::<usize, GemvFn<u16>>(gemv_bf16) },
        gemv_int8: unsafe { std::mem::transmute::<usize, GemvFn<i8>>(gemv_int8) },
        _module: module,
    })
}

/// `super::emit_lowp`.
pub fn emit(what: Emit) -> Result<String, String> {
    let (plan, spec) = host()?;
    let text = plan.module_text(&spec);
    let ctx = Context::create();
    let module = target::parse(&ctx, &text)?;
    if what == Emit::LlvmIr {
        return Ok(text);
    }
    let tm = target::host_machine()?;
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
