//! Constant folding: an elementwise op, `where` or `cast` whose operands are all scalar
//! constants becomes a constant, computed exactly as the reference interpreter computes
//! it (f32 arithmetic rounded to f32, wrapping i64, bool). Only scalars fold: `const` is a
//! scalar, so `reshape`/`expand` of a constant to a larger shape stay as they are.
//!
//! Nothing folds that the interpreter would reject at run time (e.g. `lt` on bools), that
//! gives NaN (whose bits the interpreter does not pin down), or whose result a `const`
//! cannot hold exactly (an i64 beyond 2^53 does not survive the trip through f64).

use super::rewrite::{rewrite, scalar, Scalar};
use crate::ir::{BinaryOp, DType, Graph, Op, UnaryOp, F64};

/// Returns the number of nodes folded.
pub fn run(g: &mut Graph) -> usize {
    let mut folded = 0;
    // In topological order, so chains of constant ops fold in one sweep.
    for n in g.topo_order() {
        if !g.dag.contains_node(n) {
            continue;
        }
        let node = g.node(n);
        if !matches!(node.op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast)
            || node.ty.shape.rank() != 0
        {
            continue;
        }
        let operands = g.operands(n);
        let Some(args) = operands
            .iter()
            .map(|&o| scalar(g, o))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some(value) = eval(&node.op, node.ty.dtype, &args).and_then(encode) else {
            continue;
        };
        // In place: the node keeps its name and its place in the printed order.
        if rewrite(g, n, Op::Const { value }, &[]) {
            folded += 1;
        }
    }
    folded
}

/// The `const` value that reads back as `s`.
fn encode(s: Scalar) -> Option<F64> {
    match s {
        Scalar::F32(x) if x.is_nan() => None,
        Scalar::F32(x) => Some(F64(x as f64)),
        Scalar::I64(x) if x.unsigned_abs() > 1 << 53 => None,
        Scalar::I64(x) => Some(F64(x as f64)),
        Scalar::Bool(b) => Some(F64(if b { 1.0 } else { 0.0 })),
    }
}

/// One element of the interpreter's result (runtime/src/interp.rs: `unary`, `binary`,
/// `where`, `convert`), or `None` where it would fail.
fn eval(op: &Op, dtype: DType, a: &[Scalar]) -> Option<Scalar> {
    use Scalar::*;
    Some(match (op, a) {
        (Op::Unary(u), [x]) => unary(*u, *x)?,
        (Op::Binary(b), [x, y]) => binary(*b, *x, *y)?,
        (Op::Where, [Bool(c), x, y]) => {
            if *c {
                *x
            } else {
                *y
            }
        }
        (Op::Cast, [x]) => cast(*x, dtype)?,
        _ => return None,
    })
}

fn unary(u: UnaryOp, x: Scalar) -> Option<Scalar> {
    use Scalar::*;
    Some(match (u, x) {
        (UnaryOp::Neg, F32(x)) => F32(-x),
        (UnaryOp::Exp, F32(x)) => F32(x.exp()),
        (UnaryOp::Log, F32(x)) => F32(x.ln()),
        (UnaryOp::Tanh, F32(x)) => F32(x.tanh()),
        (UnaryOp::Sqrt, F32(x)) => F32(x.sqrt()),
        (UnaryOp::Rsqrt, F32(x)) => F32(1.0 / x.sqrt()),
        (UnaryOp::Sin, F32(x)) => F32(x.sin()),
        (UnaryOp::Cos, F32(x)) => F32(x.cos()),
        (UnaryOp::Abs, F32(x)) => F32(x.abs()),
        (UnaryOp::Neg, I64(x)) => I64(x.wrapping_neg()),
        (UnaryOp::Abs, I64(x)) => I64(x.wrapping_abs()),
        (UnaryOp::Not, Bool(x)) => Bool(!x),
        _ => return None,
    })
}

fn binary(b: BinaryOp, x: Scalar, y: Scalar) -> Option<Scalar> {
    use BinaryOp as B;
    use Scalar::*;
    Some(match (x, y) {
        (F32(x), F32(y)) => match b {
            B::Add => F32(x + y),
            B::Sub => F32(x - y),
            B::Mul => F32(x * y),
            B::Div => F32(x / y),
            B::Pow => F32(x.powf(y)),
            B::Max => F32(x.max(y)),
            B::Min => F32(x.min(y)),
            B::Eq => Bool(x == y),
            B::Ne => Bool(x != y),
            B::Lt => Bool(x < y),
            B::Le => Bool(x <= y),
            B::And | B::Or => return None,
        },
        (I64(x), I64(y)) => match b {
            B::Add => I64(x.wrapping_add(y)),
            B::Sub => I64(x.wrapping_sub(y)),
            B::Mul => I64(x.wrapping_mul(y)),
            B::Div => I64(if y == 0 { 0 } else { x.wrapping_div(y) }),
            B::Pow => I64(x.wrapping_pow(y.clamp(0, u32::MAX as i64) as u32)),
            B::Max => I64(x.max(y)),
            B::Min => I64(x.min(y)),
            B::Eq => Bool(x == y),
            B::Ne => Bool(x != y),
            B::Lt => Bool(x < y),
            B::Le => Bool(x <= y),
            B::And | B::Or => return None,
        },
        (Bool(x), Bool(y)) => match b {
            B::And => Bool(x && y),
            B::Or => Bool(x || y),
            B::Eq => Bool(x == y),
            B::Ne => Bool(x != y),
            _ => return None,
        },
        _ => return None,
    })
}

fn cast(x: Scalar, to: DType) -> Option<Scalar> {
    use Scalar::*;
    Some(match (x, to) {
        // bf16 constants have no `Scalar`: left unfolded.
        (_, DType::Bf16 | DType::I8) => return None,
        (F32(x), DType::F32) => F32(x),
        (F32(x), DType::I64) => I64(x as i64),
        (F32(x), DType::Bool) => Bool(x != 0.0),
        (I64(x), DType::F32) => F32(x as f32),
        (I64(x), DType::I64) => I64(x),
        (I64(x), DType::Bool) => Bool(x != 0),
        (Bool(x), DType::F32) => F32(x as u8 as f32),
        (Bool(x), DType::I64) => I64(x as i64),
        (Bool(x), DType::Bool) => Bool(x),
    })
}
