//! The kernel program's loop kernels: what fusion produces and codegen compiles.
//!
//! A `LoopKernel` is a fused group of elementwise ops and last-axis reductions over one
//! iteration space of rank R (row-major; the last axis is the inner loop, the others are
//! flattened into "rows"). For every row it runs its stages in order; each stage is one
//! pass over the inner axis that evaluates its ops per element, may fold one value into a
//! per-row reduction, and may store values. A later stage can read an earlier stage's
//! reduction result (`RowValue`). This covers elementwise chains, RMSNorm (sum, then
//! scale), softmax (max, then sum of exp, then divide) and softcaps in one kernel.
//!
//! Shapes are generic: the executor passes the actual sizes and strides at run time, so
//! one compiled kernel serves every batch size and length. What is static is the pattern:
//! per input and axis, whether the stride is 0 (broadcast), 1 (contiguous inner axis) or
//! given at run time.

use crate::ir::{BinaryOp, DType, ReduceOp, UnaryOp, F64};

/// How an input advances along one iteration axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stride {
    /// Broadcast along this axis.
    Zero,
    /// Contiguous (only meaningful on the inner axis).
    One,
    /// Read from the strides array at run time.
    Dynamic,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelInput {
    pub dtype: DType,
    /// One entry per iteration axis.
    pub strides: Vec<Stride>,
}

/// Where a stored value goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelOutput {
    pub dtype: DType,
    /// A per-row value (shape `[..., 1]`, one element per row) rather than a full tensor.
    /// Outputs are contiguous row-major over the iteration space (or over the rows).
    pub per_row: bool,
}

/// A value inside a stage: the index of an op in that stage's `ops`.
pub type KVal = usize;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KOp {
    /// Element of input `i` at the current position (per its strides).
    Load {
        input: usize,
    },
    Const {
        value: F64,
        dtype: DType,
    },
    /// The current index along iteration axis `axis`, as i64.
    Index {
        axis: usize,
    },
    /// The reduction result of an earlier stage of this kernel, for the current row.
    RowValue {
        stage: usize,
    },
    Unary {
        op: UnaryOp,
        a: KVal,
    },
    Binary {
        op: BinaryOp,
        a: KVal,
        b: KVal,
    },
    Where {
        cond: KVal,
        a: KVal,
        b: KVal,
    },
    Cast {
        to: DType,
        a: KVal,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stage {
    /// SSA ops evaluated for each element of the inner axis; an op may only use earlier ops.
    pub ops: Vec<KOp>,
    /// Folds this value over the inner axis (f32 only). Sum starts at 0, max at -inf.
    pub reduce: Option<(ReduceOp, KVal)>,
    /// `(output, value)`: full outputs are stored per element; per-row outputs store this
    /// stage's reduction result once per row (their value must be the reduced value).
    pub stores: Vec<(usize, KVal)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoopKernel {
    pub name: String,
    pub rank: usize,
    pub inputs: Vec<KernelInput>,
    pub outputs: Vec<KernelOutput>,
    pub stages: Vec<Stage>,
}

/// The calling convention of a compiled loop kernel:
///
/// ```text
/// void kernel(u8** buffers,      // inputs, then outputs
///             const i64* dims,   // R sizes of the iteration space
///             const i64* strides,// R strides (elements) per input, inputs in order
///             i64 row_begin, i64 row_end)
/// ```
/// Rows are the flattened leading R-1 axes; the executor splits `[0, rows)` across threads.
/// Element types: f32, i64, and bool stored as one byte (0 or 1).
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, *const i64, i64, i64);
