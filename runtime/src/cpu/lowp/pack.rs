//! The micro-kernel's operand layouts. Both hold bf16 pairs along k (element `2p` in the
//! low half of a u32, `2p + 1` in the high half; an odd k's last pair padded with a zero):
//! - A panel: `mr` rows of `x` in groups of `group` pairs, `[kp/group][mr][group]`, rows
//!   past `m` zero: `group` 1 (`[kp][mr]`) for the zmm kernels, 16 for AMX, whose tile
//!   rows are 16 contiguous pairs of one row.
//! - B panel: `nr` columns (rows of `w`), `[kp][nr]`, columns past `n` zero.
//!
//! `kp` may exceed `k.div_ceil(2)` (AMX steps 16 pairs); the pairs past k are zero. A
//! k-block of `kc` pairs (a multiple of `group`) of a panel is then the contiguous
//! `kc · mr` (or `kc · nr`) u32s at `p0 · mr`, which is what the kernel streams.

use super::WeightRef;

/// `v` as bf16 bits, rounded to nearest even (NaN stays NaN, quiet), as `half` does;
/// branch-free, so the packing loops vectorise.
#[inline(always)]
pub fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// Packs rows `i0..i0 + mr` of `x` `[m, k]` into `dst`, `kp · mr` u32s for a `kp ≥
/// k.div_ceil(2)` that `group` divides, rounding to bf16; writes every u32 (rows past `m`
/// and pairs past `k` as zero), so `dst` may be reused unzeroed.
pub fn a_panel(
    x: &[f32],
    (m, k, kp): (usize, usize, usize),
    (mr, group): (usize, usize),
    i0: usize,
    dst: &mut [u32],
) {
    let mut bits = vec![0u16; 2 * kp];
    let mut pairs = vec![0u32; kp];
    for r in 0..mr {
        if i0 + r < m {
            // Two simple loops rather than one over pairs of f32: both vectorise.
            let row = &x[(i0 + r) * k..(i0 + r + 1) * k];
            for (d, &v) in bits.iter_mut().zip(row) {
                *d = bf16_bits(v) as u16;
            }
            for (d, two) in pairs.iter_mut().zip(bits.chunks_exact(2)) {
                *d = two[0] as u32 | (two[1] as u32) << 16;
            }
        } else {
            pairs.fill(0);
        }
        if group == 1 {
            for (p, &v) in pairs.iter().enumerate() {
                dst[p * mr + r] = v;
            }
        } else {
            for (g, run) in pairs.chunks(group).enumerate() {
                let at = g * group * mr + r * group;
                dst[at..at + run.len()].copy_from_slice(run);
            }
        }
    }
}

/// Pairs per step of `b_panels`: a panel's `CHUNK · nr` u32s (8 KB for `nr = 32`) stay in
/// L1 while its columns are written into them; a whole panel's column (1 KB a k of 512)
/// does not, and writing the panel one column at a time missed L1 on every pair.
const CHUNK: usize = 64;

/// Packs rows `j0..j0 + cols` of `w` (`[n, k]`) into `cols.div_ceil(nr)` B panels at
/// `dst`, each `kp · nr` u32s (`kp ≥ k.div_ceil(2)`), padding written as zero. Int8 values
/// are written as their (exact) bf16 values; their scales are applied by the kernel.
pub fn b_panels(
    w: WeightRef,
    (k, kp): (usize, usize),
    nr: usize,
    (j0, cols): (usize, usize),
    dst: &mut [u32],
) {
    let mut pairs = [0u32; CHUNK];
    let panels = dst.chunks_mut(kp * nr).take(cols.div_ceil(nr));
    for (panel, out) in panels.enumerate() {
        for p0 in (0..kp).step_by(CHUNK) {
            let pairs = &mut pairs[..CHUNK.min(kp - p0)];
            for jj in 0..nr {
                let col = panel * nr + jj;
                if col < cols {
                    row_pairs(w, k, j0 + col, p0, pairs);
                } else {
                    pairs.fill(0);
                }
                for (t, &v) in pairs.iter().enumerate() {
                    out[(p0 + t) * nr + jj] = v;
                }
            }
        }
    }
}

/// Pairs `p0..p0 + dst.len()` of row `j` of `w` (`[n, k]`) as bf16 bits, zero past `k`.
fn row_pairs(w: WeightRef, k: usize, j: usize, p0: usize, dst: &mut [u32]) {
    let lo = (2 * p0).min(k);
    let hi = (2 * (p0 + dst.len())).min(k);
    let full = (hi - lo) / 2;
    let (head, tail) = dst.split_at_mut(full);
    let last = match w {
        WeightRef::Bf16(w) => {
            let row = &w[j * k + lo..j * k + hi];
            for (d, two) in head.iter_mut().zip(row.chunks_exact(2)) {
                *d = two[0].to_bits() as u32 | (two[1].to_bits() as u32) << 16;
            }
            row.chunks_exact(2)
                .remainder()
                .first()
                .map(|v| v.to_bits() as u32)
        }
        WeightRef::Int8 { q, .. } => {
            let bits = |v: i8| (v as f32).to_bits() >> 16;
            let row = &q[j * k + lo..j * k + hi];
            for (d, two) in head.iter_mut().zip(row.chunks_exact(2)) {
                *d = bits(two[0]) | bits(two[1]) << 16;
            }
            row.chunks_exact(2).remainder().first().map(|&v| bits(v))
        }
    };
    tail.fill(0);
    if let (Some(v), Some(d)) = (last, tail.first_mut()) {
        *d = v;
    }
}
