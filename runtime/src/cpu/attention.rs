//! Attention as one kernel: for each (batch, head) and block of queries, scores `q kᵀ`
//! (gemm), scale, softcap, the mask from the attributes (never a mask tensor), softmax,
//! then `p v` (gemm). Only a `[block, keys]` score tile exists at a time. Semantics are
//! those of the decomposition (HF's eager path): masked scores become `f32::MIN`, so a
//! row with no visible key is uniform over all keys.
//!
//! Work skipped without changing results:
//! - each query row sees a contiguous range of keys by position (causal, window), narrowed
//!   to its first and last unpadded key; a block computes scores only for the union of its
//!   rows' ranges. Keys outside a row's range would get `exp(f32::MIN - max) = 0`.
//! - a row with no visible key at all is uniform over all `Tk` keys: its output is the mean
//!   of the value rows, computed directly.
//!
//! The softmax normalisation is applied to the output row (`Dv` values) instead of the
//! probabilities, and the scale (divided by the softcap) is folded into the score gemm.
//! `exp` and `tanh` are Cephes-style polynomial approximations (≈1–2 ulp), vectorised
//! with AVX2 + FMA when the CPU has them (checked at run time), scalar otherwise.

use super::simd::Simd;
use encdecc_compiler::ir::{AttentionAttrs, AttnMode, WindowRule};
use gemm::Parallelism;
use std::sync::Mutex;

/// Query rows per work item when rows see different key ranges (causal, windows).
const BLOCK: usize = 64;
/// Most score-tile elements per work item when every row sees every key (so bigger
/// blocks only amortise the gemms' packing).
const TILE: usize = 1 << 16;
/// Below this many multiply-adds a call runs on the calling thread only. The pool's threads
/// are already running, so a decode step's cross-attention (1 query × 256 keys × 8 heads,
/// 2^18) is worth splitting.
const SERIAL_WORK: usize = 1 << 17;

pub struct AttnShapes {
    pub b: usize,
    pub hq: usize,
    pub hk: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    /// Memory layouts of q, k and v.
    pub layout: [Layout; 3],
}

/// How a `[B, H, T, D]` operand is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `[B, H, T, D]`, contiguous.
    #[default]
    HeadsMajor,
    /// `[B, T, H, D]` (before the head transpose): read in place with row stride `H·D`.
    TimeMajor,
}

impl Layout {
    /// Element offset of head `h` of batch `b`, and the stride between its rows.
    pub(super) fn head(
        self,
        b: usize,
        h: usize,
        heads: usize,
        t: usize,
        d: usize,
    ) -> (usize, usize) {
        match self {
            Layout::HeadsMajor => ((b * heads + h) * t * d, d),
            Layout::TimeMajor => (b * t * heads * d + h * d, heads * d),
        }
    }
}

/// The keys query `i` sees by position: `[lo, hi)` (empty when `lo == hi`), clamped to
/// `[0, tk)`.
pub(super) fn key_range(a: &AttentionAttrs, tq: usize, tk: usize, i: usize) -> (usize, usize) {
    // Windows wider than every distance behave as no window; clamping keeps i64 exact.
    let w = a.window.map(|w| w.min((tq + tk + 1) as u64) as i64);
    let (i, n) = (i as i64, tk as i64);
    let (lo, hi) = match (a.mode, w) {
        (AttnMode::Causal, None) => (0, i + 1),
        // i - W < j <= i
        (AttnMode::Causal, Some(w)) => (i - w + 1, i + 1),
        (AttnMode::Bidirectional, None) => (0, n),
        (AttnMode::Bidirectional, Some(w)) => match a.window_rule {
            // |i - j| <= W
            WindowRule::Inclusive => (i - w, i + w + 1),
            // |i - j| < W
            WindowRule::Exclusive => (i - w + 1, i + w),
        },
    };
    let lo = lo.clamp(0, n);
    let hi = hi.clamp(lo, n);
    (lo as usize, hi as usize)
}

/// Query rows per work item: bigger blocks pack `k` and `v` less often, smaller ones skip
/// more of the keys that causal and windowed rows never see, and leave every thread work.
fn block_rows(a: &AttentionAttrs, s: &AttnShapes, threads: usize) -> usize {
    let all_keys = a.mode == AttnMode::Bidirectional
        && a.window.is_none_or(|w| w as u128 >= s.tq.max(s.tk) as u128);
    let mut rows = if all_keys {
        (TILE / s.tk.max(1)).clamp(BLOCK, 4 * BLOCK)
    } else {
        BLOCK
    };
    while rows > 16 && s.b * s.hq * s.tq.div_ceil(rows) < 4 * threads {
        rows /= 2;
    }
    rows
}

/// Per batch row of the key mask: where the next unpadded key at or after `j` is, where the
/// last unpadded key before `j` ends, and prefix counts of unpadded keys (each `tk + 1`).
pub(super) struct KeyMask<'a> {
    pub(super) m: &'a [bool],
    pub(super) next: Vec<u32>,
    pub(super) prev_end: Vec<u32>,
    pub(super) count: Vec<u32>,
}

impl<'a> KeyMask<'a> {
    pub(super) fn new(m: &'a [bool], b: usize, tk: usize) -> Self {
        let n = tk + 1;
        let (mut next, mut prev_end, mut count) =
            (vec![0u32; b * n], vec![0u32; b * n], vec![0u32; b * n]);
        for bi in 0..b {
            let row = &m[bi * tk..(bi + 1) * tk];
            let (nx, pe, ct) = (
                &mut next[bi * n..(bi + 1) * n],
                &mut prev_end[bi * n..(bi + 1) * n],
                &mut count[bi * n..(bi + 1) * n],
            );
            nx[tk] = tk as u32;
            for j in (0..tk).rev() {
                nx[j] = if row[j] { j as u32 } else { nx[j + 1] };
            }
            for j in 0..tk {
                pe[j + 1] = if row[j] { j as u32 + 1 } else { pe[j] };
                ct[j + 1] = ct[j] + row[j] as u32;
            }
        }
        KeyMask {
            m,
            next,
            prev_end,
            count,
        }
    }
}

/// What one query row does: softmax over keys `[lo, hi)`, masking padded keys inside it
/// when `padded`; `lo == hi` means no visible key (uniform over all keys).
#[derive(Clone, Copy)]
struct Row {
    lo: usize,
    hi: usize,
    padded: bool,
}

/// `q [B, Hq, Tq, D]`, `k [B, Hk, Tk, D]`, `v [B, Hk, Tk, Dv]`, optional key mask `[B, Tk]`;
/// writes `out [B, Hq, Tq, Dv]`. Work items (batch, head, block of queries) are shared
/// out to `threads` threads as they finish.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    a: &AttentionAttrs,
    s: &AttnShapes,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[bool]>,
    out: &mut [f32],
    threads: usize,
) {
    assert!(
        s.hk > 0 && s.hq.is_multiple_of(s.hk),
        "attention: {} query heads over {} kv heads",
        s.hq,
        s.hk
    );
    assert!(q.len() >= s.b * s.hq * s.tq * s.d, "attention: q too short");
    assert!(k.len() >= s.b * s.hk * s.tk * s.d, "attention: k too short");
    assert!(
        v.len() >= s.b * s.hk * s.tk * s.dv,
        "attention: v too short"
    );
    assert!(
        out.len() >= s.b * s.hq * s.tq * s.dv,
        "attention: out too short"
    );
    if let Some(m) = mask {
        assert!(m.len() >= s.b * s.tk, "attention: key mask too short");
    }
    let per_head = s.tq * s.dv;
    if per_head == 0 {
        return;
    }
    let out = &mut out[..s.b * s.hq * per_head];
    if s.tk == 0 {
        // Softmax over no keys, times an empty v: zeros.
        out.fill(0.0);
        return;
    }
    let km = mask.map(|m| KeyMask::new(m, s.b, s.tk));
    let ctx = Ctx {
        a,
        s,
        q,
        k,
        v,
        km: km.as_ref(),
        r: s.hq / s.hk,
        // softcap(x·scale) = tanh(x·(scale/cap))·cap: the gemm applies scale/cap.
        beta: match a.softcap {
            Some(c) => (a.scale.0 / c.0) as f32,
            None => a.scale.0 as f32,
        },
        cap: a.softcap.map(|c| c.0 as f32),
        simd: Simd::detect(),
    };
    let block = block_rows(a, s, threads);
    let mut items: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (bh, o) in out.chunks_mut(per_head).enumerate() {
        for (blk, ob) in o.chunks_mut(block * s.dv).enumerate() {
            items.push((bh, blk * block, ob));
        }
    }
    let work = s.b * s.hq * s.tq * s.tk * (s.d + s.dv);
    let threads = if work < SERIAL_WORK {
        1
    } else {
        threads.min(items.len()).max(1)
    };
    if threads == 1 {
        let mut sc = Scratch::default();
        for (bh, i0, o) in items {
            ctx.block(bh, i0, o, &mut sc);
        }
        return;
    }
    // Threads pop the heaviest items first (causal blocks late in the sequence see more
    // keys), so that they finish together.
    items.sort_by_key(|(_, i0, o)| {
        let last = (i0 + o.len() / s.dv - 1).min(s.tq - 1);
        key_range(a, s.tq, s.tk, last).1 - key_range(a, s.tq, s.tk, *i0).0
    });
    let queue = Mutex::new(items);
    let run = || {
        let mut sc = Scratch::default();
        loop {
            let item = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some((bh, i0, o)) = item else { break };
            ctx.block(bh, i0, o, &mut sc);
        }
    };
    super::pool::run(threads, &|_| run());
}

struct Ctx<'a> {
    a: &'a AttentionAttrs,
    s: &'a AttnShapes,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    km: Option<&'a KeyMask<'a>>,
    r: usize,
    beta: f32,
    cap: Option<f32>,
    simd: Simd,
}

#[derive(Default)]
struct Scratch {
    tile: Vec<f32>,
    rows: Vec<Row>,
    inv: Vec<f32>,
    /// Mean of the value rows of (batch, kv head), for rows with no visible key.
    mean: Option<(usize, Vec<f32>)>,
}

impl Ctx<'_> {
    /// Query rows `i0 .. i0 + o.len() / dv` of flat (batch, head) `bh`, into `o`.
    fn block(&self, bh: usize, i0: usize, o: &mut [f32], sc: &mut Scratch) {
        let s = self.s;
        let rows = o.len() / s.dv;
        let (b, h) = (bh / s.hq, bh % s.hq);
        let kvh = b * s.hk + h / self.r;
        let (qo, qrs) = s.layout[0].head(b, h, s.hq, s.tq, s.d);
        let (ko, krs) = s.layout[1].head(b, h / self.r, s.hk, s.tk, s.d);
        let (vo, vrs) = s.layout[2].head(b, h / self.r, s.hk, s.tk, s.dv);
        let span = |n: usize, rs: usize, w: usize| if n == 0 { 0 } else { (n - 1) * rs + w };
        let qb = &self.q[qo + i0 * qrs..][..span(rows, qrs, s.d)];
        let kb = &self.k[ko..][..span(s.tk, krs, s.d)];
        let vb = &self.v[vo..][..span(s.tk, vrs, s.dv)];

        // Each row's key range; the block's scores cover their union [jlo, jhi).
        sc.rows.clear();
        let (mut jlo, mut jhi) = (s.tk, 0);
        for i in i0..i0 + rows {
            let (mut lo, mut hi) = key_range(self.a, s.tq, s.tk, i);
            let mut padded = false;
            if let Some(km) = self.km {
                let base = b * (s.tk + 1);
                lo = km.next[base + lo] as usize;
                hi = (km.prev_end[base + hi] as usize).max(lo);
                padded = ((km.count[base + hi] - km.count[base + lo]) as usize) < hi - lo;
            }
            if lo < hi {
                jlo = jlo.min(lo);
                jhi = jhi.max(hi);
            }
            sc.rows.push(Row { lo, hi, padded });
        }

        if jlo < jhi {
            let w = jhi - jlo;
            sc.tile.resize(rows * w, 0.0);
            let tile = &mut sc.tile[..rows * w];
            if s.d == 0 {
                tile.fill(0.0);
            } else {
                // SAFETY: `qb` is rows × d, `kb[jlo..jhi]` is w × d (read transposed), `tile`
                // is rows × w, all row-major; the asserts in `attention` bound the slices.
                unsafe {
                    gemm::gemm(
                        rows,
                        w,
                        s.d,
                        tile.as_mut_ptr(),
                        1,
                        w as isize,
                        false,
                        qb.as_ptr(),
                        1,
                        qrs as isize,
                        kb.as_ptr().add(jlo * krs),
                        krs as isize,
                        1,
                        0.0f32,
                        self.beta,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            sc.inv.clear();
            for (ri, row) in sc.rows.iter().enumerate() {
                let t = &mut tile[ri * w..(ri + 1) * w];
                if row.lo == row.hi {
                    t.fill(0.0);
                    sc.inv.push(0.0);
                    continue;
                }
                let (lo, hi) = (row.lo - jlo, row.hi - jlo);
                t[..lo].fill(0.0);
                t[hi..].fill(0.0);
                let m = match self.km {
                    Some(km) if row.padded => Some(&km.m[b * s.tk + row.lo..b * s.tk + row.hi]),
                    _ => None,
                };
                let z = self.simd.softmax(&mut t[lo..hi], m, self.cap);
                sc.inv.push(1.0 / z);
            }
            // SAFETY: `tile` is rows × w, `vb[jlo..jhi]` is w × dv, `o` is rows × dv.
            unsafe {
                gemm::gemm(
                    rows,
                    s.dv,
                    w,
                    o.as_mut_ptr(),
                    1,
                    s.dv as isize,
                    false,
                    tile.as_ptr(),
                    1,
                    w as isize,
                    vb.as_ptr().add(jlo * vrs),
                    1,
                    vrs as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for (orow, &inv) in o.chunks_exact_mut(s.dv).zip(&sc.inv) {
                orow.iter_mut().for_each(|x| *x *= inv);
            }
        }

        // Rows with no visible key: every score is f32::MIN, so the softmax is uniform.
        for (ri, row) in sc.rows.iter().enumerate() {
            if row.lo < row.hi {
                continue;
            }
            if sc.mean.as_ref().is_none_or(|(id, _)| *id != kvh) {
                let mut acc = vec![0f64; s.dv];
                for j in 0..s.tk {
                    let vr = &vb[j * vrs..j * vrs + s.dv];
                    acc.iter_mut().zip(vr).for_each(|(a, &x)| *a += x as f64);
                }
                let n = s.tk as f64;
                sc.mean = Some((kvh, acc.iter().map(|&x| (x / n) as f32).collect()));
            }
            let mean = &sc.mean.as_ref().expect("set above").1;
            o[ri * s.dv..(ri + 1) * s.dv].copy_from_slice(mean);
        }
    }
}

impl Simd {
    /// In place over scores `x` (already scaled, and divided by the softcap when there
    /// is one): softcap, key mask (`false`: masked), then `exp(x - max)`. Returns the sum,
    /// which the caller divides by. At least one key must be visible.
    pub(super) fn softmax(self, x: &mut [f32], mask: Option<&[bool]>, cap: Option<f32>) -> f32 {
        match self {
            Simd::Portable => softmax_portable(x, mask, cap),
            // SAFETY: `detect` saw AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::softmax(x, mask, cap) },
        }
    }
}

// Cephes `expf` / `tanhf` constants.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// `ln(2^-126)`: below it the result (subnormal or zero) is flushed to 0.
const EXP_MIN: f32 = -87.336_55;
const EXP_MAX: f32 = 88.0;
const TANH_SMALL: f32 = 0.625;
const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

/// `e^x` within ≈2 ulp for `x` in `[-87.3, 88]`; 0 below, `e^88` above.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    if x < EXP_MIN {
        return 0.0;
    }
    let x = if x > EXP_MAX { EXP_MAX } else { x };
    // Round to nearest by the 1.5·2^23 trick (|x·log2e| < 2^22).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let z = r * r;
    let mut y = EXP_P[0];
    for c in &EXP_P[1..] {
        y = y * r + c;
    }
    let y = y * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `tanh(x)` within a few ulp (relative).
#[inline(always)]
pub(super) fn tanh_fast(x: f32) -> f32 {
    let ax = x.abs();
    if ax < TANH_SMALL {
        let z = x * x;
        let mut p = TANH_P[0];
        for c in &TANH_P[1..] {
            p = p * z + c;
        }
        p * z * x + x
    } else {
        let t = 1.0 - 2.0 / (exp_fast(2.0 * ax) + 1.0);
        t.copysign(x)
    }
}

fn softmax_portable(x: &mut [f32], mask: Option<&[bool]>, cap: Option<f32>) -> f32 {
    let mut mx = f32::NEG_INFINITY;
    for (j, e) in x.iter_mut().enumerate() {
        let mut t = *e;
        if let Some(c) = cap {
            t = tanh_fast(t) * c;
        }
        if mask.is_some_and(|m| !m[j]) {
            t = f32::MIN;
        }
        *e = t;
        mx = mx.max(t);
    }
    let mut z = 0f32;
    for e in x.iter_mut() {
        *e = exp_fast(*e - mx);
        z += *e;
    }
    z
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN));
        // min/max return their second operand when one is NaN, so NaN passes through.
        let x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), x);
        let x = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let z = _mm256_mul_ps(r, r);
        let mut y = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, z, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)))
    }

    #[inline(always)]
    pub(in crate::cpu) unsafe fn tanh8(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let ax = _mm256_andnot_ps(sign, x);
        let z = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(TANH_P[0]);
        for c in &TANH_P[1..] {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
        }
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(TANH_SMALL));
        // Softcapped scores are mostly well inside the cap: skip the exp when all are.
        if _mm256_movemask_ps(is_small) == 0xff {
            return small;
        }
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_add_ps(ax, ax));
        let big = _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        );
        let big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
        _mm256_blendv_ps(big, small, is_small)
    }

    /// 8 mask bytes (`bool`s) as lanes: all ones where masked (`false`).
    #[inline(always)]
    unsafe fn masked8(m: *const bool) -> __m256 {
        let b = _mm_loadl_epi64(m as *const __m128i);
        let w = _mm256_cvtepu8_epi32(b);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()))
    }

    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// Softcap and key mask of 8 scores (`masked`: lanes to mask).
    #[inline(always)]
    unsafe fn scores8(t: __m256, cap: Option<f32>, masked: Option<__m256>) -> __m256 {
        let mut t = t;
        if let Some(c) = cap {
            t = _mm256_mul_ps(tanh8(t), _mm256_set1_ps(c));
        }
        if let Some(m) = masked {
            t = _mm256_blendv_ps(t, _mm256_set1_ps(f32::MIN), m);
        }
        t
    }

    /// As `softmax_portable`. The last `len % 8` elements go through masked loads and
    /// stores.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(x: &mut [f32], mask: Option<&[bool]>, cap: Option<f32>) -> f32 {
        let n = x.len();
        let n8 = n & !7;
        let rem = n - n8;
        let p = x.as_mut_ptr();
        // Lanes below `rem`.
        let tail = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(rem as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let tail_ps = _mm256_castsi256_ps(tail);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < n8 {
            let masked = mask.map(|m| masked8(m.as_ptr().add(j)));
            let t = scores8(_mm256_loadu_ps(p.add(j)), cap, masked);
            _mm256_storeu_ps(p.add(j), t);
            vmax = _mm256_max_ps(vmax, t);
            j += 8;
        }
        if rem > 0 {
            let masked = mask.map(|m| {
                let mut b = [true; 8];
                b[..rem].copy_from_slice(&m[n8..]);
                masked8(b.as_ptr())
            });
            let t = scores8(_mm256_maskload_ps(p.add(n8), tail), cap, masked);
            _mm256_maskstore_ps(p.add(n8), tail, t);
            let t = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), t, tail_ps);
            vmax = _mm256_max_ps(vmax, t);
        }
        let vm = _mm256_set1_ps(hmax(vmax));
        let mut vz = _mm256_setzero_ps();
        let mut j = 0;
        while j < n8 {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), vm));
            _mm256_storeu_ps(p.add(j), e);
            vz = _mm256_add_ps(vz, e);
            j += 8;
        }
        if rem > 0 {
            let e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(n8), tail), vm));
            _mm256_maskstore_ps(p.add(n8), tail, e);
            vz = _mm256_add_ps(vz, _mm256_and_ps(e, tail_ps));
        }
        hsum(vz)
    }

    #[cfg(test)]
    pub(super) unsafe fn exp_tanh(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn go(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
            let (mut e, mut t) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            for (i, c) in x.chunks_exact(8).enumerate() {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(e.as_mut_ptr().add(8 * i), exp8(v));
                _mm256_storeu_ps(t.as_mut_ptr().add(8 * i), tanh8(v));
            }
            (e, t)
        }
        go(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against f64, with values below `tiny` compared absolutely.
    fn rel(got: f32, want: f64, tiny: f64) -> f64 {
        (got as f64 - want).abs() / want.abs().max(tiny)
    }

    fn grid() -> Vec<f32> {
        let mut xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            0.624_999,
            0.625,
            -0.625,
            87.9,
            -87.3,
            -87.4,
            -88.0,
            -1e4,
            1e4,
            100.0,
            -100.0,
            f32::MIN,
            f32::MAX,
        ]);
        while !xs.len().is_multiple_of(8) {
            xs.push(0.5);
        }
        xs
    }

    #[test]
    fn fast_exp_and_tanh_are_accurate() {
        let xs = grid();
        let check = |x: f32, e: f32, t: f32| {
            let xe = (x as f64).clamp(-1e4, EXP_MAX as f64);
            let want_e = if x < EXP_MIN { 0.0 } else { xe.exp() };
            assert!(
                rel(e, want_e, 1e-37) < 3e-7,
                "exp({x}) = {e}, want {want_e}"
            );
            let want_t = (x as f64).tanh();
            assert!(
                rel(t, want_t, 1e-30) < 3e-7,
                "tanh({x}) = {t}, want {want_t}"
            );
        };
        for &x in &xs {
            check(x, exp_fast(x), tanh_fast(x));
        }
        #[cfg(target_arch = "x86_64")]
        if let Simd::Avx2 = Simd::detect() {
            // SAFETY: detected.
            let (e, t) = unsafe { avx2::exp_tanh(&xs) };
            for i in 0..xs.len() {
                check(xs[i], e[i], t[i]);
            }
        }
        assert_eq!(exp_fast(f32::MIN), 0.0);
        assert!(exp_fast(f32::NAN).is_nan() && tanh_fast(f32::NAN).is_nan());
    }

    #[test]
    fn row_kernels_agree() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f32 / (1u64 << 53) as f32
        };
        for n in [1, 7, 8, 9, 31, 64, 257] {
            for cap in [None, Some(30.0)] {
                for masked in [false, true] {
                    let x: Vec<f32> = (0..n).map(|_| (next() - 0.5) * 6.0).collect();
                    // The first key stays visible, as the kernel guarantees.
                    let m: Vec<bool> = (0..n).map(|j| j == 0 || next() < 0.6).collect();
                    let m = masked.then_some(&m[..]);
                    let mut want = x.clone();
                    let zw = softmax_portable(&mut want, m, cap);
                    // f64 reference of the same row.
                    let t: Vec<f64> = x
                        .iter()
                        .map(|&v| cap.map_or(v as f64, |c| (v as f64).tanh() * c as f64))
                        .collect();
                    let vis = |j: usize| m.is_none_or(|m| m[j]);
                    let mx = (0..n)
                        .filter(|&j| vis(j))
                        .map(|j| t[j])
                        .fold(f64::MIN, f64::max);
                    let e: Vec<f64> = (0..n)
                        .map(|j| if vis(j) { (t[j] - mx).exp() } else { 0.0 })
                        .collect();
                    let z: f64 = e.iter().sum();
                    // Softcapped scores near 30 carry f32 rounding of ≈2e-6 into exp.
                    let tol = if cap.is_some() { 1e-5 } else { 1e-6 };
                    assert!(rel(zw, z, 1.0) < tol, "sum {zw} vs {z}");
                    for j in 0..n {
                        assert!(
                            (want[j] as f64 - e[j]).abs() < tol,
                            "{j}: {} vs {}",
                            want[j],
                            e[j]
                        );
                    }
                    #[cfg(target_arch = "x86_64")]
                    if let Simd::Avx2 = Simd::detect() {
                        let mut got = x.clone();
                        let zg = Simd::Avx2.softmax(&mut got, m, cap);
                        assert!(rel(zg, z, 1.0) < tol, "sum {zg} vs {z}");
                        for j in 0..n {
                            assert!(
                                (got[j] as f64 - e[j]).abs() < tol,
                                "{j}: {} vs {}",
                                got[j],
                                e[j]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn key_ranges_match_the_rules() {
        for mode in [AttnMode::Causal, AttnMode::Bidirectional] {
            for window in [None, Some(0), Some(1), Some(2), Some(5), Some(u64::MAX)] {
                for window_rule in [WindowRule::Inclusive, WindowRule::Exclusive] {
                    let a = AttentionAttrs {
                        mode,
                        window,
                        window_rule,
                        softcap: None,
                        scale: encdecc_compiler::ir::F64(1.0),
                    };
                    for (tq, tk) in [(7, 7), (3, 9), (9, 3)] {
                        for i in 0..tq {
                            let (lo, hi) = key_range(&a, tq, tk, i);
                            for j in 0..tk {
                                let (ii, jj) = (i as i128, j as i128);
                                let w = window.map(|w| w as i128);
                                let vis = match (mode, w) {
                                    (AttnMode::Causal, None) => jj <= ii,
                                    (AttnMode::Causal, Some(w)) => jj <= ii && jj > ii - w,
                                    (AttnMode::Bidirectional, None) => true,
                                    (AttnMode::Bidirectional, Some(w)) => match window_rule {
                                        WindowRule::Inclusive => (ii - jj).abs() <= w,
                                        WindowRule::Exclusive => (ii - jj).abs() < w,
                                    },
                                };
                                assert_eq!(vis, lo <= j && j < hi, "{a:?} {tq}x{tk} ({i},{j})");
                            }
                        }
                    }
                }
            }
        }
    }
}
