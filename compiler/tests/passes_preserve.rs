//! The passes on the real models: every fixture config of `models/t5gemma.edl` and
//! `models/gemma2.edl`, each entry, with and without optional inputs and probes, before
//! and after decomposition. After `optimize`, or after any sequence of single passes
//! (proptest): the graph verifies, `parse(print(g)) == g`, it has no more nodes, and its
//! interface (params, inputs, output names and types) is unchanged. `optimize` reaches a
//! fixed point: running it again changes nothing. (That the values are unchanged is
//! checked with the interpreter in the workspace's `tests/passes_numeric.rs`.)

use encdecc_compiler::decompose::decompose;
use encdecc_compiler::elab::{elaborate, ElabOptions};
use encdecc_compiler::ir::parse::parse_graph;
use encdecc_compiler::ir::print::print_graph;
use encdecc_compiler::ir::verify::verify;
use encdecc_compiler::ir::{Graph, Op, TensorType};
use encdecc_compiler::passes::{optimize, PASSES};
use encdecc_dsl::load_program;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every fixture directory with a `config.json`, sorted.
fn fixtures() -> Vec<PathBuf> {
    let mut v = vec![];
    for set in ["tests/fixtures/hf", "tests/fixtures/hf-extra"] {
        let Ok(rd) = std::fs::read_dir(root().join(set)) else {
            continue;
        };
        v.extend(
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.join("config.json").exists()),
        );
    }
    v.sort();
    v
}

/// Every graph variant to optimise, named for failure messages.
fn graphs() -> &'static [(String, Graph)] {
    static GRAPHS: OnceLock<Vec<(String, Graph)>> = OnceLock::new();
    GRAPHS.get_or_init(|| {
        let mut out = vec![];
        for dir in fixtures() {
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                    .unwrap();
            let gemma2 = cfg["model_type"] == "gemma2";
            let model =
                root()
                    .join("models")
                    .join(if gemma2 { "gemma2.edl" } else { "t5gemma.edl" });
            let prog = load_program(&model).unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
            // (entry, inputs given; `None` = all of them)
            let variants: Vec<(&str, Option<Vec<&str>>)> = if gemma2 {
                vec![("forward", None), ("forward", Some(vec!["input_ids"]))]
            } else {
                vec![
                    ("forward", None),
                    ("forward", Some(vec!["input_ids", "decoder_input_ids"])),
                    ("encode", None),
                ]
            };
            let case = dir.file_name().unwrap().to_string_lossy().to_string();
            for (entry, inputs) in variants {
                for probes in [false, true] {
                    let opts = ElabOptions {
                        hf_config: Some(cfg.clone()),
                        entry: Some(entry.into()),
                        inputs: inputs
                            .clone()
                            .map(|v| v.into_iter().map(String::from).collect()),
                        probes,
                        ..ElabOptions::default()
                    };
                    let e = elaborate(&prog, &opts)
                        .unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)));
                    let name = format!(
                        "{case} {entry} inputs={} probes={probes}",
                        inputs.as_ref().map(|v| v.join("+")).unwrap_or("all".into())
                    );
                    let mut dec = e.graph.clone();
                    decompose(&mut dec).unwrap();
                    out.push((name.clone(), e.graph));
                    out.push((format!("{name} decomposed"), dec));
                }
            }
        }
        assert!(out.len() >= 40, "only {} graph variants", out.len());
        out
    })
}

type Interface = (Vec<(String, TensorType)>, Vec<(String, TensorType)>);

/// Params and inputs (sorted by their op's text) and outputs (in order), with types.
fn interface(g: &Graph) -> Interface {
    let mut ins: Vec<(String, TensorType)> = g
        .dag
        .node_weights()
        .filter(|n| matches!(n.op, Op::Param { .. } | Op::Input { .. }))
        .map(|n| (format!("{:?}", n.op), n.ty.clone()))
        .collect();
    ins.sort_by(|a, b| a.0.cmp(&b.0));
    let outs = g
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), g.node(*id).ty.clone()))
        .collect();
    (ins, outs)
}

fn check(name: &str, before: &Graph, after: &Graph) {
    verify(after).unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = print_graph(after);
    let back = parse_graph(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(back == *after, "{name}: parse(print(g)) != g");
    assert_eq!(print_graph(&back), text, "{name}: printing is not stable");
    assert!(
        after.dag.node_count() <= before.dag.node_count(),
        "{name}: {} -> {} nodes",
        before.dag.node_count(),
        after.dag.node_count()
    );
    assert_eq!(interface(before), interface(after), "{name}: interface");
    for (out, id) in &after.outputs {
        assert!(after.dag.contains_node(*id), "{name}: output `{out}` lost");
    }
}

#[test]
fn optimize_keeps_every_model_valid() {
    for (name, g) in graphs() {
        let mut opt = g.clone();
        let stats = optimize(&mut opt);
        check(name, g, &opt);
        assert_eq!(stats.nodes_before, g.dag.node_count());
        assert_eq!(stats.nodes_after, opt.dag.node_count());
        let mut again = opt.clone();
        let s2 = optimize(&mut again);
        assert_eq!(s2.changes(), 0, "{name}: not a fixed point:\n{s2}");
        assert!(again == opt, "{name}: a second optimize changed the graph");
    }
}

/// CSE merges the per-layer RoPE tables: one position iota per sequence symbol is left.
#[test]
fn optimize_shares_rope_tables() {
    for (name, g) in graphs() {
        let mut opt = g.clone();
        optimize(&mut opt);
        let mut iotas: Vec<String> = opt
            .dag
            .node_weights()
            .filter(|n| matches!(n.op, Op::Iota { .. }))
            .map(|n| format!("{:?} {}", n.op, n.ty))
            .collect();
        let total = iotas.len();
        iotas.sort();
        iotas.dedup();
        assert_eq!(iotas.len(), total, "{name}: duplicate iotas survive");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of single passes, in any order, keeps the invariants.
    #[test]
    fn any_pass_sequence_keeps_invariants(
        which in 0usize..1000,
        seq in proptest::collection::vec(0..PASSES.len(), 1..12),
    ) {
        let (name, g) = &graphs()[which % graphs().len()];
        let mut h = g.clone();
        for &p in &seq {
            let before = h.clone();
            (PASSES[p].1)(&mut h);
            check(&format!("{name} after {}", PASSES[p].0), &before, &h);
        }
        check(name, g, &h);
    }
}
