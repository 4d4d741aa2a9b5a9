//! Attention test cases shared by the forward and backward kernel tests: shapes, attribute
//! variants and key masks that reach every path of the kernels.
#![allow(dead_code)]

use encdecc_compiler::ir::*;

use super::Rng;

#[derive(Clone, Copy, Debug)]
pub enum MaskKind {
    None,
    /// Batch row `b` keeps its first `tk - 3b` keys; the last batch row keeps none.
    Right,
    /// Batch row `b` drops its first `2b + 1` keys and a run in the middle.
    LeftAndHole,
    /// Each key kept with probability 1/2.
    Random,
}

#[derive(Debug)]
pub struct Case {
    pub b: usize,
    pub hq: usize,
    pub hk: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub attrs: AttentionAttrs,
    pub mask: MaskKind,
    /// Input magnitude (large values reach the wide parts of tanh and exp).
    pub amp: f64,
}

pub fn make_mask(c: &Case, rng: &mut Rng) -> Option<Vec<bool>> {
    let (b, tk) = (c.b, c.tk);
    let m: Vec<bool> = match c.mask {
        MaskKind::None => return None,
        MaskKind::Right => (0..b)
            .flat_map(|bi| (0..tk).map(move |j| bi + 1 < b && j + 3 * bi < tk.max(3 * bi + 1)))
            .collect(),
        MaskKind::LeftAndHole => (0..b)
            .flat_map(|bi| (0..tk).map(move |j| j > 2 * bi && !(tk / 2..tk / 2 + 4).contains(&j)))
            .collect(),
        MaskKind::Random => (0..b * tk).map(|_| rng.next() < 0.5).collect(),
    };
    Some(m)
}

/// `x` stored `[B, H, T, D]` rewritten as `[B, T, H, D]` (before the head transpose).
pub fn time_major(x: &[f32], b: usize, h: usize, t: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let from = ((bi * h + hi) * t + ti) * d;
                let to = ((bi * t + ti) * h + hi) * d;
                out[to..to + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    out
}

/// Every mode × window (empty, narrow, wide, wider than the sequence) × window rule ×
/// softcap × mask, each on two of the shapes, with a seed per case. Shapes
/// `(b, hq, hk, tq, tk, d, dv)`: MHA, GQA, MQA; Tq < Tk, Tq > Tk, a single query; several
/// query blocks with ragged ends; head dims that are not a multiple of 8.
pub fn variants() -> Vec<(Case, u64)> {
    let shapes = [
        (3, 4, 4, 7, 7, 6, 6),
        (2, 4, 2, 5, 11, 13, 7),
        (3, 6, 1, 11, 5, 9, 9),
        (2, 2, 1, 1, 9, 8, 8),
        (2, 4, 2, 70, 70, 12, 12),
        (2, 3, 3, 130, 67, 17, 10),
    ];
    let mut out = vec![];
    let mut seed = 1;
    let mut n = 0;
    for mode in [AttnMode::Causal, AttnMode::Bidirectional] {
        for window in [None, Some(0), Some(1), Some(3), Some(40), Some(1000)] {
            for window_rule in [WindowRule::Inclusive, WindowRule::Exclusive] {
                for softcap in [None, Some(F64(5.0))] {
                    for mask in [
                        MaskKind::None,
                        MaskKind::Right,
                        MaskKind::LeftAndHole,
                        MaskKind::Random,
                    ] {
                        for _ in 0..2 {
                            let (b, hq, hk, tq, tk, d, dv) = shapes[n % shapes.len()];
                            n += 1;
                            let amp = if seed % 3 == 0 { 4.0 } else { 1.5 };
                            let attrs = AttentionAttrs {
                                mode,
                                window,
                                window_rule,
                                softcap,
                                scale: F64(if seed % 2 == 0 { 0.3 } else { 1.0 }),
                            };
                            let c = Case {
                                b,
                                hq,
                                hk,
                                tq,
                                tk,
                                d,
                                dv,
                                attrs,
                                mask,
                                amp,
                            };
                            out.push((c, seed));
                            seed += 1;
                        }
                    }
                }
            }
        }
    }
    out
}
