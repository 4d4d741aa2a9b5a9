//! Loading and elaborating a slightly broken model must give a graph or a diagnostic, never
//! a panic. Starting from models/t5gemma.edl (with the tiny HF fixture config, so that the
//! graph is small), each case deletes or duplicates one line or swaps two tokens.
//!
//! For a longer hunt: `PROPTEST_CASES=5000 ELAB_FUZZ_VERBOSE=1 cargo test -p
//! encdecc-compiler --test elab_never_panics -- --nocapture` (the second variable prints the
//! first line of each outcome, to see which diagnostics the mutations reach).

use encdecc_compiler::elab::{elaborate, ElabOptions};
use encdecc_dsl::load::load_program_text;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file)
}

fn tiny_options() -> ElabOptions {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/hf/t5gemma-tiny/config.json");
    let json = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    ElabOptions {
        hf_config: Some(serde_json::from_str(&json).expect("fixture config is JSON")),
        ..ElabOptions::default()
    }
}

/// t5gemma.edl with `import "gemma.edl"` replaced by gemma.edl's items, so that mutations
/// reach the shared config and its asserts too.
fn inlined_t5gemma() -> String {
    let t5 = std::fs::read_to_string(model_path("t5gemma.edl")).unwrap();
    let gemma = std::fs::read_to_string(model_path("gemma.edl")).unwrap();
    let gemma_items = gemma
        .strip_prefix("edl 1\n")
        .expect("gemma.edl starts with its header");
    assert!(t5.contains("import \"gemma.edl\"\n"));
    t5.replace("import \"gemma.edl\"\n", gemma_items)
}

/// Byte ranges of the tokens of `text`: names and numbers, strings, single punctuation.
fn tokens(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            // One char, whatever its width.
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
        out.push((start, i));
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapTokens(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapTokens(a, b)),
    ]
}

/// Applies `m` to `text`; also returns a description for failure messages.
fn apply(text: &str, m: &Mutation) -> (String, String) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    match m {
        Mutation::DeleteLine(i) => {
            let k = i.index(lines.len());
            let mut out = lines.clone();
            out.remove(k);
            (
                out.concat(),
                format!("deleted line {}: {:?}", k + 1, lines[k]),
            )
        }
        Mutation::DuplicateLine(i) => {
            let k = i.index(lines.len());
            let mut out = lines.clone();
            out.insert(k, lines[k]);
            (
                out.concat(),
                format!("duplicated line {}: {:?}", k + 1, lines[k]),
            )
        }
        Mutation::SwapTokens(a, b) => {
            let toks = tokens(text);
            let (x, y) = (a.index(toks.len()), b.index(toks.len()));
            let (first, second) = (toks[x.min(y)], toks[x.max(y)]);
            if first == second {
                return (text.to_string(), "nothing (same token twice)".into());
            }
            let out = format!(
                "{}{}{}{}{}",
                &text[..first.0],
                &text[second.0..second.1],
                &text[first.1..second.0],
                &text[first.0..first.1],
                &text[second.1..]
            );
            let line = |off: usize| text[..off].matches('\n').count() + 1;
            let desc = format!(
                "swapped {:?} (line {}) with {:?} (line {})",
                &text[first.0..first.1],
                line(first.0),
                &text[second.0..second.1],
                line(second.0)
            );
            (out, desc)
        }
    }
}

/// Loads and elaborates; returns a failure message if anything panicked.
fn load_and_elaborate(name: &str, text: &str, opts: &ElabOptions) -> Result<(), String> {
    let r = catch_unwind(AssertUnwindSafe(|| match load_program_text(name, text) {
        Ok(prog) => match elaborate(&prog, opts) {
            Ok(_) => "ok".to_string(),
            Err(d) => d.render(&prog.sources),
        },
        Err((sources, d)) => d.render(&sources),
    }));
    match r {
        Ok(outcome) => {
            if std::env::var("ELAB_FUZZ_VERBOSE").is_ok() {
                eprintln!("OUTCOME {}", outcome.lines().next().unwrap_or(""));
            }
            Ok(())
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(msg)
        }
    }
}

#[test]
fn unmutated_models_elaborate() {
    let opts = tiny_options();
    let name = model_path("t5gemma.edl");
    let name = name.to_str().unwrap();
    for text in [std::fs::read_to_string(name).unwrap(), inlined_t5gemma()] {
        let prog =
            load_program_text(name, &text).unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
        if let Err(d) = elaborate(&prog, &opts) {
            panic!("{}", d.render(&prog.sources));
        }
    }
}

#[test]
fn tokens_cover_the_text() {
    let text = "let x = f(a.b, \"s\\\"t\") # c\n  y é";
    let toks: Vec<&str> = tokens(text).iter().map(|&(s, e)| &text[s..e]).collect();
    assert_eq!(
        toks,
        [
            "let",
            "x",
            "=",
            "f",
            "(",
            "a.b",
            ",",
            "\"s\\\"t\"",
            ")",
            "y",
            "é"
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        // Integration tests have no lib.rs for the default `SourceParallel`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_t5gemma_never_panics(m in mutation()) {
        let path = model_path("t5gemma.edl");
        let text = std::fs::read_to_string(&path).unwrap();
        let (mutated, desc) = apply(&text, &m);
        if let Err(panic) = load_and_elaborate(path.to_str().unwrap(), &mutated, &tiny_options()) {
            prop_assert!(false, "t5gemma.edl with {desc}: panicked: {panic}");
        }
    }

    #[test]
    fn mutated_inlined_gemma_never_panics(m in mutation()) {
        let path = model_path("t5gemma.edl");
        let (mutated, desc) = apply(&inlined_t5gemma(), &m);
        if let Err(panic) = load_and_elaborate(path.to_str().unwrap(), &mutated, &tiny_options()) {
            prop_assert!(false, "t5gemma.edl with gemma.edl inlined, {desc}: panicked: {panic}");
        }
    }
}
