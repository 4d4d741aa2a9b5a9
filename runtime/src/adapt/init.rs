//! Fresh tensors for `normal`, `zeros` and `ones` rules. Each tensor draws from its own
//! generator, seeded by the run's seed and the tensor's name, so a tensor's values depend on
//! neither the order of writing nor the other rules.

use crate::rng::Rng;
use encdecc_compiler::adapt::TensorInit;

/// The values of a fresh tensor of `numel` elements; `None` for a copy.
pub fn fresh(init: &TensorInit, name: &str, numel: usize, seed: u64) -> Option<Vec<f32>> {
    Some(match init {
        TensorInit::Copy { .. } => return None,
        TensorInit::Zeros => vec![0.0; numel],
        TensorInit::Ones => vec![1.0; numel],
        TensorInit::Normal { mean, std } => {
            let mut rng = Rng::new(seed ^ fnv1a(name));
            let mut out = Vec::with_capacity(numel);
            while out.len() < numel {
                let (a, b) = normal_pair(&mut rng);
                out.push((mean + std * a) as f32);
                if out.len() < numel {
                    out.push((mean + std * b) as f32);
                }
            }
            out
        }
    })
}

/// Two independent standard normals (Box–Muller, in f64).
fn normal_pair(rng: &mut Rng) -> (f64, f64) {
    // 53-bit uniforms; u1 in (0, 1] keeps the logarithm finite.
    let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f64::consts::TAU * u2;
    (r * t.cos(), r * t.sin())
}

/// FNV-1a: a stable hash of the name (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(std: f64) -> TensorInit {
        TensorInit::Normal { mean: 0.0, std }
    }

    #[test]
    fn normal_has_the_intended_moments() {
        let n = 200_000;
        for (std, mean) in [(0.02, 0.0), (1.0, 3.0)] {
            let v = fresh(&TensorInit::Normal { mean, std }, "w", n, 7).unwrap();
            let m = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let s = (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n as f64).sqrt();
            // Standard errors: std/sqrt(n) for the mean, std/sqrt(2n) for the deviation.
            let se = std / (n as f64).sqrt();
            assert!((m - mean).abs() < 5.0 * se, "mean {m} for {mean}");
            assert!(
                (s - std).abs() < 5.0 * se / 2f64.sqrt(),
                "std {s} for {std}"
            );
            // Tails: about 0.27% beyond 3 sigma.
            let beyond = v
                .iter()
                .filter(|&&x| ((x as f64 - mean) / std).abs() > 3.0)
                .count();
            let frac = beyond as f64 / n as f64;
            assert!((0.0020..0.0034).contains(&frac), "3-sigma tail {frac}");
        }
    }

    #[test]
    fn seeded_per_tensor() {
        let a = fresh(&normal(1.0), "a", 64, 1).unwrap();
        assert_eq!(
            a,
            fresh(&normal(1.0), "a", 64, 1).unwrap(),
            "same seed, same name"
        );
        assert_ne!(a, fresh(&normal(1.0), "a", 64, 2).unwrap(), "other seed");
        assert_ne!(a, fresh(&normal(1.0), "b", 64, 1).unwrap(), "other name");
        // A prefix of a longer draw: the count does not change the values.
        assert_eq!(a[..63], fresh(&normal(1.0), "a", 63, 1).unwrap()[..]);
        assert_eq!(fresh(&TensorInit::Ones, "x", 3, 0).unwrap(), [1.0; 3]);
        assert_eq!(fresh(&TensorInit::Zeros, "x", 2, 0).unwrap(), [0.0; 2]);
    }
}
