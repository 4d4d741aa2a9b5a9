//! Random initial weights for training from scratch, as HF initialises Gemma 2 / T5Gemma:
//! projections and embeddings ~ N(0, std) (`initializer_range`, 0.02), RMSNorm scales 0
//! (Gemma's norms multiply by 1 + w, so 0 is the identity). Seeded and reproducible.

use crate::rng::Rng;
use crate::tensor::Tensor;
use encdecc_compiler::elab::ParamInfo;
use std::collections::HashMap;

/// Whether a parameter is a norm scale (initialised to zero).
fn is_norm(p: &ParamInfo) -> bool {
    p.shape.len() == 1 && p.ckpt.contains("norm")
}

/// One value per parameter, keyed by DSL path. Each parameter draws from its own stream
/// (seeded by the seed and its name), so adding a parameter leaves the others unchanged.
pub fn random_params(params: &[ParamInfo], seed: u64, std: f64) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for p in params {
        let n: usize = p.shape.iter().map(|&d| d as usize).product();
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let v = if is_norm(p) || p.shape.len() == 1 {
            vec![0f32; n]
        } else {
            let h = p.ckpt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = Rng::new(seed ^ h);
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        out.insert(p.path.clone(), Tensor::f32(shape, v));
    }
    out
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = (rng.uniform() as f64).max(1e-12);
    let u2 = rng.uniform() as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ckpt: &str, shape: &[u64]) -> ParamInfo {
        ParamInfo {
            path: ckpt.into(),
            ckpt: ckpt.into(),
            shape: shape.to_vec(),
            node: Default::default(),
        }
    }

    #[test]
    fn normal_matrices_zero_norms_reproducible() {
        let ps = [
            info("model.layers.0.mlp.up_proj.weight", &[64, 128]),
            info("model.norm.weight", &[64]),
        ];
        let a = random_params(&ps, 7, 0.02);
        let b = random_params(&ps, 7, 0.02);
        assert_eq!(a, b);
        assert_ne!(a, random_params(&ps, 8, 0.02));
        assert!(a["model.norm.weight"].to_f64().iter().all(|&x| x == 0.0));
        let w = a["model.layers.0.mlp.up_proj.weight"].to_f64();
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let sd = (w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (sd - 0.02).abs() < 1e-3,
            "mean {mean} sd {sd}"
        );
    }
}
