//! The CPU executor's side of the finite check (`crate::finite`): every value a step
//! computes is scanned as it is made, before a later step can reuse its buffer.

use super::CpuModel;
use crate::finite::{report_program, step_reads, NonFinite, Tracker};
use crate::tensor::Tensor;
use encdecc_compiler::fuse::Step;
use encdecc_compiler::ir::NodeId;
use std::borrow::Cow;
use std::collections::HashMap;

impl CpuModel {
    /// The parameters and inputs, as bound before the first step.
    pub(super) fn record_leaves(&self, vals: &HashMap<NodeId, Cow<Tensor>>, t: &mut Tracker) {
        for n in &self.leaves {
            if let Some(v) = vals.get(n) {
                t.record(None, *n, v);
            }
        }
    }

    /// What step `i` stored: a loop kernel's outputs, a library step's value (views and
    /// layers read in place store nothing; the trace reads through them).
    pub(super) fn record_step(
        &self,
        i: usize,
        s: &Step,
        vals: &HashMap<NodeId, Cow<Tensor>>,
        t: &mut Tracker,
    ) {
        let stored: &[NodeId] = match s {
            Step::Loop { outputs, .. } => outputs,
            Step::Node(n) => std::slice::from_ref(n),
        };
        for n in stored {
            if let Some(v) = vals.get(n) {
                t.record(Some(i), *n, v);
            }
        }
    }

    /// The report of a run whose outputs are not all finite.
    pub(super) fn non_finite(&self, t: &Tracker) -> Option<NonFinite> {
        let trace = t.trace(&self.program.graph, |i| step_reads(&self.program, i))?;
        Some(report_program(&self.program, t, trace))
    }
}
