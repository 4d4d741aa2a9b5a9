//! Data-driven elaboration tests in the style of ruff: every file under
//! `tests/resources/invalid_elab` parses but fails to elaborate, and its rendered diagnostic
//! is snapshotted; every file under `tests/resources/valid_elab` elaborates, and a short
//! summary of the result (parameters, inputs, outputs) is snapshotted.
//!
//! Options that a command line would give are written as comments at the top of a file:
//!
//! ```text
//! # preset: s-s
//! # sets: encoder.num_hidden_layers=1 decoder.num_hidden_layers=1
//! # model: T5Gemma
//! # entry: encode
//! ```
//!
//! Review new snapshots with `INSTA_UPDATE=always cargo test -p encdecc-compiler --test
//! elab_diagnostics` (or `cargo insta review`).

use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated};
use encdecc_dsl::load::load_program_text;
use std::fmt::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The `.edl` files of `tests/resources/<dir>`, sorted by name.
fn resources(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/resources")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "edl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .edl files in {}", root.display());
    files
}

/// What a successful elaboration produced, in a form that does not depend on node ids.
fn summary(e: &Elaborated) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model: {}", e.model);
    let _ = writeln!(s, "entries: {}", e.entries.join(", "));
    let _ = writeln!(s, "params:");
    for p in &e.params {
        let _ = writeln!(s, "  {} (ckpt {}): {:?}", p.path, p.ckpt, p.shape);
    }
    let _ = writeln!(s, "inputs:");
    for i in &e.inputs {
        let opt = if i.optional { " (optional)" } else { "" };
        let _ = writeln!(s, "  {}: {}{opt}", i.name, i.ty);
    }
    let _ = writeln!(s, "outputs:");
    for (name, node) in &e.graph.outputs {
        let _ = writeln!(s, "  {name}: {}", e.graph.node(*node).ty);
    }
    s
}

/// Elaborates one resource file and snapshots the result as `<dir>__<stem>`.
fn check(dir: &str, path: &Path) {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    // A stable, machine-independent name for code frames.
    let name = format!("{dir}/{stem}.edl");
    let prog = match load_program_text(&name, &text) {
        Ok(p) => p,
        Err((sources, d)) => panic!("{name} should load, but:\n{}", d.render(&sources)),
    };
    let result = elaborate(&prog, &ElabOptions::from_header(&text));
    let snapshot = match (dir, result) {
        ("valid_elab", Ok(e)) => summary(&e),
        ("valid_elab", Err(d)) => {
            panic!("{name} should elaborate, but:\n{}", d.render(&prog.sources))
        }
        (_, Ok(_)) => panic!("{name} should not elaborate"),
        (_, Err(d)) => d.render(&prog.sources),
    };
    let mut settings = insta::Settings::clone_current();
    settings.set_input_file(path);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(format!("{dir}__{stem}"), snapshot));
}

/// Runs `check` on every file of a directory, reporting all failures at the end.
fn check_dir(dir: &str) {
    let mut failed = vec![];
    for path in resources(dir) {
        if catch_unwind(AssertUnwindSafe(|| check(dir, &path))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "failing resources:\n  {}",
        failed.join("\n  ")
    );
}

#[test]
fn invalid_elab_resources() {
    check_dir("invalid_elab");
}

#[test]
fn valid_elab_resources() {
    check_dir("valid_elab");
}

#[test]
fn directives_are_read() {
    let o = ElabOptions::from_header(
        "# preset: s-s\n# sets: a=1 b.c=2\n# entry: encode\nedl 1\n# model: ignored\n",
    );
    assert_eq!(o.preset.as_deref(), Some("s-s"));
    assert_eq!(o.sets, vec!["a=1", "b.c=2"]);
    assert_eq!(o.entry.as_deref(), Some("encode"));
    assert_eq!(o.model, None);
}
