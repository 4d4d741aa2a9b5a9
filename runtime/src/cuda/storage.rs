//! Which precision each value of a CUDA run is stored in. `Precision::F32` keeps every value
//! at its IR dtype. `Precision::Bf16` stores the f32 activations as bf16 (kernels load them
//! into f32 registers, accumulate in f32 and round once on store; GEMMs take bf16 operands
//! and accumulate in f32) and keeps in f32:
//!
//! - what the program returns, and every value that reaches an output through loop kernels
//!   and movement alone: so a train step's optimizer (gradients, global norm, AdamW moments,
//!   updated parameters) runs wholly in f32, and forward outputs are not rounded twice;
//! - parameters that such f32 arithmetic reads (the master weights of a train step); the
//!   others are converted to bf16 once, when they are uploaded;
//! - inputs (host tensors), scalars (rank 0), reductions over a non-last axis and
//!   scatter-adds (f32 sums).
//!
//! A GEMM or attention operand that is stored in f32 under `Bf16` is read through a bf16
//! *shadow*: a copy rounded right before the step that needs it (`Shadow`).

use encdecc_codegen::cuda::{KernelMems, Mem};
use encdecc_compiler::fuse::{KernelProgram, Step};
use encdecc_compiler::ir::{DType, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// One precision enum for every backend: the CUDA backend stores values in it, the CPU
/// backend lowers its graph to it (`encdecc_compiler::precision`).
pub use encdecc_compiler::precision::Precision;

/// A bf16 copy of the f32 value `node`, made right before step `step` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shadow {
    pub step: usize,
    pub node: NodeId,
}

#[derive(Clone, Debug, Default)]
pub struct Storage {
    pub precision: Precision,
    mem: HashMap<NodeId, Mem>,
    /// In step order.
    pub shadows: Vec<Shadow>,
}

impl Storage {
    /// How `n` is stored (a view or reshape: as the value whose storage it uses).
    pub fn mem(&self, n: NodeId) -> Mem {
        self.mem[&n]
    }

    /// The layout of every loop kernel's operands, in program order.
    pub fn kernel_mems(&self, p: &KernelProgram) -> Vec<KernelMems> {
        let mut out: Vec<Option<KernelMems>> = vec![None; p.kernels.len()];
        for s in &p.steps {
            if let Step::Loop {
                kernel,
                inputs,
                outputs,
                ..
            } = s
            {
                out[*kernel] = Some(KernelMems {
                    inputs: inputs.iter().map(|&n| self.mem(n)).collect(),
                    outputs: outputs.iter().map(|&n| self.mem(n)).collect(),
                });
            }
        }
        out.into_iter()
            .zip(&p.kernels)
            .map(|(m, k)| m.unwrap_or_else(|| KernelMems::of(k)))
            .collect()
    }

    /// Whether step `step` reads `node` through its bf16 shadow.
    pub fn shadowed(&self, step: usize, node: NodeId) -> bool {
        self.shadows.contains(&Shadow { step, node })
    }
}

fn passes_through(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Expand
            | Op::Concat { .. }
            | Op::Shift { .. }
    )
}

/// The storage of every value of `p` (`views`: transposes read in place, `plan::views`).
pub fn storage(p: &KernelProgram, views: &HashSet<NodeId>, precision: Precision) -> Storage {
    let g = &p.graph;
    let mut mem = HashMap::new();
    if precision == Precision::F32 {
        for n in g.dag.node_indices() {
            mem.insert(n, Mem::of(g.node(n).ty.dtype));
        }
        return Storage {
            precision,
            mem,
            shadows: vec![],
        };
    }
    // Values kept f32 because they reach an output through loop kernels and movement.
    let mut full: HashSet<NodeId> = g.outputs.iter().map(|(_, n)| *n).collect();
    for s in p.steps.iter().rev() {
        let (ins, outs): (Vec<NodeId>, Vec<NodeId>) = match s {
            Step::Loop {
                inputs, outputs, ..
            } => (inputs.clone(), outputs.clone()),
            Step::Node(n) if passes_through(&g.node(*n).op) => (g.operands(*n), vec![*n]),
            // A scatter-add's table is f32 (atomics), so is the base it starts from.
            Step::Node(n) if matches!(g.node(*n).op, Op::ScatterAdd) => {
                full.extend(g.operands(*n).get(2));
                continue;
            }
            Step::Node(_) => continue,
        };
        if outs.iter().any(|o| full.contains(o)) {
            full.extend(
                ins.into_iter()
                    .filter(|&i| g.node(i).ty.dtype == DType::F32),
            );
        }
    }
    // Reshape chains (not always steps) carry the mark to the value they alias.
    for n in g.topo_order().into_iter().rev() {
        if matches!(g.node(n).op, Op::Reshape) && full.contains(&n) {
            full.insert(g.operands(n)[0]);
        }
    }
    let loop_outputs: HashSet<NodeId> = p
        .steps
        .iter()
        .flat_map(|s| match s {
            Step::Loop { outputs, .. } => outputs.clone(),
            Step::Node(_) => vec![],
        })
        .collect();
    let low = |n: NodeId| {
        if full.contains(&n) {
            Mem::F32
        } else {
            Mem::Bf16
        }
    };
    for n in g.topo_order() {
        let node = g.node(n);
        let m = if node.ty.dtype != DType::F32 {
            Mem::of(node.ty.dtype)
        } else if matches!(node.op, Op::Reshape) || views.contains(&n) {
            mem[&g.operands(n)[0]]
        } else if node.ty.shape.0.is_empty() {
            Mem::F32
        } else {
            match &node.op {
                Op::Param { .. } => low(n),
                Op::Gather => mem[&g.operands(n)[0]],
                Op::MatMul | Op::Attention(_) => low(n),
                op if passes_through(op) => low(n),
                Op::Input { .. } | Op::Reduce { .. } | Op::ScatterAdd => Mem::F32,
                // Loop kernel outputs (fused nodes).
                _ if loop_outputs.contains(&n) => low(n),
                _ => Mem::F32,
            }
        };
        mem.insert(n, m);
    }
    let mut shadows = vec![];
    let grads = super::plan::attention_grad_steps(p);
    for (i, s) in p.steps.iter().enumerate() {
        let Step::Node(n) = s else { continue };
        let reads: Vec<NodeId> = match g.node(*n).op {
            Op::MatMul => g.operands(*n),
            Op::Attention(_) => g.operands(*n).into_iter().take(3).collect(),
            // q, k, v and dout, read by the group's first step (it computes them all).
            Op::AttentionGrad { .. } if grads.first.contains_key(&i) => {
                g.operands(*n).into_iter().take(4).collect()
            }
            _ => continue,
        };
        for o in reads {
            let stored = if views.contains(&o) {
                g.operands(o)[0]
            } else {
                o
            };
            let stored = root(g, stored);
            if mem[&stored] == Mem::F32 {
                let sh = Shadow {
                    step: i,
                    node: stored,
                };
                if !shadows.contains(&sh) {
                    shadows.push(sh);
                }
            }
        }
    }
    Storage {
        precision,
        mem,
        shadows,
    }
}

/// The value whose storage `n` uses (through reshapes).
fn root(g: &encdecc_compiler::ir::Graph, mut n: NodeId) -> NodeId {
    while matches!(g.node(n).op, Op::Reshape) {
        n = g.operands(n)[0];
    }
    n
}

/// Where a carried output goes for the next run (`CudaModel::set_carry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carry {
    Param(String),
    Input(String),
}

/// The (output, target) values of a carry list: each output must exist and be stored
/// exactly as the parameter or input it refills (same storage, same shape), so that a
/// device-to-device copy of its bytes is the next run's value.
pub fn carry_nodes(
    p: &KernelProgram,
    st: &Storage,
    carry: &[(String, Carry)],
) -> Result<Vec<(NodeId, NodeId)>, String> {
    let g = &p.graph;
    carry
        .iter()
        .map(|(out, to)| {
            let o = g
                .output(out)
                .ok_or_else(|| format!("carry: the program has no output `{out}`"))?;
            let target = g
                .dag
                .node_indices()
                .find(|&n| match (&g.node(n).op, to) {
                    (Op::Param { path, .. }, Carry::Param(x)) => path == x,
                    (Op::Input { name }, Carry::Input(x)) => name == x,
                    _ => false,
                })
                .ok_or_else(|| format!("carry: the program reads no {to:?}"))?;
            if st.mem(o) != st.mem(target) || g.node(o).ty.shape != g.node(target).ty.shape {
                return Err(format!("carry: output `{out}` is not stored as {to:?}"));
            }
            Ok((o, target))
        })
        .collect()
}

/// f32 → bf16 bits as the kernels' `enc_to_bf16`: rounded to nearest even, but a finite
/// value saturates at ±bf16::MAX instead of becoming infinite (masks hold f32::MIN).
pub fn to_bf16(x: f32) -> u16 {
    let b = half::bf16::from_f32(x);
    if b.is_infinite() && x.is_finite() {
        if x > 0.0 {
            half::bf16::MAX.to_bits()
        } else {
            half::bf16::MIN.to_bits()
        }
    } else {
        b.to_bits()
    }
}

pub fn from_bf16(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_by_name() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("f32").unwrap().name(), "f32");
        assert!(Precision::parse("fp16").unwrap_err().contains("f32, bf16"));
    }

    #[test]
    fn bf16_rounding() {
        // Nearest even, exact widening, NaN kept.
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f808000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f818000)), 0x3f82);
        assert_eq!(from_bf16(0x4049), f32::from_bits(0x4049_0000));
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        // Finite overflow saturates (a mask's f32::MIN stays finite); infinities stay.
        assert_eq!(from_bf16(to_bf16(f32::MIN)), half::bf16::MIN.to_f32());
        assert_eq!(from_bf16(to_bf16(f32::MAX)), half::bf16::MAX.to_f32());
        assert_eq!(from_bf16(to_bf16(f32::NEG_INFINITY)), f32::NEG_INFINITY);
    }
}
