//! Cranelift-style file tests for the optimisation passes. Each `tests/filetests/*.ir`
//! starts with `# test PASS` (a pass of `passes::PASSES`, or `optimize` for the whole
//! pipeline) followed by a graph in the printed IR form; `#` lines are comments. The
//! runner applies the pass, re-checks the structural invariants every pass must keep, and
//! snapshots the printed result (one snapshot per file, naming its input file).

use encdecc_compiler::ir::parse::parse_graph;
use encdecc_compiler::ir::print::print_graph;
use encdecc_compiler::ir::verify::verify;
use encdecc_compiler::ir::{Graph, Op};
use encdecc_compiler::passes::{self, optimize, PASSES};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests")
}

fn files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ir"))
        .collect();
    v.sort();
    v
}

fn header(text: &str) -> &str {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# test "))
        .unwrap_or_else(|| panic!("first line must be `# test PASS`"))
        .trim()
}

/// Applies the file's pass and returns the text to snapshot.
fn run(text: &str) -> String {
    let pass = header(text);
    let before = parse_graph(text).unwrap_or_else(|e| panic!("input does not parse: {e}"));
    let mut g = before.clone();
    let summary = if pass == "optimize" {
        let s = optimize(&mut g);
        let per: Vec<String> = s
            .passes
            .iter()
            .filter(|p| p.changes > 0)
            .map(|p| format!("{} {}", p.name, p.changes))
            .collect();
        format!(
            "optimize: {} -> {} nodes, {} round(s); {}",
            s.nodes_before,
            s.nodes_after,
            s.rounds,
            if per.is_empty() {
                "no changes".into()
            } else {
                per.join(", ")
            }
        )
    } else {
        let p = passes::pass(pass).unwrap_or_else(|| panic!("unknown pass `{pass}`"));
        let n = p(&mut g);
        // A pass at its fixed point changes nothing more.
        let mut again = g.clone();
        assert_eq!(p(&mut again), 0, "{pass} is not idempotent");
        format!("{pass}: {n} change(s)")
    };
    check_invariants(&before, &g);
    format!("# {summary}\n{}", print_graph(&g))
}

/// What every pass keeps: a valid graph that round-trips, no more nodes, the same params
/// and inputs, the same outputs (names, order, types).
fn check_invariants(before: &Graph, after: &Graph) {
    verify(after).unwrap_or_else(|e| panic!("verifier: {e}"));
    let text = print_graph(after);
    assert!(
        parse_graph(&text).unwrap() == *after,
        "parse(print(g)) != g"
    );
    assert!(after.dag.node_count() <= before.dag.node_count());
    let interface = |g: &Graph| {
        g.dag
            .node_weights()
            .filter(|n| matches!(n.op, Op::Param { .. } | Op::Input { .. }))
            .map(|n| (format!("{:?}", n.op), n.ty.clone(), n.name.clone()))
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (interface(before), interface(after));
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b, "params or inputs changed");
    let outs = |g: &Graph| {
        g.outputs
            .iter()
            .map(|(n, id)| (n.clone(), g.node(*id).ty.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(outs(before), outs(after), "outputs changed");
}

#[test]
fn filetests() {
    for path in files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let out = run(&text);
        insta::with_settings!({
            input_file => &path,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(stem, out);
        });
    }
}

/// Every pass has its file tests, at least four each, and every header names a pass.
#[test]
fn filetests_cover_every_pass() {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for path in files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let pass = header(&text).to_string();
        assert!(
            pass == "optimize" || passes::pass(&pass).is_some(),
            "{}: unknown pass `{pass}`",
            path.display()
        );
        *count.entry(pass).or_default() += 1;
    }
    for name in PASSES.iter().map(|(n, _)| *n).chain(["optimize"]) {
        let n = count.get(name).copied().unwrap_or(0);
        assert!(n >= 4, "only {n} file test(s) for `{name}`");
    }
}
