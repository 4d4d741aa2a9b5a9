//! The CPU attention backward kernel (`cpu::attention_grad`) against the composite's
//! definition (attention decomposed, then differentiated by autodiff's rules) run by the
//! reference interpreter, on random inputs: the forward kernel test's variants (modes,
//! windows under both rules, softcap, MHA / GQA / MQA, key masks that leave rows with no
//! visible key, Tq ≠ Tk, ragged head dims and blocks), heads-major and time-major storage,
//! one and several threads, and every subset of wanted gradients.

use encdecc_compiler::ir::*;
use encdecc_runtime::cpu::attention::{AttnShapes, Layout};
use encdecc_runtime::cpu::attention_grad::{attention_grad, GradIn, Want};
use encdecc_runtime::interp;
use encdecc_runtime::Tensor;
use std::collections::HashMap;

mod common;
use common::attention::{make_mask, time_major, variants, Case, MaskKind};
use common::{input, Rng};

/// Largest error relative to the reference's largest magnitude, per gradient: the kernel
/// sums in f32 where the interpreter sums in f64, and uses ≈1-ulp exp/tanh.
const TOL: f32 = 2e-5;

fn check(c: &Case, seed: u64) {
    let mut rng = Rng(seed);
    let mut g = Graph::new("attn_grad");
    let q = input(&mut g, "q", &format!("f32[B, {}, T, {}]", c.hq, c.d));
    let k = input(&mut g, "k", &format!("f32[B, {}, S, {}]", c.hk, c.d));
    let v = input(&mut g, "v", &format!("f32[B, {}, S, {}]", c.hk, c.dv));
    let dout = input(&mut g, "dout", &format!("f32[B, {}, T, {}]", c.hq, c.dv));
    let mask = make_mask(c, &mut rng);
    let m = mask.as_ref().map(|_| input(&mut g, "m", "bool[B, S]"));
    let mut gops = vec![q, k, v, dout];
    gops.extend(m);
    for wrt in AttnOperand::ALL {
        let op = Op::AttentionGrad {
            attrs: c.attrs.clone(),
            wrt,
        };
        let d = g.add(op, &gops, None).unwrap();
        g.outputs.push((format!("d{}", wrt.name()), d));
    }

    let (nq, nk, nv, no) = (
        c.b * c.hq * c.tq * c.d,
        c.b * c.hk * c.tk * c.d,
        c.b * c.hk * c.tk * c.dv,
        c.b * c.hq * c.tq * c.dv,
    );
    let (qv, kv, vv) = (rng.vec(nq, c.amp), rng.vec(nk, c.amp), rng.vec(nv, 1.0));
    let gv = rng.vec(no, 1.0);
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
        (
            "dout".to_string(),
            Tensor::f32(vec![c.b, c.hq, c.tq, c.dv], gv.clone()),
        ),
    ]);
    if let Some(m) = &mask {
        inputs.insert("m".into(), Tensor::bool(vec![c.b, c.tk], m.clone()));
    }
    let want = interp::run(&g, &HashMap::new(), &inputs).unwrap();
    let want = |n: &str| want[n].as_f32().unwrap().to_vec();
    let (wq, wk, wv) = (want("dq"), want("dk"), want("dv"));

    let shapes = |layout| AttnShapes {
        b: c.b,
        hq: c.hq,
        hk: c.hk,
        tq: c.tq,
        tk: c.tk,
        d: c.d,
        dv: c.dv,
        layout: [layout; 3],
    };
    let stored = [
        (
            Layout::HeadsMajor,
            qv.clone(),
            kv.clone(),
            vv.clone(),
            gv.clone(),
        ),
        (
            Layout::TimeMajor,
            time_major(&qv, c.b, c.hq, c.tq, c.d),
            time_major(&kv, c.b, c.hk, c.tk, c.d),
            time_major(&vv, c.b, c.hk, c.tk, c.dv),
            time_major(&gv, c.b, c.hq, c.tq, c.dv),
        ),
    ];
    let all = Want {
        q: true,
        k: true,
        v: true,
    };
    let subsets = [
        all,
        Want {
            q: false,
            k: false,
            v: true,
        },
        Want {
            q: true,
            k: false,
            v: false,
        },
        Want {
            q: false,
            k: true,
            v: false,
        },
    ];
    let runs = [1, 2, 3]
        .into_iter()
        .flat_map(|t| stored.iter().map(move |x| (t, x, all)))
        .chain(subsets.into_iter().map(|w| (2, &stored[0], w)));
    for (threads, (layout, qv, kv, vv, gv), w) in runs {
        let x = GradIn {
            q: qv,
            k: kv,
            v: vv,
            dout: gv,
            dout_layout: *layout,
            mask: mask.as_deref(),
        };
        let got = attention_grad(&c.attrs, &shapes(*layout), &x, w, threads);
        let what = format!("{c:?}, {threads} threads, {layout:?}, {w:?}");
        for (name, on, got, want) in [
            ("dq", w.q, &got.dq, &wq),
            ("dk", w.k, &got.dk, &wk),
            ("dv", w.v, &got.dv, &wv),
        ] {
            if !on {
                assert!(got.is_empty(), "{what}: {name} computed but not wanted");
                continue;
            }
            close(got, want, &format!("{what}: {name}"));
        }
    }
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |a, &x| a.max(x.abs())).max(1e-30);
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
        err <= TOL * scale,
        "{what}: element {i}: {} vs {} (max |ref| {scale})",
        got.get(i).copied().unwrap_or(f32::NAN),
        want.get(i).copied().unwrap_or(f32::NAN)
    );
}

#[test]
fn kernel_matches_definition() {
    for (c, seed) in variants() {
        check(&c, seed);
    }
}

#[test]
fn benchmark_shape() {
    // T5Gemma's decoder self-attention at the benchmark's head shape (softcap, causal,
    // a window shorter than the sequence, right padding), smaller batch.
    let c = Case {
        b: 2,
        hq: 4,
        hk: 2,
        tq: 160,
        tk: 160,
        d: 64,
        dv: 64,
        attrs: AttentionAttrs {
            mode: AttnMode::Causal,
            window: Some(100),
            window_rule: WindowRule::Inclusive,
            softcap: Some(F64(50.0)),
            scale: F64(0.125),
        },
        mask: MaskKind::Right,
        amp: 1.0,
    };
    check(&c, 7);
}
