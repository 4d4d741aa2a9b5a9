//! Where every value of a CUDA run lives: parameters and inputs in their own device
//! buffers, transposes read in place by matmul/attention nowhere (the reader gets the
//! transposed value's storage), reshapes in their operand's storage, and everything else
//! in one arena per run. Arena offsets come from liveness intervals with the CPU
//! backend's method (`cpu/plan.rs`): largest first, lowest address that fits (first fit),
//! a loop kernel may write over an input that dies at that step (at its very offset,
//! never shifted: `cpu::plan::place`), and so may a scatter-add over the table it starts
//! from. An attention's gradients are all defined at their group's first step, which also
//! gets the softmax statistics' scratch for that step (`attention_grad_steps`). Sizes
//! follow the storage (`storage.rs`: bf16 values take 2 bytes), and each bf16 shadow of an
//! f32 GEMM/attention operand lives in the arena for the one step that reads it.

use super::storage::{storage, Precision, Shadow, Storage};
use crate::interp::{resolve, Bindings};
use encdecc_codegen::cuda::Mem;
use encdecc_compiler::decompose::attention_grad_siblings;
use encdecc_compiler::fuse::{KernelProgram, Step};
use encdecc_compiler::ir::{AttnOperand, Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// Arena offsets are multiples of this (cuBLAS and vector loads like aligned operands).
pub const ALIGN: u64 = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// Byte offset in the arena.
    Arena(u64),
    Param(String),
    Input(String),
}

#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub arena_bytes: u64,
    /// The largest total of arena values live at one step (a lower bound for any plan).
    pub live_peak_bytes: u64,
    /// Storage of every stored value (roots only; see `root`).
    pub home: HashMap<NodeId, Home>,
    /// The value whose storage a value uses: itself, or what a reshape chain starts from.
    pub root: HashMap<NodeId, NodeId>,
    /// Per arena value: (first step, end step) of its bytes, half open.
    pub lifetimes: HashMap<NodeId, (usize, usize, u64)>,
    /// Byte offset of each bf16 shadow (lifetime: its step).
    pub shadows: HashMap<Shadow, u64>,
    /// Byte offset of the softmax statistics of the attention backward computed at a step
    /// (`attention_grad_scratch_bytes`; lifetime: that step).
    pub scratch: HashMap<usize, u64>,
    /// The first step writing carried state in place (`plan_carried`), if any: a run
    /// reports bad inputs before it, so that a failed run leaves the state as it was.
    pub first_update: Option<usize>,
}

impl Layout {
    pub fn home_of(&self, n: NodeId) -> Option<&Home> {
        self.home.get(self.root.get(&n)?)
    }
}

/// Transposes that the consumer reads in place: the last two axes swapped for either
/// operand of a matmul (cuBLAS's `T`; a weight's gradient `xᵀ·g` reads the activation
/// transposed: the tied 256k-row embedding's took a 0.95 ms copy), the head transpose
/// `[0, 2, 1, 3]` for attention's q, k and v (the kernel takes any strides).
pub fn views(p: &KernelProgram) -> HashSet<NodeId> {
    let g = &p.graph;
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Node(n) => Some(*n),
            _ => None,
        })
        .filter(|&n| {
            let Op::Permute { perm } = &g.node(n).op else {
                return false;
            };
            let r = perm.len();
            let users = g.users(n);
            let transpose = r >= 2
                && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
                && users
                    .iter()
                    .all(|(u, pos)| matches!(g.node(*u).op, Op::MatMul) && *pos <= 1);
            let heads = *perm == [0, 2, 1, 3]
                && users.iter().all(|(u, pos)| match g.node(*u).op {
                    Op::Attention(_) => *pos <= 2,
                    Op::AttentionGrad { .. } => *pos <= 3,
                    _ => false,
                });
            (transpose || heads) && !users.is_empty() && !g.outputs.iter().any(|(_, o)| *o == n)
        })
        .collect()
}

/// The `attention_grad` steps of a program: the first step of each group of siblings
/// (one attention's gradients) computes the whole group in one pass (`exec.rs`), so its
/// values are defined there, and the later siblings' steps do nothing.
#[derive(Clone, Debug, Default)]
pub struct AttnGradSteps {
    /// First step of a group → the group (node, which gradient).
    pub first: HashMap<usize, Vec<(NodeId, AttnOperand)>>,
    /// Every sibling → the step that computes it.
    pub def: HashMap<NodeId, usize>,
}

pub fn attention_grad_steps(p: &KernelProgram) -> AttnGradSteps {
    let g = &p.graph;
    let mut out = AttnGradSteps::default();
    for (i, s) in p.steps.iter().enumerate() {
        let Step::Node(n) = s else { continue };
        if !matches!(g.node(*n).op, Op::AttentionGrad { .. }) || out.def.contains_key(n) {
            continue;
        }
        let group = attention_grad_siblings(g, *n);
        // One node per gradient (CSE merges equal ones): each output is written once.
        debug_assert!(
            group
                .iter()
                .enumerate()
                .all(|(k, (_, w))| group[..k].iter().all(|(_, x)| x != w)),
            "two attention_grad siblings for one operand"
        );
        for (m, _) in &group {
            out.def.insert(*m, i);
        }
        out.first.insert(i, group);
    }
    out
}

/// Bytes of the per-row softmax statistics (max, sum, D: f32) the attention backward
/// kernels pass between them, for an attention with `q` of `q_shape`.
pub fn attention_grad_scratch_bytes(q_shape: &[usize]) -> u64 {
    let rows: usize = q_shape[..q_shape.len().saturating_sub(1)].iter().product();
    (rows * 3 * 4) as u64
}

/// The values a step reads (through views, the viewed value).
pub fn step_inputs(g: &Graph, views: &HashSet<NodeId>, s: &Step) -> Vec<NodeId> {
    match s {
        Step::Loop { inputs, .. } => inputs.clone(),
        Step::Node(n) => g
            .operands(*n)
            .into_iter()
            .flat_map(|o| {
                if views.contains(&o) {
                    g.operands(o)
                } else {
                    vec![o]
                }
            })
            .collect(),
    }
}

pub fn step_outputs(s: &Step) -> Vec<NodeId> {
    match s {
        Step::Loop { outputs, .. } => outputs.clone(),
        Step::Node(n) => vec![*n],
    }
}

/// The plan with every value at full precision.
pub fn plan(p: &KernelProgram, views: &HashSet<NodeId>, b: &Bindings) -> Result<Layout, String> {
    plan_with(p, views, &storage(p, views, Precision::F32), b)
}

/// The plan of a run whose values are stored as `st` says.
pub fn plan_with(
    p: &KernelProgram,
    views: &HashSet<NodeId>,
    st: &Storage,
    b: &Bindings,
) -> Result<Layout, String> {
    plan_carried(p, views, st, b, &[])
}

/// `plan_with` for a program whose outputs `carried` (output, parameter or input node;
/// `storage::carry_nodes`) refill their targets after the run: an output computed by an
/// elementwise kernel after every other reader of its target is written straight into the
/// target's buffer (AdamW's new weights and moments), so the run neither stores it in the
/// arena nor copies it afterwards. Thread e of that kernel reads element e of the target
/// before writing element e, as the in-place rule below relies on too.
pub fn plan_carried(
    p: &KernelProgram,
    views: &HashSet<NodeId>,
    st: &Storage,
    b: &Bindings,
    carried: &[(NodeId, NodeId)],
) -> Result<Layout, String> {
    let g = &p.graph;
    let numel = |n: NodeId| -> Result<u64, String> {
        Ok(resolve(&g.node(n).ty.shape, b)?
            .iter()
            .map(|&x| x as u64)
            .product())
    };
    let mut layout = Layout::default();
    for n in g.topo_order() {
        let node = g.node(n);
        let root = match &node.op {
            Op::Reshape => layout.root[&g.operands(n)[0]],
            _ => n,
        };
        layout.root.insert(n, root);
        match &node.op {
            Op::Param { path, .. } => {
                layout.home.insert(n, Home::Param(path.clone()));
            }
            Op::Input { name } => {
                layout.home.insert(n, Home::Input(name.clone()));
            }
            _ => {}
        }
    }
    // An attention's gradients all come out of its group's first step.
    let grads = attention_grad_steps(p);
    let mut def: HashMap<NodeId, usize> = HashMap::new();
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for (i, s) in p.steps.iter().enumerate() {
        for o in step_outputs(s) {
            let r = layout.root[&o];
            if r == o && !layout.home.contains_key(&o) && !views.contains(&o) {
                def.insert(o, i);
                last.entry(o).or_insert(i);
            }
        }
        // A later sibling of an attention's gradients reads nothing: the first computed it.
        if matches!(s, Step::Node(n) if grads.def.get(n).is_some_and(|&f| f != i)) {
            continue;
        }
        for o in step_inputs(g, views, s) {
            let r = layout.root[&o];
            if def.contains_key(&r) {
                last.insert(r, i);
            }
        }
    }
    for (m, &first) in &grads.def {
        if let Some(d) = def.get_mut(m) {
            *d = first;
        }
    }
    for &(o, target) in carried {
        // An output that reshapes a value is that value's bytes (a ring of one layer).
        let o = layout.root[&o];
        if let Some(d) = def
            .get(&o)
            .copied()
            .filter(|&d| writes_in_place(p, views, &layout, d, o, target))
        {
            layout.first_update = Some(layout.first_update.map_or(d, |f| f.min(d)));
            def.remove(&o);
            last.remove(&o);
            let home = layout.home[&target].clone();
            layout.home.insert(o, home);
        }
    }
    let end = p.steps.len();
    for (_, o) in &g.outputs {
        let r = layout.root[o];
        if def.contains_key(&r) {
            last.insert(r, end);
        }
    }
    let mut vals: Vec<(NodeId, usize, usize, u64)> = vec![];
    let mut written_over = HashSet::new();
    for (&n, &d) in &def {
        let size = st.mem(n).bytes() * numel(n)?;
        let l = last[&n];
        // In place: a loop kernel with a single full output of the same dtype, reading this
        // value (through any reshape) element for element over its own space; thread e
        // reads element e before writing it and nothing else touches it. Only at the same
        // offset: `place` never lets the output overlap it shifted (a race between blocks).
        let in_place = match p.steps.get(l) {
            Some(Step::Loop {
                space,
                kernel,
                inputs,
                outputs,
            }) => {
                let outs = &p.kernels[*kernel].outputs;
                let reads: Vec<&NodeId> = inputs.iter().filter(|x| layout.root[*x] == n).collect();
                l > d
                    && outs.len() == 1
                    && !outs[0].per_row
                    && st.mem(outputs[0]) == st.mem(n)
                    && !reads.is_empty()
                    && reads.iter().all(|x| g.node(**x).ty.shape == *space)
            }
            // A scatter-add onto a base that dies there adds its rows to the base's bytes
            // (the executor copies the base only when the placement differs).
            Some(Step::Node(s)) if matches!(g.node(*s).op, Op::ScatterAdd) => {
                let ops = g.operands(*s);
                l > d
                    && ops.len() == 3
                    && layout.root[&ops[2]] == n
                    && ops[..2].iter().all(|o| layout.root[o] != n)
                    && g.node(ops[2]).ty.shape == g.node(*s).ty.shape
                    && st.mem(*s) == st.mem(n)
            }
            _ => false,
        };
        let end = if in_place { l } else { l + 1 };
        if in_place {
            written_over.insert(n);
        }
        vals.push((n, d, end, size.div_ceil(ALIGN) * ALIGN));
    }
    // Shadows under ids past the graph's nodes, so that one placement serves both.
    let first = g
        .dag
        .node_indices()
        .map(|n| n.index() + 1)
        .max()
        .unwrap_or(0);
    for (k, sh) in st.shadows.iter().enumerate() {
        let size = Mem::Bf16.bytes() * numel(sh.node)?;
        vals.push((
            NodeId::new(first + k),
            sh.step,
            sh.step + 1,
            size.div_ceil(ALIGN).max(1) * ALIGN,
        ));
    }
    // Then the attention backward's statistics, for the step that computes the group.
    let mut scratch_steps: Vec<usize> = grads.first.keys().copied().collect();
    scratch_steps.sort();
    let scratch_first = first + st.shadows.len();
    for (k, &i) in scratch_steps.iter().enumerate() {
        let Step::Node(n) = &p.steps[i] else {
            unreachable!("attention_grad steps are nodes")
        };
        let q = resolve(&g.node(g.operands(*n)[0]).ty.shape, b)?;
        let size = attention_grad_scratch_bytes(&q);
        vals.push((
            NodeId::new(scratch_first + k),
            i,
            i + 1,
            size.div_ceil(ALIGN).max(1) * ALIGN,
        ));
    }
    let placed = crate::cpu::plan::place(vals, &written_over, end);
    for v in &placed.values {
        match v.node.index().checked_sub(first) {
            Some(k) if k >= st.shadows.len() => {
                layout
                    .scratch
                    .insert(scratch_steps[k - st.shadows.len()], v.offset);
            }
            Some(k) => {
                layout.shadows.insert(st.shadows[k], v.offset);
            }
            None => {
                layout.home.insert(v.node, Home::Arena(v.offset));
                layout.lifetimes.insert(v.node, (v.def, v.end, v.size));
            }
        }
    }
    layout.arena_bytes = placed.arena_bytes;
    layout.live_peak_bytes = placed.live_peak_bytes;
    Ok(layout)
}

/// Whether step `d`, which defines `o`, may write `o` into `target`'s storage: an
/// elementwise loop kernel that reads `target` (if at all) element for element over its
/// own space, or a concat of values other than `target` (a decode step's rings, stacked
/// over their layers); no later step may read `target`'s old value (later readers of `o`
/// read it there), and no other output be `target`.
fn writes_in_place(
    p: &KernelProgram,
    views: &HashSet<NodeId>,
    layout: &Layout,
    d: usize,
    o: NodeId,
    target: NodeId,
) -> bool {
    let g = &p.graph;
    let root = |n: &NodeId| layout.root.get(n).copied().unwrap_or(*n);
    let writer = match p.steps.get(d) {
        Some(Step::Loop {
            kernel,
            space,
            inputs,
            ..
        }) => {
            let k = &p.kernels[*kernel];
            k.stages.iter().all(|s| s.reduce.is_none())
                && k.outputs.iter().all(|out| !out.per_row)
                && g.node(o).ty.shape == *space
                && inputs
                    .iter()
                    .filter(|x| root(x) == target)
                    .all(|x| g.node(*x).ty.shape == *space)
        }
        // Its parts are copied in, none from the target's bytes.
        Some(Step::Node(n)) if *n == o && matches!(g.node(o).op, Op::Concat { .. }) => {
            g.operands(o).iter().all(|x| root(x) != target)
        }
        _ => false,
    };
    writer
        // The target's old value is not an output either (read after the run).
        && g.outputs.iter().all(|(_, x)| root(x) == o || root(x) != target)
        && p.steps[d + 1..].iter().all(|s| {
            step_inputs(g, views, s).iter().all(|x| root(x) != target)
        })
}
