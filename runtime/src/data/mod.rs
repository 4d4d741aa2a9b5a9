//! Seeded, resumable data pipelines for training: a corpus split into train and held-out
//! token streams, windows cut from them, and one batcher per objective producing HF-named i64
//! tensors: causal LM (Gemma 2), PrefixLM with teacher inputs for distillation, and UL2
//! (T5Gemma).
//!
//! Every random choice is a function of `(seed, example index)` (see `seed.rs`), so a
//! batcher's whole state is its cursor: [`Batcher::state`] is a small JSON value, and
//! [`Batcher::restore`] continues the exact stream, bit for bit.

mod batch;
mod causal_lm;
mod corpus;
mod noise;
mod prefix_lm;
mod seed;
mod state;
mod ul2;
mod window;

pub use batch::{shift_right, Seq2SeqExample, IGNORE_INDEX};
pub use causal_lm::{CausalLmBatcher, CausalLmConfig};
pub use corpus::{split_text, Corpus, CorpusConfig};
pub use noise::{random_segmentation, random_spans_noise_mask};
pub use prefix_lm::{PrefixLmBatcher, PrefixLmConfig, PrefixSplit};
pub use state::BatcherState;
pub use ul2::{
    default_mixture, reconstruct, Corruption, Denoiser, Mode, Ul2Batcher, Ul2Config, Ul2Example,
};
pub use window::Order;

use crate::tensor::Tensor;
use crate::tokenizer::SpecialIds;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Named model inputs: HF names, i64 tensors.
pub type Batch = HashMap<String, Tensor>;

/// What a training loop needs from any objective.
pub trait Batcher {
    /// The next batch; batches follow each other deterministically.
    fn next_batch(&mut self) -> Batch;
    /// Where the stream stands, as a small JSON value.
    fn state(&self) -> serde_json::Value;
    /// Continue from a saved `state` (same seed and data), or say why not.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String>;
}

/// An objective as a run file holds it: `{"objective": "prefix_lm", "seq_len": 512, …}`.
/// Fields left out take the defaults documented on each config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "objective", rename_all = "snake_case")]
pub enum ObjectiveConfig {
    CausalLm(CausalLmConfig),
    PrefixLm(PrefixLmConfig),
    Ul2(Ul2Config),
}

impl ObjectiveConfig {
    pub fn batcher(
        &self,
        tokens: Arc<[i64]>,
        special: &SpecialIds,
    ) -> Result<Box<dyn Batcher>, String> {
        Ok(match self {
            ObjectiveConfig::CausalLm(c) => Box::new(CausalLmBatcher::new(c, tokens, special)?),
            ObjectiveConfig::PrefixLm(c) => Box::new(PrefixLmBatcher::new(c, tokens, special)?),
            ObjectiveConfig::Ul2(c) => Box::new(Ul2Batcher::new(c, tokens, special)?),
        })
    }
}
