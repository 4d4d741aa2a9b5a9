//! The teacher side of distillation: the teacher's distribution over the vocabulary at the
//! positions that predict the student's labels, softened by a temperature and optionally
//! cut to its top k (renormalised), as the Gemma 2 recipe stores "a sampled subset of the
//! teacher probabilities".

use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub struct TeacherConfig {
    pub temperature: f64,
    /// Keep the k most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
}

/// `probs[b, t, :] = softmax(logits[b, positions[b, t], :] / τ)`, top-k cut. `logits` is the
/// teacher's `[B, L, V]`, `positions` i64 `[B, T]`.
pub fn teacher_probs(
    logits: &Tensor,
    positions: &Tensor,
    cfg: &TeacherConfig,
) -> Result<Tensor, String> {
    let (Some(z), Some(pos)) = (logits.as_f32(), positions.as_i64()) else {
        return Err("teacher logits must be f32 and label positions i64".into());
    };
    let [b, l, v] = logits.shape[..] else {
        return Err(format!(
            "teacher logits must be [B, L, V], got {:?}",
            logits.shape
        ));
    };
    let [pb, t] = positions.shape[..] else {
        return Err(format!(
            "label positions must be [B, T], got {:?}",
            positions.shape
        ));
    };
    if pb != b {
        return Err(format!("teacher batch {b} differs from the student's {pb}"));
    }
    let mut out = vec![0f32; b * t * v];
    let mut idx: Vec<usize> = (0..v).collect();
    for r in 0..b {
        for j in 0..t {
            let p = pos[r * t + j];
            if p < 0 || p as usize >= l {
                return Err(format!(
                    "label position {p} outside the teacher's {l} positions"
                ));
            }
            let row = &z[(r * l + p as usize) * v..][..v];
            let dst = &mut out[(r * t + j) * v..][..v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let keep = cfg.top_k.unwrap_or(v).clamp(1, v);
            let cut = if keep < v {
                // The k-th largest logit; ties at the cut are all kept.
                idx.iter_mut().enumerate().for_each(|(i, x)| *x = i);
                idx.select_nth_unstable_by(keep - 1, |&a, &c| row[c].total_cmp(&row[a]));
                row[idx[keep - 1]]
            } else {
                f32::NEG_INFINITY
            };
            let mut total = 0f64;
            for (d, &x) in dst.iter_mut().zip(row) {
                if x >= cut {
                    let e = ((x as f64 - max) / cfg.temperature).exp();
                    *d = e as f32;
                    total += e;
                }
            }
            for d in dst.iter_mut() {
                *d = (*d as f64 / total) as f32;
            }
        }
    }
    Ok(Tensor::f32(vec![b, t, v], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_at_positions_with_top_k() {
        // Two positions of one row; vocabulary 4.
        let logits = Tensor::f32(vec![1, 2, 4], vec![0.0, 1.0, 2.0, 3.0, 3.0, 0.0, 0.0, -1.0]);
        let pos = Tensor::i64(vec![1, 2], vec![1, 0]);
        let full = teacher_probs(
            &logits,
            &pos,
            &TeacherConfig {
                temperature: 1.0,
                top_k: None,
            },
        )
        .unwrap();
        let f = full.as_f32().unwrap();
        let z: f64 = [3.0f64, 0.0, 0.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((f[0] as f64 - 3f64.exp() / z).abs() < 1e-6);
        assert!((f[4..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(f[7] > f[6]);
        let top2 = teacher_probs(
            &logits,
            &pos,
            &TeacherConfig {
                temperature: 2.0,
                top_k: Some(2),
            },
        )
        .unwrap();
        let t = top2.as_f32().unwrap();
        // Row 0 (position 1): 3.0 and a tie at 0.0 — ties at the cut are kept.
        assert_eq!(t[3], 0.0);
        assert!(t[0] > 0.0 && t[1] > 0.0 && t[2] > 0.0);
        let e = |x: f64| (x / 2.0).exp();
        assert!((t[0] as f64 - e(3.0) / (e(3.0) + 2.0 * e(0.0))).abs() < 1e-6);
        // Row 1 (position 0): 3.0 and 2.0.
        assert_eq!(&t[4..6], &[0.0, 0.0]);
        assert!((t[7] as f64 - e(3.0) / (e(3.0) + e(2.0))).abs() < 1e-6);
        let bad = Tensor::i64(vec![1, 2], vec![1, 5]);
        assert!(teacher_probs(
            &logits,
            &bad,
            &TeacherConfig {
                temperature: 1.0,
                top_k: None
            }
        )
        .unwrap_err()
        .contains("outside"));
    }
}
