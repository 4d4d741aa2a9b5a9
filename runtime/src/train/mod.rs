//! Training: a compiled train step per phase (forward, loss, backward, clipping, AdamW in
//! one program), the optimizer state, evaluation and checkpoints with exact resume.

pub mod checkpoint;
pub mod distill;
pub mod init;
pub mod schedule;

use crate::cuda::Precision;
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
    pub state: TrainState,
    /// Train-step programs by phase index and batch shape, compiled on first use.
    steps: HashMap<(usize, Shapes), (HostProgram, Vec<String>)>,
    eval: HashMap<Shapes, HostProgram>,
    /// The forward graph cut down to the evaluation loss, before specialisation.
    eval_graph: Option<Graph>,
    /// Storage of the compiled programs' values (bf16: the cuda backend's mixed precision,
    /// with f32 master weights and AdamW state).
    precision: Precision,
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
            steps: HashMap::new(),
            eval: HashMap::new(),
            eval_graph: None,
            precision: Precision::F32,
        })
    }

    /// Compute in `precision` from the next step on (bf16: cuda only).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), String> {
        crate::forward::check_precision(self.setup.backend, precision)?;
        if precision != self.precision {
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
        self.steps.insert(
            key,
            (
                HostProgram::new_with(&g, self.setup.backend, self.precision, "training")?,
                paths,
            ),
        );
        Ok(())
    }

    /// One optimizer step on `batch`.
    pub fn step(&mut self, batch: &HashMap<String, Tensor>) -> Result<StepMetrics, String> {
        let i = self.phase_index();
        let shapes = shapes_of(&self.setup.graph, batch)?;
        self.compile_phase(i, &shapes)?;
        let t = self.state.step + 1;
        let lr = self.setup.schedule.lr(t);
        let (program, paths) = &self.steps[&(i, shapes)];
        let mut inputs = batch.clone();
        for (name, v) in step_scalars(&self.setup.opt, t, lr) {
            inputs.insert(name.into(), Tensor::f32(vec![1], vec![v]));
        }
        for path in paths {
            let zeros = || {
                let p = &self.state.params[path];
                Tensor::f32(p.shape.clone(), vec![0.0; p.numel()])
            };
            let m = self.state.m.get(path).cloned().unwrap_or_else(zeros);
            let v = self.state.v.get(path).cloned().unwrap_or_else(zeros);
            inputs.insert(state_m(path), m);
            inputs.insert(state_v(path), v);
        }
        let mut out = program.run(&self.state.params, &inputs)?;
        let take = |out: &mut HashMap<String, Tensor>, name: &str| {
            out.remove(name)
                .ok_or_else(|| format!("internal: the train step computed no `{name}`"))
        };
        let loss = take(&mut out, &self.setup.loss)?.to_f64()[0];
        let grad_norm = take(&mut out, GRAD_NORM)?.to_f64()[0];
        if !loss.is_finite() {
            return Err(format!(
                "step {t}: the loss is {loss} (diverged; lower the learning rate?)"
            ));
        }
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

    /// The evaluation loss on `batch`, updating nothing.
    pub fn eval_loss(&mut self, batch: &HashMap<String, Tensor>) -> Result<f64, String> {
        if self.eval_graph.is_none() {
            self.eval_graph = Some(eval_graph(&self.setup)?);
        }
        let g = self.eval_graph.as_ref().expect("built above");
        let shapes = shapes_of(g, batch)?;
        if !self.eval.contains_key(&shapes) {
            let g = specialize(g, &shapes.iter().cloned().collect())?;
            let p = HostProgram::new_with(&g, self.setup.backend, self.precision, "evaluation")?;
            self.eval.insert(shapes.clone(), p);
        }
        let out = self.eval[&shapes].run(&self.state.params, batch)?;
        Ok(out[&self.setup.eval_loss].to_f64()[0])
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
