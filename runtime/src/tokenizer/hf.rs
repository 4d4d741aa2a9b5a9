//! HF `tokenizer.json` files through the `tokenizers` crate (built with `fancy-regex`, not the
//! default `onig`, so no C library is compiled; both run the same patterns for the
//! tokenizers we meet: GPT-2 style byte-level BPE and Gemma's SentencePiece-style BPE).
//!
//! Special tokens are found by name: pad `<pad>`; eos `<eos>` or `</s>`; bos `<bos>` or `<s>`;
//! unk `<unk>`. Sentinels are `<extra_id_0>`, `<extra_id_1>`, … (T5) while they exist, else
//! Gemma's reserved `<unused0>`, `<unused1>`, … (Gemma 2 has 99; which ids T5Gemma's UL2 used
//! is not public). Mode tokens `[NLU]`, `[NLG]`, `[S2S]` are used when all three exist.

use super::{ModeIds, SpecialIds};
use std::path::Path;
use std::str::FromStr;

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialIds,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<HfTokenizer, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokenizer file {shown}: {e}"))?;
        let inner = tokenizers::Tokenizer::from_str(&text)
            .map_err(|e| format!("{shown} is not a valid HF tokenizer.json: {e}"))?;
        let special = find_special(&inner).map_err(|e| format!("{shown}: {e}"))?;
        Ok(HfTokenizer { inner, special })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| format!("tokenizer failed on the text: {e}"))?;
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
        self.inner
            .decode(&ids, false)
            .map_err(|e| format!("tokenizer failed to decode: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn special(&self) -> &SpecialIds {
        &self.special
    }
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
