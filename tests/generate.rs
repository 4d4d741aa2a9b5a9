//! KV-cached generation (`cross_kv` + `decode_step`, runtime::generate) against HF
//! `generate`: greedy sequences token for token on every fixture with references (the
//! shared ones and tests/fixtures/gen, made by make_gen.py past every sliding window), step
//! logits equal to a full forward's, sampling reproducible per seed, and the CLI.

mod common;

use common::{fixture, read_all, root};
use encdecc_compiler::elab::ElabOptions;
use encdecc_dsl::load_program;
use encdecc_runtime::forward::{run_forward, Backend};
use encdecc_runtime::generate::sampling::Sampling;
use encdecc_runtime::generate::{
    elaborate_generation, GenModels, GenerateOptions, Generator, Rings,
};
use encdecc_runtime::weights::{load_params, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

struct Case {
    models: GenModels,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
}

fn load(dir: &Path) -> Case {
    let prog = load_program(&root().join("models/t5gemma.edl"))
        .unwrap_or_else(|_| panic!("models/t5gemma.edl"));
    let cfg = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap());
    let opts = ElabOptions {
        hf_config: Some(cfg.unwrap()),
        ..Default::default()
    };
    let models = elaborate_generation(&prog, &opts)
        .unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)));
    let files = TensorFiles::open_dir(dir).unwrap();
    let params = load_params(&files, &models.step.params).unwrap().0;
    let inputs = read_all(&dir.join("inputs.safetensors"));
    Case {
        models,
        params,
        inputs,
    }
}

fn options(n: usize, eos: Vec<i64>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        eos_token_ids: eos,
        pad_token_id: 0,
        decoder_start_token_id: 2,
        sampling: None,
        keep_logits: false,
    }
}

fn run(c: &Case, backend: Backend, o: &GenerateOptions) -> encdecc_runtime::generate::Generation {
    run_with(c, backend, Rings::default_for(backend, &c.models), o)
}

fn run_with(
    c: &Case,
    backend: Backend,
    rings: Rings,
    o: &GenerateOptions,
) -> encdecc_runtime::generate::Generation {
    let g = Generator::with_rings(&c.models, backend, rings).unwrap();
    g.generate(
        &c.params,
        &c.inputs["input_ids"],
        c.inputs.get("attention_mask"),
        o,
    )
    .unwrap()
}

/// Generates on `backend` with `o` and compares with HF's sequences, exactly.
fn check(case: &str, c: &Case, backend: Backend, o: &GenerateOptions, want: &Tensor, what: &str) {
    let rings = Rings::default_for(backend, &c.models);
    check_with(case, c, (backend, rings), o, want, what);
}

/// `check` with the rings kept as `rings` says.
fn check_with(
    case: &str,
    c: &Case,
    (backend, rings): (Backend, Rings),
    o: &GenerateOptions,
    want: &Tensor,
    what: &str,
) {
    let got = run_with(c, backend, rings, o).sequences;
    assert_eq!(
        (&got.shape, got.as_i64()),
        (&want.shape, want.as_i64()),
        "{case} {what} ({backend:?}, rings {rings:?}, eos {:?})",
        o.eos_token_ids
    );
}

fn eos_ids(v: &serde_json::Value) -> Vec<i64> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap()).collect(),
        x => vec![x.as_i64().unwrap()],
    }
}

/// The generation entries are ordinary graphs: they verify, and print and parse back, before
/// and after decomposition, on every fixture shape (sliding-only decoders included).
#[test]
fn generation_entries_round_trip() {
    use encdecc_compiler::decompose::decompose;
    use encdecc_compiler::ir::{parse::parse_graph, print::print_graph, verify::verify};
    for case in [
        "t5gemma-tiny",
        "t5gemma-unbalanced",
        "adapt-tiny",
        "t5g-odd",
        "t5g-mha",
    ] {
        let c = load(&fixture(case));
        for mut g in [c.models.cross_kv.graph.clone(), c.models.step.graph.clone()] {
            for stage in ["elaborated", "decomposed"] {
                if stage == "decomposed" {
                    decompose(&mut g).unwrap();
                }
                verify(&g).unwrap_or_else(|e| panic!("{case} {} {stage}: {e}", g.name));
                let text = print_graph(&g);
                let back = parse_graph(&text).unwrap_or_else(|e| panic!("{case} {stage}: {e}"));
                assert!(back == g, "{case} {} {stage}: parse(print(g)) != g", g.name);
            }
        }
    }
}

#[test]
fn greedy_equals_hf_generate_on_the_shared_fixtures() {
    for case in ["t5gemma-tiny", "t5gemma-unbalanced", "t5g-odd", "t5g-mha"] {
        let dir = fixture(case);
        let c = load(&dir);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let outs = read_all(&dir.join("outputs.safetensors"));
        for key in ["generate", "generate_eos"] {
            let m = &meta[key];
            let o = options(
                m["max_new_tokens"].as_u64().unwrap() as usize,
                eos_ids(&m["eos_token_id"]),
            );
            let want = &outs[&format!("{key}.sequences")];
            check(case, &c, Backend::Cpu, &o, want, key);
        }
    }
}

/// tests/fixtures/gen: 12 new tokens (past every decoder window), a stand-in EOS for row 0,
/// and per-row EOS lists that stop every row early (shorter sequences), incl. adapt-tiny.
#[test]
fn greedy_equals_hf_generate_past_the_window() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/gen/cases.json")).unwrap(),
    )
    .unwrap();
    for (case, spec) in cases.as_object().unwrap() {
        let c = load(
            &root()
                .join("tests/fixtures")
                .join(spec["model"].as_str().unwrap()),
        );
        let refs = read_all(&root().join(format!("tests/fixtures/gen/{case}.safetensors")));
        let n = spec["max_new_tokens"].as_u64().unwrap() as usize;
        for key in ["generate", "generate_eos", "generate_stop"] {
            let o = options(n, eos_ids(&spec[key]["eos_token_id"]));
            // The rings on the host (the CPU's way) and fed back from the step's `*_next`
            // outputs (the GPU's way, which keeps them on the device).
            for rings in [Rings::Host, Rings::Step] {
                check_with(
                    case,
                    &c,
                    (Backend::Cpu, rings),
                    &o,
                    &refs[&format!("{key}.sequences")],
                    key,
                );
            }
        }
    }
}

/// The entries themselves, on the oracle: the reference interpreter generates the same.
#[test]
fn reference_backend_generates_the_same() {
    for case in ["t5gemma-tiny", "t5g-odd"] {
        let c = load(&fixture(case));
        let refs = read_all(&root().join(format!("tests/fixtures/gen/{case}.safetensors")));
        for rings in [Rings::Host, Rings::Step] {
            check_with(
                case,
                &c,
                (Backend::Reference, rings),
                &options(12, vec![1]),
                &refs["generate.sequences"],
                "generate",
            );
        }
    }
}

/// Each step's logits equal a full (uncached) forward's at that position, ≤ 1e-4, and HF's
/// per-step logits where the fixture has them.
#[test]
fn step_logits_equal_full_forward_logits() {
    for case in [
        "t5gemma-tiny",
        "t5gemma-unbalanced",
        "t5g-odd",
        "t5g-mha",
        "adapt-tiny",
    ] {
        let dir = fixture(case);
        let c = load(&dir);
        let mut o = options(12, vec![]);
        o.keep_logits = true;
        let g = run(&c, Backend::Cpu, &o);
        let (b, w) = (g.sequences.shape[0], g.sequences.shape[1]);
        let steps = w - 1;
        let seq = g.sequences.as_i64().unwrap();
        let dec: Vec<i64> = (0..b)
            .flat_map(|r| seq[r * w..r * w + steps].to_vec())
            .collect();
        let inputs = HashMap::from([
            ("input_ids".to_string(), c.inputs["input_ids"].clone()),
            (
                "attention_mask".to_string(),
                c.inputs["attention_mask"].clone(),
            ),
            (
                "decoder_input_ids".to_string(),
                Tensor::i64(vec![b, steps], dec),
            ),
        ]);
        let prog = load_program(&root().join("models/t5gemma.edl"))
            .unwrap_or_else(|_| panic!("models/t5gemma.edl"));
        let opts = ElabOptions {
            hf_config: Some(
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                    .unwrap(),
            ),
            inputs: Some(inputs.keys().cloned().collect()),
            ..Default::default()
        };
        let fwd = encdecc_compiler::elab::elaborate(&prog, &opts).unwrap();
        let files = TensorFiles::open_dir(&dir).unwrap();
        let full = run_forward(&fwd, &files, &inputs, Backend::Cpu)
            .unwrap()
            .outputs;
        let logits = full["logits"].as_f32().unwrap();
        let v = full["logits"].shape[2];
        let hf = read_all(&dir.join("outputs.safetensors"));
        let mut worst = 0f32;
        for (t, step) in g.logits.iter().enumerate() {
            let s = step.as_f32().unwrap();
            for r in 0..b {
                for k in 0..v {
                    let d = (s[r * v + k] - logits[(r * steps + t) * v + k]).abs();
                    worst = worst.max(d);
                }
            }
            // HF's cached generation logits (eos 1: the same tokens as ours).
            if let Some(h) = hf.get("generate.logits").filter(|h| t < h.shape[0]) {
                let h = &h.as_f32().unwrap()[t * b * v..(t + 1) * b * v];
                let d = h
                    .iter()
                    .zip(s)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d <= 1e-4, "{case} step {t}: {d} from HF's step logits");
            }
        }
        assert!(
            worst <= 1e-4,
            "{case}: step logits differ from the forward by {worst}"
        );
    }
}

#[test]
fn sampling_is_reproducible_per_seed_and_top_k_one_is_greedy() {
    let c = load(&fixture("t5gemma-tiny"));
    let greedy = run(&c, Backend::Cpu, &options(12, vec![])).sequences;
    let sampled = |seed: u64, top_k: Option<usize>, top_p: Option<f32>, temperature: f32| {
        let mut o = options(12, vec![]);
        o.sampling = Some(Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        });
        run(&c, Backend::Cpu, &o).sequences
    };
    let a = sampled(7, None, None, 1.5);
    assert_eq!(a, sampled(7, None, None, 1.5), "same seed, same tokens");
    let others: Vec<Tensor> = (8..12).map(|s| sampled(s, None, None, 1.5)).collect();
    assert!(others.iter().any(|o| *o != a), "other seeds should differ");
    assert_ne!(
        a, greedy,
        "temperature 1.5 sampling should leave the greedy path"
    );
    for seed in 0..3 {
        assert_eq!(
            sampled(seed, Some(1), None, 2.0),
            greedy,
            "top-k 1 is greedy"
        );
        assert_eq!(
            sampled(seed, None, Some(1e-6), 2.0),
            greedy,
            "tiny top-p is greedy"
        );
    }
}

#[test]
fn bad_requests_are_errors() {
    let c = load(&fixture("t5gemma-tiny"));
    let g = Generator::new(&c.models, Backend::Cpu).unwrap();
    let ids = &c.inputs["input_ids"];
    let err = |ids: &Tensor, mask: Option<&Tensor>, o: &GenerateOptions| {
        g.generate(&c.params, ids, mask, o).err().expect("an error")
    };
    let o = options(4, vec![1]);
    let e = err(&Tensor::i64(vec![1, 2], vec![5, 999]), None, &o);
    assert!(e.contains("999") && e.contains("vocabulary"), "{e}");
    let e = err(ids, Some(&Tensor::i64(vec![1, 1], vec![1])), &o);
    assert!(e.contains("attention_mask"), "{e}");
    let e = err(ids, None, &options(0, vec![1]));
    assert!(e.contains("max_new_tokens"), "{e}");
    let mut bad = options(4, vec![1]);
    bad.sampling = Some(Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    });
    assert!(err(ids, None, &bad).contains("temperature"));
    let e = err(&Tensor::f32(vec![1, 2], vec![1.0, 2.0]), None, &o);
    assert!(e.contains("input_ids"), "{e}");
}

fn encdecc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn cli_writes_hf_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.safetensors");
    let case = "tests/fixtures/hf/t5gemma-tiny";
    let o = encdecc(&[
        "generate",
        "models/t5gemma.edl",
        "--hf",
        case,
        "--inputs",
        &format!("{case}/inputs.safetensors"),
        "--max-new-tokens",
        "8",
        "--eos-token-id",
        "151",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = read_all(&out);
    let want = read_all(&root().join(case).join("outputs.safetensors"));
    assert_eq!(got["sequences"], want["generate_eos.sequences"]);

    // Sampling through the CLI: the same seed twice, the same file.
    let sample = |name: &str| {
        let p = dir.path().join(name);
        let o = encdecc(&[
            "generate",
            "models/t5gemma.edl",
            "--hf",
            case,
            "--inputs",
            &format!("{case}/inputs.safetensors"),
            "--max-new-tokens",
            "6",
            "--do-sample",
            "--temperature",
            "1.3",
            "--top-k",
            "20",
            "--top-p",
            "0.9",
            "--seed",
            "5",
            "--out",
            p.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_all(&p)["sequences"].clone()
    };
    assert_eq!(sample("a.safetensors"), sample("b.safetensors"));

    // Text mode: the byte-level tokenizer (the fixture has no tokenizer.json).
    let o = encdecc(&[
        "generate",
        "models/t5gemma.edl",
        "--hf",
        case,
        "--prompt",
        "hello",
        "--max-new-tokens",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(j["sequences"][0].as_array().unwrap().len(), 4);
    assert!(j["text"][0].is_string());
}

#[test]
fn cli_errors_name_the_problem() {
    let case = "tests/fixtures/hf/t5gemma-tiny";
    for (args, needle) in [
        (vec!["--inputs", "nope.safetensors"], "nope.safetensors"),
        (vec![], "--inputs FILE or --prompt"),
        (
            vec![
                "--inputs",
                &format!("{case}/inputs.safetensors"),
                "--do-sample",
                "--temperature",
                "0",
            ],
            "temperature",
        ),
    ] {
        let mut all = vec![
            "generate",
            "models/t5gemma.edl",
            "--hf",
            case,
            "--max-new-tokens",
            "2",
            "--out",
            "/tmp/never-written.safetensors",
        ];
        all.extend(args);
        let o = encdecc(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{all:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A model without the generation entries.
    let o = encdecc(&[
        "generate",
        "models/gemma2.edl",
        "--hf",
        "tests/fixtures/hf/gemma2-tiny",
        "--inputs",
        "tests/fixtures/hf/gemma2-tiny/inputs.safetensors",
        "--max-new-tokens",
        "2",
        "--out",
        "/tmp/never-written.safetensors",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cross_kv"), "{err}");
}
