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
pub use device::libraries_present;
#[cfg(feature = "cuda")]
pub use exec::{prepare, prepare_with, CudaModel};

/// The kernel program the CUDA executor runs for `graph`: the CPU pipeline's lowering, with
/// `attention_grad` replaced by its decomposition first (the library has a fused forward
/// attention kernel but no fused backward one yet; the decomposition's matmuls, softmax
/// rows and reductions all run on the GPU).
pub fn lower(
    graph: &encdecc_compiler::ir::Graph,
) -> Result<encdecc_compiler::fuse::KernelProgram, String> {
    use encdecc_compiler::ir::Op;
    if graph
        .dag
        .node_weights()
        .any(|n| matches!(n.op, Op::AttentionGrad { .. }))
    {
        let mut g = graph.clone();
        encdecc_compiler::decompose::decompose_where(&mut g, |op| {
            matches!(op, Op::AttentionGrad { .. })
        })?;
        return encdecc_compiler::fuse::lower(&g);
    }
    encdecc_compiler::fuse::lower(graph)
}

/// The error of every CUDA entry point in a build without the `cuda` feature.
pub const WITHOUT_CUDA: &str =
    "this encdecc was built without the CUDA backend (feature `cuda` off)";

#[cfg(not(feature = "cuda"))]
pub fn libraries_present() -> Result<(), String> {
    Err(WITHOUT_CUDA.into())
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
    pub fn precision(&self) -> Precision {
        Precision::F32
    }
    pub fn set_carry(&mut self, _: Vec<(String, Carry)>) -> Result<(), String> {
        Err(WITHOUT_CUDA.into())
    }
}
