//! Windows cut from a token stream, indexed by a global example counter that runs across
//! epochs (example `i` is window `i % per_epoch` of epoch `i / per_epoch`).

use super::seed;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Training: each epoch, full non-overlapping windows after a random offset (so window
    /// boundaries move between epochs), in a random order. Every token but at most one
    /// window's worth is seen once per epoch.
    #[default]
    Shuffled,
    /// Evaluation: windows from the start in file order; the tail is a last, shorter window
    /// (kept when at least `min_len` long), so every token is covered exactly once.
    Sequential,
}

pub(crate) struct Windows {
    tokens: Arc<[i64]>,
    len: usize,
    order: Order,
    seed: u64,
    per_epoch: usize,
    /// The current epoch's offset and window order, rebuilt when the epoch changes.
    epoch: Option<(u64, usize, Vec<u32>)>,
}

impl Windows {
    /// `len` tokens per window; `min_len` the shortest tail window worth keeping.
    pub(crate) fn new(
        tokens: Arc<[i64]>,
        len: usize,
        min_len: usize,
        order: Order,
        seed: u64,
    ) -> Result<Windows, String> {
        let n = tokens.len();
        let per_epoch = match order {
            Order::Shuffled => n / len,
            Order::Sequential => n / len + usize::from(n % len >= min_len.max(1)),
        };
        if per_epoch == 0 {
            return Err(format!(
                "the token stream has {n} tokens, fewer than one window of {len}: \
                 use a shorter seq_len or more text"
            ));
        }
        if per_epoch > u32::MAX as usize {
            return Err(format!("{per_epoch} windows per epoch is too many"));
        }
        Ok(Windows {
            tokens,
            len,
            order,
            seed,
            per_epoch,
            epoch: None,
        })
    }

    pub(crate) fn per_epoch(&self) -> usize {
        self.per_epoch
    }

    pub(crate) fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The tokens of example `index`.
    pub(crate) fn get(&mut self, index: u64) -> &[i64] {
        let epoch = index / self.per_epoch as u64;
        let k = (index % self.per_epoch as u64) as usize;
        let start = match self.order {
            Order::Sequential => k * self.len,
            Order::Shuffled => {
                if self.epoch.as_ref().map(|e| e.0) != Some(epoch) {
                    self.epoch = Some(self.shuffled_epoch(epoch));
                }
                let (_, offset, perm) = self.epoch.as_ref().expect("set just above");
                offset + perm[k] as usize * self.len
            }
        };
        let end = (start + self.len).min(self.tokens.len());
        &self.tokens[start..end]
    }

    fn shuffled_epoch(&self, epoch: u64) -> (u64, usize, Vec<u32>) {
        let mut rng = seed::rng_for(self.seed, seed::ORDER, epoch);
        let slack = self.tokens.len() - self.per_epoch * self.len;
        let offset = rng.below(slack + 1);
        let mut perm: Vec<u32> = (0..self.per_epoch as u32).collect();
        seed::shuffle(&mut perm, &mut rng);
        (epoch, offset, perm)
    }
}
