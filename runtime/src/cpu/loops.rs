//! Running loop kernels: through the LLVM JIT when it is built, else through a direct
//! evaluator of the kernel (the same semantics, slowly). Rows are split across threads.

use crate::tensor::{Data, Tensor};
use encdecc_compiler::fuse::strides_for;
use encdecc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use encdecc_compiler::kernel::{KOp, KernelFn, LoopKernel};

/// Allocates the outputs of `k` for the iteration space `space`.
pub fn alloc_outputs(k: &LoopKernel, space: &[usize]) -> Vec<Tensor> {
    let rows: usize = space[..space.len() - 1].iter().product();
    k.outputs
        .iter()
        .map(|o| {
            let shape: Vec<usize> = if o.per_row {
                let mut s = space.to_vec();
                *s.last_mut().expect("rank >= 1") = 1;
                s
            } else {
                space.to_vec()
            };
            let n = if o.per_row {
                rows
            } else {
                space.iter().product()
            };
            match o.dtype {
                DType::F32 => Tensor::f32(shape, vec![0.0; n]),
                DType::Bf16 => Tensor::bf16(shape, vec![half::bf16::ZERO; n]),
                DType::I8 => Tensor::i8(shape, vec![0; n]),
                DType::I64 => Tensor::i64(shape, vec![0; n]),
                DType::Bool => Tensor::bool(shape, vec![false; n]),
            }
        })
        .collect()
}

/// Raw pointers shared with worker threads; each thread writes a disjoint row range.
struct Shared(Vec<*mut u8>);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    // A method (not a field access) so closures capture the whole `Shared`, which is Sync.
    fn get(&self) -> &[*mut u8] {
        &self.0
    }
}

/// A kernel input read in place: `shape` elements from `offset` on in `tensor`'s storage
/// (a whole tensor, or one layer of a stacked one).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub tensor: &'a Tensor,
    pub offset: usize,
    pub shape: &'a [usize],
}

impl<'a> Input<'a> {
    pub fn whole(tensor: &'a Tensor) -> Input<'a> {
        Input {
            tensor,
            offset: 0,
            shape: &tensor.shape,
        }
    }

    /// The first element's address; panics when the window is not inside the storage.
    fn ptr(&self) -> *mut u8 {
        let (o, n) = (self.offset, self.shape.iter().product::<usize>());
        match &self.tensor.data {
            Data::F32(v) => v[o..o + n].as_ptr() as *mut u8,
            Data::Bf16(v) => v[o..o + n].as_ptr() as *mut u8,
            Data::I8(v) => v[o..o + n].as_ptr() as *mut u8,
            Data::I64(v) => v[o..o + n].as_ptr() as *mut u8,
            Data::Bool(v) => v[o..o + n].as_ptr() as *mut u8,
        }
    }
}

/// Runs `k` over `space` with a compiled function, or the evaluator when `f` is `None`.
pub fn run(
    k: &LoopKernel,
    f: Option<KernelFn>,
    space: &[usize],
    inputs: &[&Tensor],
    outputs: &mut [Tensor],
    threads: usize,
) {
    let inputs: Vec<Input> = inputs.iter().map(|t| Input::whole(t)).collect();
    run_inputs(k, f, space, &inputs, outputs, threads)
}

/// `run` over inputs that may be windows of larger tensors.
pub fn run_inputs(
    k: &LoopKernel,
    f: Option<KernelFn>,
    space: &[usize],
    inputs: &[Input],
    outputs: &mut [Tensor],
    threads: usize,
) {
    let rows: usize = space[..space.len() - 1].iter().product();
    let dims: Vec<i64> = space.iter().map(|&d| d as i64).collect();
    let strides: Vec<i64> = inputs
        .iter()
        .flat_map(|t| strides_for(t.shape, space))
        .collect();
    let bufs = Shared(
        inputs
            .iter()
            .map(Input::ptr)
            .chain(outputs.iter().map(|t| Input::whole(t).ptr()))
            .collect(),
    );
    let inner = *space.last().expect("rank >= 1");
    let work = rows * inner.max(1) * k.stages.len();
    // Parts go to already running workers (`pool`), so a kernel is split from a few
    // microseconds of work on (a decode step's 32000-wide logit softcap, its cache writes).
    let threads = if work < 1 << 14 {
        1
    } else {
        threads.clamp(1, rows.max(1))
    };
    let call = |lo: usize, hi: usize| match f {
        // SAFETY: buffers hold what the kernel's types and the space say; rows are disjoint.
        Some(f) => unsafe {
            f(
                bufs.get().as_ptr(),
                dims.as_ptr(),
                strides.as_ptr(),
                lo as i64,
                hi as i64,
            )
        },
        None => evaluate(k, bufs.get(), &dims, &strides, lo, hi),
    };
    if threads == 1 {
        call(0, rows);
        return;
    }
    // Four parts per thread, claimed as threads come free (see `pool`).
    let parts = (4 * threads.min(super::pool::width())).min(rows);
    let per = rows.div_ceil(parts);
    super::pool::run(rows.div_ceil(per), &|p| {
        call(p * per, ((p + 1) * per).min(rows))
    });
}

#[derive(Clone, Copy)]
enum V {
    F(f32),
    I(i64),
    B(bool),
}

impl V {
    fn f(self) -> f32 {
        match self {
            V::F(x) => x,
            V::I(x) => x as f32,
            V::B(x) => x as u8 as f32,
        }
    }
    fn i(self) -> i64 {
        match self {
            V::F(x) => x as i64,
            V::I(x) => x,
            V::B(x) => x as i64,
        }
    }
    fn b(self) -> bool {
        match self {
            V::F(x) => x != 0.0,
            V::I(x) => x != 0,
            V::B(x) => x,
        }
    }
}

/// The kernel semantics, element by element (the reference for the JIT, and its fallback).
fn evaluate(k: &LoopKernel, bufs: &[*mut u8], dims: &[i64], strides: &[i64], lo: usize, hi: usize) {
    let r = k.rank;
    let inner = dims[r - 1] as usize;
    let mut idx = vec![0i64; r];
    let mut row_vals = vec![0f32; k.stages.len()];
    for row in lo..hi {
        let mut rem = row;
        for a in (0..r - 1).rev() {
            idx[a] = (rem % dims[a] as usize) as i64;
            rem /= dims[a] as usize;
        }
        for (si, st) in k.stages.iter().enumerate() {
            let mut acc = match st.reduce {
                Some((ReduceOp::Max, _)) => f32::NEG_INFINITY,
                _ => 0.0,
            };
            let mut vals: Vec<V> = Vec::with_capacity(st.ops.len());
            for j in 0..inner {
                idx[r - 1] = j as i64;
                vals.clear();
                for op in &st.ops {
                    let v = match *op {
                        KOp::Load { input } => {
                            let off: i64 = (0..r).map(|a| idx[a] * strides[input * r + a]).sum();
                            // SAFETY: offsets stay within the input (strides from its shape).
                            unsafe {
                                match k.inputs[input].dtype {
                                    DType::F32 => {
                                        V::F(*(bufs[input] as *const f32).offset(off as isize))
                                    }
                                    // A bf16 value is held as the f32 it equals exactly.
                                    DType::Bf16 => V::F(
                                        (*(bufs[input] as *const half::bf16).offset(off as isize))
                                            .to_f32(),
                                    ),
                                    DType::I64 => {
                                        V::I(*(bufs[input] as *const i64).offset(off as isize))
                                    }
                                    DType::I8 => {
                                        V::I(*(bufs[input] as *const i8).offset(off as isize) as i64)
                                    }
                                    DType::Bool => {
                                        V::B(*(bufs[input] as *const u8).offset(off as isize) != 0)
                                    }
                                }
                            }
                        }
                        KOp::Const { value, dtype } => match dtype {
                            DType::F32 => V::F(value.0 as f32),
                            DType::Bf16 => V::F(half::bf16::from_f64(value.0).to_f32()),
                            DType::I8 => V::I(value.0 as i8 as i64),
                            DType::I64 => V::I(value.0 as i64),
                            DType::Bool => V::B(value.0 != 0.0),
                        },
                        KOp::Index { axis } => V::I(idx[axis]),
                        KOp::RowValue { stage } => V::F(row_vals[stage]),
                        KOp::Unary { op, a } => unary(op, vals[a]),
                        KOp::Binary { op, a, b } => binary(op, vals[a], vals[b]),
                        KOp::Where { cond, a, b } => {
                            if vals[cond].b() {
                                vals[a]
                            } else {
                                vals[b]
                            }
                        }
                        KOp::Cast { to, a } => match to {
                            DType::F32 => V::F(vals[a].f()),
                            DType::Bf16 => V::F(half::bf16::from_f32(vals[a].f()).to_f32()),
                            // (Typing admits no cast to i8.)
                            DType::I8 => V::I(vals[a].i() as i8 as i64),
                            DType::I64 => V::I(vals[a].i()),
                            DType::Bool => V::B(vals[a].b()),
                        },
                    };
                    vals.push(v);
                }
                if let Some((op, v)) = st.reduce {
                    let x = vals[v].f();
                    acc = if op == ReduceOp::Max {
                        acc.max(x)
                    } else {
                        acc + x
                    };
                }
                for &(o, v) in &st.stores {
                    if k.outputs[o].per_row {
                        continue;
                    }
                    let at = row * inner + j;
                    // SAFETY: full outputs are contiguous over the space.
                    unsafe {
                        match k.outputs[o].dtype {
                            DType::F32 => {
                                *(bufs[k.inputs.len() + o] as *mut f32).add(at) = vals[v].f()
                            }
                            DType::Bf16 => {
                                *(bufs[k.inputs.len() + o] as *mut half::bf16).add(at) =
                                    half::bf16::from_f32(vals[v].f())
                            }
                            DType::I64 => {
                                *(bufs[k.inputs.len() + o] as *mut i64).add(at) = vals[v].i()
                            }
                            DType::I8 => {
                                *(bufs[k.inputs.len() + o] as *mut i8).add(at) = vals[v].i() as i8
                            }
                            DType::Bool => *bufs[k.inputs.len() + o].add(at) = vals[v].b() as u8,
                        }
                    }
                }
            }
            row_vals[si] = acc;
            for &(o, _) in &st.stores {
                if k.outputs[o].per_row {
                    // SAFETY: per-row outputs hold one element per row.
                    unsafe { *(bufs[k.inputs.len() + o] as *mut f32).add(row) = acc };
                }
            }
        }
    }
}

fn unary(op: UnaryOp, a: V) -> V {
    match a {
        V::F(x) => V::F(match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Not => x,
        }),
        V::I(x) => V::I(if op == UnaryOp::Neg {
            x.wrapping_neg()
        } else {
            x.wrapping_abs()
        }),
        V::B(x) => V::B(!x),
    }
}

fn binary(op: BinaryOp, a: V, b: V) -> V {
    match (a, b) {
        (V::F(x), V::F(y)) => match op {
            BinaryOp::Add => V::F(x + y),
            BinaryOp::Sub => V::F(x - y),
            BinaryOp::Mul => V::F(x * y),
            BinaryOp::Div => V::F(x / y),
            BinaryOp::Pow => V::F(x.powf(y)),
            BinaryOp::Max => V::F(x.max(y)),
            BinaryOp::Min => V::F(x.min(y)),
            BinaryOp::Eq => V::B(x == y),
            BinaryOp::Ne => V::B(x != y),
            BinaryOp::Lt => V::B(x < y),
            BinaryOp::Le => V::B(x <= y),
            BinaryOp::And | BinaryOp::Or => V::B(false),
        },
        (V::I(x), V::I(y)) => match op {
            BinaryOp::Add => V::I(x.wrapping_add(y)),
            BinaryOp::Sub => V::I(x.wrapping_sub(y)),
            BinaryOp::Mul => V::I(x.wrapping_mul(y)),
            BinaryOp::Div => V::I(if y == 0 { 0 } else { x.wrapping_div(y) }),
            BinaryOp::Pow => V::I(x.wrapping_pow(y.clamp(0, u32::MAX as i64) as u32)),
            BinaryOp::Max => V::I(x.max(y)),
            BinaryOp::Min => V::I(x.min(y)),
            BinaryOp::Eq => V::B(x == y),
            BinaryOp::Ne => V::B(x != y),
            BinaryOp::Lt => V::B(x < y),
            BinaryOp::Le => V::B(x <= y),
            BinaryOp::And | BinaryOp::Or => V::B(false),
        },
        (x, y) => {
            let (x, y) = (x.b(), y.b());
            V::B(match op {
                BinaryOp::And => x && y,
                BinaryOp::Or => x || y,
                BinaryOp::Eq => x == y,
                BinaryOp::Ne => x != y,
                _ => false,
            })
        }
    }
}
