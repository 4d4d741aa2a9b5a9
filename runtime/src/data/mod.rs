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
pub use noise::random_spans_noise_mask;
pub use prefix_lm::{PrefixLmBatcher, PrefixLmConfig, PrefixSplit};
pub use state::BatcherState;
pub use ul2::{
    default_mixture, reconstruct, Corruption, Denoiser, Mode, Ul2Batcher, Ul2Config, Ul2Example,
};
pub use window::Order;

use crate::tensor::Tensor;
use crate::tokenizer::{SpecialIds, Tokenizer, TokenizerConfig};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
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
    /// Batches in one pass over the stream: `ceil(windows / batch_size)`.
    fn epoch_batches(&self) -> usize;
    /// Batch `k` of the first pass, `None` past its end; the last one may have fewer rows.
    /// The stream's position is untouched. With `order: sequential` the pass covers every
    /// token exactly once (for evaluation on the held-out split).
    fn epoch_batch(&mut self, k: usize) -> Option<Batch>;
}

/// Example indices of batch `k` of the first epoch.
fn epoch_range(k: usize, batch_size: usize, per_epoch: usize) -> Option<std::ops::Range<u64>> {
    let start = k.checked_mul(batch_size).filter(|&s| s < per_epoch)?;
    Some(start as u64..(start + batch_size).min(per_epoch) as u64)
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
    /// The same objective with windows taken in `order` (`sequential` for evaluation).
    pub fn with_order(&self, order: Order) -> ObjectiveConfig {
        let mut c = self.clone();
        match &mut c {
            ObjectiveConfig::CausalLm(c) => c.order = order,
            ObjectiveConfig::PrefixLm(c) => c.order = order,
            ObjectiveConfig::Ul2(c) => c.order = order,
        }
        c
    }

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

/// Everything a run file says about its data, e.g.
/// `{"tokenizer": {"kind": "byte"}, "corpus": {"path": "data/shakespeare.txt"},
///   "objective": {"objective": "prefix_lm", "seq_len": 512}}`. The tokenizer defaults to the
/// byte-level one.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    pub corpus: CorpusConfig,
    pub objective: ObjectiveConfig,
}

impl DataConfig {
    /// Relative paths taken from `dir` (the run file's folder) instead of the working directory.
    pub fn relative_to(&self, dir: &Path) -> DataConfig {
        let mut c = self.clone();
        c.corpus.path = dir.join(&c.corpus.path);
        if let TokenizerConfig::Hf { path } = &mut c.tokenizer {
            *path = dir.join(&*path);
        }
        c
    }
}

/// A loaded tokenizer and corpus, and the objective to cut batches from them.
pub struct Data {
    pub tokenizer: Tokenizer,
    pub corpus: Corpus,
    pub objective: ObjectiveConfig,
}

impl Data {
    pub fn load(config: &DataConfig) -> Result<Data, String> {
        let tokenizer = Tokenizer::load(&config.tokenizer)?;
        let corpus = Corpus::load(&config.corpus, &tokenizer)?;
        Ok(Data {
            tokenizer,
            corpus,
            objective: config.objective.clone(),
        })
    }

    /// Training batches: the objective as configured, over the train split.
    pub fn train(&self) -> Result<Box<dyn Batcher>, String> {
        let special = self.tokenizer.special();
        self.objective
            .batcher(self.corpus.train.clone(), special)
            .map_err(|e| format!("train split: {e}"))
    }

    /// Evaluation batches over the held-out split: the same objective and seed, windows in
    /// file order, so every run evaluates on the same examples. Walk it with `epoch_batch`.
    pub fn heldout(&self) -> Result<Box<dyn Batcher>, String> {
        let special = self.tokenizer.special();
        self.objective
            .with_order(Order::Sequential)
            .batcher(self.corpus.heldout.clone(), special)
            .map_err(|e| format!("held-out split: {e}"))
    }
}
