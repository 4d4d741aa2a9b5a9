//! A safetensors file from any bytes (`TensorFiles::from_bytes`, `check_header`), and every
//! tensor of what opens read back: an error or tensors, never a panic, within bounded time
//! and memory. The body is `encdecc_cli::fuzz_entry::safetensors` (also replayed over the
//! seeds by tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::safetensors(data));
