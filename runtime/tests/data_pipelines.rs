//! Data pipelines: corpus split, window order, the three batchers' exact tensors on
//! hand-computed examples, determinism, resume, UL2 corruption statistics and invariants.

use encdecc_runtime::data::{
    default_mixture, random_spans_noise_mask, reconstruct, shift_right, split_text, Batch, Batcher,
    CausalLmBatcher, CausalLmConfig, Corpus, CorpusConfig, Corruption, Data, DataConfig, Denoiser,
    Mode, ObjectiveConfig, Order, PrefixLmBatcher, PrefixLmConfig, PrefixSplit, Ul2Batcher,
    Ul2Config, IGNORE_INDEX,
};
use encdecc_runtime::rng::Rng;
use encdecc_runtime::tokenizer::{SpecialIds, Tokenizer, TokenizerConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn byte_tokenizer() -> Tokenizer {
    Tokenizer::load(&TokenizerConfig::default()).unwrap()
}

fn special() -> SpecialIds {
    byte_tokenizer().special().clone()
}

/// The first 400 kB of the bundled Shakespeare, byte-tokenized (loaded once).
fn shakespeare() -> Arc<[i64]> {
    static TOKENS: OnceLock<Arc<[i64]>> = OnceLock::new();
    TOKENS
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare.txt");
            let text = std::fs::read_to_string(path).unwrap();
            byte_tokenizer().encode(&text[..400_000]).unwrap().into()
        })
        .clone()
}

fn ids(batch: &Batch, name: &str) -> Vec<Vec<i64>> {
    let t = &batch[name];
    let v = t.as_i64().unwrap_or_else(|| panic!("{name} is not i64"));
    v.chunks(t.shape[1]).map(|r| r.to_vec()).collect()
}

// ---- corpus ----

#[test]
fn split_text_cuts_at_a_line_start() {
    #[track_caller]
    fn check(text: &str, fraction: f64, want: (&str, &str)) {
        assert_eq!(
            split_text(text, fraction).unwrap(),
            want,
            "{text:?} {fraction}"
        );
    }
    check(
        "aaaa\nbbbb\ncccc\ndddd\n",
        0.0,
        ("aaaa\nbbbb\ncccc\ndddd\n", ""),
    );
    check(
        "aaaa\nbbbb\ncccc\ndddd\n",
        0.25,
        ("aaaa\nbbbb\ncccc\n", "dddd\n"),
    );
    check(
        "aaaa\nbbbb\ncccc\ndddd\n",
        0.3,
        ("aaaa\nbbbb\ncccc\n", "dddd\n"),
    );
    check(
        "aaaa\nbbbb\ncccc\ndddd\n",
        0.2,
        ("aaaa\nbbbb\ncccc\ndddd\n", ""),
    );
    check(
        "aaaa\nbbbb\ncccc\ndddd\n",
        0.5,
        ("aaaa\nbbbb\n", "cccc\ndddd\n"),
    );
    check(
        "aaaa\nbbbb\ncccc\ndddd",
        0.1,
        ("aaaa\nbbbb\ncccc\ndddd", ""),
    );
    // The cut lands inside a multi-byte character: moved to the next line, no panic.
    check("ééé\n日本語\n", 0.5, ("ééé\n日本語\n", ""));
    check("ééé\n日本語\nab\n", 0.5, ("ééé\n日本語\n", "ab\n"));
    check("", 0.5, ("", ""));
    for bad in [-0.1, 1.0, f64::NAN] {
        let err = split_text("a\n", bad).unwrap_err();
        assert!(err.contains("heldout_fraction must be in [0, 1)"), "{err}");
    }
}

#[test]
fn corpus_load_splits_the_bundled_text() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let tok = byte_tokenizer();
    let c = Corpus::load(
        &CorpusConfig {
            path,
            heldout_fraction: 0.05,
        },
        &tok,
    )
    .unwrap();
    assert_eq!(c.train.len() + c.heldout.len(), text.len());
    assert_eq!(c.split_byte, c.train.len());
    let held = (text.len() - c.split_byte) as f64 / text.len() as f64;
    assert!((held - 0.05).abs() < 1e-3, "held out {held}");
    assert_eq!(&text.as_bytes()[c.split_byte - 1], &b'\n');
    assert_eq!(tok.decode(&c.heldout).unwrap(), &text[c.split_byte..]);
    assert_eq!(tok.decode(&c.train[..100]).unwrap(), &text[..100]);
}

#[test]
fn corpus_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tok = byte_tokenizer();
    #[track_caller]
    fn check(tok: &Tokenizer, path: &Path, fraction: f64, want: &str) {
        let config = CorpusConfig {
            path: path.into(),
            heldout_fraction: fraction,
        };
        let err = Corpus::load(&config, tok).err().expect("an error");
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    check(
        &tok,
        &dir.path().join("nope.txt"),
        0.05,
        "cannot read corpus",
    );
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9\n").unwrap();
    check(
        &tok,
        &latin1,
        0.05,
        "not UTF-8 (first bad byte at offset 3)",
    );
    let ok = dir.path().join("ok.txt");
    std::fs::write(&ok, "a\n").unwrap();
    check(&tok, &ok, 1.5, "heldout_fraction");
}

/// Train and held-out halves with disjoint alphabets: every token a batcher emits must come
/// from its own half.
#[test]
fn data_config_loads_and_splits() {
    let json = r#"{"corpus": {"path": "shakespeare.txt", "heldout_fraction": 0.1},
                   "objective": {"objective": "ul2", "seq_len": 256, "batch_size": 4}}"#;
    let config: DataConfig = serde_json::from_str(json).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let data = Data::load(&config.relative_to(&dir)).unwrap();
    let total = std::fs::metadata(dir.join("shakespeare.txt"))
        .unwrap()
        .len() as usize;
    assert_eq!(data.corpus.train.len() + data.corpus.heldout.len(), total);
    let mut train = data.train().unwrap();
    let mut heldout = data.heldout().unwrap();
    // bos, mode token, and the S denoiser's longest prefix (255).
    assert_eq!(train.next_batch()["input_ids"].shape, [4, 257]);
    // ~496 kB held out, in windows of 256.
    assert_eq!(
        heldout.epoch_batches(),
        (data.corpus.heldout.len() / 256).div_ceil(4)
    );
    let a = heldout.epoch_batch(3).unwrap();
    assert_eq!(
        a,
        data.heldout().unwrap().epoch_batch(3).unwrap(),
        "same eval set every time"
    );
    let err = Data::load(&config).err().expect("no such file here");
    assert!(err.contains("cannot read corpus shakespeare.txt"), "{err}");
    let err = serde_json::from_str::<DataConfig>(r#"{"corpus": {"path": "x"}}"#).unwrap_err();
    assert!(
        err.to_string().contains("missing field `objective`"),
        "{err}"
    );
}

/// The fixture BPE over several 64 KiB chunks: decoding gives the text back, so chunked
/// tokenization loses and repeats nothing.
#[test]
fn hf_tokenized_corpus_round_trips() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/bytelevel.json");
    let tok = Tokenizer::load(&TokenizerConfig::Hf { path }).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare.txt"),
    )
    .unwrap();
    let text = &text[..300_000];
    let c = Corpus::from_text(text, 0.2, &tok).unwrap();
    assert!(
        c.train.len() < text.len() / 2,
        "BPE merges: {} tokens",
        c.train.len()
    );
    assert_eq!(tok.decode(&c.train).unwrap(), &text[..c.split_byte]);
    assert_eq!(tok.decode(&c.heldout).unwrap(), &text[c.split_byte..]);
}

#[test]
fn heldout_is_disjoint_from_train() {
    let text = format!("{}{}", "abab abba\n".repeat(200), "xyxy yxxy\n".repeat(200));
    let tok = byte_tokenizer();
    let c = Corpus::from_text(&text, 0.5, &tok).unwrap();
    let train_ids = tok.encode("ab \n").unwrap();
    let held_ids = tok.encode("xy \n").unwrap();
    let sp = special();
    let specials = [sp.pad, sp.bos, sp.eos, IGNORE_INDEX];
    let objectives = [
        r#"{"objective": "causal_lm", "seq_len": 33}"#,
        r#"{"objective": "prefix_lm", "seq_len": 40}"#,
        r#"{"objective": "ul2", "seq_len": 40, "order": "sequential"}"#,
    ];
    for json in objectives {
        let config: ObjectiveConfig = serde_json::from_str(json).unwrap();
        for (stream, allowed) in [(&c.train, &train_ids), (&c.heldout, &held_ids)] {
            let mut b = config.batcher(stream.clone(), &sp).unwrap();
            for _ in 0..30 {
                for (name, t) in b.next_batch() {
                    if name.contains("mask") || name.contains("positions") {
                        continue;
                    }
                    for id in t.as_i64().unwrap() {
                        let ok = allowed.contains(id)
                            || specials.contains(id)
                            || sp.sentinels.contains(id)
                            || (360..363).contains(id);
                        assert!(ok, "{json}: {name} has {id}");
                    }
                }
            }
        }
    }
}

// ---- windows ----

/// Sequential order covers every token exactly once, the tail in a shorter window.
#[test]
fn sequential_windows_cover_the_stream_once() {
    #[track_caller]
    fn check(n: usize, seq_len: usize, want_windows: usize) {
        let tokens: Arc<[i64]> = (0..n as i64).map(|i| 4 + i % 256).collect();
        let config = CausalLmConfig {
            batch_size: 1,
            seq_len,
            order: Order::Sequential,
            ..Default::default()
        };
        let mut b = CausalLmBatcher::new(&config, tokens.clone(), &special()).unwrap();
        assert_eq!(b.windows_per_epoch(), want_windows);
        let mut seen = Vec::new();
        for _ in 0..want_windows {
            let batch = b.next_batch();
            let (row, mask) = (
                &ids(&batch, "input_ids")[0],
                &ids(&batch, "attention_mask")[0],
            );
            let real = mask.iter().sum::<i64>() as usize;
            assert_eq!(row[0], 2, "bos");
            seen.extend_from_slice(&row[1..real]);
        }
        assert_eq!(&seen[..], &tokens[..], "n {n} seq_len {seq_len}");
        // The next epoch starts over.
        assert_eq!(ids(&b.next_batch(), "input_ids")[0][1], tokens[0]);
    }
    check(12, 5, 3);
    check(13, 5, 4);
    check(1, 5, 1);
    check(1000, 65, 16);
}

/// Shuffled order: within an epoch, windows are distinct, non-overlapping, full, and start
/// at the same offset modulo the window length; the offset and order change between epochs.
#[test]
fn shuffled_windows_partition_each_epoch() {
    let n = 1000;
    let tokens: Arc<[i64]> = (0..n as i64).map(|i| 1000 + i).collect();
    let config = CausalLmConfig {
        batch_size: 1,
        seq_len: 65,
        seed: 7,
        ..Default::default()
    };
    let mut b = CausalLmBatcher::new(&config, tokens, &special()).unwrap();
    let per_epoch = b.windows_per_epoch();
    assert_eq!(per_epoch, 15);
    let mut epochs = Vec::new();
    for _ in 0..4 {
        let starts: Vec<i64> = (0..per_epoch)
            .map(|_| {
                let row = &ids(&b.next_batch(), "input_ids")[0];
                assert_eq!(row.len(), 65);
                assert!(row[1..].windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
                row[1] - 1000
            })
            .collect();
        let mut sorted = starts.clone();
        sorted.sort();
        let offset = sorted[0];
        assert!(offset <= (n - 15 * 64) as i64);
        assert_eq!(sorted, (0..15).map(|k| offset + 64 * k).collect::<Vec<_>>());
        epochs.push(starts);
    }
    assert!(
        epochs.windows(2).all(|e| e[0] != e[1]),
        "each epoch reshuffles"
    );
}

#[test]
fn too_short_streams_are_errors() {
    let tokens: Arc<[i64]> = vec![5; 10].into();
    let sp = special();
    #[track_caller]
    fn check(json: &str, tokens: &Arc<[i64]>, sp: &SpecialIds, want: &str) {
        let config: ObjectiveConfig = serde_json::from_str(json).unwrap();
        let err = config.batcher(tokens.clone(), sp).err().expect("an error");
        assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
    }
    check(
        r#"{"objective": "causal_lm", "seq_len": 12}"#,
        &tokens,
        &sp,
        "has 10 tokens, fewer than one window of 11",
    );
    check(
        r#"{"objective": "prefix_lm", "seq_len": 11}"#,
        &tokens,
        &sp,
        "fewer than one window of 11",
    );
    check(
        r#"{"objective": "ul2", "seq_len": 64}"#,
        &tokens,
        &sp,
        "fewer than one window of 64",
    );
    check(
        r#"{"objective": "causal_lm", "seq_len": 1}"#,
        &tokens,
        &sp,
        "room for a text token",
    );
    check(
        r#"{"objective": "causal_lm", "batch_size": 0}"#,
        &tokens,
        &sp,
        "batch_size >= 1",
    );
    check(
        r#"{"objective": "prefix_lm", "seq_len": 1}"#,
        &tokens,
        &sp,
        "seq_len >= 2",
    );
    check(
        r#"{"objective": "ul2", "seq_len": 1}"#,
        &tokens,
        &sp,
        "seq_len >= 2",
    );
    let empty: Arc<[i64]> = Vec::new().into();
    check(
        r#"{"objective": "causal_lm", "order": "sequential"}"#,
        &empty,
        &sp,
        "has 0 tokens",
    );
}

// ---- exact tensors ----

#[test]
fn shift_right_matches_hf() {
    #[track_caller]
    fn check(labels: &[i64], want: &[i64]) {
        assert_eq!(shift_right(labels, 2, 0), want, "{labels:?}");
    }
    check(&[], &[]);
    check(&[7], &[2]);
    check(&[5, 6, 7], &[2, 5, 6]);
    check(&[5, 6, 1], &[2, 5, 6]);
    check(&[5, -100, -100], &[2, 5, 0]);
    check(&[5, 1, -100, -100], &[2, 5, 1, 0]);
}

#[test]
fn causal_lm_batch_by_hand() {
    let tokens: Arc<[i64]> = (10..17).collect();
    let config = CausalLmConfig {
        batch_size: 3,
        seq_len: 4,
        order: Order::Sequential,
        ..Default::default()
    };
    let b = CausalLmBatcher::new(&config, tokens, &special())
        .unwrap()
        .next_batch();
    assert_eq!(b.len(), 3);
    assert_eq!(
        ids(&b, "input_ids"),
        [[2, 10, 11, 12], [2, 13, 14, 15], [2, 16, 0, 0]]
    );
    assert_eq!(
        ids(&b, "attention_mask"),
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    );
    assert_eq!(
        ids(&b, "labels"),
        [[2, 10, 11, 12], [2, 13, 14, 15], [2, 16, -100, -100]]
    );
    assert_eq!(b["input_ids"].shape, [3, 4]);
}

/// Windows [10..15], [16..21] and the tail [22, 23, 24] of a 15-token stream, split in half.
#[test]
fn prefix_lm_batch_by_hand() {
    let tokens: Arc<[i64]> = (10..25).collect();
    let config = PrefixLmConfig {
        batch_size: 3,
        seq_len: 6,
        order: Order::Sequential,
        ..Default::default()
    };
    let mut batcher = PrefixLmBatcher::new(&config, tokens, &special()).unwrap();
    assert_eq!(batcher.shapes(), (4, 3));
    let b = batcher.next_batch();
    assert_eq!(
        ids(&b, "input_ids"),
        [[2, 10, 11, 12], [2, 16, 17, 18], [2, 22, 23, 0]]
    );
    assert_eq!(
        ids(&b, "attention_mask"),
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    );
    assert_eq!(
        ids(&b, "labels"),
        [[13, 14, 15], [19, 20, 21], [24, -100, -100]]
    );
    assert_eq!(
        ids(&b, "decoder_input_ids"),
        [[2, 13, 14], [2, 19, 20], [2, 24, 0]]
    );
    assert_eq!(
        ids(&b, "decoder_attention_mask"),
        [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    );
    assert_eq!(
        ids(&b, "teacher_input_ids"),
        [
            [2, 10, 11, 12, 13, 14, 15],
            [2, 16, 17, 18, 19, 20, 21],
            [2, 22, 23, 24, 0, 0, 0]
        ]
    );
    assert_eq!(
        ids(&b, "teacher_attention_mask"),
        [
            [1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 0, 0, 0]
        ]
    );
    assert_eq!(
        ids(&b, "teacher_label_positions"),
        [[3, 4, 5], [3, 4, 5], [2, 0, 0]]
    );
    // Teacher position p predicts teacher token p + 1: that token is the label.
    let (teacher, labels, pos) = (
        ids(&b, "teacher_input_ids"),
        ids(&b, "labels"),
        ids(&b, "teacher_label_positions"),
    );
    for r in 0..3 {
        for t in 0..3 {
            if labels[r][t] != IGNORE_INDEX {
                assert_eq!(teacher[r][pos[r][t] as usize + 1], labels[r][t]);
            }
        }
    }
}

#[test]
fn prefix_lm_target_eos_and_no_bos() {
    let tokens: Arc<[i64]> = (10..20).collect();
    let config = PrefixLmConfig {
        batch_size: 2,
        seq_len: 5,
        encoder_bos: false,
        target_eos: true,
        order: Order::Sequential,
        ..Default::default()
    };
    let mut batcher = PrefixLmBatcher::new(&config, tokens, &special()).unwrap();
    assert_eq!(batcher.shapes(), (2, 4)); // round_ties_even(2.5) = 2
    let b = batcher.next_batch();
    assert_eq!(ids(&b, "input_ids"), [[10, 11], [15, 16]]);
    assert_eq!(ids(&b, "labels"), [[12, 13, 14, 1], [17, 18, 19, 1]]);
    assert_eq!(
        ids(&b, "decoder_input_ids"),
        [[2, 12, 13, 14], [2, 17, 18, 19]]
    );
    assert_eq!(
        ids(&b, "teacher_input_ids"),
        [[10, 11, 12, 13, 14, 1], [15, 16, 17, 18, 19, 1]]
    );
    assert_eq!(
        ids(&b, "teacher_label_positions"),
        [[1, 2, 3, 4], [1, 2, 3, 4]]
    );
}

#[test]
fn prefix_lm_split_sizes() {
    #[track_caller]
    fn check(split: PrefixSplit, shapes: (usize, usize), prefix: (usize, usize), mean: f64) {
        let config = PrefixLmConfig {
            batch_size: 16,
            seq_len: 512,
            split: split.clone(),
            seed: 3,
            ..Default::default()
        };
        let mut batcher = PrefixLmBatcher::new(&config, shakespeare(), &special()).unwrap();
        assert_eq!(batcher.shapes(), shapes, "{split:?}");
        let mut lens = Vec::new();
        for _ in 0..40 {
            for e in batcher.next_examples() {
                assert_eq!(e.input.len() - 1 + e.target.len(), 512);
                lens.push(e.input.len() - 1);
            }
        }
        let (lo, hi) = (*lens.iter().min().unwrap(), *lens.iter().max().unwrap());
        assert!(
            lo >= prefix.0 && hi <= prefix.1,
            "{split:?}: prefix {lo}..={hi}"
        );
        let m = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((m - mean).abs() < 6.0, "{split:?}: mean prefix {m}");
        let b = batcher.next_batch();
        assert_eq!(b["input_ids"].shape, [16, shapes.0]);
        assert_eq!(b["labels"].shape, [16, shapes.1]);
        assert_eq!(b["teacher_input_ids"].shape, [16, shapes.0 + shapes.1]);
    }
    check(
        PrefixSplit::Fixed { fraction: 0.5 },
        (257, 256),
        (256, 256),
        256.0,
    );
    check(
        PrefixSplit::Fixed { fraction: 0.25 },
        (129, 384),
        (128, 128),
        128.0,
    );
    check(PrefixSplit::Fixed { fraction: 0.0 }, (2, 511), (1, 1), 1.0);
    check(
        PrefixSplit::Uniform { min: 0.2, max: 0.8 },
        (411, 410),
        (102, 410),
        256.0,
    );
}

// ---- determinism and resume ----

fn objectives() -> Vec<(&'static str, ObjectiveConfig)> {
    [
        (
            "causal",
            r#"{"objective": "causal_lm", "batch_size": 4, "seq_len": 64}"#,
        ),
        (
            "prefix fixed",
            r#"{"objective": "prefix_lm", "batch_size": 4, "seq_len": 64}"#,
        ),
        (
            "prefix uniform",
            r#"{"objective": "prefix_lm", "batch_size": 3, "seq_len": 64,
                "split": {"kind": "uniform", "min": 0.1, "max": 0.9}}"#,
        ),
        (
            "ul2",
            r#"{"objective": "ul2", "batch_size": 4, "seq_len": 96}"#,
        ),
        (
            "ul2 sequential",
            r#"{"objective": "ul2", "batch_size": 5, "seq_len": 96, "order": "sequential"}"#,
        ),
    ]
    .into_iter()
    .map(|(name, json)| (name, serde_json::from_str(json).unwrap()))
    .collect()
}

#[test]
fn epoch_batches_cover_a_sequential_stream_once() {
    for (name, config) in objectives() {
        let eval = config.with_order(Order::Sequential);
        let stream = small_stream();
        let mut b = eval.batcher(stream.clone(), &special()).unwrap();
        let first = b.next_batch();
        let state = b.state();
        let n = b.epoch_batches();
        let batches: Vec<Batch> = (0..n).map(|k| b.epoch_batch(k).unwrap()).collect();
        assert!(b.epoch_batch(n).is_none(), "{name}");
        assert_eq!(b.state(), state, "{name}: the cursor did not move");
        assert_eq!(batches[0], first, "{name}");
        // Rows of every batch, in order; the last batch may be short.
        let rows: usize = batches.iter().map(|x| x["input_ids"].shape[0]).sum();
        let bs = first["input_ids"].shape[0];
        assert!(
            rows > (n - 1) * bs && rows <= n * bs,
            "{name}: {rows} rows in {n} batches"
        );
        if let ObjectiveConfig::CausalLm(c) = &eval {
            // 600 tokens in windows of 63: 9 full, and a tail of 33.
            assert_eq!(rows, 10);
            let mut seen = Vec::new();
            for x in &batches {
                for (row, m) in ids(x, "input_ids").iter().zip(ids(x, "attention_mask")) {
                    let real = m.iter().sum::<i64>() as usize;
                    seen.extend_from_slice(&row[1..real]);
                }
            }
            assert_eq!(&seen[..], &stream[..], "{name}: seq_len {}", c.seq_len);
        }
    }
}

fn with_seed(config: &ObjectiveConfig, seed: u64) -> ObjectiveConfig {
    let mut c = config.clone();
    match &mut c {
        ObjectiveConfig::CausalLm(c) => c.seed = seed,
        ObjectiveConfig::PrefixLm(c) => c.seed = seed,
        ObjectiveConfig::Ul2(c) => c.seed = seed,
    }
    c
}

/// 600 tokens: windows of 64 or 96 wrap into new epochs within a few batches.
fn small_stream() -> Arc<[i64]> {
    shakespeare()[..600].into()
}

fn batches(config: &ObjectiveConfig, n: usize) -> Vec<Batch> {
    let mut b = config.batcher(small_stream(), &special()).unwrap();
    (0..n).map(|_| b.next_batch()).collect()
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    for (name, config) in objectives() {
        let a = batches(&config, 12);
        assert_eq!(a, batches(&config, 12), "{name}");
        // Shuffled: the window order changes; sequential UL2: the corruption does.
        assert_ne!(a, batches(&with_seed(&config, 1), 12), "{name}");
        // Batches within one stream differ from each other.
        assert_ne!(a[0], a[1], "{name}");
    }
}

#[test]
fn restored_state_continues_the_stream() {
    for (name, config) in objectives() {
        let all = batches(&config, 15);
        for k in [0, 1, 4, 11] {
            let mut b = config.batcher(small_stream(), &special()).unwrap();
            for _ in 0..k {
                b.next_batch();
            }
            let saved = serde_json::to_string(&b.state()).unwrap();
            assert!(saved.len() < 200, "{saved}");
            let mut fresh = config.batcher(small_stream(), &special()).unwrap();
            fresh
                .restore(&serde_json::from_str(&saved).unwrap())
                .unwrap();
            for (i, want) in all[k..].iter().enumerate() {
                assert_eq!(
                    &fresh.next_batch(),
                    want,
                    "{name}: batch {} after restoring at {k}",
                    k + i
                );
            }
            let state: serde_json::Value = serde_json::from_str(&saved).unwrap();
            assert_eq!(state["step"], k as u64);
        }
    }
}

#[test]
fn restore_rejects_a_foreign_state() {
    let config: ObjectiveConfig =
        serde_json::from_str(r#"{"objective": "ul2", "seq_len": 64, "seed": 5}"#).unwrap();
    let mut b = config.batcher(small_stream(), &special()).unwrap();
    let good = b.state();
    #[track_caller]
    fn check(b: &mut Box<dyn Batcher>, state: serde_json::Value, want: &str) {
        let err = b.restore(&state).unwrap_err();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    let edit = |key: &str, v: serde_json::Value| {
        let mut s = good.clone();
        s[key] = v;
        s
    };
    check(
        &mut b,
        edit("seed", 6.into()),
        "batcher state is for seed 6, but this run has 5",
    );
    check(
        &mut b,
        edit("objective", "prefix_lm".into()),
        "objective prefix_lm, but this run has ul2",
    );
    check(
        &mut b,
        edit("tokens", 601.into()),
        "a token stream of 601 tokens, but this run has 600 tokens",
    );
    check(
        &mut b,
        edit("step", "three".into()),
        "malformed batcher state",
    );
    check(&mut b, serde_json::json!([1, 2]), "malformed batcher state");
    check(&mut b, edit("extra", 1.into()), "unknown field `extra`");
    b.restore(&good).unwrap();
}

// ---- UL2 ----

/// T5's noise mask over many draws: the hidden share is r, the runs average μ (up to the
/// rounding of the span count), and the first token is hidden half the time.
#[test]
fn noise_mask_statistics() {
    #[track_caller]
    fn check(mean_span: f64, density: f64) {
        let len = 2048;
        let mut rng = Rng::new(11);
        let (mut hidden, mut runs, mut first_hidden) = (0, 0, 0);
        let draws = 200;
        for _ in 0..draws {
            let mask = random_spans_noise_mask(len, density, mean_span, &mut rng);
            assert_eq!(mask.len(), len);
            hidden += mask.iter().filter(|&&m| m).count();
            runs += (0..len)
                .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
                .count();
            first_hidden += usize::from(mask[0]);
        }
        let share = hidden as f64 / (draws * len) as f64;
        let mean = hidden as f64 / runs as f64;
        assert!(
            (share - density).abs() <= 0.005,
            "μ {mean_span} r {density}: share {share}"
        );
        assert!(
            (mean / mean_span - 1.0).abs() <= 0.05,
            "μ {mean_span} r {density}: mean {mean}"
        );
        let p = first_hidden as f64 / draws as f64;
        assert!((p - 0.5).abs() <= 0.12, "first token hidden {p}");
    }
    check(3.0, 0.15);
    check(8.0, 0.15);
    check(3.0, 0.5);
    check(8.0, 0.5);
    check(64.0, 0.15);
    check(64.0, 0.5);
}

/// T5's exact counts for short inputs (ties round to even) and degenerate ones.
#[test]
fn noise_mask_counts() {
    #[track_caller]
    fn check(len: usize, density: f64, mean_span: f64, noise: usize, spans: usize) {
        for seed in 0..20 {
            let mask = random_spans_noise_mask(len, density, mean_span, &mut Rng::new(seed));
            let hidden = mask.iter().filter(|&&m| m).count();
            let runs = (0..len)
                .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
                .count();
            assert_eq!(
                (hidden, runs),
                (noise, spans),
                "len {len} r {density} μ {mean_span}"
            );
        }
    }
    check(10, 0.15, 3.0, 2, 1); // round(1.5) = 2, round(0.67) = 1
    check(10, 0.25, 1.0, 2, 2); // round(2.5) = 2
    check(10, 0.35, 1.0, 4, 4); // round(3.5) = 4
    check(2, 0.15, 3.0, 1, 1); // at least one hidden, one kept
    check(2, 0.99, 3.0, 1, 1);
    check(6, 0.5, 0.5, 3, 3); // spans capped at the kept tokens
    check(512, 0.15, 64.0, 77, 1);
    check(512, 0.5, 3.0, 256, 85);
    // Degenerate inputs, as T5 treats them.
    let mut rng = Rng::new(1);
    assert!(random_spans_noise_mask(0, 0.5, 3.0, &mut rng).is_empty());
    assert_eq!(random_spans_noise_mask(5, 0.0, 3.0, &mut rng), [false; 5]);
    assert_eq!(
        random_spans_noise_mask(5, f64::NAN, 3.0, &mut rng),
        [false; 5]
    );
    let one: Vec<Vec<bool>> = (0..40)
        .map(|_| random_spans_noise_mask(1, 0.5, 3.0, &mut rng))
        .collect();
    assert!(
        one.contains(&vec![true]) && one.contains(&vec![false]),
        "computed as 2, cut to 1"
    );
}

fn ul2_alone(denoiser: &Denoiser, seq_len: usize) -> Ul2Config {
    Ul2Config {
        batch_size: 8,
        seq_len,
        denoisers: vec![denoiser.clone()],
        seed: 9,
        ..Default::default()
    }
}

/// Each default denoiser alone: reconstruction gives back the window, sentinels come in
/// order, the target ends with eos, the mode token is the denoiser's, and the hidden share
/// is r.
#[test]
fn ul2_examples_invert_and_follow_the_denoiser() {
    let sp = special();
    let stream = shakespeare();
    for d in default_mixture() {
        let config = ul2_alone(&d, 512);
        let mut batcher = Ul2Batcher::new(&config, stream.clone(), &sp).unwrap();
        let (s, t) = batcher.shapes();
        let (mut hidden, mut total) = (0, 0);
        for step in 0..25u64 {
            let examples = batcher.next_examples();
            for (i, e) in examples.iter().enumerate() {
                // Windows are contiguous runs of the stream: find this one's start from
                // reconstruction, and check it is really there.
                let original = reconstruct(e, &sp).unwrap();
                assert_eq!(original.len(), 512, "{d:?}");
                assert!(
                    stream.windows(512).any(|w| w == &original[..]),
                    "{d:?}: step {step} row {i} reconstructs to text not in the corpus"
                );
                assert_eq!(e.target.last(), Some(&sp.eos));
                let sentinels: Vec<i64> = e
                    .body
                    .iter()
                    .copied()
                    .filter(|x| sp.sentinels.contains(x))
                    .collect();
                let in_target: Vec<i64> = e
                    .target
                    .iter()
                    .copied()
                    .filter(|x| sp.sentinels.contains(x))
                    .collect();
                assert_eq!(
                    sentinels,
                    sp.sentinels[..sentinels.len()],
                    "in order from <extra_id_0>"
                );
                assert_eq!(sentinels, in_target);
                let x = batcher.seq2seq(e);
                let mode = sp.modes.unwrap();
                let want_mode = match d.mode {
                    Mode::Nlu => mode.nlu,
                    Mode::Nlg => mode.nlg,
                    Mode::S2s => mode.s2s,
                };
                assert_eq!(x.input[..2], [sp.bos, want_mode]);
                assert!(
                    x.input.len() <= s && x.target.len() <= t,
                    "{d:?}: within ({s}, {t})"
                );
                hidden += e.target.len() - 1 - in_target.len();
                total += 512;
            }
        }
        let share = hidden as f64 / total as f64;
        let r = match d.corruption {
            Corruption::Spans { noise_density, .. } | Corruption::Prefix { noise_density } => {
                noise_density
            }
        };
        assert!((share - r).abs() < 0.02, "{d:?}: hidden share {share}");
    }
}

#[test]
fn ul2_batch_shapes_and_padding() {
    let config = Ul2Config {
        batch_size: 16,
        seq_len: 128,
        seed: 4,
        ..Default::default()
    };
    let mut batcher = Ul2Batcher::new(&config, shakespeare(), &special()).unwrap();
    // S: bos + mode + 127 (the S denoiser's longest prefix); T: 64 + 1 (its longest target).
    // X (μ=3, r=0.5): body 64 + 21 = 85, target 64 + 21 + 1 = 86.
    assert_eq!(batcher.shapes(), (129, 86));
    for _ in 0..10 {
        let b = batcher.next_batch();
        assert_eq!(b.len(), 5);
        assert_eq!(b["input_ids"].shape, [16, 129]);
        assert_eq!(b["labels"].shape, [16, 86]);
        let (inp, mask) = (ids(&b, "input_ids"), ids(&b, "attention_mask"));
        let (labels, dec, dmask) = (
            ids(&b, "labels"),
            ids(&b, "decoder_input_ids"),
            ids(&b, "decoder_attention_mask"),
        );
        for r in 0..16 {
            let n = mask[r].iter().sum::<i64>() as usize;
            assert!(mask[r][..n].iter().all(|&m| m == 1) && inp[r][n..].iter().all(|&x| x == 0));
            let m = labels[r].iter().filter(|&&l| l != IGNORE_INDEX).count();
            assert!(labels[r][m..].iter().all(|&l| l == IGNORE_INDEX));
            assert_eq!(labels[r][m - 1], 1, "eos last");
            assert_eq!(dec[r], shift_right(&labels[r], 2, 0));
            let dn = dmask[r].iter().sum::<i64>() as usize;
            assert_eq!(dn, (m + 1).min(86));
            assert!(dec[r][..dn].iter().all(|&x| x != 0) && dec[r][dn..].iter().all(|&x| x == 0));
        }
    }
}

#[test]
fn ul2_mixture_follows_the_weights() {
    #[track_caller]
    fn check(weights: &[f64]) {
        let mut denoisers = default_mixture();
        denoisers.truncate(weights.len());
        for (d, &w) in denoisers.iter_mut().zip(weights) {
            d.weight = w;
        }
        let config = Ul2Config {
            batch_size: 50,
            seq_len: 64,
            denoisers,
            ..Default::default()
        };
        let mut batcher = Ul2Batcher::new(&config, shakespeare(), &special()).unwrap();
        let mut counts = vec![0usize; weights.len()];
        let n = 40;
        for _ in 0..n {
            for e in batcher.next_examples() {
                counts[e.denoiser] += 1;
            }
        }
        let total: f64 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let p = *c as f64 / (n * 50) as f64;
            assert!((p - w / total).abs() < 0.03, "{weights:?}: {counts:?}");
        }
    }
    check(&[1.0; 7]);
    check(&[1.0, 0.0, 3.0]);
    check(&[0.0, 2.0]);
}

#[test]
fn ul2_config_errors() {
    let sp = special();
    #[track_caller]
    fn check(json: &str, sp: &SpecialIds, want: &str) {
        let err = match serde_json::from_str::<ObjectiveConfig>(json) {
            Err(e) => e.to_string(),
            Ok(c) => c.batcher(shakespeare(), sp).err().expect("an error"),
        };
        assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
    }
    check(r#"{"objective": "ul2", "seq_len": 2048}"#, &sp, "denoiser R (mean_span 3, noise_density 0.15) makes 102 spans from 2048 tokens, but the tokenizer has 100 sentinels");
    check(
        r#"{"objective": "ul2", "denoisers": []}"#,
        &sp,
        "at least one denoiser",
    );
    let d = |c: &str, w: &str| {
        format!(
            r#"{{"objective": "ul2", "denoisers": [{{"name": "Q", "corruption": {c}, "mode": "nlu"{w}}}]}}"#
        )
    };
    check(
        &d(
            r#"{"kind": "spans", "mean_span": 3, "noise_density": 1.0}"#,
            "",
        ),
        &sp,
        "denoiser Q",
    );
    check(
        &d(
            r#"{"kind": "spans", "mean_span": 0, "noise_density": 0.5}"#,
            "",
        ),
        &sp,
        "mean_span be positive",
    );
    check(
        &d(r#"{"kind": "prefix", "noise_density": 0}"#, ""),
        &sp,
        "noise_density must lie in (0, 1)",
    );
    check(
        &d(
            r#"{"kind": "prefix", "noise_density": 0.3}"#,
            r#", "weight": -1"#,
        ),
        &sp,
        "weight -1 is not >= 0",
    );
    check(
        &d(
            r#"{"kind": "prefix", "noise_density": 0.3}"#,
            r#", "weight": 0"#,
        ),
        &sp,
        "positive sum",
    );
    check(
        &d(r#"{"kind": "spanz"}"#, ""),
        &sp,
        "unknown variant `spanz`",
    );
    check(
        r#"{"objective": "ul2", "mode_token": true}"#,
        &sp,
        "unknown field `mode_token`",
    );
    let mut no_modes = sp.clone();
    no_modes.modes = None;
    check(
        r#"{"objective": "ul2"}"#,
        &no_modes,
        "no [NLU], [NLG], [S2S] tokens",
    );
    let ok: ObjectiveConfig =
        serde_json::from_str(r#"{"objective": "ul2", "mode_tokens": false}"#).unwrap();
    assert!(ok.batcher(shakespeare(), &no_modes).is_ok());
}

#[test]
fn objective_configs_from_json() {
    let c: ObjectiveConfig = serde_json::from_str(r#"{"objective": "prefix_lm"}"#).unwrap();
    assert_eq!(c, ObjectiveConfig::PrefixLm(PrefixLmConfig::default()));
    let c: ObjectiveConfig = serde_json::from_str(
        r#"{"objective": "prefix_lm", "seq_len": 128, "split": {"kind": "uniform", "min": 0.3, "max": 0.7}, "target_eos": true}"#,
    )
    .unwrap();
    let want = PrefixLmConfig {
        seq_len: 128,
        split: PrefixSplit::Uniform { min: 0.3, max: 0.7 },
        target_eos: true,
        ..Default::default()
    };
    assert_eq!(c, ObjectiveConfig::PrefixLm(want));
    let c: ObjectiveConfig = serde_json::from_str(
        r#"{"objective": "ul2", "mode_tokens": false, "denoisers": [
            {"name": "R", "corruption": {"kind": "spans", "mean_span": 3, "noise_density": 0.15}, "mode": "nlu"},
            {"name": "S", "corruption": {"kind": "prefix", "noise_density": 0.25}, "mode": "s2s", "weight": 2}]}"#,
    )
    .unwrap();
    let ObjectiveConfig::Ul2(u) = c else {
        panic!("ul2")
    };
    assert!(!u.mode_tokens);
    assert_eq!(
        u.denoisers,
        [
            default_mixture()[0].clone(),
            Denoiser {
                weight: 2.0,
                ..default_mixture()[2].clone()
            }
        ]
    );
    assert_eq!(Ul2Config::default().denoisers.len(), 7);
    let err = serde_json::from_str::<ObjectiveConfig>(r#"{"objective": "mlm"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown variant `mlm`"), "{err}");
}
