//! Matmuls through the `gemm` crate: strided operands, so a transposed weight
//! (`x @ w.T`) is read in place rather than copied.

use gemm::Parallelism;

/// A matrix operand: base pointer offset and row/column strides in elements.
#[derive(Clone, Copy, Debug)]
pub struct MatView {
    pub rs: isize,
    pub cs: isize,
}

/// `out[b] = a[b] @ bm[b]` for every batch index; `a_off(b)`/`b_off(b)` give each batch's
/// element offset (0 for a broadcast operand). `out` is contiguous `[batch, m, n]`.
#[allow(clippy::too_many_arguments)]
pub fn batched(
    a: &[f32],
    av: MatView,
    a_off: &dyn Fn(usize) -> usize,
    b: &[f32],
    bv: MatView,
    b_off: &dyn Fn(usize) -> usize,
    out: &mut [f32],
    batch: usize,
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    let par = if threads > 1 && m * n * k >= 64 * 64 * 64 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    for bi in 0..batch {
        let dst = &mut out[bi * m * n..(bi + 1) * m * n];
        let (ao, bo) = (a_off(bi), b_off(bi));
        // SAFETY: the views stay inside the slices: callers derive strides and offsets from
        // the operands' shapes, and dst is exactly m·n contiguous elements.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr().add(ao),
                av.cs,
                av.rs,
                b.as_ptr().add(bo),
                bv.cs,
                bv.rs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    }
}
