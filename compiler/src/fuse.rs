//! Fusion: the graph becomes a kernel program. Elementwise ops and last-axis reductions
//! over one iteration space are grouped into `LoopKernel`s; everything else (matmul,
//! attention, gather, movement) is a library step that the executor runs directly.
//!
//! Grouping: a fusible node joins the group of its users when every user is in that group
//! and it lives in the group's iteration space, so nothing is computed twice across
//! kernels and no intermediate is stored. Inside a group, a node's stage is the number of
//! reductions on its path; values needed by a later stage are recomputed there (they are
//! cheap elementwise ops) and a reduction's result is read as a `RowValue`. Row-level
//! values (shape `[..., 1]` computed from reductions, as in RMSNorm's `rsqrt(mean + eps)`)
//! are evaluated per element and left to LLVM's loop-invariant code motion.

use crate::ir::*;
use crate::kernel::*;
use std::collections::{BTreeSet, HashMap};

/// One step of the program, in execution order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A fused loop kernel over `space`; `inputs` map to the kernel's inputs, `outputs` to
    /// its outputs (full, or per-row for reductions), in order.
    Loop {
        kernel: usize,
        space: Shape,
        inputs: Vec<NodeId>,
        outputs: Vec<NodeId>,
    },
    /// A node run by a library routine (matmul, attention, gather, movement, …).
    Node(NodeId),
}

#[derive(Clone, Debug)]
pub struct KernelProgram {
    pub graph: Graph,
    pub kernels: Vec<LoopKernel>,
    pub steps: Vec<Step>,
}

fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Cast
            | Op::Const { .. }
            | Op::Iota { .. }
            | Op::Expand
    )
}

/// The iteration space a fusible node runs in.
fn space_of(g: &Graph, n: NodeId) -> Option<Shape> {
    let node = g.node(n);
    match &node.op {
        // Loop kernels reduce f32 only; integer and bool reductions run as library steps.
        Op::Reduce { axis, .. } if node.ty.dtype == DType::F32 => {
            let input = &g.node(g.operands(n)[0]).ty.shape;
            (*axis + 1 == input.rank()).then(|| input.clone())
        }
        op if is_elementwise(op) && node.ty.shape.rank() > 0 => Some(node.ty.shape.clone()),
        _ => None,
    }
}

fn row_shape(space: &Shape) -> Shape {
    let mut s = space.clone();
    if let Some(last) = s.0.last_mut() {
        *last = Dim::Known(1);
    }
    s
}

pub fn fuse(graph: Graph) -> KernelProgram {
    let g = &graph;
    let order = g.topo_order();
    let outputs: BTreeSet<NodeId> = g.outputs.iter().map(|(_, n)| *n).collect();
    // group[n] = the root of n's group. Roots are decided from the users backwards.
    let mut group: HashMap<NodeId, NodeId> = HashMap::new();
    // Iotas recomputed inside each user's kernel (an index costs nothing; storing it costs
    // a full-size tensor, written once and read by every user).
    let mut inlined: BTreeSet<NodeId> = BTreeSet::new();
    for &n in order.iter().rev() {
        let Some(space) = space_of(g, n) else {
            continue;
        };
        let users = g.users(n);
        if matches!(g.node(n).op, Op::Iota { .. })
            && !outputs.contains(&n)
            && users.len() > 1
            && users.iter().all(|(u, _)| {
                group
                    .get(u)
                    .is_some_and(|r| space_of(g, *r).as_ref() == Some(&g.node(n).ty.shape))
            })
        {
            inlined.insert(n);
            continue;
        }
        let root_of_users: BTreeSet<Option<NodeId>> =
            users.iter().map(|(u, _)| group.get(u).copied()).collect();
        let joined = match (root_of_users.len(), root_of_users.iter().next()) {
            (1, Some(Some(root))) => {
                let rspace = space_of(g, *root).expect("roots are fusible");
                let shape = &g.node(n).ty.shape;
                let fits = match &g.node(n).op {
                    // A graph output is stored by its users' kernel as one more output
                    // (AdamW's new moments beside the new weight: one pass over the
                    // weight-sized tensors instead of one per value): a full-space
                    // elementwise value, in a kernel whose root stage reduces nothing.
                    _ if outputs.contains(&n) => {
                        *shape == rspace
                            && !matches!(g.node(n).op, Op::Reduce { .. } | Op::Iota { .. })
                            && !matches!(g.node(*root).op, Op::Reduce { .. })
                    }
                    Op::Reduce { .. } => space == rspace,
                    // An iota is positional: inside a larger space its size-1 axes would
                    // read the loop index instead of 0.
                    Op::Iota { .. } => *shape == rspace,
                    _ => *shape == rspace || *shape == row_shape(&rspace),
                };
                fits.then_some(*root)
            }
            _ => None,
        };
        group.insert(n, joined.unwrap_or(n));
    }
    // A row-level member must not need a full-space value (it is evaluated per element, but
    // its value may only depend on reductions, consts and other row-level members).
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &n in &order {
        if let Some(&r) = group.get(&n) {
            members.entry(r).or_default().push(n);
        }
    }
    let mut kernels = vec![];
    let mut steps = vec![];
    for &n in &order {
        match group.get(&n) {
            None => {
                if !matches!(g.node(n).op, Op::Param { .. } | Op::Input { .. })
                    && !inlined.contains(&n)
                {
                    steps.push(Step::Node(n));
                }
            }
            // A group runs where its root is: every member precedes its root, and only the
            // root is used outside the group.
            Some(&root) if root == n => {
                let (kernel, inputs, outs) = build_kernel(g, root, &members[&root], kernels.len());
                let space = space_of(g, root).expect("fusible root");
                steps.push(Step::Loop {
                    kernel: kernels.len(),
                    space,
                    inputs,
                    outputs: outs,
                });
                kernels.push(kernel);
            }
            Some(_) => {}
        }
    }
    KernelProgram {
        graph,
        kernels,
        steps,
    }
}

/// Builds the loop kernel of one group. Returns the kernel, the graph values it reads and
/// the graph values it writes.
fn build_kernel(
    g: &Graph,
    root: NodeId,
    members: &[NodeId],
    index: usize,
) -> (LoopKernel, Vec<NodeId>, Vec<NodeId>) {
    let space = space_of(g, root).expect("fusible root");
    let rank = space.rank();
    let member_set: BTreeSet<NodeId> = members.iter().copied().collect();
    let is_output = |m: NodeId| g.outputs.iter().any(|(_, o)| *o == m);
    let mut k = LoopKernel {
        name: format!("k{index}"),
        rank,
        inputs: vec![],
        outputs: vec![],
        stages: vec![],
    };
    let mut inputs: Vec<NodeId> = vec![];
    let mut outs: Vec<NodeId> = vec![];
    // One stage per reduction, in topological order (so a reduction only reads earlier
    // ones), then a last stage for the root unless the root is itself the last reduction.
    let mut targets: Vec<NodeId> = members
        .iter()
        .copied()
        .filter(|m| matches!(g.node(*m).op, Op::Reduce { .. }))
        .collect();
    if targets.last() != Some(&root) {
        targets.push(root);
    }
    let mut reduce_stage: HashMap<NodeId, usize> = HashMap::new();
    for (s, &t) in targets.iter().enumerate() {
        let mut st = Stage {
            ops: vec![],
            reduce: None,
            stores: vec![],
        };
        let mut memo: HashMap<NodeId, KVal> = HashMap::new();
        if let Op::Reduce { op, .. } = g.node(t).op {
            let src = g.operands(t)[0];
            let v = emit(
                g,
                src,
                &member_set,
                &reduce_stage,
                &mut st,
                &mut memo,
                &mut k,
                &mut inputs,
                &space,
            );
            st.reduce = Some((op, v));
            if t == root {
                k.outputs.push(KernelOutput {
                    dtype: g.node(t).ty.dtype,
                    per_row: true,
                });
                st.stores.push((0, v));
                outs.push(t);
            }
            reduce_stage.insert(t, s);
        } else {
            // The root, then the members that are graph outputs too (see `fuse`), stored
            // beside it.
            let extra = members
                .iter()
                .copied()
                .filter(|&m| m != root && is_output(m));
            for m in std::iter::once(t).chain(extra) {
                let v = emit(
                    g,
                    m,
                    &member_set,
                    &reduce_stage,
                    &mut st,
                    &mut memo,
                    &mut k,
                    &mut inputs,
                    &space,
                );
                k.outputs.push(KernelOutput {
                    dtype: g.node(m).ty.dtype,
                    per_row: false,
                });
                st.stores.push((outs.len(), v));
                outs.push(m);
            }
        }
        k.stages.push(st);
    }
    (k, inputs, outs)
}

/// An iota over the whole space is the loop index: recomputed in each kernel, never loaded.
fn spans_space(g: &Graph, n: NodeId, space: &Shape) -> bool {
    matches!(g.node(n).op, Op::Iota { .. }) && g.node(n).ty.shape == *space
}

/// Emits the ops computing `n` into stage `st`, loading non-members as inputs.
#[allow(clippy::too_many_arguments)]
fn emit(
    g: &Graph,
    n: NodeId,
    members: &BTreeSet<NodeId>,
    reduce_stage: &HashMap<NodeId, usize>,
    st: &mut Stage,
    memo: &mut HashMap<NodeId, KVal>,
    k: &mut LoopKernel,
    inputs: &mut Vec<NodeId>,
    space: &Shape,
) -> KVal {
    if let Some(&v) = memo.get(&n) {
        return v;
    }
    let node = g.node(n);
    let push = |st: &mut Stage, op: KOp| {
        st.ops.push(op);
        st.ops.len() - 1
    };
    let v = if let (false, Op::Const { value }) = (members.contains(&n), &node.op) {
        push(
            st,
            KOp::Const {
                value: *value,
                dtype: node.ty.dtype,
            },
        )
    } else if !members.contains(&n) && !spans_space(g, n, space) {
        let i = match inputs.iter().position(|&x| x == n) {
            Some(i) => i,
            None => {
                inputs.push(n);
                k.inputs.push(KernelInput {
                    dtype: node.ty.dtype,
                    strides: stride_pattern(&node.ty.shape, space),
                });
                inputs.len() - 1
            }
        };
        push(st, KOp::Load { input: i })
    } else if let Some(&s) = reduce_stage.get(&n) {
        push(st, KOp::RowValue { stage: s })
    } else {
        let ops = g.operands(n);
        let arg = |i: usize,
                   st: &mut Stage,
                   memo: &mut HashMap<NodeId, KVal>,
                   k: &mut LoopKernel,
                   inputs: &mut Vec<NodeId>| {
            emit(g, ops[i], members, reduce_stage, st, memo, k, inputs, space)
        };
        match &node.op {
            Op::Const { value } => push(
                st,
                KOp::Const {
                    value: *value,
                    dtype: node.ty.dtype,
                },
            ),
            Op::Iota { axis } => {
                // Iota's own shape is broadcast into the space, right-aligned.
                let a = space.rank() - node.ty.shape.rank() + axis;
                let idx = push(st, KOp::Index { axis: a });
                if node.ty.dtype == DType::I64 {
                    idx
                } else {
                    push(
                        st,
                        KOp::Cast {
                            to: node.ty.dtype,
                            a: idx,
                        },
                    )
                }
            }
            Op::Unary(u) => {
                let a = arg(0, st, memo, k, inputs);
                push(st, KOp::Unary { op: *u, a })
            }
            Op::Binary(b) => {
                let a = arg(0, st, memo, k, inputs);
                let c = arg(1, st, memo, k, inputs);
                push(st, KOp::Binary { op: *b, a, b: c })
            }
            Op::Where => {
                let c = arg(0, st, memo, k, inputs);
                let a = arg(1, st, memo, k, inputs);
                let b = arg(2, st, memo, k, inputs);
                push(st, KOp::Where { cond: c, a, b })
            }
            Op::Cast => {
                let a = arg(0, st, memo, k, inputs);
                push(
                    st,
                    KOp::Cast {
                        to: node.ty.dtype,
                        a,
                    },
                )
            }
            Op::Expand => arg(0, st, memo, k, inputs),
            other => unreachable!("`{}` is not fusible", other.mnemonic()),
        }
    };
    memo.insert(n, v);
    v
}

/// Strides of a value of `shape` read over `space` (right-aligned broadcasting).
pub fn stride_pattern(shape: &Shape, space: &Shape) -> Vec<Stride> {
    let r = space.rank();
    let off = r - shape.rank();
    (0..r)
        .map(|a| {
            if a < off || shape.0[a - off] == Dim::Known(1) && space.0[a] != Dim::Known(1) {
                Stride::Zero
            } else if a == r - 1 {
                Stride::One
            } else {
                Stride::Dynamic
            }
        })
        .collect()
}

/// Actual strides (elements) of a contiguous value of `shape` read over `space`.
pub fn strides_for(shape: &[usize], space: &[usize]) -> Vec<i64> {
    let r = space.len();
    let off = r - shape.len();
    let mut contiguous = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        contiguous[i] = contiguous[i + 1] * shape[i + 1] as i64;
    }
    (0..r)
        .map(|a| {
            if a < off || (shape[a - off] == 1 && space[a] != 1) {
                0
            } else {
                contiguous[a - off]
            }
        })
        .collect()
}

/// The printed form of a kernel program (`--emit fused-ir`): the graph, then the steps in
/// order, each loop kernel with its stages. Value numbers are those of the printed graph.
pub fn print_program(p: &KernelProgram) -> String {
    use std::fmt::Write;
    let g = &p.graph;
    let ssa: HashMap<NodeId, usize> = g
        .topo_order()
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i))
        .collect();
    let vals = |ns: &[NodeId]| {
        ns.iter()
            .map(|n| format!("%{}", ssa[n]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = crate::ir::print::print_graph(g);
    let _ = writeln!(out, "program {} {{", g.name);
    for s in &p.steps {
        match s {
            Step::Node(n) => {
                let _ = writeln!(out, "  run %{} = {}", ssa[n], g.node(*n).op.mnemonic());
            }
            Step::Loop {
                kernel,
                space,
                inputs,
                outputs,
            } => {
                let k = &p.kernels[*kernel];
                let _ = writeln!(
                    out,
                    "  loop {} over {space}: ({}) -> ({})",
                    k.name,
                    vals(inputs),
                    vals(outputs)
                );
                for (si, st) in k.stages.iter().enumerate() {
                    let ops: Vec<String> = st
                        .ops
                        .iter()
                        .enumerate()
                        .map(|(i, op)| format!("v{i} = {}", kop_text(op)))
                        .collect();
                    let _ = writeln!(out, "    stage {si}: {}", ops.join("; "));
                    if let Some((r, v)) = st.reduce {
                        let _ = writeln!(out, "      reduce {r:?} v{v}");
                    }
                    for (o, v) in &st.stores {
                        let _ = writeln!(out, "      store out{o} v{v}");
                    }
                }
            }
        }
    }
    out.push_str("}\n");
    out
}

fn kop_text(op: &KOp) -> String {
    match op {
        KOp::Load { input } => format!("load in{input}"),
        KOp::Const { value, dtype } => format!(
            "const {} {}",
            crate::ir::print::fmt_f64(value.0),
            dtype.name()
        ),
        KOp::Index { axis } => format!("index {axis}"),
        KOp::RowValue { stage } => format!("row_value stage{stage}"),
        KOp::Unary { op, a } => format!("{} v{a}", Op::Unary(*op).mnemonic()),
        KOp::Binary { op, a, b } => format!("{} v{a}, v{b}", Op::Binary(*op).mnemonic()),
        KOp::Where { cond, a, b } => format!("where v{cond}, v{a}, v{b}"),
        KOp::Cast { to, a } => format!("cast v{a} to {}", to.name()),
    }
}

/// The CPU pipeline from an elaborated graph: decompose cross-entropy and its gradient
/// (loop kernels fuse them; attention and its gradient stay one kernel each), optimise, fuse.
pub fn lower(graph: &Graph) -> Result<KernelProgram, String> {
    let mut g = graph.clone();
    crate::decompose::decompose_where(&mut g, |op| {
        matches!(op, Op::CrossEntropy { .. } | Op::CrossEntropyGrad { .. })
    })?;
    crate::passes::optimize(&mut g);
    Ok(fuse(g))
}
