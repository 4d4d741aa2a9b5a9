//! Attention backward as one kernel (`attention_grad`): the gradients of `q`, `k` and `v`
//! in one pass, flash-attention style — the probabilities are recomputed a block of query
//! rows at a time from `q kᵀ`, never stored for the whole sequence.
//!
//! For a block of rows, with `x = q kᵀ · scale` (divided by the softcap when there is one)
//! and `p` the softmax of the capped, masked scores (as the forward kernel computes it):
//!
//! ```text
//! dv += pᵀ dout          dp = dout vᵀ          D_i = Σ_j p_ij dp_ij
//! ds = p ∘ (dp − D) · scale · (1 − tanh(x)²  when softcapped)
//! dq  = ds k             dk += dsᵀ q
//! ```
//!
//! `D_i` equals `dout_i · out_i`, but summing `p ∘ dp` over the tile the kernel holds anyway
//! rounds as the decomposition does: where one key takes all the weight the score
//! gradient is exactly zero, not a rounding residue. Semantics are the decomposition's (which `autodiff` defines the
//! composite by): masked keys have `p = 0` and get no gradient; a row with no visible key
//! has uniform `p = 1/Tk` over all keys, and — as autograd through HF's additive
//! `f32::MIN` mask gives — its score gradients reach `q` and `k` too.
//!
//! A work item is one (batch, kv head): it owns that head's `dk`/`dv` rows and the `dq`
//! rows of the query heads that share it (GQA), so threads never write the same memory.

use super::attention::{key_range, tanh_fast, AttnShapes, KeyMask, Layout};
use super::simd::Simd;
use encdecc_compiler::ir::AttentionAttrs;
use gemm::Parallelism;
use std::sync::Mutex;

/// Query rows per block.
const BLOCK: usize = 64;

/// The operands; `dout` (`[B, Hq, Tq, Dv]`) is the gradient arriving at the attention's
/// result.
pub struct GradIn<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub dout: &'a [f32],
    /// How `dout` is stored.
    pub dout_layout: Layout,
    pub mask: Option<&'a [bool]>,
}

/// The gradients a caller wants (the others are skipped, and the work only they need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub q: bool,
    pub k: bool,
    pub v: bool,
}

/// Gradients in heads-major layout: `dq [B, Hq, Tq, D]`, `dk [B, Hk, Tk, D]`,
/// `dv [B, Hk, Tk, Dv]`; empty where not wanted.
#[derive(Default)]
pub struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

pub fn attention_grad(
    a: &AttentionAttrs,
    s: &AttnShapes,
    x: &GradIn,
    want: Want,
    threads: usize,
) -> Grads {
    assert!(
        s.hk > 0 && s.hq.is_multiple_of(s.hk),
        "attention_grad: {} query heads over {} kv heads",
        s.hq,
        s.hk
    );
    let r = s.hq / s.hk;
    let (nq, nk, nv, no) = (
        s.b * s.hq * s.tq * s.d,
        s.b * s.hk * s.tk * s.d,
        s.b * s.hk * s.tk * s.dv,
        s.b * s.hq * s.tq * s.dv,
    );
    assert!(x.q.len() >= nq && x.k.len() >= nk && x.v.len() >= nv);
    assert!(x.dout.len() >= no, "attention_grad: dout too short");
    if let Some(m) = x.mask {
        assert!(m.len() >= s.b * s.tk, "attention_grad: key mask too short");
    }
    let sized = |on: bool, n: usize| if on { vec![0f32; n] } else { vec![] };
    let mut g = Grads {
        dq: sized(want.q, nq),
        dk: sized(want.k, nk),
        dv: sized(want.v, nv),
    };
    if s.tq == 0 || s.tk == 0 || s.b * s.hk == 0 {
        // No query rows or no keys: every gradient is zero (empty softmax, empty sums).
        return g;
    }
    let km = x.mask.map(|m| KeyMask::new(m, s.b, s.tk));
    let ctx = Ctx {
        a,
        s,
        x,
        km: km.as_ref(),
        r,
        want,
        beta: match a.softcap {
            Some(c) => (a.scale.0 / c.0) as f32,
            None => a.scale.0 as f32,
        },
        cap: a.softcap.map(|c| c.0 as f32),
        scale: a.scale.0 as f32,
        simd: Simd::detect(),
    };
    // One item per (batch, kv head), with its slices of each wanted gradient.
    fn chunks(v: &mut [f32], n: usize, items: usize) -> Vec<Option<&mut [f32]>> {
        if v.is_empty() {
            (0..items).map(|_| None).collect()
        } else {
            v.chunks_mut(n).map(Some).collect()
        }
    }
    let items = s.b * s.hk;
    let dq = chunks(&mut g.dq, r * s.tq * s.d, items);
    let dk = chunks(&mut g.dk, s.tk * s.d, items);
    let dv = chunks(&mut g.dv, s.tk * s.dv, items);
    let items: Vec<Item> = dq
        .into_iter()
        .zip(dk)
        .zip(dv)
        .enumerate()
        .map(|(bk, ((dq, dk), dv))| Item { bk, dq, dk, dv })
        .collect();
    let threads = threads.clamp(1, items.len());
    let queue = Mutex::new(items);
    let run = || {
        let mut sc = Scratch::default();
        loop {
            let item = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut item) = item else { break };
            ctx.item(&mut item, &mut sc);
        }
    };
    super::pool::run(threads, &|_| run());
    g
}

struct Item<'a> {
    /// Flat (batch, kv head).
    bk: usize,
    dq: Option<&'a mut [f32]>,
    dk: Option<&'a mut [f32]>,
    dv: Option<&'a mut [f32]>,
}

struct Ctx<'a> {
    a: &'a AttentionAttrs,
    s: &'a AttnShapes,
    x: &'a GradIn<'a>,
    km: Option<&'a KeyMask<'a>>,
    r: usize,
    want: Want,
    /// What the score gemm multiplies by: the scale, divided by the softcap if any.
    beta: f32,
    cap: Option<f32>,
    scale: f32,
    simd: Simd,
}

#[derive(Default)]
struct Scratch {
    /// Scaled scores (kept for the softcap's derivative).
    x: Vec<f32>,
    /// Probabilities.
    p: Vec<f32>,
    /// `dout vᵀ`, then the score gradients in place.
    dp: Vec<f32>,
    /// Per row: visible key range `[lo, hi)` (`lo == hi`: none, uniform over all keys) and
    /// whether padded keys lie inside it.
    rows: Vec<(usize, usize, bool)>,
}

/// `dst (m × n, row stride dst_rs) [+]= scale · lhs (m × k) · rhs (k × n)`, operands given
/// as (pointer, column stride, row stride).
///
/// # Safety
/// Every pointer must address its whole matrix under the given strides.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.0,
        lhs.1 as isize,
        lhs.2 as isize,
        rhs.0,
        rhs.1 as isize,
        rhs.2 as isize,
        1.0f32,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

impl Ctx<'_> {
    fn item(&self, it: &mut Item, sc: &mut Scratch) {
        let s = self.s;
        let (b, kh) = (it.bk / s.hk, it.bk % s.hk);
        let (ko, krs) = s.layout[1].head(b, kh, s.hk, s.tk, s.d);
        let (vo, vrs) = s.layout[2].head(b, kh, s.hk, s.tk, s.dv);
        for hh in 0..self.r {
            let h = kh * self.r + hh;
            let (qo, qrs) = s.layout[0].head(b, h, s.hq, s.tq, s.d);
            let (go, grs) = self.x.dout_layout.head(b, h, s.hq, s.tq, s.dv);
            for i0 in (0..s.tq).step_by(BLOCK) {
                let rows = BLOCK.min(s.tq - i0);
                let heads = Heads {
                    b,
                    hh,
                    i0,
                    rows,
                    q: (qo + i0 * qrs, qrs),
                    k: (ko, krs),
                    v: (vo, vrs),
                    dout: (go + i0 * grs, grs),
                };
                self.block(&heads, it, sc);
            }
        }
    }

    /// Rows `i0 .. i0 + rows` of query head `hh` of the item's group.
    fn block(&self, hd: &Heads, it: &mut Item, sc: &mut Scratch) {
        let s = self.s;
        let (q, k, v, dout) = (self.x.q, self.x.k, self.x.v, self.x.dout);
        let rows = hd.rows;
        sc.rows.clear();
        let (mut jlo, mut jhi, mut uniform) = (s.tk, 0, false);
        for i in hd.i0..hd.i0 + rows {
            let (mut lo, mut hi) = key_range(self.a, s.tq, s.tk, i);
            let mut padded = false;
            if let Some(km) = self.km {
                let base = hd.b * (s.tk + 1);
                lo = km.next[base + lo] as usize;
                hi = (km.prev_end[base + hi] as usize).max(lo);
                padded = ((km.count[base + hi] - km.count[base + lo]) as usize) < hi - lo;
            }
            if lo < hi {
                jlo = jlo.min(lo);
                jhi = jhi.max(hi);
            } else {
                uniform = true;
            }
            sc.rows.push((lo, hi, padded));
        }
        if uniform {
            // Uniform rows touch every key.
            (jlo, jhi) = (0, s.tk);
        }
        let w = jhi - jlo;
        for buf in [&mut sc.x, &mut sc.p, &mut sc.dp] {
            buf.resize(rows * w, 0.0);
        }
        let (xt, pt, dpt) = (
            &mut sc.x[..rows * w],
            &mut sc.p[..rows * w],
            &mut sc.dp[..rows * w],
        );
        let kp = k[hd.k.0 + jlo * hd.k.1..].as_ptr();
        let vp = v[hd.v.0 + jlo * hd.v.1..].as_ptr();
        let qp = q[hd.q.0..].as_ptr();
        let gp = dout[hd.dout.0..].as_ptr();
        // x = q kᵀ · beta.
        // SAFETY (all gemms below): q block rows × d (row stride q.1), k/v rows jlo..jhi
        // (strides k.1, v.1), dout block rows × dv, tiles rows × w, gradient chunks sized
        // by `attention_grad`; the asserts there bound every slice.
        unsafe {
            mm(
                (rows, w, s.d),
                xt.as_mut_ptr(),
                w,
                false,
                (qp, 1, hd.q.1),
                (kp, hd.k.1, 1),
                self.beta,
            );
        }
        // p: softmax over each row's visible keys, zero elsewhere; uniform rows 1/Tk.
        for (ri, &(lo, hi, padded)) in sc.rows.iter().enumerate() {
            let (xr, pr) = (&xt[ri * w..(ri + 1) * w], &mut pt[ri * w..(ri + 1) * w]);
            if lo == hi {
                pr.fill(1.0 / s.tk as f32);
                continue;
            }
            let (l, h) = (lo - jlo, hi - jlo);
            pr.fill(0.0);
            pr[l..h].copy_from_slice(&xr[l..h]);
            let m = match self.km {
                Some(km) if padded => Some(&km.m[hd.b * s.tk + lo..hd.b * s.tk + hi]),
                _ => None,
            };
            let z = self.simd.softmax(&mut pr[l..h], m, self.cap);
            let inv = 1.0 / z;
            pr[l..h].iter_mut().for_each(|e| *e *= inv);
        }
        if let Some(dv) = it.dv.as_deref_mut() {
            // dv[jlo..jhi] += pᵀ dout
            unsafe {
                mm(
                    (w, s.dv, rows),
                    dv[jlo * s.dv..].as_mut_ptr(),
                    s.dv,
                    true,
                    (pt.as_ptr(), w, 1),
                    (gp, 1, hd.dout.1),
                    1.0,
                );
            }
        }
        if !(self.want.q || self.want.k) {
            return;
        }
        // dp = dout vᵀ
        unsafe {
            mm(
                (rows, w, s.dv),
                dpt.as_mut_ptr(),
                w,
                false,
                (gp, 1, hd.dout.1),
                (vp, hd.v.1, 1),
                1.0,
            );
        }
        for ri in 0..rows {
            let r = ri * w..(ri + 1) * w;
            let xr = self.cap.map(|_| &xt[r.clone()]);
            score_grad(self.simd, &pt[r.clone()], &mut dpt[r], xr, self.scale);
        }
        let ds = dpt.as_ptr();
        if let Some(dq) = it.dq.as_deref_mut() {
            // dq = ds k
            let at = (hd.hh * s.tq + hd.i0) * s.d;
            unsafe {
                mm(
                    (rows, s.d, w),
                    dq[at..].as_mut_ptr(),
                    s.d,
                    false,
                    (ds, 1, w),
                    (kp, 1, hd.k.1),
                    1.0,
                );
            }
        }
        if let Some(dk) = it.dk.as_deref_mut() {
            // dk[jlo..jhi] += dsᵀ q
            unsafe {
                mm(
                    (w, s.d, rows),
                    dk[jlo * s.d..].as_mut_ptr(),
                    s.d,
                    true,
                    (ds, w, 1),
                    (qp, 1, hd.q.1),
                    1.0,
                );
            }
        }
    }
}

/// Where one block's operands start (element offset, row stride).
struct Heads {
    b: usize,
    /// Query head within the item's group.
    hh: usize,
    i0: usize,
    rows: usize,
    q: (usize, usize),
    k: (usize, usize),
    v: (usize, usize),
    dout: (usize, usize),
}

/// In place over one row: `dp ← p ∘ (dp − Σ p ∘ dp) · scale`, times `1 − tanh(x)²` when
/// the scores were softcapped (`x` the scores divided by the cap).
fn score_grad(simd: Simd, p: &[f32], dp: &mut [f32], x: Option<&[f32]>, scale: f32) {
    match simd {
        Simd::Portable => {
            let d = p.iter().zip(dp.iter()).map(|(a, b)| a * b).sum();
            score_grad_portable(p, dp, x, d, scale)
        }
        // SAFETY: `detect` saw AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::score_grad(p, dp, x, scale) },
    }
}

/// `dp ← p ∘ (dp − d) · scale (· (1 − tanh(x)²))`.
fn score_grad_portable(p: &[f32], dp: &mut [f32], x: Option<&[f32]>, d: f32, scale: f32) {
    for (j, g) in dp.iter_mut().enumerate() {
        let mut v = p[j] * (*g - d) * scale;
        if let Some(x) = x {
            let t = tanh_fast(x[j]);
            v *= 1.0 - t * t;
        }
        *g = v;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::attention::avx2::tanh8;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn score_grad(p: &[f32], dp: &mut [f32], x: Option<&[f32]>, scale: f32) {
        let n = dp.len();
        let n8 = n & !7;
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j < n8 {
            let pv = _mm256_loadu_ps(p.as_ptr().add(j));
            acc = _mm256_fmadd_ps(pv, _mm256_loadu_ps(dp.as_ptr().add(j)), acc);
            j += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut d: f32 = lanes.iter().sum();
        for j in n8..n {
            d += p[j] * dp[j];
        }
        let (vd, vs, one) = (
            _mm256_set1_ps(d),
            _mm256_set1_ps(scale),
            _mm256_set1_ps(1.0),
        );
        let mut j = 0;
        while j < n8 {
            let pv = _mm256_loadu_ps(p.as_ptr().add(j));
            let gv = _mm256_loadu_ps(dp.as_ptr().add(j));
            let mut v = _mm256_mul_ps(_mm256_mul_ps(pv, _mm256_sub_ps(gv, vd)), vs);
            if let Some(x) = x {
                let t = tanh8(_mm256_loadu_ps(x.as_ptr().add(j)));
                v = _mm256_mul_ps(v, _mm256_fnmadd_ps(t, t, one));
            }
            _mm256_storeu_ps(dp.as_mut_ptr().add(j), v);
            j += 8;
        }
        super::score_grad_portable(&p[n8..], &mut dp[n8..], x.map(|x| &x[n8..]), d, scale);
    }
}
