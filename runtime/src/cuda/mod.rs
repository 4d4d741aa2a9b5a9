//! The CUDA backend: the CPU pipeline's kernel program (`fuse::lower`) run on an NVIDIA
//! GPU. Loop kernels and the library kernels are CUDA C from `encdecc_codegen::cuda`,
//! compiled by NVRTC when a model is prepared (for the compute capability the device
//! reports) and cached on disk (`cache.rs`); matmuls go to cuBLAS (`gemm.rs`); values
//! live in one arena per run (`plan.rs`); one stream.
//!
//! Everything that decides what runs — launch configurations, argument lists, memory
//! offsets, cuBLAS parameters, copy descriptors — is plain Rust tested without a GPU; only
//! `device.rs` and `exec.rs` talk to CUDA, and only with the `cuda` feature (cudarc with
//! dynamic loading, so a build needs no CUDA toolkit). Without a GPU, `prepare` fails with
//! a message saying so.

pub mod args;
pub mod cache;
pub mod gemm;
pub mod graphs;
pub mod ids;
pub mod launch;
pub mod movement;
pub mod plan;
pub mod storage;

pub use storage::{Carry, Precision};

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod exec;

#[cfg(feature = "cuda")]
pub use device::{libraries_present, nvrtc_compile};
#[cfg(feature = "cuda")]
pub use exec::{prepare, prepare_with, CudaModel};

/// How the CUDA backend computes `attention_grad` (`ENCDECC_CUDA_ATTENTION_GRAD`:
/// `fused`, `decomposed` or `auto`, the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionGrad {
    /// The library's backward kernels (`enc_attention_bwd_*`): the probabilities are
    /// recomputed from q·k, no score matrix is stored.
    Fused,
    /// Decomposed into the matmuls, softmax rows and reductions of its definition, which
    /// run as cuBLAS calls and loop kernels.
    Decomposed,
    /// Fused when some attention's score matrix (batch × query heads × Tq × Tk) is known to
    /// have `FUSED_FROM` elements or more: the decomposition stores several f32 tensors of
    /// that size. Decomposed otherwise, sizes unknown until run time included: that is the
    /// path the H200 measurements in BENCHMARKS.md ran (the fused kernels are checked in
    /// the emulator and by gpu-check, not yet timed against it).
    Auto,
}

/// Score-matrix elements from which `Auto` fuses: 16 Mi, 64 MiB per f32 copy.
pub const FUSED_FROM: u64 = 1 << 24;

impl AttentionGrad {
    pub fn from_env() -> Result<AttentionGrad, String> {
        AttentionGrad::parse(
            std::env::var("ENCDECC_CUDA_ATTENTION_GRAD")
                .as_deref()
                .unwrap_or(""),
        )
    }

    /// The setting's value (empty: `auto`).
    pub fn parse(value: &str) -> Result<AttentionGrad, String> {
        match value {
            "" | "auto" => Ok(AttentionGrad::Auto),
            "fused" => Ok(AttentionGrad::Fused),
            "decomposed" => Ok(AttentionGrad::Decomposed),
            other => Err(format!(
                "ENCDECC_CUDA_ATTENTION_GRAD must be fused, decomposed or auto, not `{other}`"
            )),
        }
    }

    /// Whether `graph`'s attention gradients run fused.
    pub fn fuses(self, graph: &encdecc_compiler::ir::Graph) -> bool {
        use encdecc_compiler::ir::Op;
        match self {
            AttentionGrad::Fused => true,
            AttentionGrad::Decomposed => false,
            AttentionGrad::Auto => graph.dag.node_indices().any(|n| {
                if !matches!(graph.node(n).op, Op::AttentionGrad { .. }) {
                    return false;
                }
                let ops = graph.operands(n);
                let (q, k) = (
                    &graph.node(ops[0]).ty.shape.0,
                    &graph.node(ops[1]).ty.shape.0,
                );
                let dims = [q.first(), q.get(1), q.get(2), k.get(2)];
                let known: Option<Vec<u64>> =
                    dims.iter().map(|d| d.and_then(|d| d.known())).collect();
                known.is_some_and(|v| v.iter().product::<u64>() >= FUSED_FROM)
            }),
        }
    }
}

/// The kernel program the CUDA executor runs for `graph`: the CPU pipeline's lowering,
/// with `attention_grad` decomposed first unless `how` fuses it (the decomposition's
/// matmuls, softmax rows and reductions all run on the GPU too).
pub fn lower(
    graph: &encdecc_compiler::ir::Graph,
    how: AttentionGrad,
) -> Result<encdecc_compiler::fuse::KernelProgram, String> {
    use encdecc_compiler::ir::Op;
    let has = graph
        .dag
        .node_weights()
        .any(|n| matches!(n.op, Op::AttentionGrad { .. }));
    if has && !how.fuses(graph) {
        let mut g = graph.clone();
        encdecc_compiler::decompose::decompose_where(&mut g, |op| {
            matches!(op, Op::AttentionGrad { .. })
        })?;
        return encdecc_compiler::fuse::lower(&g);
    }
    encdecc_compiler::fuse::lower(graph)
}

/// Whether the executor computes node step `op` on the host (`exec.rs`: the interpreter
/// on downloaded operands, then an upload): every op without a device kernel of its own,
/// which fusion leaves only to rank-0 steps. Such a step waits for the GPU in mid-run, so a
/// run with one cannot be replayed as a CUDA graph (`graphs.rs`).
pub fn host_step(op: &encdecc_compiler::ir::Op) -> bool {
    use encdecc_compiler::ir::Op;
    !matches!(
        op,
        Op::Reshape
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Expand
            | Op::Concat { .. }
            | Op::Const { .. }
            | Op::Shift { .. }
            | Op::Gather
            | Op::Reduce { .. }
            | Op::ScatterAdd
            | Op::MatMul
            | Op::Attention(_)
            | Op::AttentionGrad { .. }
    )
}

/// The node steps of `program` the executor computes on the host (`host_step`), in order.
/// `ENCDECC_CUDA_GRAPHS=auto` replays a program's runs as CUDA graphs only without any.
pub fn host_steps(
    program: &encdecc_compiler::fuse::KernelProgram,
) -> Vec<encdecc_compiler::ir::NodeId> {
    use encdecc_compiler::fuse::Step;
    program
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Node(n) if host_step(&program.graph.node(*n).op) => Some(*n),
            _ => None,
        })
        .collect()
}

/// The error of every CUDA entry point in a build without the `cuda` feature.
pub const WITHOUT_CUDA: &str =
    "this encdecc was built without the CUDA backend (feature `cuda` off)";

#[cfg(not(feature = "cuda"))]
pub fn libraries_present() -> Result<(), String> {
    Err(WITHOUT_CUDA.into())
}

/// Without the `cuda` feature there is no NVRTC to try.
#[cfg(not(feature = "cuda"))]
pub fn nvrtc_compile(_text: &str, _cc: (i32, i32)) -> Result<Option<String>, String> {
    Ok(None)
}

/// Stands in for the GPU model in builds without CUDA: `prepare` never returns one.
#[cfg(not(feature = "cuda"))]
pub struct CudaModel {
    pub program: encdecc_compiler::fuse::KernelProgram,
}

#[cfg(not(feature = "cuda"))]
pub fn prepare(_graph: &encdecc_compiler::ir::Graph) -> Result<CudaModel, String> {
    Err(WITHOUT_CUDA.into())
}

#[cfg(not(feature = "cuda"))]
pub fn prepare_with(
    _graph: &encdecc_compiler::ir::Graph,
    _precision: Precision,
) -> Result<CudaModel, String> {
    Err(WITHOUT_CUDA.into())
}

#[cfg(not(feature = "cuda"))]
impl CudaModel {
    pub fn upload_params(
        &mut self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn set_params(
        &self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn run(
        &self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<std::collections::HashMap<String, crate::Tensor>, String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn fix_inputs(
        &self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn unfix_inputs(&self) {}
    pub fn run_on_device(
        &self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn carried_state(&self) -> Result<Vec<(Carry, crate::Tensor)>, String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn drop_resident(&self) {}
    pub fn plan(&self, _: &crate::interp::Bindings) -> Result<plan::Layout, String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn gemm_peak_gflops(&self) -> Result<f64, String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn copy_bandwidth_gbs(&self) -> Result<f64, String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn precision(&self) -> Precision {
        Precision::F32
    }
    pub fn set_carry(&mut self, _: Vec<(String, Carry)>) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
    pub fn set_checks(&mut self, _: crate::finite::Checks) {}
    pub fn run_checked(
        &self,
        _: &std::collections::HashMap<String, crate::Tensor>,
    ) -> Result<crate::finite::Checked, String> {
        Err(WITHOUT_CUDA.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encdecc_compiler::ir::*;

    /// A graph with one attention gradient over q `[b, 8, t, 64]` and k `[b, 4, 2t, 64]`.
    fn grad_graph(b: Dim, t: u64) -> Graph {
        let mut g = Graph::new("g");
        let ty = |s: Vec<Dim>| TensorType {
            dtype: DType::F32,
            shape: Shape(s),
        };
        let k = Dim::Known;
        let shapes = [
            vec![b.clone(), k(8), k(t), k(64)],
            vec![b.clone(), k(4), k(2 * t), k(64)],
            vec![b.clone(), k(4), k(2 * t), k(64)],
            vec![b, k(8), k(t), k(64)],
        ];
        let ins: Vec<NodeId> = ["q", "k", "v", "dout"]
            .iter()
            .zip(shapes)
            .map(|(n, s)| {
                g.add(
                    Op::Input {
                        name: n.to_string(),
                    },
                    &[],
                    Some(ty(s)),
                )
                .unwrap()
            })
            .collect();
        let attrs = AttentionAttrs {
            mode: AttnMode::Bidirectional,
            window: None,
            window_rule: WindowRule::Inclusive,
            softcap: None,
            scale: F64(0.125),
        };
        let n = g
            .add(
                Op::AttentionGrad {
                    attrs,
                    wrt: AttnOperand::Q,
                },
                &ins,
                None,
            )
            .unwrap();
        g.outputs.push(("dq".into(), n));
        g
    }

    #[test]
    fn host_steps_are_those_without_a_device_kernel() {
        assert!(host_step(&Op::Binary(BinaryOp::Add)));
        assert!(host_step(&Op::Where));
        assert!(!host_step(&Op::MatMul));
        assert!(!host_step(&Op::Gather));
        assert!(!host_step(&Op::Reshape));
    }

    #[test]
    fn attention_grad_setting() {
        assert_eq!(AttentionGrad::parse(""), Ok(AttentionGrad::Auto));
        assert_eq!(AttentionGrad::parse("fused"), Ok(AttentionGrad::Fused));
        assert_eq!(
            AttentionGrad::parse("decomposed"),
            Ok(AttentionGrad::Decomposed)
        );
        assert!(AttentionGrad::parse("flash")
            .unwrap_err()
            .contains("`flash`"));
        // Auto: 2 × 8 × 256 × 512 scores stay decomposed, and so do unknown sizes (an
        // unspecialised gradient graph); 2 × 8 × 1024 × 2048 fuse.
        let small = grad_graph(Dim::Known(2), 256);
        let large = grad_graph(Dim::Known(2), 1024);
        let symbolic = grad_graph(Dim::Sym("B".into()), 256);
        assert!(!AttentionGrad::Auto.fuses(&small));
        assert!(AttentionGrad::Auto.fuses(&large));
        assert!(!AttentionGrad::Auto.fuses(&symbolic));
        assert!(AttentionGrad::Fused.fuses(&small));
        assert!(!AttentionGrad::Decomposed.fuses(&large));
        let has = |p: &encdecc_compiler::fuse::KernelProgram| {
            p.graph
                .dag
                .node_weights()
                .any(|n| matches!(n.op, Op::AttentionGrad { .. }))
        };
        assert!(!has(&lower(&small, AttentionGrad::Auto).unwrap()));
        assert!(has(&lower(&large, AttentionGrad::Auto).unwrap()));
    }
}
