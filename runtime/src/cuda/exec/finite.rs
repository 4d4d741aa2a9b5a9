//! The GPU executor's side of the finite check (`crate::finite`): with `checks.finite`,
//! every value a step stores is copied back and scanned right after the step (before a
//! later step can write over its buffer), the steps are launched one by one (no CUDA
//! graph), and the walk back from a non-finite output runs on the host. Slow, and meant
//! to be: a debugging run.

use super::{CudaModel, Ptrs};
use crate::finite::{report_program, step_reads, Checked, Checks, NonFinite, Tracker};
use crate::interp::{self, Bindings};
use encdecc_compiler::fuse::Step;
use encdecc_compiler::ir::{DType, NodeId, Op};
use std::collections::HashMap;

impl CudaModel {
    /// What the following runs check (`Checks::finite`: slow, steps one by one).
    pub fn set_checks(&mut self, checks: Checks) {
        self.checks = checks;
    }

    /// `run`, with the finite check's report beside the outputs instead of as the error.
    pub fn run_checked(&self, inputs: &HashMap<String, crate::Tensor>) -> Result<Checked, String> {
        *self.tracker.borrow_mut() = self.checks.finite.then(Tracker::default);
        let outputs = self.run_unchecked(inputs);
        let tracker = self.tracker.borrow_mut().take();
        Ok(Checked {
            outputs: outputs?,
            non_finite: tracker.and_then(|t| self.non_finite(&t)),
        })
    }

    /// Whether this run scans its values (and so launches its steps one by one).
    pub(super) fn checking(&self) -> bool {
        self.tracker.borrow().is_some()
    }

    /// Before the first step: the parameters and inputs as the run found them.
    pub(super) fn check_leaves(&self, p: &Ptrs, b: &Bindings) -> Result<(), String> {
        if !self.checking() {
            return Ok(());
        }
        let g = &self.program.graph;
        let leaves: Vec<NodeId> = g
            .dag
            .node_indices()
            .filter(|&n| matches!(g.node(n).op, Op::Param { .. } | Op::Input { .. }))
            .collect();
        self.scan(None, &leaves, p, b)
    }

    /// After step `i`: what it stored (a loop kernel's outputs, a library step's value;
    /// views read in place store nothing).
    pub(super) fn check_step(
        &self,
        i: usize,
        s: &Step,
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(), String> {
        if !self.checking() {
            return Ok(());
        }
        let stored: &[NodeId] = match s {
            Step::Loop { outputs, .. } => outputs,
            Step::Node(n) => std::slice::from_ref(n),
        };
        self.scan(Some(i), stored, p, b)
    }

    /// Copies the f32 values among `nodes` that have storage to the host and records them.
    fn scan(
        &self,
        step: Option<usize>,
        nodes: &[NodeId],
        p: &Ptrs,
        b: &Bindings,
    ) -> Result<(), String> {
        let g = &self.program.graph;
        for &n in nodes {
            if g.node(n).ty.dtype != DType::F32 || p.layout.home_of(n).is_none() {
                continue;
            }
            // An input this run does not pass (kept on the GPU by `fix_inputs` or a carry
            // that has not been filled) has no address: nothing to read.
            let Ok(ptr) = p.of(n) else {
                continue;
            };
            let shape = interp::resolve(&g.node(n).ty.shape, b)?;
            // `download` waits for the stream: the step has finished.
            let t = self.download(ptr, n, shape)?;
            if let Some(tr) = self.tracker.borrow_mut().as_mut() {
                tr.record(step, n, &t);
            }
        }
        Ok(())
    }

    fn non_finite(&self, t: &Tracker) -> Option<NonFinite> {
        let trace = t.trace(&self.program.graph, |i| step_reads(&self.program, i))?;
        Some(report_program(&self.program, t, trace))
    }
}
