//! The verifier: re-infers every node's type from its operands, checks operand counts,
//! acyclicity and outputs. Runs after every pass in debug and test builds.

use super::graph::Graph;
use super::infer::infer_type;
use super::op::Op;

pub fn verify(g: &Graph) -> Result<(), String> {
    let order = g.topo_order();
    if order.len() != g.dag.node_count() {
        return Err(format!("graph {} has a cycle", g.name));
    }
    for n in order {
        let node = g.node(n);
        let operands = g.operands(n);
        let types: Vec<_> = operands.iter().map(|&o| &g.node(o).ty).collect();
        let declared = Some(&node.ty);
        let inferred = infer_type(&node.op, &types, declared).map_err(|e| {
            format!(
                "node `{}`{}: {e}",
                node.op.mnemonic(),
                node.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        })?;
        if inferred != node.ty {
            return Err(format!(
                "node `{}` has type {} but infers {inferred}",
                node.op.mnemonic(),
                node.ty
            ));
        }
        if let Op::Param { path, .. } | Op::Input { name: path } = &node.op {
            if path.is_empty() {
                return Err("a param or input without a name".into());
            }
        }
    }
    let mut names: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("output `{}` defined twice", w[0]));
    }
    for (name, id) in &g.outputs {
        if !g.dag.contains_node(*id) {
            return Err(format!("output `{name}` refers to a removed node"));
        }
    }
    Ok(())
}

/// Verifies in debug and test builds only; release builds trust the passes.
pub fn debug_verify(g: &Graph, after: &str) {
    if cfg!(debug_assertions) {
        if let Err(e) = verify(g) {
            panic!("IR verifier failed after {after}: {e}");
        }
    }
}
