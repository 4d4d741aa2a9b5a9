//! The decode route: the compiled GEMVs over column ranges of the output, split over the
//! pool as `cpu::gemv` does (several parts per thread, blocks of 16 columns so that two
//! threads never write one cache line of `out`).

use super::WeightRef;
use crate::cpu::gemv::{split_columns, OutPtr};
use encdecc_codegen::lowp::LowpKernels;

pub(super) fn matmul_xwt(
    kernels: &LowpKernels,
    x: &[f32],
    w: WeightRef,
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    let dst = OutPtr(out.as_mut_ptr());
    let part = |lo: usize, hi: usize| {
        let (x, o) = (x.as_ptr(), dst.get());
        let (m, k, n, lo, hi) = (m as i64, k as i64, n as i64, lo as i64, hi as i64);
        // SAFETY: the caller checked the slices against `(m, k, n)`; the kernel writes
        // `out[i·n + j]` for `j` in `lo..hi` only, and parts have disjoint ranges.
        unsafe {
            match w {
                WeightRef::Bf16(w) => {
                    (kernels.gemv_bf16)(x, m, k, w.as_ptr().cast(), std::ptr::null(), o, n, lo, hi)
                }
                WeightRef::Int8 { q, scales } => {
                    (kernels.gemv_int8)(x, m, k, q.as_ptr(), scales.as_ptr(), o, n, lo, hi)
                }
            }
        }
    };
    split_columns(n, k, threads, &part);
}
