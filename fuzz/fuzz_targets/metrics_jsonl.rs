//! `encdecc report`'s reader of metrics.jsonl on any text, and its table and plot of what
//! it read: a run or an error, never a panic.
//! The body is `encdecc_cli::fuzz_entry::metrics_jsonl` (also replayed over the seeds by
//! tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::metrics_jsonl(data));
