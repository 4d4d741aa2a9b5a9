//! Model summaries: parameter counts (tied weights once, as HF counts them) and FLOPs.

use crate::elab::Elaborated;
use crate::ir::{AttnOperand, Dim, Graph, Op};
use std::collections::HashMap;

/// Total parameters.
pub fn parameter_count(e: &Elaborated) -> u64 {
    e.params
        .iter()
        .map(|p| p.shape.iter().product::<u64>())
        .sum()
}

/// Forward FLOPs of every matmul (2·M·N·K) and attention (q kᵀ and p v) with every symbolic dimension set to the given
/// values (missing symbols count as 1).
pub fn matmul_flops(g: &Graph, dims: &HashMap<String, u64>) -> u64 {
    let size = |d: &Dim| match d {
        Dim::Known(n) => *n,
        Dim::Sym(s) => dims.get(s).copied().unwrap_or(1),
    };
    let mut total = 0u64;
    for n in g.dag.node_indices() {
        let node = g.node(n);
        // Attention's products, B·H·Tq·Tk·D multiply-adds each: q kᵀ and p v forward; the
        // backward's dp = dout vᵀ and dq = ds k (counted with q), dk = dsᵀ q, dv = pᵀ dout.
        let products = match &node.op {
            Op::Attention(_) => 2,
            Op::AttentionGrad { wrt, .. } => match wrt {
                AttnOperand::Q => 2,
                AttnOperand::K | AttnOperand::V => 1,
            },
            _ => 0,
        };
        if products > 0 {
            let q = &g.node(g.operands(n)[0]).ty.shape;
            let k = &g.node(g.operands(n)[1]).ty.shape;
            let per: u64 = q.0.iter().map(size).product();
            total = total.saturating_add(2 * products * per * size(&k.0[2]));
            continue;
        }
        if !matches!(node.op, Op::MatMul) {
            continue;
        }
        let a = &g.node(g.operands(n)[0]).ty.shape;
        let k = size(&a.0[a.rank() - 1]);
        let out: u64 = node.ty.shape.0.iter().map(size).product();
        total = total.saturating_add(2 * out * k);
    }
    total
}
