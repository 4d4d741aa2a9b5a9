//! Attention as one kernel: for each (batch, head) and block of queries, scores `q kᵀ`
//! (gemm), scale, softcap, the mask from the attributes (never a mask tensor), softmax,
//! then `p v` (gemm). Only a `[block, Tk]` score tile exists at a time. Semantics are
//! those of the decomposition (HF's eager path): masked scores become `f32::MIN`, so a
//! row with no visible key is uniform over all keys.

use encdecc_compiler::ir::{AttentionAttrs, AttnMode, WindowRule};
use gemm::Parallelism;

const BLOCK: usize = 64;

pub struct AttnShapes {
    pub b: usize,
    pub hq: usize,
    pub hk: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
}

fn visible(a: &AttentionAttrs, i: usize, j: usize) -> bool {
    let (i, j) = (i as i64, j as i64);
    match (a.mode, a.window) {
        (AttnMode::Causal, None) => j <= i,
        (AttnMode::Causal, Some(w)) => j <= i && j > i - w as i64,
        (AttnMode::Bidirectional, None) => true,
        (AttnMode::Bidirectional, Some(w)) => match a.window_rule {
            WindowRule::Inclusive => (i - j).abs() <= w as i64,
            WindowRule::Exclusive => (i - j).abs() < w as i64,
        },
    }
}

/// `q [B, Hq, Tq, D]`, `k [B, Hk, Tk, D]`, `v [B, Hk, Tk, Dv]`, optional key mask `[B, Tk]`;
/// writes `out [B, Hq, Tq, Dv]`. Work is split over (batch, head) across `threads`.
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
    let r = s.hq / s.hk;
    let per_head = s.tq * s.dv;
    let heads: Vec<(usize, &mut [f32])> = out.chunks_mut(per_head).enumerate().collect();
    let chunk = heads.len().div_ceil(threads.max(1));
    let mut work: Vec<Vec<(usize, &mut [f32])>> = vec![];
    let mut it = heads.into_iter();
    loop {
        let part: Vec<_> = it.by_ref().take(chunk.max(1)).collect();
        if part.is_empty() {
            break;
        }
        work.push(part);
    }
    std::thread::scope(|scope| {
        for part in work {
            scope.spawn(move || {
                let mut scores = vec![0f32; BLOCK * s.tk];
                for (bh, o) in part {
                    let (b, h) = (bh / s.hq, bh % s.hq);
                    let kh = h / r;
                    let qb = &q[(b * s.hq + h) * s.tq * s.d..][..s.tq * s.d];
                    let kb = &k[(b * s.hk + kh) * s.tk * s.d..][..s.tk * s.d];
                    let vb = &v[(b * s.hk + kh) * s.tk * s.dv..][..s.tk * s.dv];
                    let mb = mask.map(|m| &m[b * s.tk..(b + 1) * s.tk]);
                    let mut i0 = 0;
                    while i0 < s.tq {
                        let rows = BLOCK.min(s.tq - i0);
                        let tile = &mut scores[..rows * s.tk];
                        // SAFETY: shapes as documented; strides describe row-major blocks.
                        unsafe {
                            gemm::gemm(
                                rows,
                                s.tk,
                                s.d,
                                tile.as_mut_ptr(),
                                1,
                                s.tk as isize,
                                false,
                                qb.as_ptr().add(i0 * s.d),
                                1,
                                s.d as isize,
                                kb.as_ptr(),
                                s.d as isize,
                                1,
                                0.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                        }
                        for ri in 0..rows {
                            let row = &mut tile[ri * s.tk..(ri + 1) * s.tk];
                            let i = i0 + ri;
                            let mut mx = f32::NEG_INFINITY;
                            for (j, x) in row.iter_mut().enumerate() {
                                let mut sc = *x * a.scale.0 as f32;
                                if let Some(cap) = a.softcap {
                                    let c = cap.0 as f32;
                                    sc = (sc / c).tanh() * c;
                                }
                                let ok = visible(a, i, j) && mb.is_none_or(|m| m[j]);
                                *x = if ok { sc } else { f32::MIN };
                                mx = mx.max(*x);
                            }
                            let mut z = 0f32;
                            for x in row.iter_mut() {
                                *x = (*x - mx).exp();
                                z += *x;
                            }
                            let inv = 1.0 / z;
                            row.iter_mut().for_each(|x| *x *= inv);
                        }
                        // SAFETY: as above.
                        unsafe {
                            gemm::gemm(
                                rows,
                                s.dv,
                                s.tk,
                                o.as_mut_ptr().add(i0 * s.dv),
                                1,
                                s.dv as isize,
                                false,
                                tile.as_ptr(),
                                1,
                                s.tk as isize,
                                vb.as_ptr(),
                                1,
                                s.dv as isize,
                                0.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                        }
                        i0 += rows;
                    }
                }
            });
        }
    });
}
