//! Dead-code elimination: removes nodes no output depends on. Parameters and inputs stay
//! (they are the graph's interface even when an entry point leaves one unused).

use crate::ir::Graph;

/// Returns the number of nodes removed.
pub fn run(g: &mut Graph) -> usize {
    let before = g.dag.node_count();
    g.remove_dead();
    before - g.dag.node_count()
}
