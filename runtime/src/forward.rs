//! A forward run: compile a model for the inputs at hand, load its weights, execute.

use crate::cuda::Precision;
use crate::finite::Checks;
use crate::interp;
use crate::tensor::Tensor;
use crate::weights::{load_params_as, TensorFiles};
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::elab::Elaborated;
use encdecc_compiler::ir::{DType, Graph, Op};
use std::collections::HashMap;

/// Which executor runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Reference,
    Cpu,
    /// An NVIDIA GPU (`cuda/`); fails with a clear error where there is none.
    Cuda,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s {
            "reference" => Ok(Backend::Reference),
            "cpu" => Ok(Backend::Cpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(format!(
                "unknown backend `{other}` (backends: cpu, cuda, reference)"
            )),
        }
    }
}

pub struct RunResult {
    pub outputs: HashMap<String, Tensor>,
    /// Checkpoint tensors no parameter used.
    pub unexpected: Vec<String>,
}

/// Runs an elaborated graph with weights from `files`.
pub fn run_forward(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
) -> Result<RunResult, String> {
    run_forward_with(model, files, inputs, backend, Precision::F32)
}

/// `run_forward` at `precision`: on the GPU, the CUDA backend's storage (bf16: weights
/// rounded once at upload, outputs returned as f32); on the host, the graph lowered by
/// `encdecc_compiler::precision` (bf16 weights and matmul operands) and its params loaded
/// in the dtypes it stores.
pub fn run_forward_with(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
    precision: Precision,
) -> Result<RunResult, String> {
    let o = ForwardOptions {
        backend,
        precision,
        checks: Checks::default(),
    };
    run_forward_opts(model, files, inputs, &o)
}

/// How a forward run goes.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    pub backend: Backend,
    /// The CUDA backend's storage, or the host graph's lowering.
    pub precision: Precision,
    /// What the run checks (`finite`: a non-finite output is an error naming the op that
    /// first produced one; the reference backend always checks).
    pub checks: Checks,
}

/// `run_forward` as `o` says.
pub fn run_forward_opts(
    model: &Elaborated,
    files: &TensorFiles,
    inputs: &HashMap<String, Tensor>,
    o: &ForwardOptions,
) -> Result<RunResult, String> {
    let (backend, precision) = (o.backend, o.precision);
    check_labels(&model.graph, inputs)?;
    if backend == Backend::Cuda {
        // Before the weights are read: a machine without a GPU fails at once.
        crate::cuda::libraries_present()?;
    }
    let (graph, stored) = host_graph(&model.graph, backend, precision);
    let (params, unexpected) = load_params_as(files, &model.params, &stored)?;
    let outputs = match backend {
        Backend::Reference => {
            let mut g = graph.into_owned();
            decompose(&mut g)?;
            interp::run_with(&g, &params, inputs, REFERENCE_CHECKS)?.into_result()?
        }
        Backend::Cpu => {
            let mut m = crate::cpu::prepare(&graph)?;
            m.checks = o.checks;
            m.run(&params, inputs)?
        }
        Backend::Cuda => {
            let mut m = crate::cuda::prepare_with(&model.graph, precision)?;
            m.set_checks(o.checks);
            m.upload_params(&params)?;
            m.run(inputs)?
        }
    };
    Ok(RunResult {
        outputs,
        unexpected,
    })
}

/// The reference backend's checks, always on: it is slow anyway, and the oracle should say
/// where a NaN comes from. (`interp::run` itself checks nothing: tests feed it NaN.)
pub const REFERENCE_CHECKS: Checks = Checks { finite: true };

/// The graph a host backend runs at `precision` (lowered, when not f32), and the dtype of
/// each param it stores in reduced precision (by DSL path). The GPU keeps the f32 graph:
/// its storage precision is its own.
pub fn host_graph(
    g: &Graph,
    backend: Backend,
    precision: Precision,
) -> (std::borrow::Cow<'_, Graph>, HashMap<String, DType>) {
    if backend == Backend::Cuda || precision == Precision::F32 {
        return (std::borrow::Cow::Borrowed(g), HashMap::new());
    }
    let mut g = g.clone();
    let lowered = encdecc_compiler::precision::lower(&mut g, precision);
    (
        std::borrow::Cow::Owned(g),
        lowered.stored.into_iter().collect(),
    )
}

/// Training in bf16 is the CUDA backend's (bf16 storage, f32 master weights); the host
/// backends run bf16 forward passes and generation only.
pub fn check_train_precision(backend: Backend, precision: Precision) -> Result<(), String> {
    if precision == Precision::Int8 {
        return Err(
            "dtype int8 is for inference (weight-only int8 has no gradients); train in f32 or \
             bf16 and quantise the result (`encdecc quantize`)"
                .into(),
        );
    }
    if precision == Precision::Bf16 && backend != Backend::Cuda {
        return Err(format!(
            "dtype bf16 trains on the cuda backend only; the {} backend trains in f32 \
             (it runs bf16 forward passes and generation)",
            match backend {
                Backend::Cpu => "cpu",
                _ => "reference",
            }
        ));
    }
    Ok(())
}

/// Labels must be class ids or the ignore index: the decomposed cross-entropy would
/// otherwise score an out-of-range label as if its logit were absent.
pub(crate) fn check_labels(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<(), String> {
    for n in g.dag.node_indices() {
        let Op::CrossEntropy { ignore_index } = g.node(n).op else {
            continue;
        };
        let ops = g.operands(n);
        let vocab = g
            .node(ops[0])
            .ty
            .shape
            .0
            .last()
            .and_then(|d| d.known())
            .unwrap_or(u64::MAX) as i64;
        // The inputs the labels are computed from (directly, or through a shift).
        let mut stack = vec![ops[1]];
        let mut seen = std::collections::HashSet::new();
        while let Some(m) = stack.pop() {
            // A DAG: without this, shared ancestors would be walked once per path.
            if !seen.insert(m) {
                continue;
            }
            if let Op::Input { name } = &g.node(m).op {
                let Some(ids) = inputs.get(name).and_then(|t| t.as_i64()) else {
                    continue;
                };
                if let Some(bad) = ids
                    .iter()
                    .find(|&&y| y != ignore_index && !(0..vocab).contains(&y))
                {
                    return Err(format!(
                        "input `{name}` holds label {bad}, outside the vocabulary 0..={} (use {ignore_index} to ignore a position)",
                        vocab - 1
                    ));
                }
            }
            stack.extend(g.operands(m));
        }
    }
    Ok(())
}
