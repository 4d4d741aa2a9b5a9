//! Assembling examples into padded i64 tensors with HF's names and semantics. Padding is on
//! the right everywhere.

use super::Batch;
use crate::tensor::Tensor;
use crate::tokenizer::SpecialIds;

/// Label value the loss ignores (PyTorch's `ignore_index`, HF's convention).
pub const IGNORE_INDEX: i64 = -100;

/// One encoder-decoder example: `input` for the encoder, `target` the real decoder labels
/// (eos included where the objective ends targets with one). No padding in either.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq2SeqExample {
    pub input: Vec<i64>,
    pub target: Vec<i64>,
}

/// HF's `_shift_right` on one row of labels: the decoder start token first, labels moved one
/// to the right (the last one dropped), and `IGNORE_INDEX` replaced by `pad`.
pub fn shift_right(labels: &[i64], start: i64, pad: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity(labels.len());
    if labels.is_empty() {
        return out;
    }
    out.push(start);
    out.extend(
        labels[..labels.len() - 1]
            .iter()
            .map(|&l| if l == IGNORE_INDEX { pad } else { l }),
    );
    out
}

/// Rows laid side by side, each filled to `width` with `fill`.
pub(crate) fn padded<'a>(
    rows: impl Iterator<Item = &'a [i64]>,
    width: usize,
    fill: i64,
) -> Vec<i64> {
    let mut out = Vec::new();
    for row in rows {
        out.extend_from_slice(row);
        out.resize(out.len() + width - row.len(), fill);
    }
    out
}

/// 1 on the first `len` positions of each row, 0 after.
pub(crate) fn mask(lens: impl Iterator<Item = usize>, width: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for len in lens {
        out.extend((0..width).map(|i| i64::from(i < len)));
    }
    out
}

pub(crate) fn put(batch: &mut Batch, name: &str, rows: usize, width: usize, data: Vec<i64>) {
    batch.insert(name.to_string(), Tensor::i64(vec![rows, width], data));
}

/// `input_ids`, `attention_mask` [B, S]; `labels`, `decoder_input_ids`,
/// `decoder_attention_mask` [B, T]. S and T are the given widths, or the longest row if longer
/// (the objectives pass bounds that hold for every example, so shapes stay fixed from step to
/// step).
pub(crate) fn seq2seq(examples: &[Seq2SeqExample], s: usize, t: usize, sp: &SpecialIds) -> Batch {
    let b = examples.len();
    let s = examples
        .iter()
        .map(|e| e.input.len())
        .max()
        .unwrap_or(0)
        .max(s);
    let t = examples
        .iter()
        .map(|e| e.target.len())
        .max()
        .unwrap_or(0)
        .max(t);
    let labels = padded(examples.iter().map(|e| &e.target[..]), t, IGNORE_INDEX);
    let decoder_input_ids: Vec<i64> = labels
        .chunks(t.max(1))
        .flat_map(|row| shift_right(row, sp.bos, sp.pad))
        .collect();
    // HF's default is `decoder_input_ids != pad`: the start token and the shifted real labels.
    // Counted by position, since a real token may share the pad id in some vocabularies.
    let dec_lens = examples.iter().map(|e| (e.target.len() + 1).min(t));
    let mut batch = Batch::new();
    let inputs = padded(examples.iter().map(|e| &e.input[..]), s, sp.pad);
    put(&mut batch, "input_ids", b, s, inputs);
    let enc_mask = mask(examples.iter().map(|e| e.input.len()), s);
    put(&mut batch, "attention_mask", b, s, enc_mask);
    put(&mut batch, "labels", b, t, labels);
    put(&mut batch, "decoder_input_ids", b, t, decoder_input_ids);
    put(
        &mut batch,
        "decoder_attention_mask",
        b,
        t,
        mask(dec_lens, t),
    );
    batch
}
