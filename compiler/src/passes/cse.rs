//! Common-subexpression elimination: nodes with equal op, operands and type compute the
//! same value, so later ones are merged into the first (in stable topological order).
//! Operand order counts: `add a, b` and `add b, a` are not merged. Params and inputs are
//! never merged (each is a distinct part of the interface, even if two look alike).

use super::rewrite::replace;
use crate::ir::{Graph, NodeId, Op, TensorType};
use std::collections::HashMap;

/// Returns the number of nodes merged away.
pub fn run(g: &mut Graph) -> usize {
    let mut first: HashMap<(Op, Vec<NodeId>, TensorType), NodeId> = HashMap::new();
    let mut merged = 0;
    // Visiting in topological order, a node's operands are already merged when its key
    // is built, so one sweep merges whole duplicated subgraphs (RoPE tables per layer).
    for n in g.topo_order() {
        let node = g.node(n);
        if matches!(node.op, Op::Param { .. } | Op::Input { .. }) {
            continue;
        }
        let key = (node.op.clone(), g.operands(n), node.ty.clone());
        match first.get(&key) {
            Some(&keep) => {
                // The survivor keeps its name (an unnamed one takes the duplicate's);
                // `n`'s operands are `keep`'s too, so pruning stops at `n`.
                replace(g, n, keep);
                merged += 1;
            }
            None => {
                first.insert(key, n);
            }
        }
    }
    merged
}
