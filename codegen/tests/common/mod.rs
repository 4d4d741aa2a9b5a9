//! Builders for hand-written loop kernels, shared by the codegen tests.
#![allow(dead_code)]

use encdecc_compiler::ir::{DType, ReduceOp, F64};
use encdecc_compiler::kernel::{KOp, KernelInput, KernelOutput, LoopKernel, Stage, Stride};

pub fn input(dtype: DType, strides: &[Stride]) -> KernelInput {
    KernelInput {
        dtype,
        strides: strides.to_vec(),
    }
}

pub fn full(dtype: DType) -> KernelOutput {
    KernelOutput {
        dtype,
        per_row: false,
    }
}

pub fn per_row() -> KernelOutput {
    KernelOutput {
        dtype: DType::F32,
        per_row: true,
    }
}

pub fn stage(
    ops: Vec<KOp>,
    reduce: Option<(ReduceOp, usize)>,
    stores: Vec<(usize, usize)>,
) -> Stage {
    Stage {
        ops,
        reduce,
        stores,
    }
}

pub fn kernel(
    name: &str,
    rank: usize,
    inputs: Vec<KernelInput>,
    outputs: Vec<KernelOutput>,
    stages: Vec<Stage>,
) -> LoopKernel {
    LoopKernel {
        name: name.into(),
        rank,
        inputs,
        outputs,
        stages,
    }
}

pub fn load(input: usize) -> KOp {
    KOp::Load { input }
}

pub fn f32c(v: f64) -> KOp {
    KOp::Const {
        value: F64(v),
        dtype: DType::F32,
    }
}
