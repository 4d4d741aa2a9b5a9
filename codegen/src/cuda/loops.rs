//! Loop kernels as CUDA C.
//!
//! A kernel without reductions is elementwise: a grid-stride loop over every element of
//! the iteration space (one thread per element). A kernel with reductions runs one row per
//! `blockDim.x` threads (`blockDim.y` rows per block): each stage is a strided pass of the
//! row's threads over the inner axis, its fold is combined across the row
//! (`enc_row_sum`/`enc_row_max`, warp shuffles then shared memory) so that every thread
//! of the row holds the row value for the later stages.
//!
//! Signature: input pointers, output pointers, the R sizes `d0..`, then for each input
//! and each axis whose stride is `Dynamic`, that stride (`s<input>_<axis>`, elements).
//! `Zero` strides read nothing along that axis and `One` is the contiguous inner axis, so
//! neither is passed.
//!
//! An f32 operand may be stored as bf16 (`KernelMems`): it is loaded with `enc_ld` into an
//! f32 register and stored with `enc_to_bf16` (round to nearest even); every op and every
//! row fold stays f32.

use super::mem::{KernelMems, Mem};
use super::scalar::{binary, c_type, cast, constant, unary};
use encdecc_compiler::ir::{DType, ReduceOp};
use encdecc_compiler::kernel::{KOp, LoopKernel, Stage, Stride};
use std::fmt::Write;

/// How a loop kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// One thread per element, grid-stride.
    Elementwise,
    /// One row per `blockDim.x` threads.
    Rows,
}

pub fn form(k: &LoopKernel) -> Form {
    if k.stages.iter().any(|s| s.reduce.is_some()) {
        Form::Rows
    } else {
        Form::Elementwise
    }
}

/// The scalar parameters after the pointers, in order: sizes, then dynamic strides
/// `(input, axis)`.
pub fn dynamic_strides(k: &LoopKernel) -> Vec<(usize, usize)> {
    k.inputs
        .iter()
        .enumerate()
        .flat_map(|(i, inp)| {
            inp.strides
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == Stride::Dynamic)
                .map(move |(a, _)| (i, a))
        })
        .collect()
}

/// The CUDA C of one kernel, named `name` (kernels identical up to their name share one),
/// every operand at full precision.
pub fn kernel_text(k: &LoopKernel, name: &str) -> String {
    kernel_text_with(k, name, &KernelMems::of(k))
}

/// The CUDA C of one kernel whose operands are laid out as `mems`.
pub fn kernel_text_with(k: &LoopKernel, name: &str, mems: &KernelMems) -> String {
    let r = k.rank;
    let mut params: Vec<String> = vec![];
    for (i, m) in mems.inputs.iter().enumerate() {
        params.push(format!("const {}* in{i}", m.c_type()));
    }
    for (o, m) in mems.outputs.iter().enumerate() {
        params.push(format!("{}* out{o}", m.c_type()));
    }
    for a in 0..r {
        params.push(format!("i64 d{a}"));
    }
    for (i, a) in dynamic_strides(k) {
        params.push(format!("i64 s{i}_{a}"));
    }
    let mut t = String::new();
    writeln!(
        t,
        "extern \"C\" __global__ void {name}({}) {{",
        params.join(", ")
    )
    .unwrap();
    match form(k) {
        Form::Elementwise => elementwise_body(&mut t, k, mems),
        Form::Rows => rows_body(&mut t, k, mems),
    }
    t.push_str("}\n");
    t
}

/// `i<a>` for every axis from the flat index `flat` over axes `0..n`.
fn unflatten(t: &mut String, indent: &str, flat: &str, n: usize) {
    writeln!(t, "{indent}i64 rem = {flat};").unwrap();
    for a in (0..n).rev() {
        if a == 0 {
            writeln!(t, "{indent}const i64 i0 = rem;").unwrap();
        } else {
            writeln!(t, "{indent}const i64 i{a} = rem % d{a};").unwrap();
            writeln!(t, "{indent}rem /= d{a};").unwrap();
        }
    }
    writeln!(t, "{indent}(void)rem;").unwrap();
}

/// The element offset of input `i` along the axes `0..n` (not the inner one).
fn outer_offset(k: &LoopKernel, i: usize, n: usize) -> String {
    let terms: Vec<String> = (0..n)
        .filter(|&a| k.inputs[i].strides[a] == Stride::Dynamic)
        .map(|a| format!("i{a} * s{i}_{a}"))
        .collect();
    if terms.is_empty() {
        "0".into()
    } else {
        terms.join(" + ")
    }
}

fn elementwise_body(t: &mut String, k: &LoopKernel, mems: &KernelMems) {
    let r = k.rank;
    let total: Vec<String> = (0..r).map(|a| format!("d{a}")).collect();
    writeln!(t, "    const i64 n = {};", total.join(" * ")).unwrap();
    writeln!(
        t,
        "    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {{"
    )
    .unwrap();
    unflatten(t, "        ", "e", r);
    let inner = format!("i{}", r - 1);
    let st = &k.stages[0];
    let offset = |i: usize| {
        // An input without a broadcast axis has the space's shape (shapes broadcast only
        // from size 1) and is contiguous: its offset is the flat index itself, so that the
        // axes of `e` (a 64-bit division per axis) are computed only where needed.
        if k.inputs[i].strides[..r - 1]
            .iter()
            .all(|s| *s == Stride::Dynamic)
            && k.inputs[i].strides[r - 1] == Stride::One
        {
            return "e".to_string();
        }
        let outer = outer_offset(k, i, r - 1);
        match k.inputs[i].strides[r - 1] {
            Stride::Zero => outer,
            Stride::One if outer == "0" => inner.clone(),
            Stride::One => format!("{outer} + {inner}"),
            Stride::Dynamic => format!("{outer} + {inner} * s{i}_{}", r - 1),
        }
    };
    stage_ops(t, "        ", k, mems, st, &offset, &inner, r);
    for &(o, v) in &st.stores {
        writeln!(
            t,
            "        out{o}[e] = {};",
            store(k.outputs[o].dtype, mems.outputs[o], &format!("v{v}"))
        )
        .unwrap();
    }
    t.push_str("    }\n");
}

fn rows_body(t: &mut String, k: &LoopKernel, mems: &KernelMems) {
    let r = k.rank;
    let rows: Vec<String> = (0..r - 1).map(|a| format!("d{a}")).collect();
    let rows = if rows.is_empty() {
        "1".to_string()
    } else {
        rows.join(" * ")
    };
    let inner = format!("d{}", r - 1);
    writeln!(t, "    const i64 rows = {rows};").unwrap();
    // Every thread runs every iteration (the row folds synchronise); threads past the
    // last row just skip the loads and stores.
    writeln!(
        t,
        "    for (i64 base = (i64)blockIdx.x * blockDim.y; base < rows; base += (i64)gridDim.x * blockDim.y) {{"
    )
    .unwrap();
    writeln!(t, "        const i64 row = base + threadIdx.y;").unwrap();
    writeln!(t, "        const bool active = row < rows;").unwrap();
    unflatten(t, "        ", "active ? row : 0", r - 1);
    for (i, inp) in k.inputs.iter().enumerate() {
        let _ = inp;
        writeln!(
            t,
            "        const i64 base{i} = {};",
            outer_offset(k, i, r - 1)
        )
        .unwrap();
    }
    let offset = |i: usize| match k.inputs[i].strides[r - 1] {
        Stride::Zero => format!("base{i}"),
        Stride::One => format!("base{i} + j"),
        Stride::Dynamic => format!("base{i} + j * s{i}_{}", r - 1),
    };
    for (s, st) in k.stages.iter().enumerate() {
        let init = match st.reduce {
            Some((ReduceOp::Sum, _)) => "0.0f",
            Some((ReduceOp::Max, _)) => "-ENC_INF",
            None => "0.0f",
        };
        writeln!(t, "        // stage {s}").unwrap();
        if st.reduce.is_some() {
            writeln!(t, "        float acc{s} = {init};").unwrap();
        }
        let full: Vec<&(usize, usize)> = st
            .stores
            .iter()
            .filter(|(o, _)| !k.outputs[*o].per_row)
            .collect();
        if st.reduce.is_some() || !full.is_empty() {
            writeln!(
                t,
                "        if (active) for (i64 j = threadIdx.x; j < {inner}; j += blockDim.x) {{"
            )
            .unwrap();
            stage_ops(t, "            ", k, mems, st, &offset, "j", r);
            if let Some((op, v)) = st.reduce {
                let f = match op {
                    ReduceOp::Sum => "enc_sum",
                    ReduceOp::Max => "enc_max",
                };
                writeln!(t, "            acc{s} = {f}(acc{s}, v{v});").unwrap();
            }
            for &&(o, v) in &full {
                writeln!(
                    t,
                    "            out{o}[row * {inner} + j] = {};",
                    store(k.outputs[o].dtype, mems.outputs[o], &format!("v{v}"))
                )
                .unwrap();
            }
            t.push_str("        }\n");
        }
        if let Some((op, _)) = st.reduce {
            let f = match op {
                ReduceOp::Sum => "enc_row_sum",
                ReduceOp::Max => "enc_row_max",
            };
            writeln!(t, "        const float r{s} = {f}(acc{s});").unwrap();
            for &(o, _) in st.stores.iter().filter(|(o, _)| k.outputs[*o].per_row) {
                writeln!(
                    t,
                    "        if (active && threadIdx.x == 0) out{o}[row] = {};",
                    store(DType::F32, mems.outputs[o], &format!("r{s}"))
                )
                .unwrap();
            }
        }
    }
    t.push_str("    }\n");
}

/// The stored form of register value `v`.
fn store(dtype: DType, mem: Mem, v: &str) -> String {
    match (dtype, mem) {
        (_, Mem::Bf16) => format!("enc_to_bf16({v})"),
        (DType::Bool, _) => format!("(u8){v}"),
        _ => v.to_string(),
    }
}

/// The ops of one stage, one `const` per value. `offset(i)` is input i's element offset;
/// `inner` the inner axis index; row values are `r<stage>`.
#[allow(clippy::too_many_arguments)]
fn stage_ops(
    t: &mut String,
    indent: &str,
    k: &LoopKernel,
    mems: &KernelMems,
    st: &Stage,
    offset: &dyn Fn(usize) -> String,
    inner: &str,
    rank: usize,
) {
    let mut types: Vec<DType> = Vec::with_capacity(st.ops.len());
    for (i, op) in st.ops.iter().enumerate() {
        let (ty, expr) = match op {
            KOp::Load { input } => {
                let d = k.inputs[*input].dtype;
                let load = format!("in{input}[{}]", offset(*input));
                let e = match (d, mems.inputs[*input]) {
                    (DType::Bool, _) => format!("{load} != 0"),
                    (_, Mem::Bf16) => format!("enc_ld({load})"),
                    _ => load,
                };
                (d, e)
            }
            KOp::Const { value, dtype } => (*dtype, constant(value.0, *dtype)),
            KOp::Index { axis } => {
                let e = if *axis + 1 == rank {
                    inner.to_string()
                } else {
                    format!("i{axis}")
                };
                (DType::I64, e)
            }
            KOp::RowValue { stage } => (DType::F32, format!("r{stage}")),
            KOp::Unary { op, a } => (types[*a], unary(*op, types[*a], &format!("v{a}"))),
            KOp::Binary { op, a, b } => {
                let ty = if op.is_comparison() {
                    DType::Bool
                } else {
                    types[*a]
                };
                (
                    ty,
                    binary(*op, types[*a], &format!("v{a}"), &format!("v{b}")),
                )
            }
            KOp::Where { cond, a, b } => (types[*a], format!("v{cond} ? v{a} : v{b}")),
            KOp::Cast { to, a } => (*to, cast(types[*a], *to, &format!("v{a}"))),
        };
        writeln!(t, "{indent}const {} v{i} = {expr};", c_type(ty)).unwrap();
        types.push(ty);
    }
}
