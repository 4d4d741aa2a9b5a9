//! An HF `tokenizer.json` from any text (`HfTokenizer::from_text`) up to the first NUL byte,
//! and where it loads, the rest encoded and decoded: an error or ids, never a panic, within
//! bounded time and memory. The body is `encdecc_cli::fuzz_entry::tokenizer_json` (also
//! replayed over the seeds by tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| encdecc_cli::fuzz_entry::tokenizer_json(data));
