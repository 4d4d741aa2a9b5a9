//! The DSL parser on any text: a program or a diagnostic, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err((sources, d)) = encdecc_dsl::load::load_program_text("fuzz.edl", text) {
            // Rendering reads spans back from the sources: it must not panic either.
            let _ = d.render(&sources);
        }
    }
});
