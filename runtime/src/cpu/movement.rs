//! Movement ops with contiguous inner runs copied as slices (the interpreter's versions
//! go element by element).

use crate::tensor::{strides, Data, Tensor};

/// Calls back with `(source offset, length)` runs in output order.
type Runs<'a> = &'a dyn Fn(&mut dyn FnMut(usize, usize));

fn with_data(t: &Tensor, shape: Vec<usize>, f: Runs) -> Tensor {
    // `f` calls back with (source offset, length) runs in output order.
    macro_rules! gather {
        ($v:expr, $mk:path) => {{
            let mut out = Vec::with_capacity(shape.iter().product());
            f(&mut |off, len| out.extend_from_slice(&$v[off..off + len]));
            $mk(shape, out)
        }};
    }
    match &t.data {
        Data::F32(v) => gather!(v, Tensor::f32),
        Data::Bf16(v) => gather!(v, Tensor::bf16),
        Data::I8(v) => gather!(v, Tensor::i8),
        Data::I64(v) => gather!(v, Tensor::i64),
        Data::Bool(v) => gather!(v, Tensor::bool),
    }
}

/// A permutation that keeps the last axis in place (`[0, 2, 1, 3]` of head splitting):
/// every output row is a contiguous run of the input.
pub fn permute_rows(t: &Tensor, perm: &[usize]) -> Tensor {
    let r = perm.len();
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let inner = shape[r - 1];
    let ist = strides(&t.shape);
    let pst: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
    let rows: usize = shape[..r - 1].iter().product();
    with_data(t, shape.clone(), &|emit| {
        let mut idx = vec![0usize; r - 1];
        let mut off = 0usize;
        for _ in 0..rows {
            emit(off, inner);
            for d in (0..r - 1).rev() {
                idx[d] += 1;
                off += pst[d];
                if idx[d] < shape[d] {
                    break;
                }
                off -= pst[d] * idx[d];
                idx[d] = 0;
            }
        }
    })
}

pub fn slice(t: &Tensor, axis: usize, start: usize, end: usize) -> Tensor {
    let outer: usize = t.shape[..axis].iter().product();
    let n = t.shape[axis];
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut shape = t.shape.clone();
    shape[axis] = end - start;
    with_data(t, shape, &|emit| {
        for o in 0..outer {
            emit((o * n + start) * inner, (end - start) * inner);
        }
    })
}

/// A permutation that swaps the last two axes (`[.., M, N] -> [.., N, M]`), in 32×32
/// tiles so that both the reads and the writes stay in cache.
pub fn transpose_last2(t: &Tensor) -> Tensor {
    let r = t.shape.len();
    let (m, n) = (t.shape[r - 2], t.shape[r - 1]);
    let batch: usize = t.shape[..r - 2].iter().product();
    let mut shape = t.shape.clone();
    shape.swap(r - 2, r - 1);
    macro_rules! go {
        ($v:expr, $mk:path, $zero:expr) => {{
            let mut out = vec![$zero; $v.len()];
            const T: usize = 32;
            for bi in 0..batch {
                let (src, dst) = (&$v[bi * m * n..][..m * n], &mut out[bi * m * n..][..m * n]);
                for i0 in (0..m).step_by(T) {
                    for j0 in (0..n).step_by(T) {
                        for i in i0..(i0 + T).min(m) {
                            for j in j0..(j0 + T).min(n) {
                                dst[j * m + i] = src[i * n + j];
                            }
                        }
                    }
                }
            }
            $mk(shape, out)
        }};
    }
    match &t.data {
        Data::F32(v) => go!(v, Tensor::f32, 0f32),
        Data::Bf16(v) => go!(v, Tensor::bf16, half::bf16::ZERO),
        Data::I8(v) => go!(v, Tensor::i8, 0i8),
        Data::I64(v) => go!(v, Tensor::i64, 0i64),
        Data::Bool(v) => go!(v, Tensor::bool, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_of_odd_tiles() {
        let (b, m, n) = (2, 33, 70);
        let t = Tensor::i64(vec![b, m, n], (0..(b * m * n) as i64).collect());
        let out = transpose_last2(&t);
        assert_eq!(out.shape, vec![b, n, m]);
        let v = out.as_i64().unwrap();
        for bi in 0..b {
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(v[(bi * n + j) * m + i], ((bi * m + i) * n + j) as i64);
                }
            }
        }
    }
}
