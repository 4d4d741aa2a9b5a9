//! Tokenizers for the data pipelines: a built-in byte-level one (no files needed) and HF
//! `tokenizer.json` files. Both expose the same special ids, so the batchers never care which.
//!
//! `encode` adds no special tokens (HF's `add_special_tokens=False`): the batchers place bos,
//! eos, sentinels and mode tokens themselves, in the same way for every tokenizer.

mod byte;
mod hf;

pub use byte::ByteTokenizer;
pub use hf::HfTokenizer;

use serde::Deserialize;
use std::path::PathBuf;

/// The ids the pipelines place themselves. For T5Gemma/Gemma 2, pad 0, eos 1, bos 2 (bos is
/// also the decoder start token).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecialIds {
    pub pad: i64,
    pub eos: i64,
    pub bos: i64,
    pub unk: Option<i64>,
    /// UL2/T5 sentinels in order: the i-th noise span of an example is replaced by `sentinels[i]`.
    pub sentinels: Vec<i64>,
    /// UL2 paradigm tokens, where the vocabulary has them.
    pub modes: Option<ModeIds>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModeIds {
    pub nlu: i64,
    pub nlg: i64,
    pub s2s: i64,
}

/// Which tokenizer a run uses, as a run file spells it:
/// `{"kind": "byte"}`, `{"kind": "byte", "sentinels": 50}` or `{"kind": "hf", "path": "tokenizer.json"}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerConfig {
    Byte {
        #[serde(default = "default_sentinels")]
        sentinels: usize,
    },
    Hf {
        path: PathBuf,
    },
}

/// More sentinels than any objective uses (UL2 uses 100); the byte tokenizer's vocabulary
/// grows by one id per sentinel.
const MAX_SENTINELS: usize = 1 << 16;

fn default_sentinels() -> usize {
    byte::DEFAULT_SENTINELS
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig::Byte {
            sentinels: byte::DEFAULT_SENTINELS,
        }
    }
}

pub enum Tokenizer {
    Byte(ByteTokenizer),
    // Boxed: an HF tokenizer is some 1.6 kB inline, the byte one about 100 bytes.
    Hf(Box<HfTokenizer>),
}

impl Tokenizer {
    pub fn load(config: &TokenizerConfig) -> Result<Tokenizer, String> {
        Ok(match config {
            TokenizerConfig::Byte { sentinels } => {
                if *sentinels > MAX_SENTINELS {
                    return Err(format!(
                        "the byte tokenizer's sentinels must be at most {MAX_SENTINELS}, got {sentinels}"
                    ));
                }
                Tokenizer::Byte(ByteTokenizer::new(*sentinels))
            }
            TokenizerConfig::Hf { path } => Tokenizer::Hf(Box::new(HfTokenizer::from_file(path)?)),
        })
    }

    /// Token ids of `text`, no special tokens added. Only an HF tokenizer can fail.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        match self {
            Tokenizer::Byte(t) => Ok(t.encode(text)),
            Tokenizer::Hf(t) => t.encode(text),
        }
    }

    /// Text of `ids`; special tokens are written by name (`<eos>`, `<extra_id_0>`, …).
    pub fn decode(&self, ids: &[i64]) -> Result<String, String> {
        match self {
            Tokenizer::Byte(t) => Ok(t.decode(ids)),
            Tokenizer::Hf(t) => t.decode(ids),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte(t) => t.vocab_size(),
            Tokenizer::Hf(t) => t.vocab_size(),
        }
    }

    pub fn special(&self) -> &SpecialIds {
        match self {
            Tokenizer::Byte(t) => t.special(),
            Tokenizer::Hf(t) => t.special(),
        }
    }

    pub fn pad(&self) -> i64 {
        self.special().pad
    }
    pub fn eos(&self) -> i64 {
        self.special().eos
    }
    pub fn bos(&self) -> i64 {
        self.special().bos
    }
}
