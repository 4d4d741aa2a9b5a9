//! The runtime: host tensors, weight I/O (safetensors, HF names), the reference
//! interpreter and runs. The only crate that reads tensor files.

pub mod adapt;
pub mod atomic_file;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod finite;
pub mod forward;
pub mod generate;
pub mod grad;
pub mod interp;
pub mod program;
pub mod rng;
pub mod tensor;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use tensor::{Data, Tensor};
