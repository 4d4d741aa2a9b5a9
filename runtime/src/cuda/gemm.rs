//! Matmuls as cuBLAS calls. cuBLAS is column-major, our tensors row-major: a row-major
//! `C = A·B` is the column-major `Cᵀ = Bᵀ·Aᵀ`, so every call passes B as cuBLAS's first
//! operand and A as its second, with `m` and `n` swapped. A transposed weight read in place
//! (`x @ w.T`, stored `[n, k]`) becomes a `T` operation instead of a copy, as the CPU
//! backend reads it with swapped strides (`cpu/matmul.rs`).
//!
//! Batches: a weight without batch axes times a contiguous activation folds the batch into
//! the rows (one large GEMM); otherwise the batch offsets of both operands (0 along
//! broadcast axes) become one strided-batched call when they step evenly, else one call
//! per batch index.
//!
//! Types (`gemm_types`): f32 operands give an f32 result; bf16 operands (bf16 storage)
//! give a bf16 or f32 result, always with f32 accumulation.

use encdecc_codegen::cuda::Mem;

/// The element types of one GEMM, as cuBLAS names them (`CUDA_R_32F`, `CUDA_R_16BF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlasType {
    F32,
    Bf16,
}

/// Operand and result types of a matmul's calls; accumulation is always
/// `CUBLAS_COMPUTE_32F` (no TF32, no reduced-precision sums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTypes {
    /// cuBLAS's A and B (the matmul's right and left operands): always the same type.
    pub operands: BlasType,
    pub result: BlasType,
}

impl GemmTypes {
    /// Bytes of one operand element and of one result element (for offsets).
    pub fn bytes(&self) -> (u64, u64) {
        let b = |t: BlasType| if t == BlasType::Bf16 { 2 } else { 4 };
        (b(self.operands), b(self.result))
    }
}

/// The types of `out = a · b` stored as `a`, `b` and `out`: f32 × f32 → f32 (SGEMM's
/// precision), or bf16 × bf16 → bf16 or f32 (`cublasGemmStridedBatchedEx`). Mixed
/// operands have no cuBLAS call: the executor rounds the f32 one into a bf16 shadow first.
pub fn gemm_types(a: Mem, b: Mem, out: Mem) -> Result<GemmTypes, String> {
    let t = |m: Mem| match m {
        Mem::F32 => Ok(BlasType::F32),
        Mem::Bf16 => Ok(BlasType::Bf16),
        other => Err(format!(
            "the CUDA backend multiplies f32/bf16 matrices, not {other:?}"
        )),
    };
    let (ta, tb, tc) = (t(a)?, t(b)?, t(out)?);
    if ta != tb {
        return Err(format!(
            "matmul operands stored as {a:?} and {b:?}: cuBLAS needs one type"
        ));
    }
    if ta == BlasType::F32 && tc == BlasType::Bf16 {
        return Err("cuBLAS has no f32 × f32 → bf16 GEMM".into());
    }
    Ok(GemmTypes {
        operands: ta,
        result: tc,
    })
}

/// A matmul operand as stored: its shape in memory and whether the matmul reads it
/// transposed (a `[.., n, k]` tensor used as `[.., k, n]`).
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub shape: &'a [usize],
    pub transposed: bool,
}

/// One `cublasSgemmStridedBatched` call (column-major terms; offsets in elements from the
/// base of each operand: `a` is cuBLAS's A, which is the matmul's right operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmCall {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub a_off: usize,
    pub b_off: usize,
    pub c_off: usize,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
}

fn int(x: usize, what: &str) -> Result<i32, String> {
    i32::try_from(x).map_err(|_| format!("matmul {what} {x} exceeds cuBLAS's 32-bit sizes"))
}

/// Logical `[rows, cols]` of an operand's last two axes.
fn mat(o: &Operand) -> (usize, usize) {
    let s = o.shape;
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    if o.transposed {
        (c, r)
    } else {
        (r, c)
    }
}

/// Element offset of every batch index of `o` in the output's batch `dims` (broadcast
/// axes add 0).
fn batch_offsets(o: &Operand, dims: &[usize]) -> Vec<usize> {
    let s = o.shape;
    let matsize = s[s.len() - 2] * s[s.len() - 1];
    let tb = &s[..s.len() - 2];
    let batch: usize = dims.iter().product();
    (0..batch)
        .map(|bi| {
            let (mut rem, mut off, mut stride) = (bi, 0, matsize);
            for ax in (0..dims.len()).rev() {
                let i = rem % dims[ax];
                rem /= dims[ax];
                let ta = ax as isize - (dims.len() as isize - tb.len() as isize);
                if ta >= 0 {
                    let d = tb[ta as usize];
                    if d != 1 {
                        off += i * stride;
                    }
                    stride *= d;
                }
            }
            off
        })
        .collect()
}

/// The step between consecutive offsets when they are evenly spaced.
fn even_step(offs: &[usize]) -> Option<i64> {
    if offs.len() < 2 {
        return Some(0);
    }
    let step = offs[1] as i64 - offs[0] as i64;
    offs.windows(2)
        .all(|w| w[1] as i64 - w[0] as i64 == step)
        .then_some(step)
}

/// The calls computing `out [.., m, n] = a [.., m, k] · b [.., k, n]` into a contiguous
/// output of `out_shape`.
pub fn plan(a: &Operand, b: &Operand, out_shape: &[usize]) -> Result<Vec<GemmCall>, String> {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = mat(a).1;
    if mat(b).0 != k {
        return Err(format!("matmul: inner sizes {k} and {} differ", mat(b).0));
    }
    let dims = &out_shape[..r - 2];
    let batch: usize = dims.iter().product();
    let last = |o: &Operand| o.shape[o.shape.len() - 1];
    let call = |rows: usize, a_off, b_off, c_off, strides: (i64, i64, i64), count| {
        Ok(GemmCall {
            trans_a: b.transposed,
            trans_b: a.transposed,
            m: int(n, "size")?,
            n: int(rows, "size")?,
            k: int(k, "size")?,
            lda: int(last(b).max(1), "stride")?,
            ldb: int(last(a).max(1), "stride")?,
            ldc: int(n.max(1), "stride")?,
            a_off,
            b_off,
            c_off,
            stride_a: strides.0,
            stride_b: strides.1,
            stride_c: strides.2,
            batch: int(count, "batch")?,
        })
    };
    if batch == 0 || m == 0 || n == 0 {
        return Ok(vec![]);
    }
    if b.shape.len() == 2 && !a.transposed && a.shape.len() == r && a.shape[..r - 2] == *dims {
        return Ok(vec![call(batch * m, 0, 0, 0, (0, 0, 0), 1)?]);
    }
    let (bo, ao) = (batch_offsets(b, dims), batch_offsets(a, dims));
    let stride_c = (m * n) as i64;
    // The fewest calls: chunks of the trailing batch axes (all of them first) inside
    // which both operands step evenly; chunk size 1 always works.
    let chunk = (0..=dims.len())
        .map(|j| dims[j..].iter().product::<usize>())
        .find(|&c| {
            (0..batch / c).all(|q| {
                even_step(&bo[q * c..(q + 1) * c]).is_some()
                    && even_step(&ao[q * c..(q + 1) * c]).is_some()
            })
        })
        .unwrap_or(1);
    (0..batch / chunk)
        .map(|q| {
            let (bs, as_) = (
                &bo[q * chunk..(q + 1) * chunk],
                &ao[q * chunk..(q + 1) * chunk],
            );
            let strides = (
                even_step(bs).expect("checked"),
                even_step(as_).expect("checked"),
                stride_c,
            );
            call(m, bs[0], as_[0], q * chunk * m * n, strides, chunk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::eval_node;
    use crate::rng::Rng;
    use crate::tensor::Tensor;
    use encdecc_compiler::ir::*;
    use std::collections::HashMap;

    /// What cuBLAS computes for one call (column-major, alpha 1, beta 0), in f64.
    fn emulate(c: &GemmCall, a: &[f32], b: &[f32], out: &mut [f32]) {
        for bi in 0..c.batch as usize {
            let (ao, bo, co) = (
                (c.a_off as i64 + bi as i64 * c.stride_a) as usize,
                (c.b_off as i64 + bi as i64 * c.stride_b) as usize,
                (c.c_off as i64 + bi as i64 * c.stride_c) as usize,
            );
            let (lda, ldb, ldc) = (c.lda as usize, c.ldb as usize, c.ldc as usize);
            for i in 0..c.m as usize {
                for j in 0..c.n as usize {
                    let mut s = 0f64;
                    for p in 0..c.k as usize {
                        let x = if c.trans_a {
                            a[ao + p + i * lda]
                        } else {
                            a[ao + i + p * lda]
                        };
                        let y = if c.trans_b {
                            b[bo + j + p * ldb]
                        } else {
                            b[bo + p + j * ldb]
                        };
                        s += x as f64 * y as f64;
                    }
                    out[co + i + j * ldc] = s as f32;
                }
            }
        }
    }

    /// Plans `a · b` (each possibly a transposed view) and checks the emulated calls
    /// against the interpreter; returns the number of calls.
    fn check(a_shape: &[usize], a_t: bool, b_shape: &[usize], b_t: bool) -> usize {
        let mut rng = Rng::new(7);
        let mut rand = |s: &[usize]| -> Vec<f32> {
            (0..s.iter().product::<usize>())
                .map(|_| rng.uniform() - 0.5)
                .collect()
        };
        let (av, bv) = (rand(a_shape), rand(b_shape));
        // The logical operands, materialised for the interpreter.
        let logical = |s: &[usize], v: &[f32], t: bool| -> Tensor {
            let x = Tensor::f32(s.to_vec(), v.to_vec());
            if t {
                transpose(&x)
            } else {
                x
            }
        };
        let (la, lb) = (logical(a_shape, &av, a_t), logical(b_shape, &bv, b_t));
        let mut g = Graph::new("t");
        let ty = |t: &Tensor| TensorType {
            dtype: DType::F32,
            shape: Shape::known(&t.shape.iter().map(|&x| x as u64).collect::<Vec<_>>()),
        };
        let x = g
            .add(Op::Input { name: "a".into() }, &[], Some(ty(&la)))
            .unwrap();
        let y = g
            .add(Op::Input { name: "b".into() }, &[], Some(ty(&lb)))
            .unwrap();
        let n = g.add(Op::MatMul, &[x, y], None).unwrap();
        let want = eval_node(
            &g,
            n,
            g.node(n),
            &[&la, &lb],
            &HashMap::new(),
            &HashMap::new(),
            &HashMap::new(),
        )
        .unwrap();
        let calls = plan(
            &Operand {
                shape: a_shape,
                transposed: a_t,
            },
            &Operand {
                shape: b_shape,
                transposed: b_t,
            },
            &want.shape,
        )
        .unwrap();
        let mut got = vec![f32::NAN; want.numel()];
        for c in &calls {
            emulate(c, &bv, &av, &mut got);
        }
        let w = want.as_f32().unwrap();
        for (i, (x, y)) in got.iter().zip(w).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{a_shape:?}{a_t} x {b_shape:?}{b_t} [{i}]: {x} vs {y}"
            );
        }
        calls.len()
    }

    fn transpose(x: &Tensor) -> Tensor {
        let r = x.shape.len();
        let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
        let v = x.as_f32().unwrap();
        let mut out = vec![0f32; v.len()];
        for b in 0..v.len() / (rows * cols).max(1) {
            for i in 0..rows {
                for j in 0..cols {
                    out[b * rows * cols + j * rows + i] = v[b * rows * cols + i * cols + j];
                }
            }
        }
        let mut shape = x.shape.clone();
        shape.swap(r - 2, r - 1);
        Tensor::f32(shape, out)
    }

    #[test]
    fn calls_compute_the_matmul() {
        // Activation times a weight read transposed in place: one folded call.
        assert_eq!(check(&[2, 3, 4], false, &[5, 4], true), 1);
        assert_eq!(check(&[2, 3, 4], false, &[4, 5], false), 1);
        // Attention-style batched products, one strided-batched call.
        assert_eq!(check(&[2, 3, 4, 5], false, &[2, 3, 5, 6], false), 1);
        assert_eq!(check(&[2, 3, 4, 5], false, &[2, 3, 6, 5], true), 1);
        assert_eq!(check(&[2, 3, 5, 4], true, &[2, 3, 5, 6], false), 1);
        // A broadcast operand: stride 0 within a chunk of the batch, one call per chunk.
        assert_eq!(check(&[2, 3, 4, 5], false, &[1, 3, 5, 6], false), 2);
        assert_eq!(check(&[3, 4, 5], false, &[2, 3, 5, 6], false), 2);
        assert_eq!(check(&[2, 3, 4, 5], false, &[2, 1, 5, 6], false), 2);
        assert_eq!(check(&[2, 1, 4, 5], false, &[1, 3, 5, 6], false), 2);
        assert_eq!(check(&[4, 5], false, &[2, 3, 5, 6], false), 1);
        // Plain 2-D, transposed left operand, sizes of 1.
        assert_eq!(check(&[3, 4], false, &[4, 5], false), 1);
        assert_eq!(check(&[4, 3], true, &[4, 5], false), 1);
        assert_eq!(check(&[1, 1], false, &[1, 1], false), 1);
        assert_eq!(check(&[2, 1, 7], false, &[9, 7], true), 1);
    }

    #[test]
    fn types_of_bf16_views() {
        use BlasType::*;
        let check = |a: Mem, b: Mem, c: Mem, want: Result<(BlasType, BlasType), &str>| {
            let got = gemm_types(a, b, c);
            match want {
                Ok((o, r)) => assert_eq!(
                    got.unwrap(),
                    GemmTypes {
                        operands: o,
                        result: r
                    },
                    "{a:?} {b:?} {c:?}"
                ),
                Err(e) => assert!(got.unwrap_err().contains(e), "{a:?} {b:?} {c:?}"),
            }
        };
        check(Mem::F32, Mem::F32, Mem::F32, Ok((F32, F32)));
        check(Mem::Bf16, Mem::Bf16, Mem::Bf16, Ok((Bf16, Bf16)));
        // A bf16 product kept in f32 (a logits output, a weight gradient).
        check(Mem::Bf16, Mem::Bf16, Mem::F32, Ok((Bf16, F32)));
        check(Mem::F32, Mem::Bf16, Mem::Bf16, Err("one type"));
        check(Mem::Bf16, Mem::F32, Mem::F32, Err("one type"));
        check(Mem::F32, Mem::F32, Mem::Bf16, Err("no f32"));
        check(Mem::I64, Mem::I64, Mem::I64, Err("not I64"));
        assert_eq!(
            gemm_types(Mem::Bf16, Mem::Bf16, Mem::F32).unwrap().bytes(),
            (2, 4)
        );
    }

    /// Offsets, strides and leading dimensions are in elements, so a bf16 view plans as an
    /// f32 one: a transposed weight read in place is one folded call with `T` on A.
    #[test]
    fn bf16_views_plan_like_f32() {
        let a = Operand {
            shape: &[2, 3, 4],
            transposed: false,
        };
        let w = Operand {
            shape: &[5, 4],
            transposed: true,
        };
        let calls = plan(&a, &w, &[2, 3, 5]).unwrap();
        assert_eq!(calls.len(), 1);
        let c = calls[0];
        assert!(c.trans_a && !c.trans_b);
        assert_eq!((c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (5, 6, 4, 4, 4, 5));
    }

    #[test]
    fn empty_and_mismatched() {
        let a = Operand {
            shape: &[0, 4],
            transposed: false,
        };
        let b = Operand {
            shape: &[4, 5],
            transposed: false,
        };
        assert_eq!(plan(&a, &b, &[0, 5]).unwrap(), vec![]);
        let b = Operand {
            shape: &[3, 5],
            transposed: false,
        };
        assert!(plan(&a, &b, &[0, 5]).unwrap_err().contains("inner sizes"));
    }
}
