//! Causal LM batches for a decoder-only model (Gemma 2): `input_ids`, `attention_mask`,
//! `labels` [B, T]. Labels are the input ids with `IGNORE_INDEX` at padding; the model shifts
//! them inside its loss, as HF does.

use super::batch::{mask, padded, put, IGNORE_INDEX};
use super::state::BatcherState;
use super::window::{Order, Windows};
use super::{epoch_range, Batch, Batcher};
use crate::tokenizer::SpecialIds;
use serde::Deserialize;
use std::ops::Range;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CausalLmConfig {
    /// Rows per batch. Default 8.
    pub batch_size: usize,
    /// T: tokens per row, bos included. Default 256.
    pub seq_len: usize,
    /// Start each row with bos, as Gemma's tokenizer does. Default true.
    pub add_bos: bool,
    /// Default `shuffled`; `sequential` for evaluation.
    pub order: Order,
    /// Default 0.
    pub seed: u64,
}

impl Default for CausalLmConfig {
    fn default() -> Self {
        CausalLmConfig {
            batch_size: 8,
            seq_len: 256,
            add_bos: true,
            order: Order::Shuffled,
            seed: 0,
        }
    }
}

pub struct CausalLmBatcher {
    config: CausalLmConfig,
    windows: Windows,
    bos: i64,
    pad: i64,
    step: u64,
    cursor: u64,
}

impl CausalLmBatcher {
    pub fn new(
        config: &CausalLmConfig,
        tokens: Arc<[i64]>,
        special: &SpecialIds,
    ) -> Result<CausalLmBatcher, String> {
        let text_len = config.seq_len.saturating_sub(usize::from(config.add_bos));
        if config.batch_size == 0 || text_len == 0 {
            return Err(format!(
                "causal LM needs batch_size >= 1 and room for a text token in seq_len \
                 (got batch_size {}, seq_len {})",
                config.batch_size, config.seq_len
            ));
        }
        let windows = Windows::new(tokens, text_len, 1, config.order, config.seed)?;
        Ok(CausalLmBatcher {
            config: config.clone(),
            windows,
            bos: special.bos,
            pad: special.pad,
            step: 0,
            cursor: 0,
        })
    }

    /// Windows in one pass over the stream.
    pub fn windows_per_epoch(&self) -> usize {
        self.windows.per_epoch()
    }

    fn saved(&self) -> BatcherState {
        BatcherState {
            objective: "causal_lm".into(),
            seed: self.config.seed,
            step: self.step,
            cursor: self.cursor,
            tokens: self.windows.token_count(),
        }
    }
}

impl CausalLmBatcher {
    fn batch_of(&mut self, examples: Range<u64>) -> Batch {
        let t = self.config.seq_len;
        let rows: Vec<Vec<i64>> = examples
            .map(|i| {
                let window = self.windows.get(i);
                let bos = self.config.add_bos.then_some(self.bos);
                bos.into_iter().chain(window.iter().copied()).collect()
            })
            .collect();
        let b = rows.len();
        let mut batch = Batch::new();
        put(
            &mut batch,
            "input_ids",
            b,
            t,
            padded(rows.iter().map(|r| &r[..]), t, self.pad),
        );
        put(
            &mut batch,
            "attention_mask",
            b,
            t,
            mask(rows.iter().map(|r| r.len()), t),
        );
        let labels = padded(rows.iter().map(|r| &r[..]), t, IGNORE_INDEX);
        put(&mut batch, "labels", b, t, labels);
        batch
    }
}

impl Batcher for CausalLmBatcher {
    fn next_batch(&mut self) -> Batch {
        let b = self.config.batch_size as u64;
        let batch = self.batch_of(self.cursor..self.cursor + b);
        self.cursor += b;
        self.step += 1;
        batch
    }

    fn epoch_batches(&self) -> usize {
        self.windows.per_epoch().div_ceil(self.config.batch_size)
    }

    fn epoch_batch(&mut self, k: usize) -> Option<Batch> {
        let range = epoch_range(k, self.config.batch_size, self.windows.per_epoch())?;
        Some(self.batch_of(range))
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
