//! Counter-based seeding: each random decision gets its own generator, seeded from the run
//! seed, a stream tag and an index. Nothing carries over from one example to the next, so
//! resuming needs only the example index, and any example can be rebuilt on its own.

use crate::rng::Rng;

/// Window order of epoch `index`.
pub(crate) const ORDER: u64 = 1;
/// Everything random about example `index` (split point, denoiser, noise mask).
pub(crate) const EXAMPLE: u64 = 2;

pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> Rng {
    Rng::new(splitmix(splitmix(splitmix(seed) ^ stream) ^ index))
}

/// SplitMix64's finaliser: neighbouring inputs give unrelated outputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` with 53 random bits (`Rng::uniform` has 24, too coarse for mixtures).
pub(crate) fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Fisher–Yates.
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}
