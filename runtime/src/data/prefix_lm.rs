//! PrefixLM batches for T5Gemma: a window of text split in two, the prefix to the encoder and
//! the rest as decoder target (the paper splits in half). With them come the inputs a
//! decoder-only teacher (Gemma 2) needs to score the same target tokens, for distillation.
//!
//! Teacher layout, per row: `teacher_input_ids` = the encoder input's real tokens followed by
//! the target's real tokens, right-padded to S + T; `teacher_attention_mask` 1 on them. The
//! teacher's logits at position `p` predict its token `p + 1`, so label `t` of a row whose
//! encoder input has `n` real tokens is predicted at teacher position `n - 1 + t`.
//! `teacher_label_positions` [B, T] holds exactly that, and 0 where the label is
//! `IGNORE_INDEX` (a valid index, so a gather never fails; the loss masks those anyway).

use super::batch::{mask, padded, put, seq2seq, Seq2SeqExample};
use super::state::BatcherState;
use super::window::{Order, Windows};
use super::{epoch_range, seed, Batch, Batcher};
use crate::tokenizer::SpecialIds;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixLmConfig {
    /// Rows per batch. Default 8.
    pub batch_size: usize,
    /// Text tokens per window, prefix and target together. Default 512.
    pub seq_len: usize,
    /// Where to split. Default `{"kind": "fixed", "fraction": 0.5}`, as in the paper.
    pub split: PrefixSplit,
    /// Start the encoder input with bos, as Gemma's tokenizer does. Default true.
    pub encoder_bos: bool,
    /// End targets with eos. Default false: a window is cut from running text, and an eos
    /// there would teach the model to stop mid-sentence.
    pub target_eos: bool,
    /// Default `shuffled`; `sequential` for evaluation.
    pub order: Order,
    /// Default 0.
    pub seed: u64,
}

impl Default for PrefixLmConfig {
    fn default() -> Self {
        PrefixLmConfig {
            batch_size: 8,
            seq_len: 512,
            split: PrefixSplit::Fixed { fraction: 0.5 },
            encoder_bos: true,
            target_eos: false,
            order: Order::Shuffled,
            seed: 0,
        }
    }
}

/// The prefix's share of a window. The prefix length is `round(fraction · len)` (ties to
/// even), clamped so that prefix and target both have at least one token.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PrefixSplit {
    Fixed {
        fraction: f64,
    },
    /// `fraction` drawn uniformly from `[min, max]` for each example.
    Uniform {
        min: f64,
        max: f64,
    },
}

impl PrefixSplit {
    fn check(&self) -> Result<(), String> {
        let ok = |f: f64| (0.0..=1.0).contains(&f);
        match *self {
            PrefixSplit::Fixed { fraction } if ok(fraction) => Ok(()),
            PrefixSplit::Uniform { min, max } if ok(min) && ok(max) && min <= max => Ok(()),
            _ => Err(format!(
                "prefix split {self:?}: fractions must lie in [0, 1], min <= max"
            )),
        }
    }

    fn range(&self) -> (f64, f64) {
        match *self {
            PrefixSplit::Fixed { fraction } => (fraction, fraction),
            PrefixSplit::Uniform { min, max } => (min, max),
        }
    }
}

/// Prefix length for a window of `len >= 2` tokens.
pub(crate) fn prefix_len(fraction: f64, len: usize) -> usize {
    ((fraction * len as f64).round_ties_even() as usize).clamp(1, len - 1)
}

pub struct PrefixLmBatcher {
    config: PrefixLmConfig,
    windows: Windows,
    special: SpecialIds,
    step: u64,
    cursor: u64,
}

impl PrefixLmBatcher {
    pub fn new(
        config: &PrefixLmConfig,
        tokens: Arc<[i64]>,
        special: &SpecialIds,
    ) -> Result<PrefixLmBatcher, String> {
        config.split.check()?;
        if config.batch_size == 0 || config.seq_len < 2 {
            return Err(format!(
                "PrefixLM needs batch_size >= 1 and seq_len >= 2 (got {}, {})",
                config.batch_size, config.seq_len
            ));
        }
        let windows = Windows::new(tokens, config.seq_len, 2, config.order, config.seed)?;
        Ok(PrefixLmBatcher {
            config: config.clone(),
            windows,
            special: special.clone(),
            step: 0,
            cursor: 0,
        })
    }

    /// (S, T): the encoder and decoder widths every batch is padded to.
    pub fn shapes(&self) -> (usize, usize) {
        let (lo, hi) = self.config.split.range();
        let len = self.config.seq_len;
        let s = usize::from(self.config.encoder_bos) + prefix_len(hi, len);
        let t = len - prefix_len(lo, len) + usize::from(self.config.target_eos);
        (s, t)
    }

    pub fn windows_per_epoch(&self) -> usize {
        self.windows.per_epoch()
    }

    /// Example `index` of the stream, on its own.
    pub fn example(&mut self, index: u64) -> Seq2SeqExample {
        let mut rng = seed::rng_for(self.config.seed, seed::EXAMPLE, index);
        let fraction = match self.config.split {
            PrefixSplit::Fixed { fraction } => fraction,
            PrefixSplit::Uniform { min, max } => min + (max - min) * seed::unit(&mut rng),
        };
        let window = self.windows.get(index);
        let p = prefix_len(fraction, window.len());
        let bos = self.config.encoder_bos.then_some(self.special.bos);
        let eos = self.config.target_eos.then_some(self.special.eos);
        Seq2SeqExample {
            input: bos.into_iter().chain(window[..p].iter().copied()).collect(),
            target: window[p..].iter().copied().chain(eos).collect(),
        }
    }

    /// The next examples, before padding.
    pub fn next_examples(&mut self) -> Vec<Seq2SeqExample> {
        let b = self.config.batch_size as u64;
        let examples = (self.cursor..self.cursor + b)
            .map(|i| self.example(i))
            .collect();
        self.cursor += b;
        self.step += 1;
        examples
    }

    fn saved(&self) -> BatcherState {
        BatcherState {
            objective: "prefix_lm".into(),
            seed: self.config.seed,
            step: self.step,
            cursor: self.cursor,
            tokens: self.windows.token_count(),
        }
    }
}

/// The student's tensors plus `teacher_input_ids`, `teacher_attention_mask` [B, S+T] and
/// `teacher_label_positions` [B, T] (see the module comment).
pub(crate) fn with_teacher(
    examples: &[Seq2SeqExample],
    s: usize,
    t: usize,
    sp: &SpecialIds,
) -> Batch {
    let mut batch = seq2seq(examples, s, t, sp);
    let b = examples.len();
    let (s, t) = (batch["input_ids"].shape[1], batch["labels"].shape[1]);
    let rows: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| e.input.iter().chain(&e.target).copied().collect())
        .collect();
    let teacher = padded(rows.iter().map(|r| &r[..]), s + t, sp.pad);
    put(&mut batch, "teacher_input_ids", b, s + t, teacher);
    let teacher_mask = mask(rows.iter().map(|r| r.len()), s + t);
    put(&mut batch, "teacher_attention_mask", b, s + t, teacher_mask);
    let positions = examples
        .iter()
        .flat_map(|e| {
            let n = e.input.len() as i64;
            (0..t as i64).map(move |i| {
                if (i as usize) < e.target.len() {
                    n - 1 + i
                } else {
                    0
                }
            })
        })
        .collect();
    put(&mut batch, "teacher_label_positions", b, t, positions);
    batch
}

impl Batcher for PrefixLmBatcher {
    fn next_batch(&mut self) -> Batch {
        let (s, t) = self.shapes();
        let examples = self.next_examples();
        with_teacher(&examples, s, t, &self.special)
    }

    fn epoch_batches(&self) -> usize {
        self.windows.per_epoch().div_ceil(self.config.batch_size)
    }

    fn epoch_batch(&mut self, k: usize) -> Option<Batch> {
        let range = epoch_range(k, self.config.batch_size, self.windows.per_epoch())?;
        let (s, t) = self.shapes();
        let examples: Vec<Seq2SeqExample> = range.map(|i| self.example(i)).collect();
        Some(with_teacher(&examples, s, t, &self.special))
    }

    fn state(&self) -> serde_json::Value {
        self.saved().to_json()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let s = BatcherState::restore(&self.saved(), state)?;
        (self.step, self.cursor) = (s.step, s.cursor);
        Ok(())
    }
}
