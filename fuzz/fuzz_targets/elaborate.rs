//! Elaboration of any program, with options from `# key: value` header lines as the
//! elaboration resource files write them (`# sets: K=V K=V`, `# preset:`, `# model:`,
//! `# entry:`; read by `ElabOptions::from_header`): a graph or a diagnostic, never a
//! panic, within bounded time and memory.
#![no_main]

use encdecc_compiler::elab::{elaborate, ElabOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(program) = encdecc_dsl::load::load_program_text("fuzz.edl", text) else {
        return;
    };
    if let Err(d) = elaborate(&program, &ElabOptions::from_header(text)) {
        let _ = d.render(&program.sources);
    }
});
