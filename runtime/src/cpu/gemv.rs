//! `x @ wᵀ` for a few rows of `x` (a decode step's activations) against a row-major weight
//! `w` `[n, k]`: every output is a dot product of two contiguous rows, so the weight is
//! streamed once, at memory bandwidth. `gemm` packs the weight first, which at one row
//! costs more than the product.

use super::pool;
use super::simd::Simd;

/// Up to this many rows of `x` take this path (a decode step's batch).
pub const MAX_ROWS: usize = 16;

/// `out[i, j] = Σ_k x[i, k] · w[j, k]` for `x` `[m, k]`, `w` `[n, k]`, `out` `[m, n]`, with
/// the columns `j` split over `threads`.
pub fn gemv_t(
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    let simd = Simd::detect();
    let dst = OutPtr(out.as_mut_ptr());
    // One thread's share: the columns `lo..hi` of every row.
    let part = |lo: usize, hi: usize| {
        for j in lo..hi {
            let wr = &w[j * k..(j + 1) * k];
            for i0 in (0..m).step_by(4) {
                let rows = (m - i0).min(4);
                let mut acc = [0f32; 4];
                simd.dots(&x[i0 * k..(i0 + rows) * k], k, rows, wr, &mut acc);
                for (r, &v) in acc[..rows].iter().enumerate() {
                    // SAFETY: `(i0 + r) * n + j < m * n`, and each thread owns its columns.
                    unsafe { *dst.get().add((i0 + r) * n + j) = v };
                }
            }
        }
    };
    split_columns(n, k, threads, &part);
}

/// Runs `part(lo, hi)` over the output columns `0..n` of a product streaming an `[n, k]`
/// weight (this GEMV, and the low-precision ones in `lowp`). The pool hands parts to
/// spinning workers within a microsecond, and one core does not stream memory at the bus's
/// full speed: every weight of a decode step (≥ 256 KB) is split. Four parts per thread,
/// claimed as threads come free, so a descheduled worker (a busy machine) costs its share
/// of time, not the whole product. Column blocks are multiples of 16, so two threads never
/// write one cache line of `out`.
pub(super) fn split_columns(
    n: usize,
    k: usize,
    threads: usize,
    part: &(dyn Fn(usize, usize) + Sync),
) {
    if n * k < 1 << 16 || threads < 2 || pool::width() < 2 {
        part(0, n);
        return;
    }
    let parts = 4 * threads.min(pool::width());
    let per = n.div_ceil(parts).next_multiple_of(16);
    pool::run(n.div_ceil(per), &|p| part(p * per, ((p + 1) * per).min(n)));
}

/// The output, written by several threads at disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every thread writes a disjoint set of elements, and `pool::run` returns only after
// all threads have finished.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, so closures capture the whole (Sync) wrapper rather than the raw field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

impl Simd {
    /// `acc[r] = x[r] · w` for the `rows` (≤ 4) rows of `x` (row stride `k`).
    fn dots(self, x: &[f32], k: usize, rows: usize, w: &[f32], acc: &mut [f32; 4]) {
        match self {
            Simd::Portable => {
                for r in 0..rows {
                    acc[r] = dot_portable(&x[r * k..(r + 1) * k], w);
                }
            }
            // SAFETY: `detect` saw AVX2 and FMA; the slices hold `rows` rows of `k`.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::dots(x, k, rows, w, acc) },
        }
    }
}

/// Eight partial sums, so the compiler can keep them in vector lanes.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            s[l] += x[l] * y[l];
        }
    }
    s.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Up to 4 rows against one weight row: each 16-wide step loads the weight once and
    /// feeds two independent FMA chains per row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(x: &[f32], k: usize, rows: usize, w: &[f32], acc: &mut [f32; 4]) {
        let wp = w.as_ptr();
        let xp = x.as_ptr();
        let mut a0 = [_mm256_setzero_ps(); 4];
        let mut a1 = [_mm256_setzero_ps(); 4];
        let k16 = k & !15;
        let mut j = 0;
        while j < k16 {
            let w0 = _mm256_loadu_ps(wp.add(j));
            let w1 = _mm256_loadu_ps(wp.add(j + 8));
            for r in 0..rows {
                let p = xp.add(r * k + j);
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(p), w0, a0[r]);
                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), w1, a1[r]);
            }
            j += 16;
        }
        for r in 0..rows {
            let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
            for t in k16..k {
                s += *xp.add(r * k + t) * *wp.add(t);
            }
            acc[r] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn equals_a_plain_product_on_odd_shapes() {
        let mut rng = Rng::new(11);
        for &(m, k, n, threads) in &[
            (1, 512, 1000, 2),
            (3, 37, 5, 1),
            (5, 100, 333, 2),
            (16, 64, 64, 3),
            (1, 7, 1, 2),
            (2, 1024, 4099, 2),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform() - 0.5).collect();
            let mut out = vec![f32::NAN; m * n];
            gemv_t(&x, &w, &mut out, (m, k, n), threads);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (k as f64).sqrt(),
                        "{m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn splitting_over_threads_changes_no_bit() {
        // The decode step's shapes: layer weights and the lm head, 1 and 4 rows.
        let mut rng = Rng::new(3);
        for &(m, k, n) in &[
            (1, 512, 512),
            (1, 512, 1024),
            (4, 1024, 512),
            (1, 512, 32000),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform() - 0.5).collect();
            let mut one = vec![f32::NAN; m * n];
            gemv_t(&x, &w, &mut one, (m, k, n), 1);
            for threads in [2, 3, 8] {
                let mut many = vec![f32::NAN; m * n];
                gemv_t(&x, &w, &mut many, (m, k, n), threads);
                let same = one
                    .iter()
                    .zip(&many)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{m}x{k}x{n} on {threads} threads");
            }
        }
    }
}
