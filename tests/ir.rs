//! The compiler on the real models: printed IR snapshots of the tiny fixture models,
//! `parse(print(g)) == g` for every model, preset and entry, parameter counts equal to HF's.

mod common;
use common::*;
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated};
use encdecc_compiler::ir::{parse::parse_graph, print::print_graph, verify::verify};
use encdecc_compiler::summary::parameter_count;
use encdecc_dsl::load_program;

fn build(model: &str, opts: ElabOptions) -> Elaborated {
    let prog = load_program(&root().join("models").join(model))
        .unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
    elaborate(&prog, &opts).unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)))
}

fn fixture_opts(case: &str) -> ElabOptions {
    let cfg =
        serde_json::from_str(&std::fs::read_to_string(fixture(case).join("config.json")).unwrap())
            .unwrap();
    ElabOptions {
        hf_config: Some(cfg),
        ..ElabOptions::default()
    }
}

/// Prints, parses back and compares; also after decomposition into primitives.
fn check_round_trip(mut e: Elaborated) {
    for stage in ["elaborated", "decomposed"] {
        if stage == "decomposed" {
            decompose(&mut e.graph).unwrap();
        }
        verify(&e.graph).unwrap();
        let text = print_graph(&e.graph);
        let back = parse_graph(&text).unwrap_or_else(|err| panic!("{stage}: {err}"));
        assert!(back == e.graph, "{stage}: parse(print(g)) != g");
        assert_eq!(print_graph(&back), text, "{stage}: printing is not stable");
    }
}

#[test]
fn ir_snapshot_t5gemma_tiny() {
    let e = build("t5gemma.edl", fixture_opts("t5gemma-tiny"));
    insta::assert_snapshot!("t5gemma_tiny_forward", print_graph(&e.graph));
}

#[test]
fn ir_snapshot_gemma2_tiny() {
    let e = build("gemma2.edl", fixture_opts("gemma2-tiny"));
    insta::assert_snapshot!("gemma2_tiny_forward", print_graph(&e.graph));
}

#[test]
fn round_trip_fixture_models() {
    for case in [
        "t5gemma-tiny",
        "t5gemma-unbalanced",
        "adapt-tiny",
        "gemma2-tiny",
    ] {
        let model = if case == "gemma2-tiny" {
            "gemma2.edl"
        } else {
            "t5gemma.edl"
        };
        for probes in [false, true] {
            check_round_trip(build(
                model,
                ElabOptions {
                    probes,
                    ..fixture_opts(case)
                },
            ));
        }
    }
    let mut enc = fixture_opts("t5gemma-unbalanced");
    enc.entry = Some("encode".into());
    check_round_trip(build("t5gemma.edl", enc));
}

/// Every preset's parameter count, as HF counts it (tied weights once).
#[test]
fn parameter_counts_match_hf() {
    let cases = [
        ("t5gemma.edl", "s-s", 312_517_632u64),
        ("t5gemma.edl", "b-b", 591_490_560),
        ("t5gemma.edl", "2b-2b", 5_596_853_760),
        ("gemma2.edl", "2b", 2_614_341_888),
        ("gemma2.edl", "9b", 9_241_705_984),
    ];
    for (model, preset, want) in cases {
        let e = build(
            model,
            ElabOptions {
                preset: Some(preset.into()),
                ..ElabOptions::default()
            },
        );
        assert_eq!(parameter_count(&e), want, "{model} {preset}");
    }
}

/// The other presets against the totals in the paper notes (four significant digits).
#[test]
fn parameter_counts_match_paper_table() {
    let cases = [
        ("l-l", 1.242e9),
        ("ml-ml", 2.200e9),
        ("xl-xl", 3.767e9),
        ("9b-2b", 12.29e9),
        ("9b-9b", 20.33e9),
    ];
    for (preset, want) in cases {
        let e = build(
            "t5gemma.edl",
            ElabOptions {
                preset: Some(preset.into()),
                ..ElabOptions::default()
            },
        );
        let got = parameter_count(&e) as f64;
        assert!(
            ((got - want) / want).abs() < 5e-4,
            "{preset}: {got} vs {want}"
        );
    }
}

/// The kernel program the CPU backend runs for the tiny Gemma 2 (fusion groups, stages).
#[test]
fn fused_program_snapshot_gemma2_tiny() {
    let e = build("gemma2.edl", fixture_opts("gemma2-tiny"));
    let p = encdecc_compiler::fuse::lower(&e.graph).unwrap();
    let text = encdecc_compiler::fuse::print_program(&p);
    let program = &text[text.find("program ").unwrap()..];
    insta::assert_snapshot!("gemma2_tiny_fused", program);
}

/// The graph lowered to bf16 (`--dtype bf16` on the host): matmul weights are bf16 params,
/// activations are cast to bf16 in front of every matmul, gathers from the bf16 embedding
/// are cast back to f32; it verifies, prints and parses back; in the fused program the
/// casts to bf16 are stores of the kernels that make the activations.
#[test]
fn ir_snapshot_gemma2_tiny_bf16() {
    let mut e = build("gemma2.edl", fixture_opts("gemma2-tiny"));
    let lowered = encdecc_compiler::precision::lower(
        &mut e.graph,
        encdecc_compiler::precision::Precision::Bf16,
    );
    assert!(!lowered.stored.is_empty());
    verify(&e.graph).unwrap();
    let text = print_graph(&e.graph);
    let back = parse_graph(&text).unwrap();
    assert!(back == e.graph, "parse(print(g)) != g");
    insta::assert_snapshot!("gemma2_tiny_bf16", text);
    let p = encdecc_compiler::fuse::lower(&e.graph).unwrap();
    let text = encdecc_compiler::fuse::print_program(&p);
    let program = &text[text.find("program ").unwrap()..];
    insta::assert_snapshot!("gemma2_tiny_bf16_fused", program);
}
