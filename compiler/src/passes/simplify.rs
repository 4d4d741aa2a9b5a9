//! Algebraic simplification: a node that provably equals one of its operands, bit for bit
//! and with the same type, is replaced by that operand. The type check matters: `x * 1`
//! with a larger `1` broadcasts `x`, and that is not `x`. A "constant" here is a `const`
//! or one reshaped or expanded (a splat), whatever its shape.
//!
//! Identities used (each exact in IEEE f32, wrapping i64 and bool):
//! `x*1`, `1*x`, `x/1`; `x + -0.0`, `-0.0 + x`, `x - +0.0` (but not `x + 0.0`: it turns
//! `-0.0` into `+0.0`), and `x+0`, `0+x`, `x-0` on i64; `x and true`, `x or false`;
//! `neg(neg x)`, `not(not x)`; a cast to the operand's own dtype; `where(c, x, x)`; an
//! identity permute, a reshape or expand to the same shape, a slice of a whole axis, a
//! concat of one operand, a shift by 0.

use super::rewrite::{is_splat, replace, Scalar};
use crate::ir::{BinaryOp, DType, Graph, NodeId, Op, UnaryOp};

/// Returns the number of nodes replaced.
pub fn run(g: &mut Graph) -> usize {
    let mut replaced = 0;
    for n in g.topo_order() {
        if !g.dag.contains_node(n) {
            continue;
        }
        if let Some(x) = identity(g, n) {
            if g.node(x).ty == g.node(n).ty {
                replace(g, n, x);
                replaced += 1;
            }
        }
    }
    replaced
}

/// The operand `n` equals, if any (its type is checked by the caller).
fn identity(g: &Graph, n: NodeId) -> Option<NodeId> {
    let node = g.node(n);
    let ops = g.operands(n);
    let dtype = ops.first().map(|&o| g.node(o).ty.dtype);
    let is = |o: NodeId, v: Scalar| is_splat(g, o, v);
    let one = match dtype {
        Some(DType::I64) => Scalar::I64(1),
        _ => Scalar::F32(1.0),
    };
    // The additive identity on the left or right of `+`, and on the right of `-`.
    let (zero_add, zero_sub) = match dtype {
        Some(DType::I64) => (Scalar::I64(0), Scalar::I64(0)),
        _ => (Scalar::F32(-0.0), Scalar::F32(0.0)),
    };
    match &node.op {
        Op::Binary(b) => {
            let (x, y) = (ops[0], ops[1]);
            match b {
                BinaryOp::Mul if is(y, one) => Some(x),
                BinaryOp::Mul if is(x, one) => Some(y),
                BinaryOp::Div if is(y, one) => Some(x),
                BinaryOp::Add if is(y, zero_add) => Some(x),
                BinaryOp::Add if is(x, zero_add) => Some(y),
                BinaryOp::Sub if is(y, zero_sub) => Some(x),
                BinaryOp::And if is(y, Scalar::Bool(true)) => Some(x),
                BinaryOp::And if is(x, Scalar::Bool(true)) => Some(y),
                BinaryOp::Or if is(y, Scalar::Bool(false)) => Some(x),
                BinaryOp::Or if is(x, Scalar::Bool(false)) => Some(y),
                _ => None,
            }
        }
        Op::Unary(u @ (UnaryOp::Neg | UnaryOp::Not)) => {
            let inner = ops[0];
            (g.node(inner).op == Op::Unary(*u)).then(|| g.operands(inner)[0])
        }
        Op::Where => (ops[1] == ops[2]).then_some(ops[1]),
        Op::Cast | Op::Reshape | Op::Expand => Some(ops[0]),
        Op::Permute { perm } => perm
            .iter()
            .enumerate()
            .all(|(i, &p)| i == p)
            .then_some(ops[0]),
        Op::Slice { axis, start, end } => {
            let whole = g.node(ops[0]).ty.shape.0[*axis].known();
            (*start == 0 && Some(*end) == whole).then_some(ops[0])
        }
        Op::Concat { .. } => (ops.len() == 1).then_some(ops[0]),
        Op::Shift { offset: 0, .. } => Some(ops[0]),
        _ => None,
    }
}
