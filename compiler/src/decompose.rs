//! Decomposition of composite ops into primitives. The reference interpreter runs the
//! decomposed graph, so these functions define what a composite means; fast backends
//! implement composites directly and are tested against this.

use crate::ir::verify::debug_verify;
use crate::ir::*;

type Res<T> = Result<T, String>;

pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

fn ty(g: &Graph, n: NodeId) -> TensorType {
    g.node(n).ty.clone()
}

fn cnst(g: &mut Graph, v: f64, dtype: DType) -> Res<NodeId> {
    g.add(
        Op::Const { value: F64(v) },
        &[],
        Some(TensorType {
            dtype,
            shape: Shape::scalar(),
        }),
    )
}

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> Res<NodeId> {
    g.add(Op::Binary(op), &[a, b], None)
}

fn un(g: &mut Graph, op: UnaryOp, a: NodeId) -> Res<NodeId> {
    g.add(Op::Unary(op), &[a], None)
}

fn reshape(g: &mut Graph, x: NodeId, dims: Vec<Dim>) -> Res<NodeId> {
    let dtype = ty(g, x).dtype;
    g.add(
        Op::Reshape,
        &[x],
        Some(TensorType {
            dtype,
            shape: Shape(dims),
        }),
    )
}

fn iota(g: &mut Graph, dims: Vec<Dim>, axis: usize) -> Res<NodeId> {
    g.add(
        Op::Iota { axis },
        &[],
        Some(TensorType {
            dtype: DType::I64,
            shape: Shape(dims),
        }),
    )
}

/// Which keys each query may see, as bool `[B, Tq, Tk]` (or `[1, Tq, Tk]` with no key mask):
/// the position rule of `attrs` (causal, window and its rule) and the key padding mask.
/// Returns `None` when every key is visible.
fn visibility(
    g: &mut Graph,
    tq: Dim,
    tk: Dim,
    key_mask: Option<NodeId>,
    a: &AttentionAttrs,
) -> Res<Option<NodeId>> {
    let i = iota(g, vec![tq.clone(), Dim::Known(1)], 0)?;
    let j = iota(g, vec![Dim::Known(1), tk.clone()], 1)?;
    let mut pos: Option<NodeId> = None;
    let and = |g: &mut Graph, acc: Option<NodeId>, m: NodeId| -> Res<NodeId> {
        match acc {
            Some(a) => bin(g, BinaryOp::And, a, m),
            None => Ok(m),
        }
    };
    match a.mode {
        AttnMode::Causal => {
            let c = bin(g, BinaryOp::Le, j, i)?;
            pos = Some(c);
            if let Some(w) = a.window {
                // i - W < j: W keys including the query itself.
                let wn = cnst(g, w as f64, DType::I64)?;
                let lo = bin(g, BinaryOp::Sub, i, wn)?;
                let m = bin(g, BinaryOp::Lt, lo, j)?;
                pos = Some(and(g, pos, m)?);
            }
        }
        AttnMode::Bidirectional => {
            if let Some(w) = a.window {
                let d = bin(g, BinaryOp::Sub, i, j)?;
                let d = un(g, UnaryOp::Abs, d)?;
                let wn = cnst(g, w as f64, DType::I64)?;
                let op = match a.window_rule {
                    WindowRule::Inclusive => BinaryOp::Le,
                    WindowRule::Exclusive => BinaryOp::Lt,
                };
                pos = Some(bin(g, op, d, wn)?);
            }
        }
    }
    let pos = match pos {
        Some(p) => Some(reshape(g, p, vec![Dim::Known(1), tq, tk.clone()])?),
        None => None,
    };
    Ok(match key_mask {
        Some(m) => {
            let b = ty(g, m).shape.0[0].clone();
            let km = reshape(g, m, vec![b, Dim::Known(1), tk])?;
            Some(and(g, pos, km)?)
        }
        None => pos,
    })
}

/// The attention visibility mask as bool `[B, Tq, Tk]` (for probes and tests).
pub fn attention_mask(
    g: &mut Graph,
    q: NodeId,
    k: NodeId,
    key_mask: Option<NodeId>,
    a: &AttentionAttrs,
) -> Res<NodeId> {
    let (qs, ks) = (ty(g, q).shape, ty(g, k).shape);
    if qs.rank() != 4 || ks.rank() != 4 {
        return Err("attention_mask wants q and k as [B, heads, T, head_dim]".into());
    }
    let (b, tq, tk) = (qs.0[0].clone(), qs.0[2].clone(), ks.0[2].clone());
    let full = TensorType {
        dtype: DType::Bool,
        shape: Shape(vec![b, tq.clone(), tk.clone()]),
    };
    match visibility(g, tq, tk, key_mask, a)? {
        Some(m) => g.add(Op::Expand, &[m], Some(full)),
        None => {
            let t = cnst(g, 1.0, DType::Bool)?;
            g.add(Op::Expand, &[t], Some(full))
        }
    }
}

/// Attention as primitives, exactly HF's eager path: repeat kv heads, `q kᵀ · scale`,
/// softcap, additive mask of `f32::MIN`, softmax, `p v`.
pub(crate) fn decompose_attention(
    g: &mut Graph,
    ops: &[NodeId],
    a: &AttentionAttrs,
) -> Res<NodeId> {
    let (q, mut k, mut v) = (ops[0], ops[1], ops[2]);
    let qs = ty(g, q).shape;
    let ks = ty(g, k).shape;
    let (hq, hk) = (qs.0[1].known().unwrap_or(1), ks.0[1].known().unwrap_or(1));
    let r = hq / hk;
    if r > 1 {
        // kv head h serves query heads h·r … h·r+r-1 (HF repeat_kv: expand then reshape).
        for x in [&mut k, &mut v] {
            let s = ty(g, *x).shape.0;
            let five = reshape(
                g,
                *x,
                vec![
                    s[0].clone(),
                    s[1].clone(),
                    Dim::Known(1),
                    s[2].clone(),
                    s[3].clone(),
                ],
            )?;
            let exp = TensorType {
                dtype: DType::F32,
                shape: Shape(vec![
                    s[0].clone(),
                    s[1].clone(),
                    Dim::Known(r),
                    s[2].clone(),
                    s[3].clone(),
                ]),
            };
            let e = g.add(Op::Expand, &[five], Some(exp))?;
            *x = reshape(
                g,
                e,
                vec![s[0].clone(), Dim::Known(hq), s[2].clone(), s[3].clone()],
            )?;
        }
    }
    let kt = g.add(
        Op::Permute {
            perm: vec![0, 1, 3, 2],
        },
        &[k],
        None,
    )?;
    let s = g.add(Op::MatMul, &[q, kt], None)?;
    let sc = cnst(g, a.scale.0, DType::F32)?;
    let mut s = bin(g, BinaryOp::Mul, s, sc)?;
    if let Some(cap) = a.softcap {
        let c = cnst(g, cap.0, DType::F32)?;
        let d = bin(g, BinaryOp::Div, s, c)?;
        let t = un(g, UnaryOp::Tanh, d)?;
        s = bin(g, BinaryOp::Mul, t, c)?;
    }
    if let Some(m) = visibility(g, qs.0[2].clone(), ks.0[2].clone(), ops.get(3).copied(), a)? {
        let ms = ty(g, m).shape.0;
        let m4 = reshape(
            g,
            m,
            vec![ms[0].clone(), Dim::Known(1), ms[1].clone(), ms[2].clone()],
        )?;
        let zero = cnst(g, 0.0, DType::F32)?;
        let min = cnst(g, f32::MIN as f64, DType::F32)?;
        let add = g.add(Op::Where, &[m4, zero, min], None)?;
        s = bin(g, BinaryOp::Add, s, add)?;
    }
    let p = softmax_last(g, s)?;
    g.add(Op::MatMul, &[p, v], None)
}

fn softmax_last(g: &mut Graph, s: NodeId) -> Res<NodeId> {
    let axis = ty(g, s).shape.rank() - 1;
    let m = g.add(
        Op::Reduce {
            op: ReduceOp::Max,
            axis,
        },
        &[s],
        None,
    )?;
    let d = bin(g, BinaryOp::Sub, s, m)?;
    let e = un(g, UnaryOp::Exp, d)?;
    let z = g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axis,
        },
        &[e],
        None,
    )?;
    bin(g, BinaryOp::Div, e, z)
}

/// `log Σ exp(x)` over the last axis, `[.., 1]`, the max subtracted first.
fn logsumexp_last(g: &mut Graph, x: NodeId) -> Res<NodeId> {
    let last = ty(g, x).shape.rank() - 1;
    let m = g.add(
        Op::Reduce {
            op: ReduceOp::Max,
            axis: last,
        },
        &[x],
        None,
    )?;
    let d = bin(g, BinaryOp::Sub, x, m)?;
    let e = un(g, UnaryOp::Exp, d)?;
    let z = g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axis: last,
        },
        &[e],
        None,
    )?;
    let lz = un(g, UnaryOp::Log, z)?;
    bin(g, BinaryOp::Add, lz, m)
}

/// Cross-entropy's label pieces: the class index along the logits' last axis and the
/// labels as `[.., 1]`.
fn label_parts(g: &mut Graph, logits: NodeId, labels: NodeId) -> Res<(NodeId, NodeId)> {
    let ls = ty(g, logits).shape;
    let classes = iota(g, ls.0.clone(), ls.rank() - 1)?;
    let mut ydims = ty(g, labels).shape.0;
    ydims.push(Dim::Known(1));
    let y = reshape(g, labels, ydims)?;
    Ok((classes, y))
}

/// Whether each label counts (`!= ignore`).
fn valid_labels(g: &mut Graph, y: NodeId, ignore: i64) -> Res<NodeId> {
    let ig = cnst(g, ignore as f64, DType::I64)?;
    bin(g, BinaryOp::Ne, y, ig)
}

fn to_f32(g: &mut Graph, x: NodeId) -> Res<NodeId> {
    let shape = ty(g, x).shape;
    g.add(
        Op::Cast,
        &[x],
        Some(TensorType {
            dtype: DType::F32,
            shape,
        }),
    )
}

fn sum_axis(g: &mut Graph, x: NodeId, axis: usize) -> Res<NodeId> {
    g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axis,
        },
        &[x],
        None,
    )
}

/// Mean cross-entropy over labels != ignore_index (HF `reduction="mean"`), shape `[1]`.
fn decompose_cross_entropy(g: &mut Graph, ops: &[NodeId], ignore: i64) -> Res<NodeId> {
    let (logits, labels) = (ops[0], ops[1]);
    let rank = ty(g, logits).shape.rank();
    let lse = logsumexp_last(g, logits)?;
    let (classes, y) = label_parts(g, logits, labels)?;
    let hit = bin(g, BinaryOp::Eq, classes, y)?;
    let zero = cnst(g, 0.0, DType::F32)?;
    let picked = g.add(Op::Where, &[hit, logits, zero], None)?;
    let picked = sum_axis(g, picked, rank - 1)?;
    let nll = bin(g, BinaryOp::Sub, lse, picked)?;
    let valid = valid_labels(g, y, ignore)?;
    let mut total = g.add(Op::Where, &[valid, nll, zero], None)?;
    let mut count = to_f32(g, valid)?;
    for axis in 0..rank {
        total = sum_axis(g, total, axis)?;
        count = sum_axis(g, count, axis)?;
    }
    let loss = bin(g, BinaryOp::Div, total, count)?;
    reshape(g, loss, vec![Dim::Known(1)])
}

/// The gradient of the mean cross-entropy with respect to the logits, as torch computes
/// it: `(softmax(logits) - onehot(label)) · dloss / count` on rows whose label counts, 0 on
/// the others.
///
/// The row statistics are built exactly as the loss builds them, so that CSE shares them
/// with a loss in the same graph; the full-size values are built from other nodes
/// (`exp(x - lse)`, `label == class`), so that the fuser keeps them inside the gradient's
/// loop kernel instead of storing `[.., V]` tensors that two kernels read.
fn decompose_cross_entropy_grad(g: &mut Graph, ops: &[NodeId], ignore: i64) -> Res<NodeId> {
    let (logits, labels, dloss) = (ops[0], ops[1], ops[2]);
    let rank = ty(g, logits).shape.rank();
    let lse = logsumexp_last(g, logits)?;
    let (classes, y) = label_parts(g, logits, labels)?;
    let d = bin(g, BinaryOp::Sub, logits, lse)?;
    let p = un(g, UnaryOp::Exp, d)?;
    let hit = bin(g, BinaryOp::Eq, y, classes)?;
    let (zero, one) = (cnst(g, 0.0, DType::F32)?, cnst(g, 1.0, DType::F32)?);
    let onehot = g.add(Op::Where, &[hit, one, zero], None)?;
    let diff = bin(g, BinaryOp::Sub, p, onehot)?;
    let valid = valid_labels(g, y, ignore)?;
    let mut count = to_f32(g, valid)?;
    for axis in 0..rank {
        count = sum_axis(g, count, axis)?;
    }
    let dl = reshape(g, dloss, vec![Dim::Known(1); rank])?;
    let scale = bin(g, BinaryOp::Div, dl, count)?;
    let scaled = bin(g, BinaryOp::Mul, diff, scale)?;
    g.add(Op::Where, &[valid, scaled, zero], None)
}

/// The `attention_grad` nodes that share `n`'s operands and attributes (`n` included), with
/// the operand each differentiates: one backward pass computes them all.
pub fn attention_grad_siblings(g: &Graph, n: NodeId) -> Vec<(NodeId, AttnOperand)> {
    let Op::AttentionGrad { attrs, .. } = &g.node(n).op else {
        return vec![];
    };
    let ops = g.operands(n);
    let mut out: Vec<(NodeId, AttnOperand)> = vec![];
    for (u, _) in g.users(ops[0]) {
        if let Op::AttentionGrad { attrs: a, wrt } = &g.node(u).op {
            // A value in two operand slots makes the same user appear twice.
            if a == attrs && g.operands(u) == ops && !out.iter().any(|(x, _)| *x == u) {
                out.push((u, *wrt));
            }
        }
    }
    out
}

/// Replaces every composite by its decomposition.
pub fn decompose(g: &mut Graph) -> Res<()> {
    decompose_where(g, |_| true)
}

/// Replaces the composites that `which` selects by their decomposition.
pub fn decompose_where(g: &mut Graph, which: impl Fn(&Op) -> bool) -> Res<()> {
    for n in g.topo_order() {
        // A sibling `attention_grad` is gone once its group is decomposed.
        if !g.dag.contains_node(n) {
            continue;
        }
        let op = g.node(n).op.clone();
        if !which(&op) {
            continue;
        }
        let ops = g.operands(n);
        if let Op::AttentionGrad { attrs, .. } = &op {
            // The gradients of one attention share one backward pass.
            let siblings = attention_grad_siblings(g, n);
            let wrts: Vec<AttnOperand> = siblings.iter().map(|(_, w)| *w).collect();
            let grads = crate::autodiff::attention_grads(g, &ops, attrs, &wrts)?;
            for ((s, _), d) in siblings.into_iter().zip(grads) {
                if let Some(name) = g.node(s).name.clone() {
                    g.set_name(d, &name);
                }
                g.replace_uses(s, d);
                g.dag.remove_node(s);
            }
            continue;
        }
        let out = match &op {
            Op::Attention(a) => decompose_attention(g, &ops, a)?,
            Op::CrossEntropy { ignore_index } => decompose_cross_entropy(g, &ops, *ignore_index)?,
            Op::CrossEntropyGrad { ignore_index } => {
                decompose_cross_entropy_grad(g, &ops, *ignore_index)?
            }
            _ => continue,
        };
        if let Some(name) = g.node(n).name.clone() {
            g.set_name(out, &name);
        }
        g.replace_uses(n, out);
        g.dag.remove_node(n);
    }
    debug_verify(g, "decompose");
    Ok(())
}
