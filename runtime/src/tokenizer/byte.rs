//! The built-in byte-level tokenizer. Layout (ids):
//!
//! | ids | tokens |
//! |---|---|
//! | 0, 1, 2, 3 | `<pad>`, `<eos>`, `<bos>`, `<unk>` (as in T5Gemma/Gemma 2: pad 0, eos 1, bos 2) |
//! | 4 ..= 259 | the bytes 0x00 ..= 0xFF (id = byte + 4) |
//! | 260 .. 260+N | sentinels `<extra_id_0>` … `<extra_id_{N-1}>` (N = 100 by default) |
//! | 260+N, +1, +2 | UL2 mode tokens `[NLU]`, `[NLG]`, `[S2S]` |
//! | up to `vocab_size` | unused, decoded as `<unused_K>` |
//!
//! `vocab_size` is 263+N rounded up to a multiple of 64 (384 for N = 100): embedding tables
//! whose rows come in multiples of 64 tile evenly in the matmul kernels.

use super::{ModeIds, SpecialIds};

pub const DEFAULT_SENTINELS: usize = 100;
const BYTE_BASE: i64 = 4;
const SENTINEL_BASE: i64 = BYTE_BASE + 256;

pub struct ByteTokenizer {
    special: SpecialIds,
    vocab_size: usize,
}

impl ByteTokenizer {
    pub fn new(sentinels: usize) -> ByteTokenizer {
        let n = sentinels as i64;
        let modes = SENTINEL_BASE + n;
        let used = (modes + 3) as usize;
        ByteTokenizer {
            special: SpecialIds {
                pad: 0,
                eos: 1,
                bos: 2,
                unk: Some(3),
                sentinels: (SENTINEL_BASE..SENTINEL_BASE + n).collect(),
                modes: Some(ModeIds {
                    nlu: modes,
                    nlg: modes + 1,
                    s2s: modes + 2,
                }),
            },
            vocab_size: used.div_ceil(64) * 64,
        }
    }

    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.bytes().map(|b| b as i64 + BYTE_BASE).collect()
    }

    /// Bytes are decoded together, so multi-byte characters survive; bytes that are not UTF-8
    /// become U+FFFD, and so do ids outside the vocabulary.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        for &id in ids {
            if (BYTE_BASE..SENTINEL_BASE).contains(&id) {
                bytes.push((id - BYTE_BASE) as u8);
                continue;
            }
            out.push_str(&String::from_utf8_lossy(&bytes));
            bytes.clear();
            out.push_str(&self.token_name(id));
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        out
    }

    fn token_name(&self, id: i64) -> String {
        let s = &self.special;
        let modes = s.modes.expect("the byte tokenizer always has mode tokens");
        let n = s.sentinels.len() as i64;
        match id {
            0 => "<pad>".into(),
            1 => "<eos>".into(),
            2 => "<bos>".into(),
            3 => "<unk>".into(),
            _ if (SENTINEL_BASE..SENTINEL_BASE + n).contains(&id) => {
                format!("<extra_id_{}>", id - SENTINEL_BASE)
            }
            _ if id == modes.nlu => "[NLU]".into(),
            _ if id == modes.nlg => "[NLG]".into(),
            _ if id == modes.s2s => "[S2S]".into(),
            _ if id > modes.s2s && id < self.vocab_size as i64 => format!("<unused_{id}>"),
            _ => char::REPLACEMENT_CHARACTER.to_string(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn special(&self) -> &SpecialIds {
        &self.special
    }
}
