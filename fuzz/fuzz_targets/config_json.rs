//! A model built from any HF `config.json` text (and, after a `\n--\n` line, `--set`
//! overrides one per line): the first byte picks the model file (T5Gemma or Gemma 2). A
//! graph or a diagnostic, never a panic, within bounded time and memory.
#![no_main]

use encdecc_compiler::elab::{elaborate, ElabOptions};
use encdecc_dsl::load::{load_program, Program};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn load_models() -> [Program; 2] {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let load = |f: &str| {
        load_program(&models.join(f)).unwrap_or_else(|(_, d)| panic!("{f}: {}", d.message))
    };
    [load("t5gemma.edl"), load("gemma2.edl")]
}

thread_local! {
    // Parsed once: the fuzzed part is the config, not the model files.
    static PROGRAMS: [Program; 2] = load_models();
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (json, sets) = text.split_once("\n--\n").unwrap_or((text, ""));
    let Ok(config) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let opts = ElabOptions {
        hf_config: Some(config),
        sets: sets.lines().map(str::to_string).collect(),
        ..ElabOptions::default()
    };
    PROGRAMS.with(|programs| {
        let program = &programs[usize::from(pick & 1)];
        if let Err(d) = elaborate(program, &opts) {
            let _ = d.render(&program.sources);
        }
    });
});
