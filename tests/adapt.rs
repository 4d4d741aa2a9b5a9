//! `encdecc adapt` end to end (tests/fixtures/adapt, README there):
//! - balanced: gemma2-tiny gives adapt-tiny's tensors bitwise and its config; an unseen
//!   odd-sized Gemma 2 gives the tensors of HF's reference adaptation bitwise, and
//!   `encdecc run` on the result reproduces HF's logits to 1e-4;
//! - unbalanced: names and shapes as HF's T5GemmaForConditionalGeneration has them, copied
//!   tensors bitwise, cross-attention N(0, 0.02) and deterministic per seed, the phases;
//! - every broken input exits non-zero with a clear message; rule errors are code frames
//!   (snapshots).

mod common;
use common::{max_abs_diff, read_all, root};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(path: &str) -> PathBuf {
    root().join("tests/fixtures").join(path)
}

fn rules() -> String {
    s(&root().join("models/t5gemma_adapt.edl"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn encdecc(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
        .args(args)
        .output()
        .expect("spawn encdecc")
}

fn context(args: &[String], out: &Output) -> String {
    format!(
        "encdecc {}\n--- exit: {:?}\n--- stderr:\n{}\n--- stdout:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Runs the binary and expects success.
fn ok(args: &[String]) -> Output {
    let out = encdecc(args);
    assert!(
        out.status.success(),
        "expected success\n{}",
        context(args, &out)
    );
    out
}

fn balanced(from: &Path, out: &Path) -> Vec<String> {
    vec![
        "adapt".into(),
        rules(),
        "--from".into(),
        s(from),
        "--out".into(),
        s(out),
    ]
}

fn unbalanced(enc: &Path, dec: &Path, out: &Path, seed: u64) -> Vec<String> {
    vec![
        "adapt".into(),
        rules(),
        "--from-encoder".into(),
        s(enc),
        "--from-decoder".into(),
        s(dec),
        "--out".into(),
        s(out),
        "--seed".into(),
        seed.to_string(),
    ]
}

/// Every tensor of a safetensors file: dtype, shape, raw bytes.
fn raw(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let t = (
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            );
            (k, t)
        })
        .collect()
}

/// Same names, dtypes, shapes and bytes.
fn assert_same_tensors(got: &Path, want: &Path) {
    let (g, w) = (raw(got), raw(want));
    let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&g), names(&w), "tensor names");
    for (k, wt) in &w {
        let gt = &g[k];
        assert_eq!((&gt.0, &gt.1), (&wt.0, &wt.1), "`{k}`: dtype and shape");
        assert!(gt.2 == wt.2, "`{k}`: bytes differ");
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Equal configs, apart from what only transformers' `save_pretrained` writes.
fn assert_same_config(got: &Path, want: &Path) {
    let strip = |mut j: serde_json::Value| {
        let o = j.as_object_mut().unwrap();
        o.remove("transformers_version");
        if !want.parent().unwrap().join("model.safetensors").exists() {
            // A config saved without a model names no architecture.
            o.remove("architectures");
        }
        j
    };
    assert_eq!(strip(json(got)), strip(json(want)), "config.json");
}

#[test]
fn balanced_tiny_is_the_reference_adaptation() {
    let out = tempfile::tempdir().unwrap();
    let mut args = balanced(&fixture("hf/gemma2-tiny"), out.path());
    args.push("--json".into());
    let summary: serde_json::Value = serde_json::from_slice(&ok(&args).stdout).unwrap();
    assert_eq!(
        (
            &summary["tensors"],
            &summary["copied"],
            &summary["fresh"],
            &summary["dtype"]
        ),
        (&60.into(), &60.into(), &0.into(), &"F32".into())
    );
    let want = fixture("hf/adapt-tiny");
    assert_same_tensors(
        &out.path().join("model.safetensors"),
        &want.join("model.safetensors"),
    );
    assert_same_config(&out.path().join("config.json"), &want.join("config.json"));
    // The reference mapping lists every tensor; its `tied` entry is the lm head, which a
    // tied checkpoint does not store.
    let mapping = json(&want.join("adapt_mapping.json"));
    let pairs = mapping["pairs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        raw(&out.path().join("model.safetensors")).len()
    );
    assert_eq!(
        mapping["tied"]["lm_head.out_proj.weight"],
        "model.decoder.embed_tokens.weight"
    );
    let got = json(&out.path().join("adapt.json"));
    for p in pairs {
        let t = p["t5gemma"].as_str().unwrap();
        assert_eq!(
            got["tensors"][t],
            format!("gemma:{}", p["gemma2"].as_str().unwrap())
        );
    }
}

#[test]
fn balanced_unseen_matches_hf_tensors_and_logits() {
    let out = tempfile::tempdir().unwrap();
    ok(&balanced(&fixture("adapt/gemma2-small"), out.path()));
    let want = fixture("adapt/balanced-small");
    assert_same_tensors(
        &out.path().join("model.safetensors"),
        &want.join("model.safetensors"),
    );
    assert_same_config(&out.path().join("config.json"), &want.join("config.json"));

    let result = out.path().join("outputs.safetensors");
    ok(&[
        "run".into(),
        s(&root().join("models/t5gemma.edl")),
        "--hf".into(),
        s(out.path()),
        "--inputs".into(),
        s(&want.join("inputs.safetensors")),
        "--out".into(),
        s(&result),
        "--backend".into(),
        "cpu".into(),
    ]);
    let (got, hf) = (
        read_all(&result),
        read_all(&want.join("outputs.safetensors")),
    );
    let d = max_abs_diff("logits", &got["logits"], &hf["logits"]);
    assert!(d <= 1e-4, "logits differ from HF by {d:e}");
}

/// A sharded source (model.safetensors.index.json, as the released 9B is) gives the same
/// checkpoint as the single file.
#[test]
fn sharded_source() {
    let src = fixture("adapt/gemma2-small");
    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), sharded.path().join("config.json")).unwrap();
    let tensors = raw(&src.join("model.safetensors"));
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in [
        (0, "model-00001-of-00002.safetensors"),
        (1, "model-00002-of-00002.safetensors"),
    ] {
        // Layer 0 and the embeddings in one shard, the rest in the other.
        let part: Vec<_> = tensors
            .iter()
            .filter(|(n, _)| (n.starts_with("model.layers.0.") || n.contains("embed")) == (k == 0))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|(n, (_, shape, bytes))| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                );
                ((*n).clone(), v.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, &None, &sharded.path().join(shard)).unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(&balanced(sharded.path(), out.path()));
    assert_same_tensors(
        &out.path().join("model.safetensors"),
        &fixture("adapt/balanced-small/model.safetensors"),
    );
}

#[test]
fn unbalanced_layout_copies_init_and_phases() {
    let (enc, dec) = (fixture("adapt/gemma2-wide"), fixture("adapt/gemma2-small"));
    let out = tempfile::tempdir().unwrap();
    ok(&unbalanced(&enc, &dec, out.path(), 5));
    let want = fixture("adapt/unbalanced");
    assert_same_config(&out.path().join("config.json"), &want.join("config.json"));
    let got = raw(&out.path().join("model.safetensors"));

    // Names and shapes: those of HF's model for this config.
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(json(&want.join("shapes.json"))).unwrap();
    let got_shapes: BTreeMap<String, Vec<usize>> =
        got.iter().map(|(k, t)| (k.clone(), t.1.clone())).collect();
    assert_eq!(got_shapes, shapes);

    // Copies: the encoder from the wide source, the decoder (but cross-attention) from the
    // small one, renamed as Gemma 2 → T5Gemma.
    let (wide, small) = (
        raw(&enc.join("model.safetensors")),
        raw(&dec.join("model.safetensors")),
    );
    let source_name = |rest: &str| -> String {
        let renamed = rest
            .replace("pre_self_attn_layernorm", "input_layernorm")
            .replace("post_self_attn_layernorm", "post_attention_layernorm");
        format!("model.{renamed}")
    };
    let (mut copied, mut fresh) = (0, vec![]);
    for (name, t) in &got {
        assert_eq!(t.0, "F32", "{name}");
        let (src, rest) = if let Some(r) = name.strip_prefix("model.encoder.") {
            (&wide, r)
        } else {
            (&small, name.strip_prefix("model.decoder.").unwrap())
        };
        if rest.contains("cross_attn") {
            fresh.push((name.clone(), t));
            continue;
        }
        let s = &src[&source_name(rest)];
        assert!(
            t.2 == s.2 && t.1 == s.1,
            "`{name}` is not a copy of its source"
        );
        copied += 1;
    }
    assert_eq!(copied, got.len() - fresh.len());
    assert_eq!(
        fresh.len(),
        3 * 6,
        "3 decoder layers × (q, k, v, o, 2 norms)"
    );

    // Fresh: norms 0 (a unit scale), projections N(0, 0.02) as HF initialises T5Gemma.
    let mut values = vec![];
    for (name, t) in &fresh {
        let v: Vec<f64> =
            t.2.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
        if name.ends_with("layernorm.weight") {
            assert!(v.iter().all(|&x| x == 0.0), "{name} is not zeros");
        } else {
            values.extend(v);
        }
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 3420 samples: standard errors 3.4e-4 (mean) and 2.4e-4 (std); 4 of them allowed.
    assert_eq!(values.len(), 3 * (18 * 21 + 6 * 32 + 6 * 32 + 21 * 18));
    assert!(mean.abs() < 4.0 * 0.02 / n.sqrt(), "mean {mean}");
    assert!(
        (std - 0.02).abs() < 4.0 * 0.02 / (2.0 * n).sqrt(),
        "std {std}"
    );

    // Deterministic per seed: the same seed gives the same file, another seed other
    // cross-attention and the same copies.
    let again = tempfile::tempdir().unwrap();
    ok(&unbalanced(&enc, &dec, again.path(), 5));
    assert!(
        std::fs::read(out.path().join("model.safetensors")).unwrap()
            == std::fs::read(again.path().join("model.safetensors")).unwrap(),
        "same seed, different weights"
    );
    let other = tempfile::tempdir().unwrap();
    ok(&unbalanced(&enc, &dec, other.path(), 6));
    let o = raw(&other.path().join("model.safetensors"));
    for (name, t) in &got {
        let same = o[name].2 == t.2;
        let norm = name.ends_with("layernorm.weight");
        assert_eq!(
            same,
            !name.contains("cross_attn") || norm,
            "{name} with seed 6"
        );
    }

    // The phases the trainer reads: cross-attention alone for 1000 steps, then everything.
    let m = json(&out.path().join("adapt.json"));
    assert_eq!(m["adapt"], "unbalanced");
    assert_eq!(m["seed"], 5);
    assert_eq!(
        m["phases"],
        serde_json::json!([
            {"name": "warmup", "steps": 1000, "trainable": [
                "model.decoder.layers.{i}.pre_cross_attn_layernorm.weight",
                "model.decoder.layers.{i}.cross_attn.*",
                "model.decoder.layers.{i}.post_cross_attn_layernorm.weight"]},
            {"name": "full", "steps": null, "trainable": ["*"]},
        ])
    );

    // Our runtime reads it as a T5Gemma and runs it.
    let result = out.path().join("outputs.safetensors");
    ok(&[
        "run".into(),
        s(&root().join("models/t5gemma.edl")),
        "--hf".into(),
        s(out.path()),
        "--inputs".into(),
        s(&fixture("adapt/balanced-small/inputs.safetensors")),
        "--out".into(),
        s(&result),
    ]);
    let logits = &read_all(&result)["logits"];
    assert_eq!(logits.shape, [2, 5, 37]);
    assert!(logits.to_f64().iter().all(|x| x.is_finite()));
}

/// The phases as the trainer sees them, through the library.
#[test]
fn phases_api() {
    use encdecc_compiler::adapt::{find, is_trainable, phases};
    let prog = encdecc_dsl::load_program(&root().join("models/t5gemma_adapt.edl"))
        .unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
    let def = find(&prog, Some("unbalanced"), |_| true, "").unwrap();
    let p = phases(&def).unwrap();
    let names: Vec<(&str, Option<u64>)> = p
        .phases
        .iter()
        .map(|x| (x.name.as_str(), x.steps))
        .collect();
    assert_eq!(names, [("warmup", Some(1000)), ("full", None)]);
    let (warmup, full) = (&p.phases[0], &p.phases[1]);
    let cases = [
        ("model.decoder.layers.3.cross_attn.k_proj.weight", true),
        (
            "model.decoder.layers.3.pre_cross_attn_layernorm.weight",
            true,
        ),
        (
            "model.decoder.layers.3.post_cross_attn_layernorm.weight",
            true,
        ),
        ("model.decoder.layers.3.self_attn.k_proj.weight", false),
        (
            "model.decoder.layers.3.pre_self_attn_layernorm.weight",
            false,
        ),
        ("model.encoder.layers.0.self_attn.q_proj.weight", false),
        ("model.decoder.embed_tokens.weight", false),
    ];
    for (name, in_warmup) in cases {
        assert_eq!(is_trainable(warmup, name), in_warmup, "warmup: {name}");
        assert!(is_trainable(full, name), "full: {name}");
    }
    assert_eq!(p.at_step(999).unwrap().name, "warmup");
    assert_eq!(p.at_step(1000).unwrap().name, "full");
    let balanced = find(&prog, None, |d| d.sources.len() == 1, "one source").unwrap();
    assert_eq!(phases(&balanced).unwrap().phases.len(), 1);
}

/// Runs the binary on a broken input: exit ≠ 0, no panic, stderr names the problem.
fn check_fails(args: &[String], expect: &[&str]) -> String {
    let out = encdecc(args);
    let ctx = context(args, &out);
    println!("{ctx}");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "expected a failing exit code\n{ctx}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panicked\n{ctx}");
    for e in expect {
        assert!(stderr.contains(e), "stderr lacks {e:?}\n{ctx}");
    }
    stderr
}

#[test]
fn cli_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (tiny, small, wide) = (
        fixture("hf/gemma2-tiny"),
        fixture("adapt/gemma2-small"),
        fixture("adapt/gemma2-wide"),
    );
    let read = |dir: &Path| {
        ["config.json", "model.safetensors"].map(|f| std::fs::read(dir.join(f)).unwrap())
    };
    let before = read(&small);
    let missing = tmp.path().join("nowhere");
    let no_config = tmp.path().join("empty");
    std::fs::create_dir(&no_config).unwrap();
    let no_weights = tmp.path().join("no-weights");
    std::fs::create_dir(&no_weights).unwrap();
    std::fs::copy(tiny.join("config.json"), no_weights.join("config.json")).unwrap();
    // gemma2-small in bf16 (truncated): an unbalanced pair must share one dtype.
    let bf16 = tmp.path().join("small-bf16");
    std::fs::create_dir(&bf16).unwrap();
    std::fs::copy(small.join("config.json"), bf16.join("config.json")).unwrap();
    let tensors = raw(&small.join("model.safetensors"));
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (_, shape, bytes))| {
            let b = bytes.chunks_exact(4).flat_map(|c| [c[2], c[3]]).collect();
            (k, shape, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(k, sh, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, sh.clone(), b);
            (k.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &bf16.join("model.safetensors")).unwrap();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            unbalanced(&wide, &bf16, &out, 0),
            vec![
                "of the `decoder` checkpoint is BF16, but",
                "of the `encoder` checkpoint is F32",
                "one dtype",
                "-->",
            ],
        ),
        (
            balanced(&missing, &out),
            vec!["--from", "does not exist", "nowhere"],
        ),
        (
            balanced(&no_config, &out),
            vec!["--from", "cannot read", "config.json"],
        ),
        (
            balanced(&no_weights, &out),
            vec!["--from", "no model.safetensors"],
        ),
        (
            balanced(&fixture("hf/t5gemma-tiny"), &out),
            vec!["model_type `t5gemma`", "Gemma 2", "`gemma2`"],
        ),
        (
            unbalanced(&wide, &tiny, &out, 0),
            vec!["vocab_size 37", "256", "one vocabulary"],
        ),
        (
            unbalanced(&missing, &small, &out, 0),
            vec!["--from-encoder", "does not exist"],
        ),
        (
            vec![
                "adapt".into(),
                rules(),
                "--from-encoder".into(),
                s(&wide),
                "--out".into(),
                s(&out),
            ],
            vec!["--from-encoder needs --from-decoder"],
        ),
        (
            vec!["adapt".into(), rules(), "--out".into(), s(&out)],
            vec!["needs --from DIR"],
        ),
        (
            vec![
                "adapt".into(),
                rules(),
                "--from".into(),
                s(&small),
                "--from-decoder".into(),
                s(&small),
                "--out".into(),
                s(&out),
            ],
            vec!["cannot be used with"],
        ),
        (
            [
                balanced(&small, &out),
                vec!["--rules".into(), "nope".into()],
            ]
            .concat(),
            vec![
                "no `adapt nope`",
                "balanced(gemma) -> T5Gemma",
                "unbalanced(encoder, decoder)",
            ],
        ),
        (
            [
                unbalanced(&wide, &small, &out, 0),
                vec!["--rules".into(), "balanced".into()],
            ]
            .concat(),
            vec![
                "`adapt balanced(gemma) -> T5Gemma` reads a source `gemma`",
                "use --from DIR",
            ],
        ),
        (
            balanced(&small, &small),
            vec!["is the --from directory", "never writes into a source"],
        ),
        (
            balanced(&small, &fixture("adapt/gemma2-small/config.json")),
            vec!["not a directory"],
        ),
    ];
    for (args, expect) in &cases {
        check_fails(args, expect);
        assert!(!out.exists(), "a failed run created {}", out.display());
    }
    // The sources are untouched by all of that.
    assert!(read(&small) == before, "a source changed");

    // An existing, non-empty output directory needs --force; then only our files change.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    check_fails(&balanced(&small, &out), &["is not empty", "--force"]);
    assert!(!out.join("model.safetensors").exists());
    let mut forced = balanced(&small, &out);
    forced.push("--force".into());
    ok(&forced);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_same_tensors(
        &out.join("model.safetensors"),
        &fixture("adapt/balanced-small/model.safetensors"),
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// Broken rules: each case is a rules file (importing the real T5Gemma model) and the
/// sources it is run on; the error is snapshotted with paths made stable.
#[test]
fn rule_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&root().join("models/t5gemma.edl"));
    let (small, wide) = (fixture("adapt/gemma2-small"), fixture("adapt/gemma2-wide"));
    // The balanced rules with one line replaced (or added when `old` is empty).
    let real = std::fs::read_to_string(root().join("models/t5gemma_adapt.edl")).unwrap();
    let edit = |old: &str, new: &str| -> String {
        let text = real.replace("import \"t5gemma.edl\"", &format!("import \"{model}\""));
        if old.is_empty() {
            text.replacen("  phase full\n}", &format!("{new}\n  phase full\n}}"), 1)
        } else {
            assert!(text.contains(old), "{old}");
            text.replacen(old, new, 1)
        }
    };
    const DEC_NORM: &str =
        "  model.decoder.layers.{i}.post_cross_attn_layernorm.weight <- model.layers.{i}.post_attention_layernorm.weight";
    const ENC_MLP: &str = "  model.encoder.layers.{i}.mlp.* <- model.layers.{i}.mlp.*";
    const UNB_CROSS: &str =
        "  model.decoder.layers.{i}.cross_attn.{proj}.weight <- normal(std: 0.02)";
    let cases: Vec<(&str, String, bool)> = vec![
        ("uncovered", edit(DEC_NORM, ""), true),
        (
            "covered_twice",
            edit("", "  model.encoder.layers.{i}.mlp.up_proj.weight <- model.layers.{i}.mlp.gate_proj.weight"),
            true,
        ),
        ("covers_nothing", edit("", "  model.encoder.layers.{i}.moe.* <- model.layers.{i}.mlp.*"), true),
        (
            "missing_source",
            edit(ENC_MLP, "  model.encoder.layers.{i}.mlp.* <- model.layers.{i}.ffn.*"),
            true,
        ),
        (
            "shape_mismatch",
            edit(
                "  model.encoder.layers.{i}.mlp.* <- model.layers.{i}.mlp.*",
                "  model.encoder.layers.{i}.mlp.{p}.weight <- model.layers.{i}.mlp.down_proj.weight",
            ),
            true,
        ),
        (
            "unbound_variable",
            edit(ENC_MLP, "  model.encoder.layers.{i}.mlp.* <- model.layers.{j}.mlp.*"),
            true,
        ),
        ("unknown_source", edit(ENC_MLP, "  model.encoder.layers.{i}.mlp.* <- llama: model.layers.{i}.mlp.*"), true),
        ("unknown_init", edit(DEC_NORM, "  model.decoder.layers.{i}.post_cross_attn_layernorm.weight <- xavier()"), true),
        ("normal_without_std", edit(DEC_NORM, "  model.decoder.layers.{i}.post_cross_attn_layernorm.weight <- normal(mean: 1)"), true),
        ("negative_std", edit(DEC_NORM, "  model.decoder.layers.{i}.post_cross_attn_layernorm.weight <- normal(std: -0.5)"), true),
        (
            "phase_matches_nothing",
            edit("  phase full\n", "  phase warmup steps 10 train [model.decoder.layers.{i}.cross.*]\n  phase full\n"),
            true,
        ),
        ("phase_without_steps_not_last", edit("  phase full\n", "  phase warmup train [model.encoder.*]\n  phase full\n"), true),
        (
            "cross_attention_copy_unbalanced",
            real.replace("import \"t5gemma.edl\"", &format!("import \"{model}\"")).replace(
                UNB_CROSS,
                "  model.decoder.layers.{i}.cross_attn.* <- decoder: model.layers.{i}.self_attn.*",
            ),
            false,
        ),
        (
            "source_role_missing_unbalanced",
            real.replace("import \"t5gemma.edl\"", &format!("import \"{model}\"")).replace(
                "  model.encoder.norm.weight <- encoder: model.norm.weight",
                "  model.encoder.norm.weight <- model.norm.weight",
            ),
            false,
        ),
    ];
    for (name, text, is_balanced) in cases {
        let file = tmp.path().join(format!("{name}.edl"));
        std::fs::write(&file, &text).unwrap();
        let out = tmp.path().join(format!("{name}-out"));
        let mut args = if is_balanced {
            balanced(&small, &out)
        } else {
            unbalanced(&wide, &small, &out, 0)
        };
        args[1] = s(&file);
        let stderr = check_fails(&args, &[&format!("--> {}:", file.display())]);
        assert!(!out.exists(), "{name}: a failed run created its output");
        let stable = stderr
            .replace(&s(tmp.path()), "$TMP")
            .replace(&s(&root()), "$ROOT");
        insta::assert_snapshot!(format!("rule_errors__{name}"), stable);
    }
}
