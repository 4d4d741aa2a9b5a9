//! Graphviz output (`--emit dot`).

use super::graph::Graph;
use super::print::op_text;
use std::collections::HashMap;
use std::fmt::Write;

pub fn to_dot(g: &Graph) -> String {
    let order = g.topo_order();
    let ssa: HashMap<_, _> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut out = format!(
        "digraph {:?} {{\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n",
        g.name
    );
    for &n in &order {
        let node = g.node(n);
        let mut label = format!(
            "%{} {}\\n{}",
            ssa[&n],
            op_text(&node.op).replace('"', "'"),
            node.ty
        );
        if let Some(name) = &node.name {
            let _ = write!(label, "\\n{name}");
        }
        let style = if node.op.is_composite() {
            ", style=filled, fillcolor=lightyellow"
        } else {
            ""
        };
        let _ = writeln!(out, "  n{} [label=\"{label}\"{style}];", ssa[&n]);
        for o in g.operands(n) {
            let _ = writeln!(out, "  n{} -> n{};", ssa[&o], ssa[&n]);
        }
    }
    for (name, n) in &g.outputs {
        let _ = writeln!(
            out,
            "  {:?} [shape=ellipse];\n  n{} -> {:?};",
            name, ssa[n], name
        );
    }
    out.push_str("}\n");
    out
}
