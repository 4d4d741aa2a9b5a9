//! A text corpus, tokenized and split into train and held-out streams. The held-out part is
//! the tail of the file by bytes, so it is the same for every tokenizer and every run (for the
//! bundled Shakespeare, the default 5% is the last plays in file order).

use crate::tokenizer::Tokenizer;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// A UTF-8 text file.
    pub path: PathBuf,
    /// Share of the file (by bytes, from the end) held out for evaluation. Default 0.05.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
}

fn default_heldout() -> f64 {
    0.05
}

pub struct Corpus {
    pub train: Arc<[i64]>,
    pub heldout: Arc<[i64]>,
    /// Byte offset in the file where the held-out text starts.
    pub split_byte: usize,
}

impl Corpus {
    /// Reads and tokenizes the corpus file; an empty one, or one whose train split has no
    /// tokens, is an error naming the file.
    pub fn load(config: &CorpusConfig, tokenizer: &Tokenizer) -> Result<Corpus, String> {
        let shown = config.path.display();
        let text = read_text(&config.path)?;
        if text.trim().is_empty() {
            return Err(format!(
                "corpus {shown} is empty{}: there is no text to train on",
                if text.is_empty() {
                    ""
                } else {
                    " (only white space)"
                }
            ));
        }
        let c = Corpus::from_text(&text, config.heldout_fraction, tokenizer)
            .map_err(|e| format!("corpus {shown}: {e}"))?;
        if c.train.is_empty() {
            return Err(format!(
                "corpus {shown} has no tokens in its train split (the first {} of its {} bytes)",
                c.split_byte,
                text.len()
            ));
        }
        Ok(c)
    }

    pub fn from_text(text: &str, heldout_fraction: f64, tok: &Tokenizer) -> Result<Corpus, String> {
        let (train, heldout) = split_text(text, heldout_fraction)?;
        Ok(Corpus {
            train: encode_long(train, tok)?.into(),
            heldout: encode_long(heldout, tok)?.into(),
            split_byte: train.len(),
        })
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read corpus {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "corpus {} is not UTF-8 (first bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Split `text` into (train, held-out): the held-out part is the last `heldout_fraction` of the
/// bytes, its start moved forward to the next line start so that no line is cut in two. The
/// two parts are tokenized separately, so no token straddles them.
pub fn split_text(text: &str, heldout_fraction: f64) -> Result<(&str, &str), String> {
    if !(0.0..1.0).contains(&heldout_fraction) {
        return Err(format!(
            "heldout_fraction must be in [0, 1), got {heldout_fraction}"
        ));
    }
    let mut cut = ((text.len() as f64) * (1.0 - heldout_fraction)).floor() as usize;
    cut = cut.min(text.len());
    if cut > 0 && cut < text.len() && text.as_bytes()[cut - 1] != b'\n' {
        cut = line_end_after(text, cut);
    }
    Ok(text.split_at(cut))
}

/// The offset just past the first '\n' at or after byte `from` (which need not be a char
/// boundary), or the end of the text: always a char boundary.
fn line_end_after(text: &str, from: usize) -> usize {
    let bytes = &text.as_bytes()[from..];
    bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |i| from + i + 1)
}

/// Tokenize in chunks of whole lines (about 64 KiB each): tokenizers without a pre-tokenizer
/// (Gemma's) would otherwise see the whole corpus as one word. Tokens never span a chunk
/// boundary; the chunking is deterministic, so the ids are too.
fn encode_long(text: &str, tok: &Tokenizer) -> Result<Vec<i64>, String> {
    const CHUNK: usize = 64 * 1024;
    let mut ids = Vec::with_capacity(text.len() / 2);
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(CHUNK);
        if end < rest.len() {
            end = line_end_after(rest, end);
        }
        // `end` is either the text's end or just past a '\n', so a char boundary.
        let (chunk, tail) = rest.split_at(end);
        ids.extend(tok.encode(chunk)?);
        rest = tail;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of loading `text`, which names the file.
    fn error(text: &str, heldout_fraction: f64) -> String {
        load(text, heldout_fraction).err().expect("an error")
    }

    fn load(text: &str, heldout_fraction: f64) -> Result<Corpus, String> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let config = CorpusConfig {
            path: f.path().to_path_buf(),
            heldout_fraction,
        };
        Corpus::load(
            &config,
            &Tokenizer::Byte(crate::tokenizer::ByteTokenizer::new(0)),
        )
        .map_err(|e| {
            assert!(
                e.contains(&f.path().display().to_string()),
                "names the file: {e}"
            );
            e
        })
    }

    #[test]
    fn an_empty_corpus_is_an_error_naming_the_file() {
        assert!(error("", 0.05).contains("is empty"));
        assert!(error(" \n\n", 0.05).contains("only white space"));
        assert!(error("abc\n", 1.5).contains("heldout_fraction"));
        assert_eq!(load("abc\n", 0.0).unwrap().train.len(), 4);
    }
}
