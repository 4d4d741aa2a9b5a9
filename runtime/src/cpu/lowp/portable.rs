//! The product without compiled kernels: scalar, `x` in f32, the weights widened.

use super::WeightRef;

pub(super) fn matmul_xwt(
    x: &[f32],
    w: WeightRef,
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
) {
    let mut row = vec![0f32; k];
    for j in 0..n {
        let scale = match w {
            WeightRef::Bf16(w) => {
                for (d, v) in row.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                    *d = v.to_f32();
                }
                1.0
            }
            WeightRef::Int8 { q, scales } => {
                for (d, &v) in row.iter_mut().zip(&q[j * k..(j + 1) * k]) {
                    *d = v as f32;
                }
                scales[j]
            }
        };
        for i in 0..m {
            let dot: f32 = x[i * k..(i + 1) * k]
                .iter()
                .zip(&row)
                .map(|(a, b)| a * b)
                .sum();
            out[i * n + j] = dot * scale;
        }
    }
}
