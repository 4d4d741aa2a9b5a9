//! Memory planning: every value of a run gets an offset in one arena, from its liveness
//! interval (the step that writes it to the last step that reads it). Values whose
//! intervals do not overlap share memory; a loop kernel may write into an input that dies
//! at that step (in place). Offsets are assigned greedily, largest first, at the lowest
//! address that fits (first fit) — the classic offline approach for tensor arenas.

use super::CpuModel;
use crate::interp::{resolve, Bindings};
use encdecc_compiler::fuse::Step;
use encdecc_compiler::ir::{NodeId, Op};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// Arena size: the peak of the plan.
    pub arena_bytes: u64,
    /// The largest total of values live at one step (a lower bound for any plan).
    pub live_peak_bytes: u64,
    /// Per value: (offset, bytes).
    pub offsets: HashMap<NodeId, (u64, u64)>,
    /// Per value: the steps [first, end) during which its bytes are in use.
    pub lifetimes: HashMap<NodeId, (usize, usize)>,
}

/// Plans the intermediate values of one run (parameters and inputs are not in the arena).
pub fn plan(m: &CpuModel, b: &Bindings) -> Result<MemoryPlan, String> {
    let g = &m.program.graph;
    let mut def: HashMap<NodeId, usize> = HashMap::new();
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for (i, s) in m.program.steps.iter().enumerate() {
        let outs: Vec<NodeId> = match s {
            Step::Loop { outputs, .. } => outputs.clone(),
            Step::Node(n) => vec![*n],
        };
        for o in outs {
            if !matches!(g.node(o).op, Op::Param { .. } | Op::Input { .. }) && !m.is_view(o) {
                def.insert(o, i);
                last.entry(o).or_insert(i);
            }
        }
        for o in m.step_inputs(s) {
            if def.contains_key(&o) {
                last.insert(o, i);
            }
        }
    }
    let end = m.program.steps.len();
    for (_, o) in &g.outputs {
        if def.contains_key(o) {
            last.insert(*o, end);
        }
    }
    // Half-open lifetimes [def, end): a value is free from `end` on. It stays live through
    // its last reading step, except when that step is a loop kernel over exactly its shape:
    // element i is read before element i is written, so the output may take its place.
    let mut vals: Vec<(NodeId, usize, usize, u64)> = vec![];
    let mut written_over = HashSet::new();
    for (&n, &d) in &def {
        let shape = resolve(&g.node(n).ty.shape, b)?;
        let size = g.node(n).ty.dtype.bytes() * shape.iter().map(|&x| x as u64).product::<u64>();
        let l = last[&n];
        // Only for full outputs of the same element size: a wider output element, or a
        // per-row output written by another thread, could overwrite input not yet read.
        let in_place = match m.program.steps.get(l) {
            Some(Step::Loop { space, kernel, .. }) => {
                l > d
                    && *space == g.node(n).ty.shape
                    && m.program.kernels[*kernel]
                        .outputs
                        .iter()
                        .all(|o| !o.per_row && o.dtype == g.node(n).ty.dtype)
            }
            _ => false,
        };
        let end = if in_place { l } else { l + 1 };
        if in_place {
            written_over.insert(n);
        }
        vals.push((n, d, end, size.div_ceil(64) * 64));
    }
    let placed = place(vals, &written_over, end);
    let mut plan = MemoryPlan::default();
    for v in &placed.values {
        plan.offsets.insert(v.node, (v.offset, v.size));
        plan.lifetimes.insert(v.node, (v.def, v.end));
    }
    plan.arena_bytes = placed.arena_bytes;
    plan.live_peak_bytes = placed.live_peak_bytes;
    Ok(plan)
}

/// A value placed in the arena: live over steps `[def, end)` at `offset`.
pub struct Placed {
    pub node: NodeId,
    pub def: usize,
    pub end: usize,
    pub offset: u64,
    pub size: u64,
}

pub struct Placement {
    pub values: Vec<Placed>,
    pub arena_bytes: u64,
    /// The largest sum of live sizes at any step `0..=last_step`.
    pub live_peak_bytes: u64,
}

/// First-fit placement of `(node, def, end, size)` values, largest first (ties by
/// definition, then node, so plans are deterministic): each goes at the lowest offset where
/// it overlaps no value whose lifetime overlaps its own. Shared by the CPU and GPU plans.
///
/// A value in `in_place` is last read by the loop kernel of step `end`, which may write
/// its output over it; that output may take exactly its bytes (thread `e` reads element
/// `e` before writing it) but no other overlap: shifted by any amount, one thread's write
/// lands on an element another thread (a later block on the GPU, a later row on the CPU)
/// has not read yet.
pub fn place(
    mut vals: Vec<(NodeId, usize, usize, u64)>,
    in_place: &HashSet<NodeId>,
    last_step: usize,
) -> Placement {
    vals.sort_by(|a, b| b.3.cmp(&a.3).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
    let mut out = Placement {
        values: vec![],
        arena_bytes: 0,
        live_peak_bytes: 0,
    };
    for (node, def, end, size) in vals {
        // Another value may share bytes if their lifetimes do not overlap; one written in
        // place of the other (`exact`) only at the same offset.
        let mut conflicts: Vec<(u64, u64, bool)> = out
            .values
            .iter()
            .filter_map(|p| {
                let exact = (p.end == def && in_place.contains(&p.node))
                    || (end == p.def && in_place.contains(&node));
                (exact || (p.def < end && def < p.end)).then_some((
                    p.offset,
                    p.offset + p.size,
                    exact,
                ))
            })
            .collect();
        conflicts.sort();
        let fits = |o: u64| {
            conflicts
                .iter()
                .all(|&(s, e, exact)| o + size <= s || e <= o || (exact && o == s))
        };
        // The lowest offset that fits is 0, the end of a conflict or an exact share.
        let offset = std::iter::once(0)
            .chain(
                conflicts
                    .iter()
                    .flat_map(|&(s, e, exact)| [Some(e), exact.then_some(s)].into_iter().flatten()),
            )
            .filter(|&o| fits(o))
            .min()
            .expect("past every conflict fits");
        out.arena_bytes = out.arena_bytes.max(offset + size);
        out.values.push(Placed {
            node,
            def,
            end,
            offset,
            size,
        });
    }
    for step in 0..=last_step {
        let live: u64 = out
            .values
            .iter()
            .filter(|p| p.def <= step && step < p.end)
            .map(|p| p.size)
            .sum();
        out.live_peak_bytes = out.live_peak_bytes.max(live);
    }
    out
}
