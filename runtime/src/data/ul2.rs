//! UL2 batches for T5Gemma (Tay et al. 2022, "data preparation follows" it per the T5Gemma
//! paper): each example is corrupted by one denoiser drawn from a weighted mixture.
//!
//! - Span corruption (R and X denoisers): T5's noise mask (`noise.rs`); each hidden span is
//!   replaced in the input by the next sentinel, and the target is every hidden span after its
//!   sentinel, then eos: input `a b <s0> e <s1>`, target `<s0> c d <s1> f g <eos>`.
//! - Prefix (S denoiser): the input is a prefix, the target the rest then eos. The target
//!   length is uniform in `1 ..= round(2 · density · len)` (mean ≈ density · len), which
//!   generalises T5's `random_prefix_noise_mask` (defined there for density 0.5 only).
//!
//! The encoder input is `[bos] [mode] body`: bos as Gemma's tokenizer adds it, then, when
//! `mode_tokens` is on, UL2's paradigm token for the denoiser (`[NLU]` R, `[S2S]` S, `[NLG]` X).
//! Default mixture: the seven UL2 denoisers, weight 1 each (uniform): R (μ=3, r=0.15),
//! R (μ=8, r=0.15), S (r=0.25), X (μ=3, r=0.5), X (μ=8, r=0.5), X (μ=64, r=0.15),
//! X (μ=64, r=0.5). UL2's own mixing ratios, and whether T5Gemma kept mode tokens, are not
//! public.

use super::batch::{seq2seq, Seq2SeqExample};
use super::noise::{random_spans_noise_mask, span_counts};
use super::state::BatcherState;
use super::window::{Order, Windows};
use super::{epoch_range, seed, Batch, Batcher};
use crate::tokenizer::SpecialIds;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ul2Config {
    /// Rows per batch. Default 8.
    pub batch_size: usize,
    /// Text tokens per example, before corruption. Default 512.
    pub seq_len: usize,
    /// The mixture. Default: the seven UL2 denoisers, uniform (see the module comment).
    pub denoisers: Vec<Denoiser>,
    /// Prepend each denoiser's mode token to the input. Default true.
    pub mode_tokens: bool,
    /// Start the encoder input with bos. Default true.
    pub encoder_bos: bool,
    /// Default `shuffled`; `sequential` for evaluation.
    pub order: Order,
    /// Default 0.
    pub seed: u64,
}

impl Default for Ul2Config {
    fn default() -> Self {
        Ul2Config {
            batch_size: 8,
            seq_len: 512,
            denoisers: default_mixture(),
            mode_tokens: true,
            encoder_bos: true,
            order: Order::Shuffled,
            seed: 0,
        }
    }
}

/// One denoiser of the mixture:
/// `{"name": "R", "corruption": {"kind": "spans", "mean_span": 3, "noise_density": 0.15},
///   "mode": "nlu", "weight": 1}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denoiser {
    pub name: String,
    pub corruption: Corruption,
    pub mode: Mode,
    /// Relative weight in the mixture. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Corruption {
    Spans { mean_span: f64, noise_density: f64 },
    Prefix { noise_density: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Nlu,
    Nlg,
    S2s,
}

pub fn default_mixture() -> Vec<Denoiser> {
    let spans = |name: &str, mean_span: f64, noise_density: f64, mode| Denoiser {
        name: name.into(),
        corruption: Corruption::Spans {
            mean_span,
            noise_density,
        },
        mode,
        weight: 1.0,
    };
    vec![
        spans("R", 3.0, 0.15, Mode::Nlu),
        spans("R", 8.0, 0.15, Mode::Nlu),
        Denoiser {
            name: "S".into(),
            corruption: Corruption::Prefix {
                noise_density: 0.25,
            },
            mode: Mode::S2s,
            weight: 1.0,
        },
        spans("X", 3.0, 0.5, Mode::Nlg),
        spans("X", 8.0, 0.5, Mode::Nlg),
        spans("X", 64.0, 0.15, Mode::Nlg),
        spans("X", 64.0, 0.5, Mode::Nlg),
    ]
}

impl Corruption {
    fn check(&self) -> Result<(), String> {
        let (density, span) = match *self {
            Corruption::Spans {
                mean_span,
                noise_density,
            } => (noise_density, mean_span),
            Corruption::Prefix { noise_density } => (noise_density, 1.0),
        };
        if density > 0.0 && density < 1.0 && span > 0.0 && span.is_finite() {
            Ok(())
        } else {
            Err(format!(
                "{self:?}: noise_density must lie in (0, 1) and mean_span be positive"
            ))
        }
    }

    /// Longest (body, target) for `len` text tokens; the target counts its eos.
    fn bounds(&self, len: usize) -> (usize, usize) {
        match *self {
            Corruption::Spans {
                mean_span,
                noise_density,
            } => {
                let (noise, spans) = span_counts(len, noise_density, mean_span);
                (len - noise + spans, noise + spans + 1)
            }
            Corruption::Prefix { noise_density } => {
                (len - 1, max_prefix_target(len, noise_density) + 1)
            }
        }
    }
}

fn max_prefix_target(len: usize, density: f64) -> usize {
    ((2.0 * density * len as f64).round_ties_even() as usize).clamp(1, len - 1)
}

/// One corrupted example before bos, mode token and padding are added.
#[derive(Clone, Debug, PartialEq)]
pub struct Ul2Example {
    /// Index into the config's `denoisers`.
    pub denoiser: usize,
    pub corruption: Corruption,
    /// The corrupted text: kept tokens and sentinels (spans), or the prefix (prefix).
    pub body: Vec<i64>,
    /// The decoder labels, eos last.
    pub target: Vec<i64>,
}

/// Undo the corruption: the original text tokens, or why `example` is not a well-formed
/// corruption (sentinels missing, out of order, unmatched; no eos).
pub fn reconstruct(example: &Ul2Example, special: &SpecialIds) -> Result<Vec<i64>, String> {
    let Some((&eos, target)) = example.target.split_last() else {
        return Err("empty target".into());
    };
    if eos != special.eos {
        return Err(format!("target ends with {eos}, not eos {}", special.eos));
    }
    if let Corruption::Prefix { .. } = example.corruption {
        return Ok(example.body.iter().chain(target).copied().collect());
    }
    let sentinel_index = |id: i64| special.sentinels.iter().position(|&s| s == id);
    // The target: sentinel 0, its span, sentinel 1, its span, …
    let mut spans: Vec<&[i64]> = Vec::new();
    let mut start = 0;
    for i in 0..=target.len() {
        let at_sentinel = i < target.len() && sentinel_index(target[i]).is_some();
        if i == target.len() || at_sentinel {
            if i > 0 {
                if sentinel_index(target[start]) != Some(spans.len()) {
                    return Err(format!(
                        "target span {} does not start with its sentinel",
                        spans.len()
                    ));
                }
                spans.push(&target[start + 1..i]);
            }
            start = i;
        }
    }
    let mut out = Vec::new();
    let mut next = 0;
    for &id in &example.body {
        match sentinel_index(id) {
            Some(k) if k == next && k < spans.len() => {
                out.extend_from_slice(spans[k]);
                next += 1;
            }
            Some(k) => return Err(format!("input has sentinel {k} where {next} was due")),
            None => out.push(id),
        }
    }
    if next != spans.len() {
        return Err(format!(
            "input has {next} sentinels, the target {} spans",
            spans.len()
        ));
    }
    Ok(out)
}

pub struct Ul2Batcher {
    config: Ul2Config,
    windows: Windows,
    special: SpecialIds,
    /// Cumulative normalised weights, for picking a denoiser.
    cumulative: Vec<f64>,
    /// The last denoiser with a positive weight: rounding can leave the sum a hair below 1.
    last_weighted: usize,
    step: u64,
    cursor: u64,
}

impl Ul2Batcher {
    pub fn new(
        config: &Ul2Config,
        tokens: Arc<[i64]>,
        special: &SpecialIds,
    ) -> Result<Ul2Batcher, String> {
        if config.batch_size == 0 || config.seq_len < 2 {
            return Err(format!(
                "UL2 needs batch_size >= 1 and seq_len >= 2 (got {}, {})",
                config.batch_size, config.seq_len
            ));
        }
        if config.denoisers.is_empty() {
            return Err("UL2 needs at least one denoiser".into());
        }
        let total: f64 = config.denoisers.iter().map(|d| d.weight).sum();
        for d in &config.denoisers {
            d.corruption
                .check()
                .map_err(|e| format!("denoiser {}: {e}", d.name))?;
            if !(d.weight >= 0.0 && d.weight.is_finite()) {
                return Err(format!(
                    "denoiser {}: weight {} is not >= 0",
                    d.name, d.weight
                ));
            }
            if let Corruption::Spans {
                mean_span,
                noise_density,
            } = d.corruption
            {
                let (_, spans) = span_counts(config.seq_len, noise_density, mean_span);
                if spans > special.sentinels.len() {
                    return Err(format!(
                        "denoiser {} (mean_span {mean_span}, noise_density {noise_density}) makes \
                         {spans} spans from {} tokens, but the tokenizer has {} sentinels: \
                         use a shorter seq_len or a tokenizer with more sentinels",
                        d.name,
                        config.seq_len,
                        special.sentinels.len()
                    ));
                }
            }
        }
        if !(total > 0.0 && total.is_finite()) {
            return Err("UL2 denoiser weights must have a positive sum".into());
        }
        if config.mode_tokens && special.modes.is_none() {
            return Err(
                "mode_tokens is on, but the tokenizer has no [NLU], [NLG], [S2S] tokens: \
                 turn mode_tokens off or add them"
                    .into(),
            );
        }
        let cumulative = config
            .denoisers
            .iter()
            .scan(0.0, |acc, d| {
                *acc += d.weight / total;
                Some(*acc)
            })
            .collect();
        let windows = Windows::new(tokens, config.seq_len, 2, config.order, config.seed)?;
        Ok(Ul2Batcher {
            config: config.clone(),
            windows,
            special: special.clone(),
            cumulative,
            last_weighted: (config.denoisers.iter())
                .rposition(|d| d.weight > 0.0)
                .expect("the weights have a positive sum"),
            step: 0,
            cursor: 0,
        })
    }

    /// (S, T): the encoder and decoder widths every batch is padded to (the largest any
    /// denoiser of the mixture can produce).
    pub fn shapes(&self) -> (usize, usize) {
        let lead = usize::from(self.config.encoder_bos) + usize::from(self.config.mode_tokens);
        let bounds = self
            .config
            .denoisers
            .iter()
            .map(|d| d.corruption.bounds(self.config.seq_len));
        let (s, t) = bounds.fold((0, 0), |(s, t), (bs, bt)| (s.max(bs), t.max(bt)));
        (lead + s, t)
    }

    pub fn windows_per_epoch(&self) -> usize {
        self.windows.per_epoch()
    }

    /// Example `index` of the stream, on its own.
    pub fn example(&mut self, index: u64) -> Ul2Example {
        let mut rng = seed::rng_for(self.config.seed, seed::EXAMPLE, index);
        let u = seed::unit(&mut rng);
        let denoiser = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.last_weighted);
        let corruption = self.config.denoisers[denoiser].corruption;
        let window = self.windows.get(index);
        let len = window.len();
        let (body, mut target) = match corruption {
            Corruption::Prefix { noise_density } => {
                let t = 1 + rng.below(max_prefix_target(len, noise_density));
                (window[..len - t].to_vec(), window[len - t..].to_vec())
            }
            Corruption::Spans {
                mean_span,
                noise_density,
            } => {
                let mask = random_spans_noise_mask(len, noise_density, mean_span, &mut rng);
                corrupt(window, &mask, &self.special.sentinels)
            }
        };
        target.push(self.special.eos);
        Ul2Example {
            denoiser,
            corruption,
            body,
            target,
        }
    }

    /// The next examples, before bos, mode tokens and padding.
    pub fn next_examples(&mut self) -> Vec<Ul2Example> {
        let b = self.config.batch_size as u64;
        let examples = (self.cursor..self.cursor + b)
            .map(|i| self.example(i))
            .collect();
        self.cursor += b;
        self.step += 1;
        examples
    }

    /// The encoder input and decoder target of `example`.
    pub fn seq2seq(&self, example: &Ul2Example) -> Seq2SeqExample {
        let bos = self.config.encoder_bos.then_some(self.special.bos);
        let mode = match (self.config.mode_tokens, self.special.modes) {
            (true, Some(m)) => Some(match self.config.denoisers[example.denoiser].mode {
                Mode::Nlu => m.nlu,
                Mode::Nlg => m.nlg,
                Mode::S2s => m.s2s,
            }),
            _ => None,
        };
        Seq2SeqExample {
            input: bos
                .into_iter()
                .chain(mode)
                .chain(example.body.iter().copied())
                .collect(),
            target: example.target.clone(),
        }
    }

    fn saved(&self) -> BatcherState {
        BatcherState {
            objective: "ul2".into(),
            seed: self.config.seed,
            step: self.step,
            cursor: self.cursor,
            tokens: self.windows.token_count(),
        }
    }
}

/// (input body, target without eos): each run of hidden tokens becomes the next sentinel in
/// the input, and that sentinel followed by the run in the target.
fn corrupt(tokens: &[i64], mask: &[bool], sentinels: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let (mut body, mut target) = (Vec::new(), Vec::new());
    let mut span = 0;
    for (i, (&tok, &hidden)) in tokens.iter().zip(mask).enumerate() {
        if !hidden {
            body.push(tok);
            continue;
        }
        if i == 0 || !mask[i - 1] {
            body.push(sentinels[span]);
            target.push(sentinels[span]);
            span += 1;
        }
        target.push(tok);
    }
    (body, target)
}

impl Batcher for Ul2Batcher {
    fn next_batch(&mut self) -> Batch {
        let (s, t) = self.shapes();
        let examples: Vec<Seq2SeqExample> = self
            .next_examples()
            .iter()
            .map(|e| self.seq2seq(e))
            .collect();
        seq2seq(&examples, s, t, &self.special)
    }

    fn epoch_batches(&self) -> usize {
        self.windows.per_epoch().div_ceil(self.config.batch_size)
    }

    fn epoch_batch(&mut self, k: usize) -> Option<Batch> {
        let range = epoch_range(k, self.config.batch_size, self.windows.per_epoch())?;
        let (s, t) = self.shapes();
        let examples: Vec<Seq2SeqExample> = range
            .map(|i| {
                let e = self.example(i);
                self.seq2seq(&e)
            })
            .collect();
        Some(seq2seq(&examples, s, t, &self.special))
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
