//! Tokenizers: the byte layout and round trips, HF tokenizer.json files against ids computed
//! by python `tokenizers` (fixtures/tokenizer/make_fixtures.py), and clear errors.

use encdecc_runtime::tokenizer::{ModeIds, Tokenizer, TokenizerConfig};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(name)
}

fn byte() -> Tokenizer {
    Tokenizer::load(&TokenizerConfig::default()).unwrap()
}

fn hf(name: &str) -> Tokenizer {
    Tokenizer::load(&TokenizerConfig::Hf {
        path: fixture(name),
    })
    .unwrap()
}

#[test]
fn byte_round_trip() {
    #[track_caller]
    fn check(text: &str) {
        let t = byte();
        let ids = t.encode(text).unwrap();
        let want: Vec<i64> = text.bytes().map(|b| b as i64 + 4).collect();
        assert_eq!(ids, want, "{text:?}");
        assert!(ids.iter().all(|&i| (4..260).contains(&i)));
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
    check("");
    check("To be, or not to be");
    check("  two spaces\n\tand a tab\r\n");
    check("naïve café");
    check("— “quotes” ‘single’ …");
    check("日本語のテキスト");
    check("🙂👍🏽 emoji with modifiers");
    check("\u{0}\u{7f}\u{80}\u{10ffff}");
}

#[test]
fn byte_decode_names_specials_and_replaces_bad_bytes() {
    #[track_caller]
    fn check(ids: &[i64], want: &str) {
        assert_eq!(byte().decode(ids).unwrap(), want, "{ids:?}");
    }
    let b = |s: &str| s.bytes().map(|b| b as i64 + 4).collect::<Vec<_>>();
    check(
        &[2, 4 + b'h' as i64, 4 + b'i' as i64, 1, 0],
        "<bos>hi<eos><pad>",
    );
    check(&[3], "<unk>");
    check(&[260, 359], "<extra_id_0><extra_id_99>");
    check(&[360, 361, 362], "[NLU][NLG][S2S]");
    check(&[363, 383], "<unused_363><unused_383>");
    // Out of the vocabulary, or negative: the replacement character.
    check(&[384, -1], "\u{fffd}\u{fffd}");
    // A lone continuation byte, and a multi-byte character cut by a special token.
    check(&[4 + 0x80], "\u{fffd}");
    let e_acute = b("é");
    check(&[e_acute[0], 1, e_acute[1]], "\u{fffd}<eos>\u{fffd}");
    check(&[&b("a")[..], &e_acute, &b("b")].concat(), "aéb");
}

#[test]
fn byte_layout() {
    #[track_caller]
    fn check(sentinels: usize, vocab: usize, modes: [i64; 3]) {
        let t = Tokenizer::load(&TokenizerConfig::Byte { sentinels }).unwrap();
        let sp = t.special();
        assert_eq!((sp.pad, sp.eos, sp.bos, sp.unk), (0, 1, 2, Some(3)));
        assert_eq!(
            sp.sentinels,
            (260..260 + sentinels as i64).collect::<Vec<_>>()
        );
        let [nlu, nlg, s2s] = modes;
        assert_eq!(sp.modes, Some(ModeIds { nlu, nlg, s2s }));
        assert_eq!(t.vocab_size(), vocab);
        assert_eq!(t.vocab_size() % 64, 0);
    }
    check(100, 384, [360, 361, 362]);
    check(0, 320, [260, 261, 262]);
    check(37, 320, [297, 298, 299]);
    check(61, 384, [321, 322, 323]); // 324 used ids: just past 320
}

#[test]
fn hf_tokenizers_match_python() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let mut cases = 0;
    for (name, e) in expected.as_object().unwrap() {
        let t = hf(&format!("{name}.json"));
        assert_eq!(
            t.vocab_size() as u64,
            e["vocab_size"].as_u64().unwrap(),
            "{name}"
        );
        for case in e["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<i64> = serde_json::from_value(case["ids"].clone()).unwrap();
            let ids = t.encode(text).unwrap();
            assert_eq!(ids, want, "{name}: {text:?}");
            assert_eq!(
                t.decode(&ids).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 12);
}

#[test]
fn hf_special_ids_are_found_by_name() {
    let t = hf("bytelevel.json");
    let sp = t.special();
    assert_eq!((sp.pad, sp.eos, sp.bos, sp.unk), (0, 1, 2, Some(3)));
    assert_eq!(
        sp.sentinels,
        (4..36).collect::<Vec<_>>(),
        "<extra_id_0..31>"
    );
    assert_eq!(
        sp.modes,
        Some(ModeIds {
            nlu: 36,
            nlg: 37,
            s2s: 38
        })
    );
    assert_eq!(
        t.decode(&[2, 4, 36, 1]).unwrap(),
        "<bos><extra_id_0>[NLU]<eos>"
    );

    let t = hf("gemma_style.json");
    let sp = t.special();
    assert_eq!((sp.pad, sp.eos, sp.bos, sp.unk), (0, 1, 2, Some(3)));
    assert_eq!(sp.sentinels, (4..20).collect::<Vec<_>>(), "<unused0..15>");
    assert_eq!(sp.modes, None);
}

#[test]
fn hf_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    #[track_caller]
    fn check(path: &Path, want: &[&str]) {
        let err = Tokenizer::load(&TokenizerConfig::Hf { path: path.into() })
            .err()
            .expect("an error");
        for w in want {
            assert!(err.contains(w), "{err:?} lacks {w:?}");
        }
    }
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    check(
        &dir.path().join("missing.json"),
        &["cannot read tokenizer file", "missing.json"],
    );
    check(
        &write("empty.json", ""),
        &["empty.json", "not a valid HF tokenizer.json"],
    );
    check(
        &write("garbage.json", "{\"model\": 3"),
        &["not a valid HF tokenizer.json"],
    );
    check(
        &write("array.json", "[1, 2]"),
        &["not a valid HF tokenizer.json"],
    );
    let fixture_text = std::fs::read_to_string(fixture("bytelevel.json")).unwrap();
    let no_bos = fixture_text.replace("<bos>", "<not-bos>");
    check(
        &write("no_bos.json", &no_bos),
        &["no_bos.json", "no bos token", "<bos>, <s>"],
    );
    let no_pad = fixture_text.replace("<pad>", "<not-pad>");
    check(&write("no_pad.json", &no_pad), &["no pad token"]);
}

#[test]
fn hf_decode_rejects_ids_outside_the_vocabulary() {
    let t = hf("gemma_style.json");
    for id in [-1, 800, i64::MAX] {
        let err = t.decode(&[5, id]).unwrap_err();
        assert!(err.contains(&format!("cannot decode id {id}")), "{err}");
    }
}

#[test]
fn tokenizer_config_from_json() {
    #[track_caller]
    fn check(json: &str, want: Result<TokenizerConfig, &str>) {
        let got = serde_json::from_str::<TokenizerConfig>(json).map_err(|e| e.to_string());
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w),
            (Err(g), Err(w)) => assert!(g.contains(w), "{g:?} lacks {w:?}"),
            (g, w) => panic!("{json}: got {g:?}, want {w:?}"),
        }
    }
    check(
        r#"{"kind": "byte"}"#,
        Ok(TokenizerConfig::Byte { sentinels: 100 }),
    );
    check(
        r#"{"kind": "byte", "sentinels": 8}"#,
        Ok(TokenizerConfig::Byte { sentinels: 8 }),
    );
    check(
        r#"{"kind": "hf", "path": "t.json"}"#,
        Ok(TokenizerConfig::Hf {
            path: "t.json".into(),
        }),
    );
    check(r#"{"kind": "hf"}"#, Err("missing field `path`"));
    check(
        r#"{"kind": "sentencepiece"}"#,
        Err("unknown variant `sentencepiece`"),
    );
    check(
        r#"{"kind": "byte", "sentinel": 8}"#,
        Err("unknown field `sentinel`"),
    );
}
