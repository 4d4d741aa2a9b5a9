//! How a value is laid out in GPU memory. The IR knows f32, i64 and bool; the CUDA backend
//! may keep an f32 value as bf16 (the upper half of its bits, rounded to nearest even):
//! kernels load bf16 into f32 registers, compute in f32 and round once when they store.

use encdecc_compiler::ir::DType;
use encdecc_compiler::kernel::LoopKernel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mem {
    F32,
    /// An f32 value stored as bf16 (`struct enc_bf16` in `prelude.cuh`).
    Bf16,
    I64,
    /// A bool, one byte.
    U8,
}

impl Mem {
    /// The layout of `dtype` at full precision.
    pub fn of(dtype: DType) -> Mem {
        match dtype {
            DType::F32 => Mem::F32,
            DType::Bf16 => Mem::Bf16,
            DType::I64 => Mem::I64,
            DType::Bool => Mem::U8,
            // One byte, moved as bits: the cuda backend refuses graphs with storage dtypes
            // (`prepare_with`), so no kernel reads an i8 as a value.
            DType::I8 => Mem::U8,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            Mem::U8 => 1,
            Mem::Bf16 => 2,
            Mem::F32 => 4,
            Mem::I64 => 8,
        }
    }

    /// The C element type.
    pub fn c_type(self) -> &'static str {
        match self {
            Mem::F32 => "float",
            Mem::Bf16 => "enc_bf16",
            Mem::I64 => "i64",
            Mem::U8 => "u8",
        }
    }
}

/// The memory layout of a loop kernel's inputs and outputs, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelMems {
    pub inputs: Vec<Mem>,
    pub outputs: Vec<Mem>,
}

impl KernelMems {
    /// Every operand at its IR dtype's full precision.
    pub fn of(k: &LoopKernel) -> KernelMems {
        KernelMems {
            inputs: k.inputs.iter().map(|i| Mem::of(i.dtype)).collect(),
            outputs: k.outputs.iter().map(|o| Mem::of(o.dtype)).collect(),
        }
    }
}
