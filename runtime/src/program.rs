//! A graph compiled for a host backend (the CPU pipeline, or the reference interpreter on
//! its decomposition), run many times: what training and generation hold on to.

use crate::cpu::CpuModel;
use crate::forward::Backend;
use crate::interp;
use crate::tensor::Tensor;
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::Graph;
use std::collections::HashMap;

pub enum HostProgram {
    Cpu(Box<CpuModel>),
    Reference(Graph),
}

impl HostProgram {
    /// Compiles `g` for `backend`; `what` names the work in the error for other backends.
    pub fn new(g: &Graph, backend: Backend, what: &str) -> Result<HostProgram, String> {
        match backend {
            Backend::Cpu => Ok(HostProgram::Cpu(Box::new(crate::cpu::prepare(g)?))),
            Backend::Reference => {
                let mut g = g.clone();
                decompose(&mut g)?;
                Ok(HostProgram::Reference(g))
            }
            other => Err(format!(
                "{what} runs on the cpu and reference backends, not {other:?} (not built yet)"
            )),
        }
    }

    pub fn run(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, String> {
        match self {
            HostProgram::Cpu(m) => m.run(params, inputs),
            HostProgram::Reference(g) => interp::run(g, params, inputs),
        }
    }
}
