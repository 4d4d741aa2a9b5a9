//! Elaboration of any program, with options from `# key: value` header lines as the
//! elaboration resource files write them: a graph or a diagnostic, never a panic, within
//! bounded time and memory. The body is `encdecc_cli::fuzz_entry::elaborate_program` (also
//! replayed over the seeds by tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::elaborate_program(data));
