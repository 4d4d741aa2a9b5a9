//! Well-formedness of a `LoopKernel` and the dtype of every value in it.
//!
//! Fusion builds kernels from a verified graph, so a failure here is a compiler bug, not a
//! user error; it is still an `Err` with the kernel, stage and op named, because a malformed
//! kernel would otherwise become invalid LLVM IR (or, worse, valid IR that reads out of
//! bounds).

use encdecc_compiler::ir::{BinaryOp, DType, UnaryOp};
use encdecc_compiler::kernel::{KOp, LoopKernel};

/// The dtype of each op of each stage: `types[stage][op]`.
pub type KernelTypes = Vec<Vec<DType>>;

pub fn check(k: &LoopKernel) -> Result<KernelTypes, String> {
    let at = |s: usize, i: usize| format!("kernel `{}`, stage {s}, op {i}", k.name);
    if k.rank == 0 {
        return Err(format!("kernel `{}` has rank 0 (expected >= 1)", k.name));
    }
    for (i, input) in k.inputs.iter().enumerate() {
        if input.strides.len() != k.rank {
            return Err(format!(
                "kernel `{}`: input {i} has {} strides, expected rank {}",
                k.name,
                input.strides.len(),
                k.rank
            ));
        }
    }
    let mut types: KernelTypes = vec![];
    for (s, stage) in k.stages.iter().enumerate() {
        let mut ty: Vec<DType> = vec![];
        for (i, op) in stage.ops.iter().enumerate() {
            let arg = |v: usize| {
                ty.get(v)
                    .copied()
                    .ok_or_else(|| format!("{}: uses value {v}, not an earlier op", at(s, i)))
            };
            let t = match *op {
                KOp::Load { input } => {
                    k.inputs
                        .get(input)
                        .ok_or_else(|| format!("{}: loads missing input {input}", at(s, i)))?
                        .dtype
                }
                KOp::Const { dtype, .. } => dtype,
                KOp::Index { axis } if axis < k.rank => DType::I64,
                KOp::Index { axis } => {
                    return Err(format!("{}: index axis {axis} >= rank", at(s, i)))
                }
                KOp::RowValue { stage } => match k.stages[..s].get(stage).map(|st| st.reduce) {
                    Some(Some(_)) => DType::F32,
                    _ => {
                        return Err(format!(
                        "{}: reads the row value of stage {stage}, not an earlier reducing stage",
                        at(s, i)
                    ))
                    }
                },
                KOp::Unary { op, a } => {
                    let t = arg(a)?;
                    let ok = match op {
                        UnaryOp::Not => t == DType::Bool,
                        UnaryOp::Neg | UnaryOp::Abs => matches!(t, DType::F32 | DType::I64),
                        _ => t == DType::F32,
                    };
                    if !ok {
                        return Err(format!(
                            "{}: {op:?} is not defined on {}",
                            at(s, i),
                            t.name()
                        ));
                    }
                    t
                }
                KOp::Binary { op, a, b } => {
                    let (ta, tb) = (arg(a)?, arg(b)?);
                    if ta != tb {
                        return Err(format!(
                            "{}: {op:?} operands differ in dtype ({} and {})",
                            at(s, i),
                            ta.name(),
                            tb.name()
                        ));
                    }
                    let ok = match (op, ta) {
                        (_, DType::Bf16) => false,
                        (BinaryOp::And | BinaryOp::Or, t) => t == DType::Bool,
                        (BinaryOp::Eq | BinaryOp::Ne, _) => true,
                        (_, t) => matches!(t, DType::F32 | DType::I64),
                    };
                    if !ok {
                        return Err(format!(
                            "{}: {op:?} is not defined on {}",
                            at(s, i),
                            ta.name()
                        ));
                    }
                    if op.is_comparison() {
                        DType::Bool
                    } else {
                        ta
                    }
                }
                KOp::Where { cond, a, b } => {
                    let (tc, ta, tb) = (arg(cond)?, arg(a)?, arg(b)?);
                    if tc != DType::Bool || ta != tb {
                        return Err(format!(
                            "{}: where needs a bool condition and equal branch dtypes",
                            at(s, i)
                        ));
                    }
                    ta
                }
                KOp::Cast { to, a } => {
                    let from = arg(a)?;
                    // i8 is weight storage, read only by `dequant` (never a loop kernel).
                    if from == DType::I8 || to == DType::I8 {
                        return Err(format!("{}: casts from or to i8 are not defined", at(s, i)));
                    }
                    to
                }
            };
            ty.push(t);
        }
        if let Some((op, v)) = stage.reduce {
            if ty.get(v) != Some(&DType::F32) {
                return Err(format!(
                    "kernel `{}`, stage {s}: {op:?} reduction of value {v}, which is not an f32 op",
                    k.name
                ));
            }
        }
        for &(o, v) in &stage.stores {
            let out = k.outputs.get(o).ok_or_else(|| {
                format!(
                    "kernel `{}`, stage {s}: stores to missing output {o}",
                    k.name
                )
            })?;
            if out.per_row {
                // The stored value is the reduction result, which only exists in a reducing stage.
                if stage.reduce.map(|(_, r)| r) != Some(v) {
                    return Err(format!(
                        "kernel `{}`, stage {s}: per-row output {o} must store the stage's reduced value",
                        k.name
                    ));
                }
                if out.dtype != DType::F32 {
                    return Err(format!(
                        "kernel `{}`: per-row output {o} must be f32",
                        k.name
                    ));
                }
            } else if ty.get(v) != Some(&out.dtype) {
                return Err(format!(
                    "kernel `{}`, stage {s}: output {o} is {} but value {v} is {}",
                    k.name,
                    out.dtype.name(),
                    ty.get(v).map_or("missing", |t| t.name())
                ));
            }
        }
        types.push(ty);
    }
    Ok(types)
}
