//! Reduced precision as a lowering of the graph: after it, the IR says which values are
//! stored in bf16 and which matmuls read bf16 operands, and every backend (the reference
//! interpreter included) computes exactly what it says.
//!
//! `Precision::Bf16` (`--dtype bf16` on the CPU):
//! - a weight whose every use is a matmul operand (directly or through a transpose) or a
//!   gather's table is *stored* in bf16: its param node, the transposes of it and the
//!   gathers from it are retyped, and a `cast` to f32 follows each gather, so the loader
//!   keeps one bf16 copy of it and nothing else changes;
//! - every other f32 matmul operand (activations) gets a `cast` to bf16 in front of it:
//!   matmuls multiply bf16 by bf16 and accumulate in f32 (the `matmul` typing rule);
//! - everything else — norms, softmax and its statistics, softcaps, residual adds,
//!   attention, the loss — stays f32, as in PyTorch's autocast and the CUDA backend.
//!
//! Rounding to bf16 is to nearest even, as `tensor.to(torch.bfloat16)`.

use crate::ir::{DType, Graph, NodeId, Op, TensorType};
use crate::passes::{cse, dce};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// How a graph stores its weights and feeds its matmuls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and matmul operands, f32 accumulation; f32 everywhere else.
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype `{other}` (dtypes: f32, bf16)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// What `lower` did: the params now stored in reduced precision (their paths, in graph
/// order), which the loader must provide in that dtype.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lowered {
    pub stored: Vec<(String, DType)>,
    pub casts: usize,
}

/// Lowers `g` to `p` (f32: unchanged).
pub fn lower(g: &mut Graph, p: Precision) -> Lowered {
    match p {
        Precision::F32 => Lowered::default(),
        Precision::Bf16 => to_bf16(g),
    }
}

fn to_bf16(g: &mut Graph) -> Lowered {
    let mut out = Lowered::default();
    for p in g.params() {
        if g.node(p).ty.dtype != DType::F32 || !matmul_weight(g, p) {
            continue;
        }
        if let Op::Param { path, .. } = &g.node(p).op {
            out.stored.push((path.clone(), DType::Bf16));
        }
        g.dag[p].ty.dtype = DType::Bf16;
        for (u, _) in g.users(p) {
            match g.node(u).op {
                Op::Permute { .. } => g.dag[u].ty.dtype = DType::Bf16,
                Op::Gather => {
                    g.dag[u].ty.dtype = DType::Bf16;
                    insert_cast_after(g, u, DType::F32);
                    out.casts += 1;
                }
                _ => {}
            }
        }
    }
    let matmuls: Vec<NodeId> = g
        .topo_order()
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, Op::MatMul))
        .collect();
    for m in matmuls {
        for (pos, o) in g.operands(m).into_iter().enumerate() {
            if g.node(o).ty.dtype == DType::F32 {
                let c = cast(g, o, DType::Bf16);
                set_operand(g, m, pos as u32, o, c);
                out.casts += 1;
            }
        }
    }
    // The q, k and v projections read one activation: their casts become one.
    cse::run(g);
    dce::run(g);
    out
}

/// Every use of `p` is a matmul operand (directly or through a transpose that only
/// matmuls read) or a gather's table, and it has at least one.
fn matmul_weight(g: &Graph, p: NodeId) -> bool {
    let users = g.users(p);
    !users.is_empty()
        && !g.outputs.iter().any(|(_, o)| *o == p)
        && users.iter().all(|&(u, pos)| match g.node(u).op {
            Op::MatMul => true,
            Op::Gather => pos == 0 && !g.outputs.iter().any(|(_, o)| *o == u),
            Op::Permute { .. } => {
                let uu = g.users(u);
                !uu.is_empty()
                    && !g.outputs.iter().any(|(_, o)| *o == u)
                    && uu.iter().all(|(x, _)| matches!(g.node(*x).op, Op::MatMul))
            }
            _ => false,
        })
}

fn cast(g: &mut Graph, x: NodeId, to: DType) -> NodeId {
    let ty = TensorType {
        dtype: to,
        shape: g.node(x).ty.shape.clone(),
    };
    g.add(Op::Cast, &[x], Some(ty))
        .expect("a cast keeps the shape")
}

/// A cast of `x` that takes over every use of `x` (outputs and its name too).
fn insert_cast_after(g: &mut Graph, x: NodeId, to: DType) {
    let users = g.users(x);
    let c = cast(g, x, to);
    for (u, pos) in users {
        set_operand(g, u, pos, x, c);
    }
    for out in &mut g.outputs {
        if out.1 == x {
            out.1 = c;
        }
    }
    g.dag[c].name = g.dag[x].name.take();
}

/// Points operand `pos` of `user` (now `old`) at `new`.
fn set_operand(g: &mut Graph, user: NodeId, pos: u32, old: NodeId, new: NodeId) {
    let e = g
        .dag
        .edges_directed(user, Direction::Incoming)
        .find(|e| e.source() == old && *e.weight() == pos)
        .map(|e| e.id())
        .expect("the operand's edge");
    g.dag.remove_edge(e);
    g.dag.add_edge(new, user, pos);
}
