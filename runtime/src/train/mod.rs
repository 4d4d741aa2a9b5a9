//! Training: a compiled train step per phase (forward, loss, backward, clipping, AdamW in
//! one program), the optimizer state, evaluation and checkpoints with exact resume.

pub mod checkpoint;
pub mod distill;
pub mod init;
pub mod schedule;

use crate::cuda::{Carry, Precision};
use crate::finite::{Checks, NonFinite};
use crate::forward::Backend;
use crate::interp;
use crate::program::HostProgram;
use crate::tensor::Tensor;
use encdecc_compiler::elab::ParamInfo;
use encdecc_compiler::ir::specialize::specialize;
use encdecc_compiler::ir::Graph;
use encdecc_compiler::optim::{
    new_m, new_param, new_v, state_m, state_v, step_scalars, train_step, AdamW, Trainable,
    GRAD_NORM,
};
use schedule::Schedule;
use std::collections::HashMap;

/// A phase of training: which parameters (checkpoint names) train, for how many steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPhase {
    pub name: String,
    /// `None`: until the end of training.
    pub steps: Option<u64>,
    pub trainable: Vec<String>,
}

/// Which parameters weight decay applies to: matrices (embeddings and projections), not
/// norm scales or biases — the usual parameter groups.
pub fn decays(p: &ParamInfo) -> bool {
    p.shape.len() >= 2
}

/// Everything a run needs besides data.
pub struct TrainSetup {
    /// The forward graph with the objective's loss as an output.
    pub graph: Graph,
    /// The output the steps minimise.
    pub loss: String,
    /// The output evaluation reports (the label loss, also when distilling).
    pub eval_loss: String,
    pub params: Vec<ParamInfo>,
    pub opt: AdamW,
    pub schedule: Schedule,
    pub phases: Vec<TrainPhase>,
    pub backend: Backend,
}

impl TrainSetup {
    /// Every parameter trained in one phase, minimising the model's `loss`.
    pub fn everything(
        model: &encdecc_compiler::elab::Elaborated,
        opt: AdamW,
        schedule: Schedule,
        backend: Backend,
    ) -> TrainSetup {
        TrainSetup {
            graph: model.graph.clone(),
            loss: "loss".into(),
            eval_loss: "loss".into(),
            params: model.params.clone(),
            opt,
            schedule,
            phases: vec![TrainPhase {
                name: "all".into(),
                steps: None,
                trainable: model.params.iter().map(|p| p.ckpt.clone()).collect(),
            }],
            backend,
        }
    }
}

/// The mutable state of a run: what a checkpoint holds (the data pipeline's state aside).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// By DSL path.
    pub params: HashMap<String, Tensor>,
    /// AdamW moments by DSL path (absent until the parameter first trains).
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct Trainer {
    pub setup: TrainSetup,
    /// Weights, moments and step; read through `fetch_state()`, which first copies them
    /// from the GPU when a cuda step program holds newer ones.
    state: TrainState,
    /// On cuda: the step program (phase, shapes) whose GPU buffers hold the newest weights
    /// and moments (`CudaModel::set_carry`), and whether `state` lags behind them. The state
    /// stays on the GPU between steps; it moves to the host for evaluation, checkpoints and
    /// a change of program (another phase or batch shape), and back from there.
    on_device: Option<(usize, Shapes)>,
    host_stale: bool,
    /// Train-step programs by phase index and batch shape, compiled on first use.
    steps: HashMap<(usize, Shapes), (HostProgram, Vec<String>)>,
    eval: HashMap<Shapes, HostProgram>,
    /// The forward graph cut down to the evaluation loss, before specialisation.
    eval_graph: Option<Graph>,
    /// Storage of the compiled programs' values (bf16: the cuda backend's mixed precision,
    /// with f32 master weights and AdamW state).
    precision: Precision,
    /// What the programs check (`Checks::finite`: a step whose outputs are not finite
    /// names the op that first produced a NaN or infinity).
    checks: Checks,
}

/// The sizes of a batch's symbolic dimensions, sorted: what a program is specialised on.
type Shapes = Vec<(String, usize)>;

fn shapes_of(g: &Graph, batch: &HashMap<String, Tensor>) -> Result<Shapes, String> {
    let mut dims: Shapes = interp::bind_inputs(g, batch)?.into_iter().collect();
    dims.sort();
    Ok(dims)
}

impl Trainer {
    pub fn new(setup: TrainSetup, state: TrainState) -> Result<Trainer, String> {
        if setup.phases.is_empty() {
            return Err("no training phases".into());
        }
        for p in &setup.params {
            if !state.params.contains_key(&p.path) {
                return Err(format!("no value for parameter `{}`", p.ckpt));
            }
        }
        Ok(Trainer {
            setup,
            state,
            on_device: None,
            host_stale: false,
            steps: HashMap::new(),
            eval: HashMap::new(),
            eval_graph: None,
            precision: Precision::F32,
            checks: Checks::default(),
        })
    }

    /// What the step and evaluation programs check from now on (the reference backend
    /// always checks finiteness).
    pub fn set_checks(&mut self, checks: Checks) {
        self.checks = checks;
        for (p, _) in self.steps.values_mut() {
            p.set_checks(checks);
        }
        for p in self.eval.values_mut() {
            p.set_checks(checks);
        }
    }

    /// Compute in `precision` from the next step on (bf16: cuda only, `check_train_precision`).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), String> {
        crate::forward::check_train_precision(self.setup.backend, precision)?;
        if precision != self.precision {
            self.sync_state()?;
            self.on_device = None;
            self.precision = precision;
            self.steps.clear();
            self.eval.clear();
        }
        Ok(())
    }

    /// The phase the next step belongs to.
    pub fn phase_index(&self) -> usize {
        let mut start = 0u64;
        for (i, p) in self.setup.phases.iter().enumerate() {
            match p.steps {
                Some(n) if self.state.step >= start + n => start += n,
                _ => return i,
            }
        }
        self.setup.phases.len() - 1
    }

    pub fn phase(&self) -> &TrainPhase {
        &self.setup.phases[self.phase_index()]
    }

    fn compile_phase(&mut self, i: usize, shapes: &Shapes) -> Result<(), String> {
        let key = (i, shapes.clone());
        if self.steps.contains_key(&key) {
            return Ok(());
        }
        let phase = &self.setup.phases[i];
        let trainable: Vec<Trainable> = self
            .setup
            .params
            .iter()
            .filter(|p| phase.trainable.contains(&p.ckpt))
            .map(|p| Trainable {
                path: p.path.clone(),
                decay: decays(p),
            })
            .collect();
        if trainable.is_empty() {
            return Err(format!(
                "phase `{}` trains no parameter of the model",
                phase.name
            ));
        }
        // Specialised on the batch shape: weight gradients then fold the batch into one GEMM.
        let forward = specialize(&self.setup.graph, &shapes.iter().cloned().collect())?;
        let g = train_step(&forward, &self.setup.loss, &trainable, &self.setup.opt)?;
        let paths = trainable.into_iter().map(|t| t.path).collect();
        let mut program =
            HostProgram::new_with(&g, self.setup.backend, self.precision, "training")?;
        program.set_checks(self.checks);
        self.steps.insert(key, (program, paths));
        Ok(())
    }

    /// The weights, moments and step count, fetched from the GPU first if a step left
    /// newer ones there.
    pub fn fetch_state(&mut self) -> Result<&TrainState, String> {
        self.sync_state()?;
        Ok(&self.state)
    }

    /// The weights, moments and step count as the host has them: an error while newer
    /// ones are on the GPU (`fetch_state` brings them over).
    pub fn state(&self) -> Result<&TrainState, String> {
        if self.host_stale {
            return Err("the newest weights and moments are on the GPU: fetch_state first".into());
        }
        Ok(&self.state)
    }

    /// Replaces the weights, moments and step (a resumed run); a GPU copy of the old ones
    /// is forgotten.
    pub fn set_state(&mut self, state: TrainState) {
        self.state = state;
        self.on_device = None;
        self.host_stale = false;
    }

    /// Copies the GPU's weights and moments into `state` if they are newer.
    fn sync_state(&mut self) -> Result<(), String> {
        let Some(key) = self.on_device.as_ref().filter(|_| self.host_stale) else {
            return Ok(());
        };
        let Some((HostProgram::Cuda(m), paths)) = self.steps.get(key) else {
            return Err("internal: the step program holding the training state is gone".into());
        };
        let moment = |name: &str| {
            paths.iter().find_map(|p| {
                if state_m(p) == name {
                    Some((p.clone(), true))
                } else if state_v(p) == name {
                    Some((p.clone(), false))
                } else {
                    None
                }
            })
        };
        for (to, t) in m.carried_state()? {
            match to {
                Carry::Param(path) => {
                    self.state.params.insert(path, t);
                }
                Carry::Input(name) => match moment(&name) {
                    Some((path, true)) => {
                        self.state.m.insert(path, t);
                    }
                    Some((path, false)) => {
                        self.state.v.insert(path, t);
                    }
                    None => return Err(format!("internal: carried input `{name}` is no moment")),
                },
            }
        }
        self.host_stale = false;
        Ok(())
    }

    /// One optimizer step on `batch`.
    pub fn step(&mut self, batch: &HashMap<String, Tensor>) -> Result<StepMetrics, String> {
        let i = self.phase_index();
        let shapes = shapes_of(&self.setup.graph, batch)?;
        self.compile_phase(i, &shapes)?;
        let t = self.state.step + 1;
        let lr = self.setup.schedule.lr(t);
        let key = (i, shapes);
        if matches!(self.steps[&key].0, HostProgram::Cuda(_)) {
            return self.step_on_device(key, batch, t, lr);
        }
        let (program, paths) = &self.steps[&key];
        let mut inputs = batch.clone();
        for (name, v) in step_scalars(&self.setup.opt, t, lr) {
            inputs.insert(name.into(), Tensor::f32(vec![1], vec![v]));
        }
        insert_moments(&self.state, paths, &mut inputs);
        let checked = program.run_checked(&self.state.params, &inputs)?;
        let (mut out, non_finite) = (checked.outputs, checked.non_finite);
        let take = |out: &mut HashMap<String, Tensor>, name: &str| {
            out.remove(name)
                .ok_or_else(|| format!("internal: the train step computed no `{name}`"))
        };
        let loss = take(&mut out, &self.setup.loss)?.to_f64()[0];
        let grad_norm = take(&mut out, GRAD_NORM)?.to_f64()[0];
        not_finite(t, loss, non_finite)?;
        for path in paths.clone() {
            let p = take(&mut out, &new_param(&path))?;
            let m = take(&mut out, &new_m(&path))?;
            let v = take(&mut out, &new_v(&path))?;
            self.state.params.insert(path.clone(), p);
            self.state.m.insert(path.clone(), m);
            self.state.v.insert(path, v);
        }
        self.state.step = t;
        Ok(StepMetrics {
            step: t,
            loss,
            grad_norm,
            lr,
        })
    }

    /// `step` on cuda: the weights and moments stay in the step program's GPU buffers (the
    /// AdamW kernel updates them in place); they are uploaded when this program takes over
    /// the state, and only the loss and the gradient norm come back.
    fn step_on_device(
        &mut self,
        key: (usize, Shapes),
        batch: &HashMap<String, Tensor>,
        t: u64,
        lr: f64,
    ) -> Result<StepMetrics, String> {
        let mut inputs = batch.clone();
        for (name, v) in step_scalars(&self.setup.opt, t, lr) {
            inputs.insert(name.into(), Tensor::f32(vec![1], vec![v]));
        }
        let takeover = self.on_device.as_ref() != Some(&key);
        if takeover {
            self.sync_state()?;
            // The program handing the state over frees its copy of the moments.
            if let Some((HostProgram::Cuda(old), _)) =
                self.on_device.take().and_then(|k| self.steps.get(&k))
            {
                old.drop_resident();
            }
            let (program, paths) = self.steps.get_mut(&key).expect("compiled");
            let HostProgram::Cuda(m) = program else {
                unreachable!("checked by `step`")
            };
            let mut carry = vec![];
            for path in paths.iter() {
                carry.push((new_param(path), Carry::Param(path.clone())));
                carry.push((new_m(path), Carry::Input(state_m(path))));
                carry.push((new_v(path), Carry::Input(state_v(path))));
            }
            insert_moments(&self.state, paths, &mut inputs);
            m.set_params(&self.state.params)?;
            m.set_carry(carry)?;
            m.drop_resident();
        }
        let (program, _) = &self.steps[&key];
        let HostProgram::Cuda(m) = program else {
            unreachable!("checked by `step`")
        };
        // A run that fails leaves the state where it was: input errors come before any
        // update (`CudaModel::run` checks them before the first in-place step), and a step
        // with a non-finite loss writes the old values back (`train_step`). A program that
        // has not run yet has not taken the state over.
        let checked = m.run_checked(&inputs)?;
        let (out, non_finite) = (checked.outputs, checked.non_finite);
        self.on_device = Some(key);
        let scalar = |name: &str| {
            out.get(name)
                .map(|x| x.to_f64()[0])
                .ok_or_else(|| format!("internal: the train step computed no `{name}`"))
        };
        let loss = scalar(&self.setup.loss)?;
        let grad_norm = scalar(GRAD_NORM)?;
        not_finite(t, loss, non_finite)?;
        self.host_stale = true;
        self.state.step = t;
        Ok(StepMetrics {
            step: t,
            loss,
            grad_norm,
            lr,
        })
    }

    /// The evaluation loss on `batch`, updating nothing.
    pub fn eval_loss(&mut self, batch: &HashMap<String, Tensor>) -> Result<f64, String> {
        self.sync_state()?;
        if self.eval_graph.is_none() {
            self.eval_graph = Some(eval_graph(&self.setup)?);
        }
        let g = self.eval_graph.as_ref().expect("built above");
        let shapes = shapes_of(g, batch)?;
        if !self.eval.contains_key(&shapes) {
            let g = specialize(g, &shapes.iter().cloned().collect())?;
            let mut p =
                HostProgram::new_with(&g, self.setup.backend, self.precision, "evaluation")?;
            p.set_checks(self.checks);
            self.eval.insert(shapes.clone(), p);
        }
        let out = self.eval[&shapes].run(&self.state.params, batch)?;
        Ok(out[&self.setup.eval_loss].to_f64()[0])
    }
}

/// A step's failure when its loss or (checking) another output is not finite: a diverged
/// loss is said as such, with the op that first produced a non-finite value where the
/// check found it. (The step's guard kept the old weights and moments: `train_step`.)
fn not_finite(t: u64, loss: f64, found: Option<NonFinite>) -> Result<(), String> {
    match found {
        _ if !loss.is_finite() => Err(format!(
            "step {t}: the loss is {loss} (diverged; lower the learning rate?){}",
            found.map(|r| format!("; {r}")).unwrap_or_default()
        )),
        Some(r) => Err(format!("step {t}: {r}")),
        None => Ok(()),
    }
}

/// The AdamW moments of `paths` as step inputs (zeros before the first step).
fn insert_moments(state: &TrainState, paths: &[String], inputs: &mut HashMap<String, Tensor>) {
    for path in paths {
        let zeros = || {
            let p = &state.params[path];
            Tensor::f32(p.shape.clone(), vec![0.0; p.numel()])
        };
        let m = state.m.get(path).cloned().unwrap_or_else(zeros);
        let v = state.v.get(path).cloned().unwrap_or_else(zeros);
        inputs.insert(state_m(path), m);
        inputs.insert(state_v(path), v);
    }
}

/// The forward graph with only the evaluation loss as output, and without the inputs only
/// the training loss reads (a teacher's probabilities), so held-out batches need none.
fn eval_graph(setup: &TrainSetup) -> Result<Graph, String> {
    let loss = &setup.eval_loss;
    let mut g = setup.graph.clone();
    if g.output(loss).is_none() {
        return Err(format!("the model computes no `{loss}` to evaluate"));
    }
    g.outputs.retain(|(n, _)| n == loss);
    g.remove_dead();
    let unused: Vec<_> = g
        .inputs()
        .into_iter()
        .filter(|&n| g.users(n).is_empty())
        .collect();
    for n in unused {
        g.dag.remove_node(n);
    }
    Ok(g)
}
