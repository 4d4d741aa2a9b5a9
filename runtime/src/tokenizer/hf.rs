//! HF `tokenizer.json` files through the `tokenizers` crate (built with `fancy-regex`, not the
//! default `onig`, so no C library is compiled; both run the same patterns for the
//! tokenizers we meet: GPT-2 style byte-level BPE and Gemma's SentencePiece-style BPE).
//!
//! Special tokens are found by name: pad `<pad>`; eos `<eos>` or `</s>`; bos `<bos>` or `<s>`;
//! unk `<unk>`. Sentinels are `<extra_id_0>`, `<extra_id_1>`, … (T5) while they exist, else
//! Gemma's reserved `<unused0>`, `<unused1>`, … (Gemma 2 has 99; which ids T5Gemma's UL2 used
//! is not public). Mode tokens `[NLU]`, `[NLG]`, `[S2S]` are used when all three exist.

use super::{ModeIds, SpecialIds};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::str::FromStr;
use std::sync::Once;

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialIds,
    /// One more than the largest id (with added tokens).
    vocab_size: usize,
    /// The file's path, for messages.
    name: String,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<HfTokenizer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokenizer file {}: {e}", path.display()))?;
        HfTokenizer::from_text(&path.display().to_string(), &text)
    }

    /// A tokenizer from the text of a `tokenizer.json`, `name` standing for its path in
    /// messages (the fuzzing entry point): every error names it; never panics, on any text.
    pub fn from_text(name: &str, text: &str) -> Result<HfTokenizer, String> {
        let invalid = || format!("{name} is not a valid HF tokenizer.json");
        let mut inner = guarded(invalid, || {
            tokenizers::Tokenizer::from_str(text).map_err(|e| format!("{}: {e}", invalid()))
        })?;
        // The batchers cut windows and pad batches themselves; the file's truncation would
        // drop text from a corpus chunk, and its padding allocates what the file says (an
        // absurd `Fixed` length aborts).
        inner
            .with_truncation(None)
            .map_err(|e| format!("{name}: {e}"))?;
        inner.with_padding(None);
        let special = find_special(&inner).map_err(|e| format!("{name}: {e}"))?;
        // Ids may have gaps: the embedding tables need one row per id up to the largest.
        let largest = inner.get_vocab(true).into_values().max();
        let vocab_size = inner
            .get_vocab_size(true)
            .max(largest.map_or(0, |i| i as usize + 1));
        Ok(HfTokenizer {
            inner,
            special,
            vocab_size,
            name: name.to_string(),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let failed = || format!("tokenizer {} failed on the text", self.name);
        let enc = guarded(failed, || {
            self.inner
                .encode(text, false)
                .map_err(|e| format!("{}: {e}", failed()))
        })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let vocab = self.vocab_size();
        let ids = ids
            .iter()
            .map(|&i| match u32::try_from(i) {
                Ok(u) if (u as usize) < vocab => Ok(u),
                _ => Err(format!(
                    "cannot decode id {i}: the vocabulary has ids 0..{vocab}"
                )),
            })
            .collect::<Result<Vec<u32>, String>>()?;
        let failed = || format!("tokenizer {} failed to decode", self.name);
        guarded(failed, || {
            self.inner
                .decode(&ids, false)
                .map_err(|e| format!("{}: {e}", failed()))
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn special(&self) -> &SpecialIds {
        &self.special
    }
}

thread_local! {
    /// Set while this thread runs `guarded`: its panics are errors, not messages.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a call into the `tokenizers` crate, a panic in it becoming an error that
/// starts with `what()`: the crate panics on some malformed files (a `Precompiled`
/// normalizer's charsmap is parsed with `expect`, and indexed unchecked when text is
/// normalized). The panic hook is wrapped once so that such a panic prints nothing;
/// every other panic, on any thread, prints as before.
fn guarded<T>(
    what: impl Fn() -> String,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!(
            "{}: the tokenizers library failed on it ({msg})",
            what()
        ))
    })
}

fn find_special(t: &tokenizers::Tokenizer) -> Result<SpecialIds, String> {
    let id = |name: &str| t.token_to_id(name).map(|i| i as i64);
    let required = |names: &[&str], what: &str| {
        names.iter().find_map(|n| id(n)).ok_or(format!(
            "no {what} token (looked for {}); the data pipelines need pad, eos and bos",
            names.join(", ")
        ))
    };
    let numbered = |prefix: &str, suffix: &str| -> Vec<i64> {
        (0..)
            .map_while(|i| id(&format!("{prefix}{i}{suffix}")))
            .collect()
    };
    let mut sentinels = numbered("<extra_id_", ">");
    if sentinels.is_empty() {
        sentinels = numbered("<unused", ">");
    }
    let modes = match (id("[NLU]"), id("[NLG]"), id("[S2S]")) {
        (Some(nlu), Some(nlg), Some(s2s)) => Some(ModeIds { nlu, nlg, s2s }),
        _ => None,
    };
    Ok(SpecialIds {
        pad: required(&["<pad>"], "pad")?,
        eos: required(&["<eos>", "</s>"], "eos")?,
        bos: required(&["<bos>", "<s>"], "bos")?,
        unk: id("<unk>"),
        sentinels,
        modes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
               "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
               "decoder": null,
               "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6}, "unk_token": "<unk>"}})
    }
    fn bpe() -> Value {
        let mut b = base();
        b["model"] = json!({"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6}, "merges": ["a b"]});
        b
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let mut cases: Vec<(&str, Value)> = vec![("base", base()), ("bpe", bpe())];
        let mut add = |n: &'static str, f: &dyn Fn(&mut Value), from: Value| {
            let mut v = from;
            f(&mut v);
            cases.push((n, v));
        };
        add(
            "trunc0",
            &|v| v["truncation"] = json!({"direction": "Right", "max_length": 0, "strategy": "LongestFirst", "stride": 5}),
            base(),
        );
        add(
            "trunc1",
            &|v| {
                v["truncation"] = json!({"direction": "Left", "max_length": 1, "strategy": "OnlyFirst", "stride": 3})
            },
            base(),
        );
        add(
            "pad0",
            &|v| v["padding"] = json!({"strategy": {"Fixed": 4}, "direction": "Right", "pad_to_multiple_of": 0, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}),
            base(),
        );
        add(
            "padbig",
            &|v| v["padding"] = json!({"strategy": {"Fixed": 1000000000000u64}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}),
            base(),
        );
        add(
            "padid",
            &|v| v["padding"] = json!({"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": 3, "pad_id": 99999, "pad_type_id": 0, "pad_token": "<nope>"}),
            base(),
        );
        add(
            "bpe_bad_merge",
            &|v| v["model"]["merges"] = json!(["x y"]),
            bpe(),
        );
        add(
            "bpe_dropout",
            &|v| v["model"]["dropout"] = json!(5.0),
            bpe(),
        );
        add(
            "bpe_no_unk",
            &|v| v["model"]["unk_token"] = json!("<zz>"),
            bpe(),
        );
        add(
            "bpe_byte_fallback",
            &|v| v["model"]["byte_fallback"] = json!(true),
            bpe(),
        );
        add(
            "bpe_dup_ids",
            &|v| v["model"]["vocab"] = json!({"<pad>": 0, "<eos>": 0, "<bos>": 0, "a": 0}),
            bpe(),
        );
        add(
            "bpe_gap_ids",
            &|v| {
                v["model"]["vocab"] =
                    json!({"<pad>": 0, "<eos>": 1, "<bos>": 4000000000u64, "a": 2, "b": 3, "ab": 7})
            },
            bpe(),
        );
        add(
            "unigram_empty",
            &|v| v["model"] = json!({"type": "Unigram", "unk_id": 0, "vocab": []}),
            base(),
        );
        add(
            "unigram_unk",
            &|v| v["model"] = json!({"type": "Unigram", "unk_id": 10, "vocab": [["<pad>", 0.0], ["<eos>", 0.0], ["<bos>", 0.0]]}),
            base(),
        );
        add(
            "unigram_nan",
            &|v| v["model"] = json!({"type": "Unigram", "unk_id": null, "vocab": [["<pad>", 0.0], ["<eos>", 0.0], ["<bos>", 0.0], ["a", -1e308], ["b", 1e308]]}),
            base(),
        );
        add(
            "unigram_nounk",
            &|v| v["model"] = json!({"type": "Unigram", "unk_id": null, "byte_fallback": true, "vocab": [["<pad>", 0.0], ["<eos>", 0.0], ["<bos>", 0.0], ["a", 0.0]]}),
            base(),
        );
        add(
            "wordpiece",
            &|v| v["model"] = json!({"type": "WordPiece", "unk_token": "<zz>", "continuing_subword_prefix": "##", "max_input_chars_per_word": 0, "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2}}),
            base(),
        );
        add(
            "split_regex",
            &|v| v["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated", "invert": false}),
            base(),
        );
        add(
            "split_empty",
            &|v| v["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": ""}, "behavior": "Isolated", "invert": false}),
            base(),
        );
        add(
            "split_empty_str",
            &|v| v["pre_tokenizer"] = json!({"type": "Split", "pattern": {"String": ""}, "behavior": "MergedWithNext", "invert": true}),
            base(),
        );
        add(
            "replace_regex",
            &|v| {
                v["normalizer"] =
                    json!({"type": "Replace", "pattern": {"Regex": ""}, "content": "xx"})
            },
            base(),
        );
        add(
            "replace_empty",
            &|v| {
                v["normalizer"] =
                    json!({"type": "Replace", "pattern": {"String": ""}, "content": "▁"})
            },
            base(),
        );
        add(
            "prepend",
            &|v| v["normalizer"] = json!({"type": "Prepend", "prepend": ""}),
            base(),
        );
        add(
            "metaspace",
            &|v| v["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
            base(),
        );
        add(
            "digits",
            &|v| v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}]}),
            base(),
        );
        add(
            "template",
            &|v| v["post_processor"] = json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}}),
            base(),
        );
        add(
            "template2",
            &|v| v["post_processor"] = json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}], "pair": [], "special_tokens": {"<x>": {"id": "<x>", "ids": [], "tokens": []}}}),
            base(),
        );
        add(
            "added_big",
            &|v| v["added_tokens"] = json!([{"id": 4294967295u64, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]),
            base(),
        );
        add(
            "added_empty",
            &|v| v["added_tokens"] = json!([{"id": 9, "content": "", "single_word": true, "lstrip": true, "rstrip": true, "normalized": true, "special": false}]),
            base(),
        );
        add(
            "decoders",
            &|v| v["decoder"] = json!({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": ""}, "content": "x"}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1000, "stop": 1000}, {"type": "CTC", "pad_token": "<pad>", "word_delimiter_token": "", "cleanup": true}, {"type": "WordPiece", "prefix": "", "cleanup": true}]}),
            base(),
        );
        add(
            "bpe_dropout_neg",
            &|v| v["model"]["dropout"] = json!(-1.0),
            bpe(),
        );
        add(
            "strip",
            &|v| v["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": true, "strip_right": true}, {"type": "NFKC"}, {"type": "Precompiled", "precompiled_charsmap": "AAAA"}]}),
            base(),
        );
        add(
            "precompiled",
            &|v| {
                v["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "/////w=="})
            },
            base(),
        );
        add(
            "precompiled2",
            &|v| {
                v["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "CAAAAAAAAAAAAAAAAAAAAA=="})
            },
            base(),
        );
        for (n, v) in cases {
            let t = match HfTokenizer::from_text("t.json", &v.to_string()) {
                Ok(t) => t,
                Err(e) => {
                    assert!(e.starts_with("t.json"), "{n}: {e}");
                    continue;
                }
            };
            let ids = t.encode("a b ab  ba 12 ▁x é\u{0} ");
            if let Err(e) = &ids {
                assert!(e.contains("tokenizer t.json failed"), "{n}: {e}");
            }
            for ids in [ids.unwrap_or_default(), vec![0, 1, 2, 3, 4, 5, 6, 7, 100]] {
                if let Err(e) = t.decode(&ids) {
                    assert!(
                        e.contains("t.json") || e.contains("cannot decode id"),
                        "{n}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn what_a_file_says_is_checked_or_ignored() {
        let text = |v: Value| v.to_string();
        let ok = HfTokenizer::from_text("t.json", &text(base())).unwrap();
        assert_eq!(ok.encode("a b ab").unwrap(), [4, 5, 6]);
        assert_eq!((ok.vocab_size(), ok.special().eos), (7, 1));
        // A corrupt charsmap: the crate's `expect` becomes an error.
        let mut v = base();
        v["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "/////w=="});
        let e = HfTokenizer::from_text("t.json", &text(v)).err().unwrap();
        assert!(e.contains("t.json is not a valid HF tokenizer.json"), "{e}");
        // Padding and truncation are the batchers' business: ignored, however absurd.
        let mut v = base();
        v["padding"] = json!({"strategy": {"Fixed": 1u64 << 40}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
        v["truncation"] =
            json!({"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0});
        let t = HfTokenizer::from_text("t.json", &text(v)).unwrap();
        assert_eq!(t.encode("a b ab").unwrap(), [4, 5, 6]);
        // Ids with gaps: the vocabulary reaches the largest.
        let mut v = base();
        v["model"]["vocab"] = json!({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "a": 900});
        assert_eq!(
            HfTokenizer::from_text("t.json", &text(v))
                .unwrap()
                .vocab_size(),
            901
        );
        let mut v = base();
        v["model"]["vocab"] = json!({"<eos>": 1, "<bos>": 2, "<unk>": 3});
        let e = HfTokenizer::from_text("t.json", &text(v)).err().unwrap();
        assert!(e.starts_with("t.json: no pad token"), "{e}");
        for junk in ["", "{", "[]", "{\"model\": 3}", "\u{0}"] {
            let e = HfTokenizer::from_text("t.json", junk).err().unwrap();
            assert!(
                e.starts_with("t.json is not a valid HF tokenizer.json"),
                "{e}"
            );
        }
    }
}
