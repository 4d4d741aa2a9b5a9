//! Type inference for every op: the one place that knows each op's typing rule.

use super::op::*;
use super::types::{DType, Dim, Shape, TensorType};

fn err<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

/// numpy broadcasting over possibly symbolic dimensions.
pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let n = a.rank().max(b.rank());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.rank() >= n {
            Some(&a.0[i + a.rank() - n])
        } else {
            None
        };
        let db = if i + b.rank() >= n {
            Some(&b.0[i + b.rank() - n])
        } else {
            None
        };
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Known(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Known(1))) => x.clone(),
            _ => return err(format!("shapes {a} and {b} do not broadcast")),
        });
    }
    Ok(Shape(out))
}

/// Same number of elements: equal products of known dims and the same symbols.
pub fn same_numel(a: &Shape, b: &Shape) -> bool {
    fn split(s: &Shape) -> (u64, Vec<&str>) {
        let mut known = 1u64;
        let mut syms: Vec<&str> = vec![];
        for d in &s.0 {
            match d {
                Dim::Known(n) => known = known.saturating_mul(*n),
                Dim::Sym(x) => syms.push(x),
            }
        }
        syms.sort();
        (known, syms)
    }
    split(a) == split(b)
}

fn need(declared: Option<&TensorType>, op: &Op) -> Result<TensorType, String> {
    declared
        .cloned()
        .ok_or_else(|| format!("`{}` needs a declared result type", op.mnemonic()))
}

fn arity(op: &Op, ins: &[&TensorType], n: usize) -> Result<(), String> {
    if ins.len() != n {
        return err(format!(
            "`{}` takes {n} operand(s), got {}",
            op.mnemonic(),
            ins.len()
        ));
    }
    Ok(())
}

pub fn infer_type(
    op: &Op,
    ins: &[&TensorType],
    declared: Option<&TensorType>,
) -> Result<TensorType, String> {
    let ty = infer_inner(op, ins, declared)?;
    if let Some(d) = declared {
        if *d != ty {
            return err(format!("`{}` has type {ty}, declared {d}", op.mnemonic()));
        }
    }
    Ok(ty)
}

fn infer_inner(
    op: &Op,
    ins: &[&TensorType],
    declared: Option<&TensorType>,
) -> Result<TensorType, String> {
    match op {
        Op::Param { .. } | Op::Input { .. } => {
            arity(op, ins, 0)?;
            need(declared, op)
        }
        Op::Const { .. } => {
            arity(op, ins, 0)?;
            let t = need(declared, op)?;
            if t.shape.rank() != 0 {
                return err("`const` is a scalar");
            }
            Ok(t)
        }
        Op::Iota { axis } => {
            arity(op, ins, 0)?;
            let t = need(declared, op)?;
            if *axis >= t.shape.rank() {
                return err(format!("iota axis {axis} out of range for {}", t.shape));
            }
            Ok(t)
        }
        Op::Unary(u) => {
            arity(op, ins, 1)?;
            let dt = ins[0].dtype;
            let ok = match u {
                UnaryOp::Not => dt == DType::Bool,
                UnaryOp::Neg | UnaryOp::Abs => matches!(dt, DType::F32 | DType::I64),
                _ => dt == DType::F32,
            };
            if !ok {
                return err(format!(
                    "`{}` is not defined on {}",
                    op.mnemonic(),
                    dt.name()
                ));
            }
            Ok(ins[0].clone())
        }
        Op::Binary(b) => {
            arity(op, ins, 2)?;
            let (x, y) = (ins[0], ins[1]);
            // bf16 and i8 are storage: arithmetic on them goes through a `cast` to f32.
            if let Some(d) = [x.dtype, y.dtype].into_iter().find(|d| d.is_storage()) {
                return err(format!(
                    "`{}` is not defined on {} (cast to f32 first)",
                    op.mnemonic(),
                    d.name()
                ));
            }
            if x.dtype != y.dtype {
                return err(format!(
                    "`{}` operands differ in dtype: {} and {}",
                    op.mnemonic(),
                    x.dtype.name(),
                    y.dtype.name()
                ));
            }
            let shape = broadcast(&x.shape, &y.shape)?;
            let dtype = if b.is_comparison() {
                DType::Bool
            } else if b.is_logical() {
                if x.dtype != DType::Bool {
                    return err(format!("`{}` needs bool operands", op.mnemonic()));
                }
                DType::Bool
            } else {
                if x.dtype == DType::Bool {
                    return err(format!("`{}` is not defined on bool", op.mnemonic()));
                }
                x.dtype
            };
            Ok(TensorType { dtype, shape })
        }
        Op::Where => {
            arity(op, ins, 3)?;
            if ins[0].dtype != DType::Bool {
                return err("`where` needs a bool condition");
            }
            if ins[1].dtype == DType::I8 {
                return err("`where` is not defined on i8");
            }
            if ins[1].dtype != ins[2].dtype {
                return err("`where` branches differ in dtype");
            }
            let s = broadcast(&broadcast(&ins[0].shape, &ins[1].shape)?, &ins[2].shape)?;
            Ok(TensorType {
                dtype: ins[1].dtype,
                shape: s,
            })
        }
        Op::Cast => {
            arity(op, ins, 1)?;
            let t = need(declared, op)?;
            if ins[0].dtype == DType::I8 || t.dtype == DType::I8 {
                return err(
                    "`cast` from or to i8 is not defined (i8 weights are read by `dequant`)",
                );
            }
            if t.shape != ins[0].shape {
                return err("`cast` keeps the shape");
            }
            Ok(t)
        }
        Op::Reduce { axis, .. } => {
            arity(op, ins, 1)?;
            if ins[0].dtype.is_storage() {
                return err(format!(
                    "`reduce` is not defined on {} (reductions are f32; cast first)",
                    ins[0].dtype.name()
                ));
            }
            let mut s = ins[0].shape.clone();
            if *axis >= s.rank() {
                return err(format!("reduce axis {axis} out of range for {}", s));
            }
            s.0[*axis] = Dim::Known(1);
            Ok(TensorType {
                dtype: ins[0].dtype,
                shape: s,
            })
        }
        Op::Reshape => {
            arity(op, ins, 1)?;
            let t = need(declared, op)?;
            if !same_numel(&t.shape, &ins[0].shape) || t.dtype != ins[0].dtype {
                return err(format!("cannot reshape {} to {}", ins[0].shape, t.shape));
            }
            Ok(t)
        }
        Op::Permute { perm } => {
            arity(op, ins, 1)?;
            let s = &ins[0].shape;
            let mut seen = vec![false; s.rank()];
            if perm.len() != s.rank()
                || perm
                    .iter()
                    .any(|&p| p >= s.rank() || std::mem::replace(&mut seen[p], true))
            {
                return err(format!(
                    "{perm:?} is not a permutation of the {} axes of {s}",
                    s.rank()
                ));
            }
            Ok(TensorType {
                dtype: ins[0].dtype,
                shape: Shape(perm.iter().map(|&p| s.0[p].clone()).collect()),
            })
        }
        Op::Expand => {
            arity(op, ins, 1)?;
            let t = need(declared, op)?;
            let b = broadcast(&ins[0].shape, &t.shape)?;
            if b != t.shape || t.dtype != ins[0].dtype {
                return err(format!("cannot expand {} to {}", ins[0].shape, t.shape));
            }
            Ok(t)
        }
        Op::Slice { axis, start, end } => {
            arity(op, ins, 1)?;
            let mut s = ins[0].shape.clone();
            let Some(d) = s.0.get(*axis) else {
                return err(format!("slice axis {axis} out of range for {s}"));
            };
            let Some(n) = d.known() else {
                return err(format!("cannot slice symbolic axis {axis} of {s}"));
            };
            if start > end || *end > n {
                return err(format!(
                    "slice {start}..{end} out of range for axis of size {n}"
                ));
            }
            s.0[*axis] = Dim::Known(end - start);
            Ok(TensorType {
                dtype: ins[0].dtype,
                shape: s,
            })
        }
        Op::Concat { axis } => {
            if ins.is_empty() {
                return err("`concat` needs operands");
            }
            let first = ins[0];
            let mut total = 0;
            for t in ins {
                if t.dtype != first.dtype
                    || t.shape.rank() != first.shape.rank()
                    || *axis >= t.shape.rank()
                {
                    return err(format!("cannot concat {t} with {first} on axis {axis}"));
                }
                for (i, (a, b)) in t.shape.0.iter().zip(&first.shape.0).enumerate() {
                    if i != *axis && a != b {
                        return err(format!(
                            "cannot concat {} with {} on axis {axis}",
                            t.shape, first.shape
                        ));
                    }
                }
                total += t.shape.0[*axis]
                    .known()
                    .ok_or("cannot concat along a symbolic axis")?;
            }
            let mut s = first.shape.clone();
            s.0[*axis] = Dim::Known(total);
            Ok(TensorType {
                dtype: first.dtype,
                shape: s,
            })
        }
        Op::Gather => {
            arity(op, ins, 2)?;
            if ins[1].dtype != DType::I64 {
                return err("`gather` indices must be i64");
            }
            if ins[0].shape.rank() == 0 {
                return err("`gather` needs a table of rank >= 1");
            }
            let mut s = ins[1].shape.0.clone();
            s.extend(ins[0].shape.0[1..].iter().cloned());
            Ok(TensorType {
                dtype: ins[0].dtype,
                shape: Shape(s),
            })
        }
        Op::ScatterAdd => {
            if ins.len() != 3 {
                arity(op, ins, 2)?;
            }
            let t = need(declared, op)?;
            if let Some(base) = ins.get(2) {
                if **base != t {
                    return err(format!(
                        "`scatter_add` adds onto a table of its result type {t}, got {base}"
                    ));
                }
            }
            if ins[0].dtype != DType::I64 {
                return err("`scatter_add` indices must be i64");
            }
            if t.shape.rank() == 0 || t.dtype != ins[1].dtype {
                return err(format!(
                    "`scatter_add` makes a table of rank >= 1 of the rows' dtype, not {t}"
                ));
            }
            let mut rows = ins[0].shape.0.clone();
            rows.extend(t.shape.0[1..].iter().cloned());
            if ins[1].shape.0 != rows {
                return err(format!(
                    "`scatter_add` rows must be {} (indices ++ table row), got {}",
                    Shape(rows),
                    ins[1].shape
                ));
            }
            Ok(t)
        }
        Op::Shift { axis, .. } => {
            arity(op, ins, 1)?;
            if *axis >= ins[0].shape.rank() {
                return err("shift axis out of range");
            }
            Ok(ins[0].clone())
        }
        Op::MatMul => {
            arity(op, ins, 2)?;
            let (a, b) = (&ins[0].shape, &ins[1].shape);
            // Both f32, or both bf16 (products exact in f32, accumulated in f32).
            let dt = ins[0].dtype;
            if dt != ins[1].dtype || !matches!(dt, DType::F32 | DType::Bf16) {
                return err(format!(
                    "`matmul` needs two f32 or two bf16 operands, got {} and {}",
                    dt.name(),
                    ins[1].dtype.name()
                ));
            }
            if a.rank() < 2 || b.rank() < 2 {
                return err(format!("`matmul` needs rank >= 2, got {a} and {b}"));
            }
            let (m, k1) = (&a.0[a.rank() - 2], &a.0[a.rank() - 1]);
            let (k2, n) = (&b.0[b.rank() - 2], &b.0[b.rank() - 1]);
            if k1 != k2 {
                return err(format!("matmul inner dimensions differ: {a} @ {b}"));
            }
            let batch = broadcast(
                &Shape(a.0[..a.rank() - 2].to_vec()),
                &Shape(b.0[..b.rank() - 2].to_vec()),
            )?;
            let mut s = batch.0;
            s.push(m.clone());
            s.push(n.clone());
            Ok(TensorType {
                dtype: DType::F32,
                shape: Shape(s),
            })
        }
        Op::Dequant => {
            arity(op, ins, 2)?;
            let (q, s) = (ins[0], ins[1]);
            let r = q.shape.rank();
            let mut row = q.shape.clone();
            if r >= 1 {
                row.0[r - 1] = Dim::Known(1);
            }
            if q.dtype != DType::I8 || s.dtype != DType::F32 || r < 1 || s.shape != row {
                return err(format!(
                    "`dequant` takes i8 values and their f32 per-row scales `[.., 1]`, got {q} and {s}"
                ));
            }
            Ok(TensorType {
                dtype: DType::F32,
                shape: q.shape.clone(),
            })
        }
        Op::Attention(_) => {
            if ins.len() != 3 && ins.len() != 4 {
                return err("`attention` takes q, k, v and an optional key mask");
            }
            attention_type(ins[0], ins[1], ins[2], ins.get(3).copied())
        }
        Op::AttentionGrad { wrt, .. } => {
            if ins.len() != 4 && ins.len() != 5 {
                return err("`attention_grad` takes q, k, v, dout and an optional key mask");
            }
            let out = attention_type(ins[0], ins[1], ins[2], ins.get(4).copied())?;
            if *ins[3] != out {
                return err(format!(
                    "attention_grad: `dout` must be {out}, got {}",
                    ins[3]
                ));
            }
            Ok(ins[wrt.position()].clone())
        }
        Op::CrossEntropyGrad { .. } => {
            arity(op, ins, 3)?;
            cross_entropy_operands(ins[0], ins[1])?;
            let d = ins[2];
            if d.dtype != DType::F32 || d.shape != Shape::known(&[1]) {
                return err(format!(
                    "cross_entropy_grad: `dloss` must be f32[1], got {d}"
                ));
            }
            Ok(ins[0].clone())
        }
        Op::CrossEntropy { .. } => {
            arity(op, ins, 2)?;
            cross_entropy_operands(ins[0], ins[1])?;
            Ok(TensorType {
                dtype: DType::F32,
                shape: Shape::known(&[1]),
            })
        }
    }
}

/// The result type of `attention(q, k, v, mask)`.
fn attention_type(
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
    mask: Option<&TensorType>,
) -> Result<TensorType, String> {
    if [q, k, v].iter().any(|t| t.dtype != DType::F32) {
        return err(format!(
            "attention wants f32 q, k, v, got {}, {}, {}",
            q.dtype.name(),
            k.dtype.name(),
            v.dtype.name()
        ));
    }
    let (q, k, v) = (&q.shape, &k.shape, &v.shape);
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return err(format!(
            "attention wants [B, heads, T, head_dim], got q {q}, k {k}, v {v}"
        ));
    }
    if q.0[0] != k.0[0]
        || k.0[0] != v.0[0]
        || k.0[1] != v.0[1]
        || k.0[2] != v.0[2]
        || q.0[3] != k.0[3]
    {
        return err(format!("attention operands disagree: q {q}, k {k}, v {v}"));
    }
    match (q.0[1].known(), k.0[1].known()) {
        (Some(hq), Some(hk)) if hk > 0 && hq % hk == 0 => {}
        _ => {
            return err(format!(
                "query heads {} must be a multiple of kv heads {}",
                q.0[1], k.0[1]
            ))
        }
    }
    if let Some(m) = mask {
        if m.dtype != DType::Bool || m.shape != Shape(vec![k.0[0].clone(), k.0[2].clone()]) {
            return err(format!(
                "attention key mask must be bool[{}, {}], got {m}",
                k.0[0], k.0[2]
            ));
        }
    }
    Ok(TensorType {
        dtype: DType::F32,
        shape: Shape(vec![
            q.0[0].clone(),
            q.0[1].clone(),
            q.0[2].clone(),
            v.0[3].clone(),
        ]),
    })
}

/// `logits [.., V]` (f32) against `labels [..]` (i64).
fn cross_entropy_operands(l: &TensorType, y: &TensorType) -> Result<(), String> {
    if l.dtype != DType::F32 || y.dtype != DType::I64 {
        return err("`cross_entropy` takes f32 logits and i64 labels");
    }
    if l.shape.rank() != y.shape.rank() + 1 || l.shape.0[..y.shape.rank()] != y.shape.0[..] {
        return err(format!(
            "logits {} do not match labels {}",
            l.shape, y.shape
        ));
    }
    Ok(())
}
