//! T5's `random_spans_noise_mask` (t5/data/preprocessors.py): which tokens of an example a
//! span-corruption denoiser hides. The counts are fixed by the length, the density and the
//! mean span length; only the span boundaries are random:
//!
//! - `noise = round(len · density)` clamped to `[1, len - 1]` (T5 rounds ties to even);
//! - `spans = max(1, round(noise / mean_span))`, here also at most `len - noise`, so that
//!   every non-noise segment can be non-empty (T5 leaves that degenerate case undefined);
//! - noise and non-noise tokens are each cut into `spans` non-empty segments, uniformly
//!   at random, and the segments alternate.
//!
//! T5 always starts with a non-noise segment; here a fair coin picks which kind comes
//! first (the brief's "first span noise-or-not random"), so the first token is as likely
//! to be hidden as any other.

use crate::rng::Rng;

/// (noise tokens, noise spans) for an example of `len >= 2` tokens.
pub(crate) fn span_counts(len: usize, density: f64, mean_span: f64) -> (usize, usize) {
    let noise = ((len as f64 * density).round_ties_even() as usize).clamp(1, len - 1);
    let spans = ((noise as f64 / mean_span).round_ties_even() as usize).max(1);
    (noise, spans.min(noise).min(len - noise))
}

/// Cut `items` into `segments` non-empty runs, all cuts equally likely (T5's
/// `_random_segmentation`: shuffle `segments - 1` cut marks among the `items - 1` gaps).
/// Returns the run lengths. Needs `1 <= segments <= items`.
pub(crate) fn random_segmentation(items: usize, segments: usize, rng: &mut Rng) -> Vec<usize> {
    let mut cut: Vec<bool> = (0..items - 1).map(|i| i < segments - 1).collect();
    super::seed::shuffle(&mut cut, rng);
    let mut lengths = vec![1];
    for c in cut {
        if c {
            lengths.push(1);
        } else {
            *lengths.last_mut().expect("starts non-empty") += 1;
        }
    }
    lengths
}

/// `true` at hidden tokens. As in T5, a length below 2 is computed as 2 and cut back, and
/// a density of 0 (or less) hides nothing.
pub fn random_spans_noise_mask(
    len: usize,
    density: f64,
    mean_span: f64,
    rng: &mut Rng,
) -> Vec<bool> {
    if len == 0 || density.is_nan() || density <= 0.0 {
        return vec![false; len];
    }
    let n = len.max(2);
    let (noise, spans) = span_counts(n, density, mean_span);
    let noise_first = rng.below(2) == 1;
    let noise_lengths = random_segmentation(noise, spans, rng);
    let keep_lengths = random_segmentation(n - noise, spans, rng);
    let mut mask = Vec::with_capacity(n);
    for (hidden_run, kept_run) in noise_lengths.into_iter().zip(keep_lengths) {
        let pair = if noise_first {
            [(true, hidden_run), (false, kept_run)]
        } else {
            [(false, kept_run), (true, hidden_run)]
        };
        for (hidden, run) in pair {
            mask.extend(std::iter::repeat_n(hidden, run));
        }
    }
    mask.truncate(len);
    mask
}
