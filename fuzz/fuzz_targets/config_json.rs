//! A model built from any HF `config.json` text (and, after a `\n--\n` line, `--set`
//! overrides one per line): the first byte picks the model file (T5Gemma or Gemma 2). A
//! graph or a diagnostic, never a panic, within bounded time and memory.
//! The body is `encdecc_cli::fuzz_entry::config_json` (also replayed over the seeds by
//! tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::config_json(data));
