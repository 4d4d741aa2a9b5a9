//! The printed form of a graph. Deterministic: SSA numbers are assigned here in the
//! graph's stable topological order; no petgraph indices or hash orders leak out.
//! `parse.rs` reads it back, and `parse(print(g)) == g` for every graph we produce.

use super::graph::{Graph, NodeId};
use super::op::*;
use std::collections::HashMap;
use std::fmt::Write;

pub fn print_graph(g: &Graph) -> String {
    let order = g.topo_order();
    let ssa: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut out = format!("graph {} {{\n", g.name);
    for &n in &order {
        let node = g.node(n);
        let _ = write!(out, "  %{} = {}", ssa[&n], op_text(&node.op));
        let operands = g.operands(n);
        for (i, o) in operands.iter().enumerate() {
            out.push_str(if i == 0 { " " } else { ", " });
            let _ = write!(out, "%{}", ssa[o]);
        }
        let _ = write!(out, " : {}", node.ty);
        if let Some(name) = &node.name {
            let _ = write!(out, " @{name}");
        }
        out.push('\n');
    }
    for (name, n) in &g.outputs {
        let _ = writeln!(out, "  out {:?} = %{}", name, ssa[n]);
    }
    out.push_str("}\n");
    out
}

pub fn fmt_f64(v: f64) -> String {
    // `{:?}` is Rust's shortest round-trip form; it always has a '.' or an exponent.
    if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v:?}")
    }
}

/// The op with its attributes, e.g. `slice[axis=3, start=0, end=8]`.
pub fn op_text(op: &Op) -> String {
    let m = op.mnemonic();
    match op {
        Op::Param { path, ckpt } => format!("param {path:?} ckpt {ckpt:?}"),
        Op::Input { name } => format!("input {name:?}"),
        Op::Const { value } => format!("const {}", fmt_f64(value.0)),
        Op::Iota { axis } | Op::Concat { axis } => format!("{m}[axis={axis}]"),
        Op::Reduce { axis, .. } => format!("{m}[axis={axis}]"),
        Op::Permute { perm } => {
            let p: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
            format!("{m}[{}]", p.join(", "))
        }
        Op::Slice { axis, start, end } => format!("{m}[axis={axis}, start={start}, end={end}]"),
        Op::Shift { axis, offset, fill } => format!(
            "{m}[axis={axis}, offset={offset}, fill={}]",
            fmt_f64(fill.0)
        ),
        Op::Attention(a) => format!("{m}[{}]", attention_attrs(a)),
        Op::AttentionGrad { attrs, wrt } => {
            format!("{m}[wrt={}, {}]", wrt.name(), attention_attrs(attrs))
        }
        Op::CrossEntropy { ignore_index } | Op::CrossEntropyGrad { ignore_index } => {
            format!("{m}[ignore={ignore_index}]")
        }
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast
        | Op::Reshape
        | Op::Expand
        | Op::Gather
        | Op::ScatterAdd
        | Op::MatMul
        | Op::Dequant => m.to_string(),
    }
}

fn attention_attrs(a: &AttentionAttrs) -> String {
    let mode = match a.mode {
        AttnMode::Bidirectional => "bidirectional",
        AttnMode::Causal => "causal",
    };
    let rule = match a.window_rule {
        WindowRule::Inclusive => "inclusive",
        WindowRule::Exclusive => "exclusive",
    };
    let window = a
        .window
        .map(|w| w.to_string())
        .unwrap_or_else(|| "none".into());
    let cap = a
        .softcap
        .map(|c| fmt_f64(c.0))
        .unwrap_or_else(|| "none".into());
    format!(
        "mode={mode}, window={window}, rule={rule}, softcap={cap}, scale={}",
        fmt_f64(a.scale.0)
    )
}
