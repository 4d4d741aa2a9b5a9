//! The DSL parser on any text: a program or a diagnostic, never a panic.
//! The body is `encdecc_cli::fuzz_entry::dsl_parse` (also replayed over the seeds by
//! tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::dsl_parse(data));
