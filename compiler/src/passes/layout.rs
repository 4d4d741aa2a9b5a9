//! Layout simplification: chains of movement ops collapse into one, and slices look
//! through concats and other slices. Every rewrite moves the same elements to the same
//! places, so it is exact for any dtype. A collapsed chain keeps the outer node (its name
//! and place); the inner one goes if nothing else uses it.
//!
//! - `permute(permute(x, p), q)` → `permute(x, p∘q)` (→ `x` if that is the identity)
//! - `reshape(reshape(x))` → `reshape(x)`; `expand(expand(x))` → `expand(x)`
//! - `slice(slice(x))` on one axis → one slice
//! - `slice(concat(a, b, …))` on the concat axis, within one operand → that operand, or
//!   a slice of it
//!
//! Transposed matmul operands (`matmul(x, permute(w, [1, 0]))`) are left alone: the
//! backends read them as they are.

use super::rewrite::{replace, rewrite};
use crate::ir::{Graph, NodeId, Op};

/// Returns the number of nodes rewritten.
pub fn run(g: &mut Graph) -> usize {
    let mut changed = 0;
    for n in g.topo_order() {
        if !g.dag.contains_node(n) {
            continue;
        }
        let Some((op, operand)) = collapse(g, n) else {
            continue;
        };
        match op {
            None => replace(g, n, operand),
            Some(op) => {
                if !rewrite(g, n, op, &[operand]) {
                    continue;
                }
            }
        }
        changed += 1;
    }
    changed
}

/// What `n` becomes: `(Some(op), x)` is `op` applied to `x`; `(None, x)` is `x` itself.
fn collapse(g: &Graph, n: NodeId) -> Option<(Option<Op>, NodeId)> {
    let op = &g.node(n).op;
    if !matches!(
        op,
        Op::Permute { .. } | Op::Reshape | Op::Expand | Op::Slice { .. }
    ) {
        return None;
    }
    let inner = g.operands(n)[0];
    let inner_op = &g.node(inner).op;
    let inner_ops = g.operands(inner);
    let same_type = |x: NodeId| g.node(x).ty == g.node(n).ty;
    match (op, inner_op) {
        (Op::Permute { perm: q }, Op::Permute { perm: p }) => {
            // out axis i is inner axis q[i], which is x's axis p[q[i]].
            let perm: Vec<usize> = q.iter().map(|&i| p[i]).collect();
            let x = inner_ops[0];
            if perm.iter().enumerate().all(|(i, &a)| i == a) {
                Some((None, x))
            } else {
                Some((Some(Op::Permute { perm }), x))
            }
        }
        (Op::Reshape, Op::Reshape) | (Op::Expand, Op::Expand) => {
            let x = inner_ops[0];
            if same_type(x) {
                Some((None, x))
            } else {
                Some((Some(op.clone()), x))
            }
        }
        (
            &Op::Slice { axis, start, end },
            &Op::Slice {
                axis: a2,
                start: s2,
                ..
            },
        ) if axis == a2 => Some((
            Some(Op::Slice {
                axis,
                start: s2 + start,
                end: s2 + end,
            }),
            inner_ops[0],
        )),
        (&Op::Slice { axis, start, end }, &Op::Concat { axis: a2 }) if axis == a2 => {
            let mut offset = 0;
            for &x in &inner_ops {
                let len = g.node(x).ty.shape.0[axis].known()?;
                if start >= offset && end <= offset + len {
                    if start == offset && end == offset + len {
                        return Some((None, x));
                    }
                    let sub = Op::Slice {
                        axis,
                        start: start - offset,
                        end: end - offset,
                    };
                    return Some((Some(sub), x));
                }
                offset += len;
            }
            None
        }
        _ => None,
    }
}
