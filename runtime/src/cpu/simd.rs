//! Which row kernels this CPU can run: detected once per call site, matched by the kernels
//! (attention, GEMV) that have an AVX2 + FMA path beside the portable one. Each kernel adds
//! its own methods in its module.

#[derive(Clone, Copy)]
pub(crate) enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Simd {
    pub(crate) fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
        Simd::Portable
    }
}
