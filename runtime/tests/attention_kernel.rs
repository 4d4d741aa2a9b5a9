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
use common::attention::{make_mask, time_major, variants, Case, MaskKind};
use common::{input, Rng};

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
    let stored = [
        (Layout::HeadsMajor, qv.clone(), kv.clone(), vv.clone()),
        (
            Layout::TimeMajor,
            time_major(&qv, c.b, c.hq, c.tq, c.d),
            time_major(&kv, c.b, c.hk, c.tk, c.d),
            time_major(&vv, c.b, c.hk, c.tk, c.dv),
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
    for (c, seed) in variants() {
        check(&c, seed);
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
