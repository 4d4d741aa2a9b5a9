//! A batcher's saved position. The seed and the size of the token stream are kept too, so
//! that restoring into a different run is an error instead of a silently different stream.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatcherState {
    pub objective: String,
    pub seed: u64,
    /// Batches produced so far.
    pub step: u64,
    /// Index of the next example (it runs across epochs).
    pub cursor: u64,
    /// Tokens in the stream the windows are cut from.
    pub tokens: usize,
}

impl BatcherState {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields always serialise")
    }

    /// Parse `value` and check it belongs to a batcher whose own state is `current`.
    pub(crate) fn restore(
        current: &BatcherState,
        value: &serde_json::Value,
    ) -> Result<BatcherState, String> {
        let saved = BatcherState::deserialize(value)
            .map_err(|e| format!("malformed batcher state: {e}"))?;
        let mismatch = |what: &str, saved: String, now: String| {
            Err(format!(
                "batcher state is for {what} {saved}, but this run has {now}"
            ))
        };
        if saved.objective != current.objective {
            return mismatch("objective", saved.objective, current.objective.clone());
        }
        if saved.seed != current.seed {
            return mismatch("seed", saved.seed.to_string(), current.seed.to_string());
        }
        if saved.tokens != current.tokens {
            return mismatch(
                "a token stream of",
                format!("{} tokens", saved.tokens),
                format!("{} tokens", current.tokens),
            );
        }
        Ok(saved)
    }
}
