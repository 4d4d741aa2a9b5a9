//! Non-finite values named: which op first produced the NaN or infinity that a run's
//! output holds.
//!
//! A checking run records, for every value it computes, whether it holds a NaN or an
//! infinity (and where the first one is). The rule: a run is at fault only when a graph
//! *output* is non-finite; it then walks back from that output through the non-finite
//! values it was computed from, to where the chain starts: a value whose step read only
//! finite values (or an input or parameter that already was non-finite). Of the chains'
//! starts, the earliest step is named.
//!
//! Why outputs and chains, not the first non-finite value computed: some graphs compute
//! non-finite values that never matter. A train step whose loss diverged still computes
//! NaN updates, which its guard (`optim.rs`: `where(|loss| <= f32::MAX, new, old)`)
//! replaces by the old weights; a `where` may select away an infinity. Neither reaches an
//! output, so neither is reported; a run whose outputs are all finite never fails. (The
//! masks' additive `f32::MIN` and the kernels' `-inf` fold starts are finite values or
//! never stored, so they never start a chain.) An op that turns a non-finite operand into
//! a finite value cuts the chain there, which is what "explained by" means: only
//! non-finite operands are followed.

use crate::tensor::{Data, Tensor};
use encdecc_compiler::fuse::{KernelProgram, Step};
use encdecc_compiler::ir::{Graph, NodeId, Op, ReduceOp};
use encdecc_compiler::kernel::KOp;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

/// What a run checks beyond what every run does (config, not flags: more may come).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// Fail a run whose outputs hold a NaN or an infinity, naming the op that first
    /// produced one (`--check-finite`; the reference backend always checks).
    pub finite: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    Nan,
    PosInf,
    NegInf,
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Bad::Nan => "NaN",
            Bad::PosInf => "inf",
            Bad::NegInf => "-inf",
        })
    }
}

/// The first non-finite element of a value: what it is and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub bad: Bad,
    pub at: Vec<usize>,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} at {:?}", self.bad, self.at)
    }
}

/// The index of the first NaN or ±Inf of `v`. One pass: chunks are scanned without an early
/// exit (so the loop vectorises), and only a chunk that has one is searched.
pub fn first_non_finite_index(v: &[f32]) -> Option<usize> {
    const CHUNK: usize = 4096;
    // All exponent bits set: NaN or an infinity.
    let bad = |x: &f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    v.chunks(CHUNK).enumerate().find_map(|(k, c)| {
        c.iter()
            .fold(false, |any, x| any | bad(x))
            .then(|| k * CHUNK + c.iter().position(bad).unwrap_or(0))
    })
}

/// The first NaN or infinity of an f32 tensor (other dtypes are always finite).
pub fn first_non_finite(t: &Tensor) -> Option<Found> {
    let Data::F32(v) = &t.data else {
        return None;
    };
    let i = first_non_finite_index(v)?;
    let x = v[i];
    let bad = if x.is_nan() {
        Bad::Nan
    } else if x > 0.0 {
        Bad::PosInf
    } else {
        Bad::NegInf
    };
    let mut at = vec![0; t.shape.len()];
    let mut rest = i;
    for (a, &d) in at.iter_mut().zip(&t.shape).rev() {
        *a = rest % d.max(1);
        rest /= d.max(1);
    }
    Some(Found { bad, at })
}

/// Where the non-finite values of a failing run come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An input or parameter that was non-finite before anything ran.
    Leaf { kind: &'static str, name: String },
    /// A step that read only finite values: the values it computed that are not, and
    /// what it is (`op exp`; a loop kernel with the ops fused into it).
    Step {
        values: Vec<String>,
        what: String,
        fused: bool,
    },
}

/// The report of a failing run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonFinite {
    pub origin: Origin,
    pub found: Found,
    /// The first output (in declaration order) the chain reaches.
    pub output: String,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.origin {
            Origin::Leaf { kind, name } => {
                write!(f, "{kind} {name} is non-finite ({})", self.found)?;
            }
            Origin::Step {
                values,
                what,
                fused,
            } => {
                let operands = if *fused { "its inputs" } else { "operands" };
                write!(
                    f,
                    "non-finite value ({}) first produced by {} ({what}) — {operands} were finite",
                    self.found,
                    values.join(", ")
                )?;
            }
        }
        write!(f, "; it reaches output `{}`", self.output)
    }
}

/// A run's outputs and, where the check is on and an output is non-finite, the report.
pub struct Checked {
    pub outputs: HashMap<String, Tensor>,
    pub non_finite: Option<NonFinite>,
}

impl Checked {
    /// The outputs, or the report as the error.
    pub fn into_result(self) -> Result<HashMap<String, Tensor>, String> {
        match self.non_finite {
            Some(r) => Err(r.to_string()),
            None => Ok(self.outputs),
        }
    }
}

/// One recorded value: the step that computed it (`None`: bound before the first step)
/// and its first non-finite element.
struct Seen {
    step: Option<usize>,
    bad: Option<Found>,
}

/// The values of a run so far, finite or not.
#[derive(Default)]
pub struct Tracker {
    seen: HashMap<NodeId, Seen>,
}

/// Where a non-finite output's chain starts.
pub struct Trace {
    pub step: Option<usize>,
    pub value: NodeId,
    pub found: Found,
    pub output: String,
}

impl Tracker {
    pub fn record(&mut self, step: Option<usize>, n: NodeId, t: &Tensor) {
        let bad = first_non_finite(t);
        self.seen.insert(n, Seen { step, bad });
    }

    pub fn is_bad(&self, n: NodeId) -> bool {
        self.seen.get(&n).is_some_and(|s| s.bad.is_some())
    }

    /// From each non-finite output back along non-finite values (`reads(step)`: what the
    /// step read) to the earliest value whose step read none. A value never recorded (a
    /// view read in place: a transpose, a layer of a stack) stands for its operands.
    pub fn trace(&self, g: &Graph, reads: impl Fn(usize) -> Vec<NodeId>) -> Option<Trace> {
        let mut visited = HashSet::new();
        let mut best: Option<Trace> = None;
        for (output, o) in &g.outputs {
            if !self.is_bad(*o) {
                continue;
            }
            let mut stack = vec![*o];
            while let Some(v) = stack.pop() {
                if !visited.insert(v) {
                    continue;
                }
                let s = &self.seen[&v];
                let mut bad_reads = vec![];
                let mut pending = s.step.map(&reads).unwrap_or_default();
                while let Some(r) = pending.pop() {
                    match self.seen.get(&r) {
                        Some(x) if x.bad.is_some() => bad_reads.push(r),
                        Some(_) => {}
                        None => pending.extend(g.operands(r)),
                    }
                }
                if bad_reads.is_empty() {
                    let earlier = best.as_ref().is_none_or(|b| s.step < b.step);
                    if earlier {
                        best = Some(Trace {
                            step: s.step,
                            value: v,
                            found: s.bad.clone().expect("bad"),
                            output: output.clone(),
                        });
                    }
                } else {
                    stack.extend(bad_reads);
                }
            }
        }
        best
    }
}

/// A value as errors name it: its DSL path, or for an unnamed one (a decomposition's
/// inner value, a sub-expression) its SSA number in the printed graph with the named
/// values it is computed from and the first it feeds.
pub fn value_name(g: &Graph, n: NodeId) -> String {
    if let Some(name) = &g.node(n).name {
        return format!("`{name}`");
    }
    let ssa = g.topo_order().iter().position(|&m| m == n).unwrap_or(0);
    let mut from: Vec<String> = vec![];
    for o in g.operands(n) {
        if let Some(name) = nearest(g, o, |m| g.operands(m)) {
            if !from.contains(&name) {
                from.push(name);
            }
        }
    }
    let users = |m: NodeId| g.users(m).into_iter().map(|(u, _)| u).collect();
    let to = g
        .users(n)
        .into_iter()
        .find_map(|(u, _)| nearest(g, u, users));
    let mut about = vec![];
    if !from.is_empty() {
        about.push(format!("from `{}`", from.join("`, `")));
    }
    if let Some(to) = to {
        about.push(format!("feeding `{to}`"));
    }
    match about.is_empty() {
        true => format!("`%{ssa}` (unnamed)"),
        false => format!("`%{ssa}` (unnamed, {})", about.join(", ")),
    }
}

/// The first value with a name (a parameter's path, an input's name) breadth-first from
/// `n` along `next`.
fn nearest(g: &Graph, n: NodeId, next: impl Fn(NodeId) -> Vec<NodeId>) -> Option<String> {
    let mut queue = VecDeque::from([n]);
    let mut seen = HashSet::new();
    while let Some(m) = queue.pop_front() {
        if !seen.insert(m) {
            continue;
        }
        let node = g.node(m);
        match (&node.name, &node.op) {
            (Some(name), _) | (None, Op::Param { path: name, .. }) => return Some(name.clone()),
            (None, Op::Input { name }) => return Some(name.clone()),
            _ => queue.extend(next(m)),
        }
    }
    None
}

/// An input or parameter at fault, or `None` for a computed value.
fn leaf(g: &Graph, n: NodeId) -> Option<Origin> {
    match &g.node(n).op {
        Op::Input { name } => Some(Origin::Leaf {
            kind: "input",
            name: format!("`{name}`"),
        }),
        Op::Param { path, ckpt } => Some(Origin::Leaf {
            kind: "parameter",
            name: if path == ckpt {
                format!("`{path}`")
            } else {
                format!("`{ckpt}` (`{path}`)")
            },
        }),
        _ => None,
    }
}

/// The report for a graph run node by node (the reference interpreter).
pub fn report_nodes(g: &Graph, t: Trace) -> NonFinite {
    let origin = leaf(g, t.value).unwrap_or_else(|| Origin::Step {
        values: vec![value_name(g, t.value)],
        what: format!("op {}", g.node(t.value).op.mnemonic()),
        fused: false,
    });
    NonFinite {
        origin,
        found: t.found,
        output: t.output,
    }
}

/// What a kernel program's step reads, by value (views included; the trace sees through
/// them).
pub fn step_reads(p: &KernelProgram, i: usize) -> Vec<NodeId> {
    match &p.steps[i] {
        Step::Loop { inputs, .. } => inputs.clone(),
        Step::Node(n) => p.graph.operands(*n),
    }
}

/// The report for a kernel program (the CPU and CUDA backends): a loop kernel is named by
/// its non-finite outputs and the ops fused into it.
pub fn report_program(p: &KernelProgram, tracker: &Tracker, t: Trace) -> NonFinite {
    let g = &p.graph;
    let origin = match t.step.map(|i| &p.steps[i]) {
        None => leaf(g, t.value),
        Some(Step::Node(n)) => leaf(g, *n).or_else(|| {
            Some(Origin::Step {
                values: vec![value_name(g, t.value)],
                what: format!("op {}", g.node(*n).op.mnemonic()),
                fused: false,
            })
        }),
        Some(Step::Loop {
            kernel, outputs, ..
        }) => Some(Origin::Step {
            values: outputs
                .iter()
                .filter(|&&o| tracker.is_bad(o))
                .map(|&o| value_name(g, o))
                .collect(),
            what: format!(
                "loop kernel `{}`: {}",
                p.kernels[*kernel].name,
                fused_ops(&p.kernels[*kernel]).join(", ")
            ),
            fused: true,
        }),
    };
    NonFinite {
        origin: origin.unwrap_or_else(|| Origin::Step {
            values: vec![value_name(g, t.value)],
            what: format!("op {}", g.node(t.value).op.mnemonic()),
            fused: false,
        }),
        found: t.found,
        output: t.output,
    }
}

/// The ops of a loop kernel, each once, in the order they first appear.
fn fused_ops(k: &encdecc_compiler::kernel::LoopKernel) -> Vec<&'static str> {
    let mut ops: Vec<&'static str> = vec![];
    for st in &k.stages {
        let mut names: Vec<&'static str> = st
            .ops
            .iter()
            .filter_map(|op| match op {
                KOp::Unary { op, .. } => Some(Op::Unary(*op).mnemonic()),
                KOp::Binary { op, .. } => Some(Op::Binary(*op).mnemonic()),
                KOp::Where { .. } => Some("where"),
                KOp::Cast { .. } => Some("cast"),
                _ => None,
            })
            .collect();
        if let Some((r, _)) = st.reduce {
            names.push(match r {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Max => "reduce_max",
            });
        }
        for name in names {
            if !ops.contains(&name) {
                ops.push(name);
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_index_finds_the_first() {
        let mut v = vec![1.0f32; 10_000];
        assert_eq!(first_non_finite_index(&v), None);
        assert_eq!(first_non_finite_index(&[]), None);
        v[9000] = f32::NEG_INFINITY;
        v[5000] = f32::NAN;
        assert_eq!(first_non_finite_index(&v), Some(5000));
        v[4095] = f32::INFINITY;
        assert_eq!(first_non_finite_index(&v), Some(4095));
        // The largest finite values and subnormals are finite.
        assert_eq!(first_non_finite_index(&[f32::MAX, f32::MIN, 1e-45]), None);
    }

    #[test]
    fn first_non_finite_indexes_the_element() {
        let t = Tensor::f32(
            vec![2, 3],
            vec![0.0, 1.0, 2.0, 3.0, f32::NAN, f32::INFINITY],
        );
        let f = first_non_finite(&t).unwrap();
        assert_eq!(f.to_string(), "NaN at [1, 1]");
        let t = Tensor::f32(vec![3], vec![0.0, f32::NEG_INFINITY, 1.0]);
        assert_eq!(first_non_finite(&t).unwrap().to_string(), "-inf at [1]");
        assert_eq!(
            first_non_finite(&Tensor::f32(vec![1], vec![f32::MAX])),
            None
        );
        assert_eq!(
            first_non_finite(&Tensor::i64(vec![1], vec![i64::MAX])),
            None
        );
    }
}
