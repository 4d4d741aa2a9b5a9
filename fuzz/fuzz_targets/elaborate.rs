//! Elaboration of any program, with options from `# key: value` header lines as the
//! elaboration resource files write them (`# sets: K=V K=V`, `# preset:`, `# model:`,
//! `# entry:`): a graph or a diagnostic, never a panic, within bounded time and memory.
#![no_main]

use encdecc_compiler::elab::{elaborate, ElabOptions};
use libfuzzer_sys::fuzz_target;

fn options(text: &str) -> ElabOptions {
    let mut opts = ElabOptions::default();
    for line in text.lines() {
        let Some((key, value)) = line.strip_prefix('#').and_then(|d| d.split_once(':')) else {
            break;
        };
        let value = value.trim().to_string();
        match key.trim() {
            "preset" => opts.preset = Some(value),
            "sets" => opts.sets = value.split_whitespace().map(str::to_string).collect(),
            "model" => opts.model = Some(value),
            "entry" => opts.entry = Some(value),
            _ => {}
        }
    }
    opts
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(program) = encdecc_dsl::load::load_program_text("fuzz.edl", text) else {
        return;
    };
    if let Err(d) = elaborate(&program, &options(text)) {
        let _ = d.render(&program.sources);
    }
});
