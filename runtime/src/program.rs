//! A graph compiled once for a backend (the CPU pipeline, the reference interpreter on its
//! decomposition, or the GPU), run many times: what training and generation hold on to.

use crate::cpu::CpuModel;
use crate::cuda::{CudaModel, Precision};
use crate::finite::{Checked, Checks};
use crate::forward::{Backend, REFERENCE_CHECKS};
use crate::interp;
use crate::tensor::Tensor;
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::{DType, Graph, Op};
use std::collections::HashMap;

pub enum HostProgram {
    Cpu(Box<CpuModel>),
    Reference(Graph),
    /// On the GPU; `run` copies the parameters there on every call (a train step changes
    /// them), `load_params` + `run_loaded` once for many calls.
    Cuda(Box<CudaModel>),
}

impl HostProgram {
    /// Compiles `g` for `backend` in f32.
    pub fn new(g: &Graph, backend: Backend, what: &str) -> Result<HostProgram, String> {
        HostProgram::new_with(g, backend, Precision::F32, what)
    }

    /// Compiles `g` for `backend` at `precision`: the GPU stores values so, the host
    /// backends run `g` lowered to it (`forward::host_graph`; `stored` says which params
    /// it then reads in reduced precision). `what` names the work in errors.
    pub fn new_with(
        g: &Graph,
        backend: Backend,
        precision: Precision,
        what: &str,
    ) -> Result<HostProgram, String> {
        let (g, _) = crate::forward::host_graph(g, backend, precision);
        match backend {
            Backend::Cuda => Ok(HostProgram::Cuda(Box::new(
                crate::cuda::prepare_with(&g, precision).map_err(|e| format!("{what}: {e}"))?,
            ))),
            Backend::Cpu => Ok(HostProgram::Cpu(Box::new(crate::cpu::prepare(&g)?))),
            Backend::Reference => {
                let mut g = g.into_owned();
                decompose(&mut g)?;
                Ok(HostProgram::Reference(g))
            }
        }
    }

    /// The params this program reads in a dtype other than f32, by DSL path: load them so
    /// (`weights::load_params_as`), or each run converts them.
    pub fn stored(&self) -> HashMap<String, DType> {
        let g = match self {
            HostProgram::Cpu(m) => &m.program.graph,
            HostProgram::Reference(g) => g,
            HostProgram::Cuda(_) => return HashMap::new(),
        };
        g.params()
            .into_iter()
            .filter_map(|n| match &g.node(n).op {
                Op::Param { path, .. } if g.node(n).ty.dtype != DType::F32 => {
                    Some((path.clone(), g.node(n).ty.dtype))
                }
                _ => None,
            })
            .collect()
    }

    /// What the following runs check (the reference program always checks finiteness).
    pub fn set_checks(&mut self, checks: Checks) {
        match self {
            HostProgram::Cpu(m) => m.checks = checks,
            HostProgram::Cuda(m) => m.set_checks(checks),
            HostProgram::Reference(_) => {}
        }
    }

    /// Makes `params` the values `run_loaded` uses: the GPU program copies them to the
    /// device here, once, where `run` copies them on every call (a decode step would
    /// move every weight over PCIe per token).
    pub fn load_params(&self, params: &HashMap<String, Tensor>) -> Result<(), String> {
        match self {
            HostProgram::Cuda(m) => m.set_params(params),
            HostProgram::Cpu(_) | HostProgram::Reference(_) => Ok(()),
        }
    }

    /// Inputs that stay the same over the coming `run_loaded` calls: the GPU program keeps
    /// them on the device, and they are left out of those calls' input maps. Returns
    /// `false` (nothing kept) for the CPU and reference programs: the caller passes them
    /// on every call as before.
    pub fn fix_inputs(&self, inputs: &HashMap<String, Tensor>) -> Result<bool, String> {
        match self {
            HostProgram::Cuda(m) => m.fix_inputs(inputs).map(|_| true),
            HostProgram::Cpu(_) | HostProgram::Reference(_) => Ok(false),
        }
    }

    /// Keeps state where the program runs between runs: after each run, output `out`
    /// refills the input it names (`Carry::Input`) there and is not returned; a carried
    /// input is read from the call's inputs on the first run only. The GPU program only
    /// (its `set_carry`); the others have nowhere to keep it.
    pub fn set_carry(&mut self, carry: Vec<(String, crate::cuda::Carry)>) -> Result<(), String> {
        match self {
            HostProgram::Cuda(m) => m.set_carry(carry),
            HostProgram::Cpu(_) | HostProgram::Reference(_) => {
                Err("internal: only the GPU program keeps state between runs".into())
            }
        }
    }

    /// Forgets the carried state: the next run reads it from its inputs again.
    pub fn drop_resident(&self) {
        if let HostProgram::Cuda(m) = self {
            m.drop_resident();
        }
    }

    /// The memory bandwidth of the device the program runs on, GB/s, for the GPU program
    /// (`CudaModel::copy_bandwidth_gbs`); `None` for the host programs.
    pub fn device_bandwidth_gbs(&self) -> Option<Result<f64, String>> {
        match self {
            HostProgram::Cuda(m) => Some(m.copy_bandwidth_gbs()),
            HostProgram::Cpu(_) | HostProgram::Reference(_) => None,
        }
    }

    /// Frees what `fix_inputs` kept.
    pub fn unfix_inputs(&self) {
        if let HostProgram::Cuda(m) = self {
            m.unfix_inputs();
        }
    }

    /// `run` with the parameters of the last `load_params` on the GPU; the CPU and reference
    /// programs read `params` in place, which must be the same values.
    pub fn run_loaded(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, String> {
        match self {
            HostProgram::Cuda(m) => m.run(inputs),
            _ => self.run(params, inputs),
        }
    }

    pub fn run(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, String> {
        self.run_checked(params, inputs)?.into_result()
    }

    /// `run` with the finite check's report beside the outputs instead of as the error
    /// (the trainer words a diverged loss itself).
    pub fn run_checked(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Checked, String> {
        match self {
            HostProgram::Cpu(m) => m.run_checked(params, inputs),
            HostProgram::Reference(g) => interp::run_with(g, params, inputs, REFERENCE_CHECKS),
            HostProgram::Cuda(m) => {
                m.set_params(params)?;
                m.run_checked(inputs)
            }
        }
    }
}
