//! The CPU attention kernel (`cpu::attention::attention`) against the decomposition run by
//! the reference interpreter, on random inputs: both modes, windows under both rules
//! (including empty and wider-than-sequence ones), softcap on and off, MHA / GQA / MQA,
//! key masks (none, right and left padding, a fully padded batch row, random holes, so
//! that some rows have every visible key padded), Tq ≠ Tk, head dims that are not a
//! multiple of 8, several query blocks, one and several threads.

use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::*;
use encdecc_runtime::cpu::attention::{attention, AttnShapes, Layout};
use encdecc_runtime::interp;
use encdecc_runtime::Tensor;
use std::collections::HashMap;

mod common;
use common::{input, Rng};

#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    /// Batch row `b` keeps its first `tk - 3b` keys; the last batch row keeps none.
    Right,
    /// Batch row `b` drops its first `2b + 1` keys and a run in the middle.
    LeftAndHole,
    /// Each key kept with probability 1/2.
    Random,
}

#[derive(Debug)]
struct Case {
    b: usize,
    hq: usize,
    hk: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    attrs: AttentionAttrs,
    mask: MaskKind,
    /// Input magnitude (large values reach the wide parts of tanh and exp).
    amp: f64,
}

fn make_mask(c: &Case, rng: &mut Rng) -> Option<Vec<bool>> {
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

fn check(c: &Case, seed: u64) {
    let mut rng = Rng(seed);
    let mut g = Graph::new("attn");
    let q = input(&mut g, "q", &format!("f32[B, {}, T, {}]", c.hq, c.d));
    let k = input(&mut g, "k", &format!("f32[B, {}, S, {}]", c.hk, c.d));
    let v = input(&mut g, "v", &format!("f32[B, {}, S, {}]", c.hk, c.dv));
    let mask = make_mask(c, &mut rng);
    let mut ops = vec![q, k, v];
    if mask.is_some() {
        ops.push(input(&mut g, "m", "bool[B, S]"));
    }
    let o = g.add(Op::Attention(c.attrs.clone()), &ops, None).unwrap();
    g.outputs.push(("o".into(), o));
    decompose(&mut g).unwrap();

    let qv = rng.vec(c.b * c.hq * c.tq * c.d, c.amp);
    let kv = rng.vec(c.b * c.hk * c.tk * c.d, c.amp);
    let vv = rng.vec(c.b * c.hk * c.tk * c.dv, 1.0);
    let mut inputs = HashMap::from([
        (
            "q".to_string(),
            Tensor::f32(vec![c.b, c.hq, c.tq, c.d], qv.clone()),
        ),
        (
            "k".to_string(),
            Tensor::f32(vec![c.b, c.hk, c.tk, c.d], kv.clone()),
        ),
        (
            "v".to_string(),
            Tensor::f32(vec![c.b, c.hk, c.tk, c.dv], vv.clone()),
        ),
    ]);
    if let Some(m) = &mask {
        inputs.insert("m".into(), Tensor::bool(vec![c.b, c.tk], m.clone()));
    }
    let want = interp::run(&g, &HashMap::new(), &inputs)
        .unwrap()
        .remove("o")
        .unwrap();
    let want = want.as_f32().unwrap();
    let scale = want.iter().fold(0f32, |a, &x| a.max(x.abs())).max(1e-30);

    // The same data stored [B, T, H, D] (before the head transpose), read in place.
    let time_major = |x: &[f32], h: usize, t: usize, d: usize| -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for bi in 0..c.b {
            for hi in 0..h {
                for ti in 0..t {
                    let from = ((bi * h + hi) * t + ti) * d;
                    let to = ((bi * t + ti) * h + hi) * d;
                    out[to..to + d].copy_from_slice(&x[from..from + d]);
                }
            }
        }
        out
    };
    let stored = [
        (Layout::HeadsMajor, qv.clone(), kv.clone(), vv.clone()),
        (
            Layout::TimeMajor,
            time_major(&qv, c.hq, c.tq, c.d),
            time_major(&kv, c.hk, c.tk, c.d),
            time_major(&vv, c.hk, c.tk, c.dv),
        ),
    ];
    for (threads, (layout, qv, kv, vv)) in [1, 2, 3]
        .into_iter()
        .flat_map(|t| stored.iter().map(move |x| (t, x)))
    {
        let s = AttnShapes {
            b: c.b,
            hq: c.hq,
            hk: c.hk,
            tq: c.tq,
            tk: c.tk,
            d: c.d,
            dv: c.dv,
            layout: [*layout; 3],
        };
        let mut got = vec![f32::NAN; c.b * c.hq * c.tq * c.dv];
        attention(&c.attrs, &s, qv, kv, vv, mask.as_deref(), &mut got, threads);
        let (i, err) = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0f32),
                |m, (i, e)| if e > m.1 || e.is_nan() { (i, e) } else { m },
            );
        assert!(
            err <= 1e-5 * scale,
            "{c:?}, {threads} threads, {layout:?}: element {i}: {} vs {} (max |ref| {scale})",
            got[i],
            want[i]
        );
    }
}

#[test]
fn kernel_matches_decomposition() {
    // (b, hq, hk, tq, tk, d, dv): MHA, GQA, MQA; Tq < Tk, Tq > Tk, a single query; several
    // query blocks with ragged ends; head dims not a multiple of 8.
    let shapes = [
        (3, 4, 4, 7, 7, 6, 6),
        (2, 4, 2, 5, 11, 13, 7),
        (3, 6, 1, 11, 5, 9, 9),
        (2, 2, 1, 1, 9, 8, 8),
        (2, 4, 2, 70, 70, 12, 12),
        (2, 3, 3, 130, 67, 17, 10),
    ];
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
                        // Every shape across the variants, two per variant.
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
                            check(&c, seed);
                            seed += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn large_and_edge_shapes() {
    let base = AttentionAttrs {
        mode: AttnMode::Causal,
        window: None,
        window_rule: WindowRule::Inclusive,
        softcap: Some(F64(50.0)),
        scale: F64(0.125),
    };
    let cases = [
        // The benchmark's shape, smaller batch: causal self-attention and bidirectional
        // with a window, multi-threaded.
        (base.clone(), (1, 8, 8, 256, 256, 64, 64), MaskKind::None),
        (
            AttentionAttrs {
                mode: AttnMode::Bidirectional,
                window: Some(100),
                ..base.clone()
            },
            (2, 4, 4, 200, 256, 64, 64),
            MaskKind::Right,
        ),
        (
            AttentionAttrs {
                window: Some(7),
                softcap: None,
                ..base.clone()
            },
            (2, 4, 1, 150, 150, 40, 24),
            MaskKind::LeftAndHole,
        ),
    ];
    for (i, (attrs, (b, hq, hk, tq, tk, d, dv), mask)) in cases.into_iter().enumerate() {
        check(
            &Case {
                b,
                hq,
                hk,
                tq,
                tk,
                d,
                dv,
                attrs,
                mask,
                amp: 1.0,
            },
            100 + i as u64,
        );
    }
}
