//! Choosing the next token from a row of logits: greedy, or sampling after HF's warpers
//! (temperature, then top-k, then top-p), with this crate's reproducible generator.

use crate::rng::Rng;

/// Sampling settings (HF `do_sample=True`). HF's defaults: temperature 1, top-k 50, top-p 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep the k most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities sum to at least p; `None` (or 1) keeps all.
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Sampling {
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be positive, not {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1 (leave it out to keep every token)".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("top-p must be in (0, 1], not {p}"));
            }
        }
        Ok(())
    }
}

/// The index of the largest logit; the first on ties, as `torch.argmax`.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || row[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// Draws a token from `row` after the warpers, in HF's order: logits / temperature, then
/// everything below the k-th largest logit removed, then the smallest set of most likely
/// tokens whose probability reaches top-p kept (at least one).
pub fn sample(row: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let t = s.temperature as f64;
    let mut order: Vec<usize> = (0..row.len()).filter(|&i| !row[i].is_nan()).collect();
    if order.is_empty() {
        return 0;
    }
    // Most likely first; stable, so equal logits keep index order.
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    if let Some(k) = s.top_k {
        // Ties with the k-th logit stay in, as HF's `logits < kth_value` test keeps them.
        let kth = row[order[k.min(order.len()) - 1]];
        order.retain(|&i| row[i] >= kth);
    }
    let top = row[order[0]] as f64 / t;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (row[i] as f64 / t - top).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p.filter(|&p| p < 1.0) {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p as f64 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u = rng.uniform() as f64;
    let mut acc = 0.0;
    for (n, q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return order[n];
        }
    }
    order[order.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling {
            temperature: 1.0,
            top_k,
            top_p,
            seed: 0,
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let row = [0.1, 2.0, 1.9, -3.0, 1.95];
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(sample(&row, &s(Some(1), None), &mut rng), 1);
            // p(token 1) ≈ 0.33: top-p 0.3 keeps it alone.
            assert_eq!(sample(&row, &s(None, Some(0.3)), &mut rng), 1);
        }
        // top-k 3 never draws the two unlikely tokens.
        for _ in 0..500 {
            let t = sample(&row, &s(Some(3), None), &mut rng);
            assert!([1, 2, 4].contains(&t), "{t}");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let row = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // probabilities 1/8, 2/8, 5/8
        let mut rng = Rng::new(3);
        let mut n = [0usize; 3];
        let draws = 40_000;
        for _ in 0..draws {
            n[sample(&row, &s(None, None), &mut rng)] += 1;
        }
        for (i, want) in [0.125, 0.25, 0.625].iter().enumerate() {
            let got = n[i] as f64 / draws as f64;
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
    }
}
