//! The composites' decompositions against direct loop implementations, on random inputs:
//! every attention variant (causal / bidirectional, windows under both rules, softcap,
//! GQA and MQA, key padding) and cross-entropy with ignored labels.

use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::*;
use encdecc_runtime::interp;
use encdecc_runtime::Tensor;
use std::collections::HashMap;

mod common;
use common::{input, Rng};

struct Case {
    b: usize,
    hq: usize,
    hk: usize,
    tq: usize,
    tk: usize,
    d: usize,
    attrs: AttentionAttrs,
    padded: bool,
}

/// Direct attention: for each query, the visible keys by the rules in the spec, softcapped
/// scaled scores, softmax (a row with no visible key is uniform over all keys, as HF).
fn naive(c: &Case, q: &[f32], k: &[f32], v: &[f32], mask: &[bool]) -> Vec<f64> {
    let r = c.hq / c.hk;
    let mut out = vec![0f64; c.b * c.hq * c.tq * c.d];
    for b in 0..c.b {
        for h in 0..c.hq {
            let kh = h / r;
            for i in 0..c.tq {
                let mut s = vec![0f64; c.tk];
                let mut vis = vec![false; c.tk];
                for j in 0..c.tk {
                    let mut dot = 0f64;
                    for x in 0..c.d {
                        dot += q[((b * c.hq + h) * c.tq + i) * c.d + x] as f64
                            * k[((b * c.hk + kh) * c.tk + j) * c.d + x] as f64;
                    }
                    let mut sc = dot * c.attrs.scale.0;
                    if let Some(cap) = c.attrs.softcap {
                        sc = (sc / cap.0).tanh() * cap.0;
                    }
                    s[j] = sc;
                    let (ii, jj) = (i as i64, j as i64);
                    let pos = match (c.attrs.mode, c.attrs.window) {
                        (AttnMode::Causal, None) => jj <= ii,
                        (AttnMode::Causal, Some(w)) => jj <= ii && jj > ii - w as i64,
                        (AttnMode::Bidirectional, None) => true,
                        (AttnMode::Bidirectional, Some(w)) => match c.attrs.window_rule {
                            WindowRule::Inclusive => (ii - jj).abs() <= w as i64,
                            WindowRule::Exclusive => (ii - jj).abs() < w as i64,
                        },
                    };
                    vis[j] = pos && (!c.padded || mask[b * c.tk + j]);
                }
                // No visible key: every score is finfo.min, so the softmax is uniform.
                let any = vis.iter().any(|&x| x);
                let m = (0..c.tk)
                    .filter(|&j| vis[j])
                    .map(|j| s[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = (0..c.tk)
                    .map(|j| {
                        if !any {
                            1.0
                        } else if vis[j] {
                            (s[j] - m).exp()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let z: f64 = e.iter().sum();
                for x in 0..c.d {
                    let mut acc = 0f64;
                    for j in 0..c.tk {
                        acc += e[j] / z * v[((b * c.hk + kh) * c.tk + j) * c.d + x] as f64;
                    }
                    out[((b * c.hq + h) * c.tq + i) * c.d + x] = acc;
                }
            }
        }
    }
    out
}

fn check_attention(c: Case, seed: u64) {
    let mut rng = Rng(seed);
    let mut g = Graph::new("attn");
    let q = input(&mut g, "q", &format!("f32[B, {}, T, {}]", c.hq, c.d));
    let k = input(&mut g, "k", &format!("f32[B, {}, S, {}]", c.hk, c.d));
    let v = input(&mut g, "v", &format!("f32[B, {}, S, {}]", c.hk, c.d));
    let mut ops = vec![q, k, v];
    if c.padded {
        ops.push(input(&mut g, "m", "bool[B, S]"));
    }
    let o = g.add(Op::Attention(c.attrs.clone()), &ops, None).unwrap();
    g.outputs.push(("o".into(), o));
    decompose(&mut g).unwrap();
    let qv = rng.vec(c.b * c.hq * c.tq * c.d, 2.0);
    let kv = rng.vec(c.b * c.hk * c.tk * c.d, 2.0);
    let vv = rng.vec(c.b * c.hk * c.tk * c.d, 1.0);
    // Row b keeps its first tk - b keys (right padding), at least one.
    let mask: Vec<bool> = (0..c.b)
        .flat_map(|b| (0..c.tk).map(move |j| j + b < c.tk.max(b + 1)))
        .collect();
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
            Tensor::f32(vec![c.b, c.hk, c.tk, c.d], vv.clone()),
        ),
    ]);
    if c.padded {
        inputs.insert("m".into(), Tensor::bool(vec![c.b, c.tk], mask.clone()));
    }
    let got = interp::run(&g, &HashMap::new(), &inputs)
        .unwrap()
        .remove("o")
        .unwrap();
    let want = naive(&c, &qv, &kv, &vv, &mask);
    let err = got
        .to_f64()
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err < 1e-5,
        "{:?} (b {} hq {} hk {} tq {} tk {}): max error {err:e}",
        c.attrs,
        c.b,
        c.hq,
        c.hk,
        c.tq,
        c.tk
    );
}

#[test]
fn attention_matches_direct_loops() {
    let mut seed = 1;
    for mode in [AttnMode::Causal, AttnMode::Bidirectional] {
        for window in [None, Some(1), Some(3)] {
            for window_rule in [WindowRule::Inclusive, WindowRule::Exclusive] {
                for softcap in [None, Some(F64(5.0))] {
                    for (hq, hk) in [(4, 4), (4, 2), (3, 1)] {
                        for padded in [false, true] {
                            let (tq, tk) = if mode == AttnMode::Causal {
                                (7, 7)
                            } else {
                                (5, 7)
                            };
                            let attrs = AttentionAttrs {
                                mode,
                                window,
                                window_rule,
                                softcap,
                                scale: F64(0.3),
                            };
                            check_attention(
                                Case {
                                    b: 3,
                                    hq,
                                    hk,
                                    tq,
                                    tk,
                                    d: 6,
                                    attrs,
                                    padded,
                                },
                                seed,
                            );
                            seed += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn cross_entropy_matches_direct_loops() {
    let mut rng = Rng(7);
    let (b, t, v) = (3, 5, 11);
    let mut g = Graph::new("ce");
    let l = input(&mut g, "logits", &format!("f32[B, T, {v}]"));
    let y = input(&mut g, "labels", "i64[B, T]");
    let o = g
        .add(Op::CrossEntropy { ignore_index: -100 }, &[l, y], None)
        .unwrap();
    g.outputs.push(("loss".into(), o));
    decompose(&mut g).unwrap();
    let logits = rng.vec(b * t * v, 4.0);
    let labels: Vec<i64> = (0..b * t)
        .map(|i| if i % 4 == 3 { -100 } else { (i * 7 % v) as i64 })
        .collect();
    let inputs = HashMap::from([
        (
            "logits".to_string(),
            Tensor::f32(vec![b, t, v], logits.clone()),
        ),
        (
            "labels".to_string(),
            Tensor::i64(vec![b, t], labels.clone()),
        ),
    ]);
    let got = interp::run(&g, &HashMap::new(), &inputs).unwrap()["loss"].to_f64()[0];
    let (mut sum, mut n) = (0f64, 0);
    for (i, &y) in labels.iter().enumerate() {
        if y == -100 {
            continue;
        }
        let row = &logits[i * v..(i + 1) * v];
        let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        sum += lse - row[y as usize] as f64;
        n += 1;
    }
    assert!(
        (got - sum / n as f64).abs() < 1e-5,
        "{got} vs {}",
        sum / n as f64
    );
}
