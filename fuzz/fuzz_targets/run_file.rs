//! A run file of `encdecc train` on any text, and then what the trainer does with its data
//! section before the model is involved: the byte tokenizer it names, the corpus split, the
//! objective's batchers over a small bundled text, two batches, the held-out pass's first
//! batch, and a resume from the saved batcher state. An error or batches, never a panic,
//! within bounded time and memory.
//! The body is `encdecc_cli::fuzz_entry::run_file` (also replayed over the seeds by
//! tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::run_file(data));
