//! Optimisation passes over the graph IR. Each pass is a function `&mut Graph -> usize`
//! (the number of changes it made) that keeps the graph's meaning exactly in f32: no
//! reassociation, no identities that hold only up to rounding or signed zeros. Params and
//! inputs are never removed or renamed; outputs keep their names and point at equal values.
//!
//! `optimize` runs every pass in turn until a whole round changes nothing, timing each and
//! verifying the graph after each (in debug and test builds).

pub mod cse;
pub mod dce;
pub mod fold;
pub mod layout;
pub mod rewrite;
pub mod simplify;

use crate::ir::verify::debug_verify;
use crate::ir::Graph;
use std::fmt;
use std::time::{Duration, Instant};

pub type Pass = fn(&mut Graph) -> usize;

/// The passes in the order `optimize` runs them: folding and simplification expose
/// duplicates and dead nodes; CSE then merges, DCE sweeps what is left.
pub const PASSES: [(&str, Pass); 5] = [
    ("fold", fold::run),
    ("simplify", simplify::run),
    ("layout", layout::run),
    ("cse", cse::run),
    ("dce", dce::run),
];

/// A pass by name (as file tests name them).
pub fn pass(name: &str) -> Option<Pass> {
    PASSES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// A safety net: every rewrite removes a node or shortens a chain, so the fixed point
/// comes in a few rounds.
const MAX_ROUNDS: usize = 32;

#[derive(Clone, Debug, Default)]
pub struct PassStat {
    pub name: &'static str,
    pub runs: usize,
    pub changes: usize,
    pub time: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct PassStats {
    pub passes: Vec<PassStat>,
    /// Rounds run, the last one changing nothing.
    pub rounds: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

impl PassStats {
    pub fn changes(&self) -> usize {
        self.passes.iter().map(|p| p.changes).sum()
    }
}

impl fmt::Display for PassStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "optimize: {} -> {} nodes in {} round(s)",
            self.nodes_before, self.nodes_after, self.rounds
        )?;
        for p in &self.passes {
            writeln!(
                f,
                "  {:<9} {:>6} change(s) {:>3} run(s) {:>10.3?}",
                p.name, p.changes, p.runs, p.time
            )?;
        }
        Ok(())
    }
}

/// Runs every pass to a fixed point.
pub fn optimize(g: &mut Graph) -> PassStats {
    let mut stats = PassStats {
        passes: PASSES
            .iter()
            .map(|(name, _)| PassStat {
                name,
                ..PassStat::default()
            })
            .collect(),
        nodes_before: g.dag.node_count(),
        ..PassStats::default()
    };
    while stats.rounds < MAX_ROUNDS {
        stats.rounds += 1;
        let mut changed = 0;
        for ((name, pass), stat) in PASSES.iter().zip(&mut stats.passes) {
            let t = Instant::now();
            let n = pass(g);
            stat.time += t.elapsed();
            stat.runs += 1;
            stat.changes += n;
            changed += n;
            debug_verify(g, name);
        }
        if changed == 0 {
            break;
        }
    }
    stats.nodes_after = g.dag.node_count();
    stats
}
