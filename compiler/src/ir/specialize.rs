//! Specialisation: the same graph with its symbolic dimensions replaced by sizes. A training
//! step is compiled for the batch shape it runs at, so that shape-dependent rewrites (the
//! batch folded into one GEMM for a weight's gradient) apply.

use super::graph::{Graph, NodeId};
use super::types::{Dim, Shape, TensorType};
use std::collections::HashMap;

fn subst(t: &TensorType, dims: &HashMap<String, usize>) -> TensorType {
    let shape = Shape(
        t.shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Sym(s) => dims
                    .get(s)
                    .map(|&n| Dim::Known(n as u64))
                    .unwrap_or_else(|| d.clone()),
                known => known.clone(),
            })
            .collect(),
    );
    TensorType {
        dtype: t.dtype,
        shape,
    }
}

/// `g` with every symbol of `dims` replaced by its size (other symbols stay). Every node is
/// re-typed on the way, so a size that contradicts the graph is an error, not a bad graph.
pub fn specialize(g: &Graph, dims: &HashMap<String, usize>) -> Result<Graph, String> {
    let mut out = Graph::new(g.name.clone());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for n in g.topo_order() {
        let node = g.node(n);
        let ops: Vec<NodeId> = g.operands(n).iter().map(|o| map[o]).collect();
        let id = out
            .add(node.op.clone(), &ops, Some(subst(&node.ty, dims)))
            .map_err(|e| format!("specialising `{}`: {e}", node.op.mnemonic()))?;
        out.dag[id].name = node.name.clone();
        map.insert(n, id);
    }
    out.outputs = g.outputs.iter().map(|(k, n)| (k.clone(), map[n])).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse::parse_graph;
    use crate::ir::print::print_graph;

    #[test]
    fn symbols_become_sizes() {
        let g = parse_graph(
            "graph g {\n  %0 = input \"x\" : f32[B, T, 4]\n  %1 = reduce_sum[axis=1] %0 : f32[B, 1, 4]\n  %2 = reshape %1 : f32[B, 4]\n  out \"y\" = %2\n}\n",
        )
        .unwrap();
        let dims = HashMap::from([("B".to_string(), 3), ("T".to_string(), 5)]);
        let s = specialize(&g, &dims).unwrap();
        assert_eq!(
            print_graph(&s),
            "graph g {\n  %0 = input \"x\" : f32[3, 5, 4]\n  %1 = reduce_sum[axis=1] %0 : f32[3, 1, 4]\n  %2 = reshape %1 : f32[3, 4]\n  out \"y\" = %2\n}\n"
        );
        // Unbound symbols stay symbolic.
        let only_b = specialize(&g, &HashMap::from([("B".to_string(), 2)])).unwrap();
        assert!(print_graph(&only_b).contains("f32[2, T, 4]"));
    }
}
