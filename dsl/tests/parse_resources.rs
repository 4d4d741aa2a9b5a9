//! Data-driven parser tests in the style of ruff: every file under `tests/resources/valid`
//! must parse, and its syntax tree is snapshotted; every file under `tests/resources/invalid`
//! must fail to load, and its rendered diagnostic (a `file:line:col` code frame) is
//! snapshotted. Add a case by adding a file, then review the new snapshot
//! (`INSTA_UPDATE=always cargo test -p encdecc-dsl --test parse_resources`, or
//! `cargo insta review`).

use encdecc_dsl::load::load_program_text;
use encdecc_dsl::parse::parse_module;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Valid,
    Invalid,
}

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

/// Makes `{:#?}` of a syntax tree readable: `Span { file, start, end }` becomes
/// `start..end` (every span of a resource is in file 0), and a `Spanned` whose node
/// fits on one line becomes `node @ start..end`.
fn compact(debug: &str) -> String {
    let lines: Vec<&str> = debug.lines().collect();
    // Pass 1: spans.
    let mut spans: Vec<String> = vec![];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let (Some(head), Some([file, start, end, close])) =
            (line.strip_suffix("Span {"), lines.get(i + 1..i + 5))
        {
            let field = |l: &str, name: &str| {
                l.trim()
                    .strip_prefix(name)
                    .and_then(|r| r.strip_suffix(','))
                    .map(str::to_string)
            };
            if let (Some(_), Some(s), Some(e), "}" | "},") = (
                field(file, "file: "),
                field(start, "start: "),
                field(end, "end: "),
                close.trim(),
            ) {
                let comma = if close.trim().ends_with(',') { "," } else { "" };
                spans.push(format!("{head}{s}..{e}{comma}"));
                i += 5;
                continue;
            }
        }
        spans.push(line.to_string());
        i += 1;
    }
    // Pass 2: `Spanned` with a one-line node.
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < spans.len() {
        let line = &spans[i];
        if let (Some(head), Some([node, span, close])) =
            (line.strip_suffix("Spanned {"), spans.get(i + 1..i + 4))
        {
            let node = node
                .trim()
                .strip_prefix("node: ")
                .and_then(|r| r.strip_suffix(','));
            let span = span
                .trim()
                .strip_prefix("span: ")
                .and_then(|r| r.strip_suffix(','));
            if let (Some(node), Some(span), "}" | "},") = (node, span, close.trim()) {
                if !node.ends_with('{') && !node.ends_with('[') && !node.ends_with('(') {
                    let comma = if close.trim().ends_with(',') { "," } else { "" };
                    out.push(format!("{head}{node} @ {span}{comma}"));
                    i += 4;
                    continue;
                }
            }
        }
        out.push(line.clone());
        i += 1;
    }
    // Pass 3: small nodes on one line (`Int(1)`, `Expr { kind: Name("x"), span: 3..4 }`),
    // innermost first.
    while let Some(next) = collapse_once(&out) {
        out = next;
    }
    out.join("\n")
}

/// Joins one `X {`/`X(`/`[` whose (at most three) items are single lines and whose
/// one-line form is short. `None` when nothing is left to join.
fn collapse_once(lines: &[String]) -> Option<Vec<String>> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        let Some(open) = line.chars().last().filter(|c| "{([".contains(*c)) else {
            continue;
        };
        let close = match open {
            '{' => '}',
            '(' => ')',
            _ => ']',
        };
        let Some(len) = lines[i + 1..]
            .iter()
            .position(|l| indent(l) <= indent(line))
        else {
            continue;
        };
        let end = &lines[i + 1 + len];
        let items = &lines[i + 1..i + 1 + len];
        if indent(end) != indent(line)
            || !end.trim_start().starts_with(close)
            || items.is_empty()
            || items.len() > 3
            || items.iter().any(|l| l.ends_with(['{', '(', '[']))
        {
            continue;
        }
        let inner: Vec<&str> = items
            .iter()
            .map(|l| l.trim().strip_suffix(',').unwrap_or(l.trim()))
            .collect();
        let (pad, gap) = if open == '{' { (" ", " ") } else { ("", "") };
        let joined = format!("{line}{pad}{}{gap}{}", inner.join(", "), end.trim_start());
        if joined.len() > 100 {
            continue;
        }
        let mut next = lines[..i].to_vec();
        next.push(joined);
        next.extend_from_slice(&lines[i + 2 + len..]);
        return Some(next);
    }
    None
}

/// Checks one resource file and snapshots the result as `<dir>__<stem>`.
fn check(dir: &str, path: &Path, expect: Expect) {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    // A stable, machine-independent name for code frames.
    let name = format!("{dir}/{stem}.edl");
    let snapshot = match expect {
        Expect::Valid => match parse_module(0, &text) {
            Ok(module) => compact(&format!("{module:#?}")),
            Err(d) => panic!("{name} should parse, but:\n{}", d.message),
        },
        Expect::Invalid => match load_program_text(&name, &text) {
            Ok(_) => panic!("{name} should not load"),
            Err((sources, d)) => {
                let rendered = d.render(&sources);
                let frame = format!("--> {name}:");
                assert!(
                    rendered.contains(&frame),
                    "{name}: diagnostic has no `{frame}line:col` frame:\n{rendered}"
                );
                rendered
            }
        },
    };
    let mut settings = insta::Settings::clone_current();
    settings.set_input_file(path);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(format!("{dir}__{stem}"), snapshot));
}

/// Runs `check` on every file of a directory, reporting all failures at the end
/// (like `insta::glob!`) rather than stopping at the first.
fn check_dir(dir: &str, expect: Expect) {
    let mut failed = vec![];
    for path in resources(dir) {
        if catch_unwind(AssertUnwindSafe(|| check(dir, &path, expect))).is_err() {
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
fn valid_resources() {
    check_dir("valid", Expect::Valid);
}

#[test]
fn invalid_resources() {
    check_dir("invalid", Expect::Invalid);
}
