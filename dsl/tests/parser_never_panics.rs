//! The parser must turn any text into a syntax tree or a located diagnostic: never a panic.
//! (a) arbitrary strings and grammar-token soup; (b) every prefix of the real model files
//! and of the valid test resources (sampled), as an editor sees a file being typed.

use encdecc_dsl::parse::parse_module;
use encdecc_dsl::SourceMap;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::path::{Path, PathBuf};

/// Parses `text` as file `x.edl`; on error, renders the diagnostic (rendering must not
/// panic either) and checks that it is located inside the text.
fn parse_and_render(text: &str) -> Result<(), String> {
    let mut sources = SourceMap::default();
    let id = sources.add("x.edl", text);
    match parse_module(id, text) {
        Ok(_) => Ok(()),
        Err(d) => {
            let rendered = d.render(&sources);
            let span = d.span.ok_or("a syntax error without a location")?;
            if span.start as usize > text.len() || span.end < span.start {
                return Err(format!(
                    "span {span:?} outside a text of {} bytes",
                    text.len()
                ));
            }
            if !rendered.contains("--> x.edl:") {
                return Err(format!("no code frame in:\n{rendered}"));
            }
            Ok(())
        }
    }
}

/// Pieces of the language, to reach deeper into the grammar than random characters do.
const TOKENS: &[&str] = &[
    "edl",
    "1",
    "0",
    "2.5",
    "1e-6",
    "99999999999999999999",
    "\"s\"",
    "\"a\\\"b\"",
    "\"",
    "import",
    "config",
    "preset",
    "block",
    "model",
    "fn",
    "let",
    "assert",
    "if",
    "then",
    "else",
    "for",
    "in",
    "return",
    "out",
    "probe",
    "param",
    "ckpt",
    "repeat",
    "tie",
    "entry",
    "from",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "x",
    "cfg",
    "i64",
    "f32",
    "B",
    "_",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ".",
    "..",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "@",
    "**",
    "?",
    "#",
    "\n",
    " ",
    "é",
    "\u{1F600}",
    "\t",
];

fn token_soup() -> impl Strategy<Value = String> {
    // At most 48 tokens: deep nesting overflows the stack (a known bug, see
    // `deeply_nested_parentheses` below), which would abort the whole test binary, and
    // nested lists take exponential time (`nested_lists_parse_in_linear_time`).
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(TOKENS), 0..48),
    )
        .prop_map(|(header, toks)| {
            let mut s = if header {
                "edl 1\n".to_string()
            } else {
                String::new()
            };
            for t in toks {
                s.push_str(t);
                s.push(' ');
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=100000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        // Integration tests have no lib.rs for the default `SourceParallel`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        parse_and_render(&text).map_err(TestCaseError::fail)?;
        // The same text after a valid header goes past the header rule.
        parse_and_render(&format!("edl 1\n{text}")).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        parse_and_render(&text).map_err(TestCaseError::fail)?;
    }
}

fn edl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "edl"))
        .collect();
    files.sort();
    files
}

/// About 200 byte offsets spread over the text (all of them for short texts), each moved
/// back to a char boundary, plus the full length.
fn sample_offsets(text: &str) -> Vec<usize> {
    let n = text.len();
    let step = (n / 200).max(1);
    let mut offsets: Vec<usize> = (0..n)
        .step_by(step)
        .chain([n])
        .map(|mut i| {
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        })
        .collect();
    offsets.dedup();
    offsets
}

#[test]
fn every_prefix_of_the_models_and_resources_parses_or_fails_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = edl_files(&root.join("../models"));
    assert!(files.len() >= 4, "expected the model files in models/");
    files.extend(edl_files(&root.join("tests/resources/valid")));
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for cut in sample_offsets(&text) {
            let prefix = &text[..cut];
            let r = std::panic::catch_unwind(|| parse_and_render(prefix));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(why)) => panic!("{} cut at byte {cut}: {why}", path.display()),
                Err(_) => panic!(
                    "parse_module panicked on {} cut at byte {cut}:\n{prefix}",
                    path.display()
                ),
            }
            checked += 1;
        }
        // The whole file parses.
        parse_module(0, &text).unwrap_or_else(|d| panic!("{}: {}", path.display(), d.message));
    }
    assert!(checked > 1000, "only {checked} prefixes checked");
}

#[test]
fn moderately_nested_expressions_parse() {
    // Lists stay shallow here: see `nested_lists_parse_in_linear_time`.
    for (open, close, depth) in [
        ("(", ")", 32),
        ("f(", ")", 32),
        ("{a: ", "}", 32),
        ("[", "]", 6),
    ] {
        let text = format!(
            "edl 1\nlet x = {}1{}\n",
            open.repeat(depth),
            close.repeat(depth)
        );
        parse_and_render(&text).unwrap();
        parse_module(0, &text).unwrap();
    }
}

/// Regression: lists and comprehensions once were two rules both starting with
/// `"[" ~ expr`, so each nesting level was parsed twice (time 2^depth).
#[test]
fn nested_lists_parse_in_linear_time() {
    let depth = 24;
    let text = format!(
        "edl 1\nlet x = {}1{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let t = std::time::Instant::now();
    parse_module(0, &text).unwrap();
    assert!(t.elapsed().as_secs() < 2, "took {:?}", t.elapsed());
}

/// Regression: `Cx::expr` recursed without a limit, so ~110 nested parentheses overflowed a
/// 2 MiB stack. Deep nesting and very long operator chains are now diagnostics.
#[test]
fn deeply_nested_parentheses() {
    let depth = 2000;
    let text = format!(
        "edl 1\nlet x = {}1{}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    parse_and_render(&text).unwrap();
}

#[test]
fn very_long_operator_chain_is_a_diagnostic() {
    let text = format!("edl 1\nlet x = 4{}\n", " + 0".repeat(100_000));
    let err = parse_module(0, &text).unwrap_err();
    assert!(err.message.contains("too long"), "{}", err.message);
}

#[test]
fn deep_parentheses_are_a_diagnostic() {
    let text = format!("edl 1\nlet x = {}1{}\n", "(".repeat(2000), ")".repeat(2000));
    // Either our depth limit or pest's own call limit answers; neither may crash.
    assert!(parse_module(0, &text).is_err());
}

/// Regression (issue 19): nested blocks had no limit, so ~5000 nested `if`s overflowed the
/// stack inside pest. Any bracket nesting past 128 levels is now a diagnostic.
#[test]
fn deeply_nested_blocks_are_a_diagnostic() {
    let depth = 5000;
    let text = format!(
        "edl 1\nfn f() {{\n{}return 1\n{}}}\n",
        "if true {\n".repeat(depth),
        "}\n".repeat(depth)
    );
    parse_and_render(&text).unwrap();
    let err = parse_module(0, &text).unwrap_err();
    assert!(err.message.contains("nested too deeply"), "{}", err.message);
}

#[test]
fn blocks_nested_to_the_limit_parse() {
    // 127 `if` blocks inside the function's own.
    let depth = 127;
    let text = format!(
        "edl 1\nfn f() {{\n{}return 1\n{}}}\n",
        "if true {\n".repeat(depth),
        "}\n".repeat(depth)
    );
    parse_module(0, &text).unwrap();
}

#[test]
fn brackets_in_strings_and_comments_do_not_nest() {
    let deep = "(".repeat(1000);
    let text = format!("edl 1\n# {deep}\nlet x = \"{deep}\\\"{deep}\"\n");
    parse_module(0, &text).unwrap();
}

#[test]
fn deeply_nested_types_are_a_diagnostic() {
    let depth = 5000;
    let text = format!(
        "edl 1\nconfig C {{\n  x: {}int{} = 1\n}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    parse_and_render(&text).unwrap();
    assert!(parse_module(0, &text).is_err());
}

#[test]
fn long_if_expression_chain_is_a_diagnostic_or_parses() {
    let text = format!(
        "edl 1\nlet x = {}1{}\n",
        "if true then ".repeat(5000),
        " else 0".repeat(5000)
    );
    parse_and_render(&text).unwrap();
}

#[test]
fn min_i64_literal_is_a_diagnostic() {
    // `-` applies to the literal 9223372036854775808, which no i64 holds.
    let err = parse_module(0, "edl 1\nlet x = -9223372036854775808\n").unwrap_err();
    assert!(err.message.contains("out of range"), "{}", err.message);
}
