//! The rewriting primitives every pass shares. A rewrite either points the users of a node
//! at an existing equivalent value (`replace`), or changes a node's op and operands in
//! place (`rewrite`), keeping its type, name and petgraph index: the node keeps its place
//! in the stable topological order, so printed IR changes only where a pass did something.
//! Both re-check types and prune what they orphan, so no pass ever grows the graph.

use crate::ir::infer::infer_type;
use crate::ir::{DType, Graph, NodeId, Op};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// A scalar constant's value as the interpreter reads it (`const` holds an f64; the node's
/// dtype says how it is read: rounded to f32, truncated to i64, or `!= 0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    F32(f32),
    I64(i64),
    Bool(bool),
}

pub fn scalar(g: &Graph, n: NodeId) -> Option<Scalar> {
    let node = g.node(n);
    let Op::Const { value } = node.op else {
        return None;
    };
    if node.ty.shape.rank() != 0 {
        return None;
    }
    Some(match node.ty.dtype {
        // Not folded: nothing builds bf16 constants.
        DType::Bf16 | DType::I8 => return None,
        DType::F32 => Scalar::F32(value.0 as f32),
        DType::I64 => Scalar::I64(value.0 as i64),
        DType::Bool => Scalar::Bool(value.0 != 0.0),
    })
}

/// The value of every element of `n` if it is a constant, possibly reshaped or expanded.
pub fn splat(g: &Graph, n: NodeId) -> Option<Scalar> {
    match g.node(n).op {
        Op::Const { .. } => scalar(g, n),
        Op::Reshape | Op::Expand => splat(g, g.operands(n)[0]),
        _ => None,
    }
}

/// Whether every element of `n` equals `v`, bit for bit once read in its dtype.
pub fn is_splat(g: &Graph, n: NodeId, v: Scalar) -> bool {
    match (splat(g, n), v) {
        (Some(Scalar::F32(a)), Scalar::F32(b)) => a.to_bits() == b.to_bits(),
        (Some(a), b) => a == b,
        _ => false,
    }
}

/// Params and inputs are the graph's interface; outputs are what it computes.
fn pinned(g: &Graph, n: NodeId) -> bool {
    matches!(g.node(n).op, Op::Param { .. } | Op::Input { .. })
        || g.outputs.iter().any(|(_, o)| *o == n)
}

/// Removes `n` if nothing uses it any more, then whatever that orphans.
pub fn prune(g: &mut Graph, n: NodeId) {
    let mut stack = vec![n];
    while let Some(n) = stack.pop() {
        if !g.dag.contains_node(n)
            || pinned(g, n)
            || g.dag
                .edges_directed(n, Direction::Outgoing)
                .next()
                .is_some()
        {
            continue;
        }
        stack.extend(g.operands(n));
        g.dag.remove_node(n);
    }
}

/// Points every use of `old` (outputs included) at `new`, which must have the same type,
/// and removes `old` and what it alone used. An unnamed `new` (not a param or input)
/// takes `old`'s name: it is the same value.
pub fn replace(g: &mut Graph, old: NodeId, new: NodeId) {
    debug_assert_eq!(g.node(old).ty, g.node(new).ty, "replace changes a type");
    if old == new {
        return;
    }
    if !matches!(g.node(new).op, Op::Param { .. } | Op::Input { .. }) {
        if let Some(name) = g.node(old).name.clone() {
            g.set_name(new, &name);
        }
    }
    g.replace_uses(old, new);
    prune(g, old);
}

/// Gives node `n` a new op and operands, keeping its type (checked by re-inference),
/// name and index; prunes operands it no longer uses. The new operands must not depend
/// on `n`. A type change is a bug in the calling pass: it panics in debug builds and
/// changes nothing (returning false) in release builds.
pub fn rewrite(g: &mut Graph, n: NodeId, op: Op, operands: &[NodeId]) -> bool {
    let ty = g.node(n).ty.clone();
    let types: Vec<_> = operands.iter().map(|&o| &g.node(o).ty).collect();
    match infer_type(&op, &types, Some(&ty)) {
        Ok(t) if t == ty => {}
        Ok(t) => {
            if cfg!(debug_assertions) {
                panic!(
                    "rewrite to `{}` changes the type {ty} to {t}",
                    op.mnemonic()
                );
            }
            return false;
        }
        Err(e) => {
            if cfg!(debug_assertions) {
                panic!("rewrite to `{}` does not type: {e}", op.mnemonic());
            }
            return false;
        }
    }
    let old = g.operands(n);
    let edges: Vec<_> = g
        .dag
        .edges_directed(n, Direction::Incoming)
        .map(|e| e.id())
        .collect();
    for e in edges {
        g.dag.remove_edge(e);
    }
    for (i, &o) in operands.iter().enumerate() {
        g.dag.add_edge(o, n, i as u32);
    }
    g.dag[n].op = op;
    for o in old {
        prune(g, o);
    }
    true
}
