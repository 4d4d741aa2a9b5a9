//! Matmul steps: the operands' layouts (a transposed weight `x @ w.T` is read in place
//! rather than copied) and the kernel for them — bf16 and int8 weights on the compiled
//! low-precision kernels (`lowp`), a few rows against a transposed f32 weight streamed
//! (`gemv`), everything else through the `gemm` crate.

use super::{gemv, lowp, CpuModel};
use crate::interp::{self, Bindings};
use crate::tensor::Tensor;
use encdecc_compiler::ir::{DType, NodeId};
use gemm::Parallelism;
use std::borrow::Cow;
use std::collections::HashMap;

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

/// `t` as f32: itself, or its bf16 values widened (exactly).
fn as_f32(t: &Tensor) -> Cow<'_, Tensor> {
    match t.as_bf16() {
        Some(_) => Cow::Owned(interp::convert(t, DType::F32)),
        None => Cow::Borrowed(t),
    }
}

impl CpuModel {
    /// `x @ wᵀ` with a low-precision weight read in place by the compiled kernels
    /// (`lowp`): a transposed 2-D bf16 weight (x is bf16 too: the lowering cast it, so the
    /// GEMM's rounding of x changes nothing), or an int8 one for a decode step's few rows
    /// (the GEMV keeps x in f32, as the graph says; the GEMM route would round x to bf16,
    /// so larger products dequantise and take the f32 path). `None`: not such a product.
    fn matmul_lowp(
        &self,
        ops: &[NodeId],
        vals: &HashMap<NodeId, Cow<Tensor>>,
        out_shape: &[usize],
    ) -> Result<Option<Tensor>, String> {
        let g = &self.program.graph;
        if !self.views.contains(&ops[1]) || self.is_view(ops[0]) {
            return Ok(None);
        }
        let (Some(x), r) = (vals.get(&ops[0]), out_shape.len()) else {
            return Ok(None);
        };
        if x.shape.len() != r || x.shape[..r - 2] != out_shape[..r - 2] {
            return Ok(None);
        }
        let (k, nn) = (x.shape[r - 1], out_shape[r - 1]);
        let rows: usize = out_shape[..r - 1].iter().product();
        let base = g.operands(ops[1])[0];
        let weight = if self.dequants.contains(&base) {
            let [q, s] = self.int8_weight(base, vals);
            match (q.as_i8(), s.as_f32()) {
                (Some(q8), Some(scales)) if rows <= lowp::GEMV_MAX_ROWS && q.shape == [nn, k] => {
                    lowp::WeightRef::Int8 { q: q8, scales }
                }
                _ => return Ok(None),
            }
        } else {
            match vals.get(&base) {
                Some(w) if w.shape == [nn, k] && w.as_bf16().is_some() => {
                    lowp::WeightRef::Bf16(w.as_bf16().expect("bf16"))
                }
                _ => return Ok(None),
            }
        };
        let x: Cow<[f32]> = match (&x.data, x.as_bf16()) {
            (crate::tensor::Data::F32(v), _) => Cow::Borrowed(v),
            (_, Some(v)) => Cow::Owned(v.iter().map(|h| h.to_f32()).collect()),
            _ => return Ok(None),
        };
        let mut out = vec![0f32; rows * nn];
        lowp::matmul_xwt(&x, weight, &mut out, (rows, k, nn), self.threads);
        Ok(Some(Tensor::f32(out_shape.to_vec(), out)))
    }

    pub(super) fn matmul(
        &self,
        n: NodeId,
        ops: &[NodeId],
        vals: &HashMap<NodeId, Cow<Tensor>>,
        b: &Bindings,
    ) -> Result<Tensor, String> {
        let g = &self.program.graph;
        let out_shape = interp::resolve(&g.node(n).ty.shape, b)?;
        if let Some(out) = self.matmul_lowp(ops, vals, &out_shape)? {
            return Ok(out);
        }
        let r = out_shape.len();
        let (m, nn) = (out_shape[r - 2], out_shape[r - 1]);
        let batch_dims = &out_shape[..r - 2];
        let batch: usize = batch_dims.iter().product();
        // Operand: its values as f32, whether it is a transposed view. bf16 operands (a
        // graph lowered by `encdecc_compiler::precision`) are exact in f32; an int8 weight
        // is dequantised for this product.
        let operand = |o: NodeId| -> Result<(Cow<Tensor>, bool), String> {
            let (base, transposed) = match self.views.contains(&o) {
                true => (g.operands(o)[0], true),
                false => (o, false),
            };
            let t = match self.dequants.contains(&base) {
                true => {
                    let [q, s] = self.int8_weight(base, vals);
                    Cow::Owned(interp::dequant(q, s)?)
                }
                false => as_f32(vals[&base].as_ref()),
            };
            Ok((t, transposed))
        };
        let (at, a_t) = operand(ops[0])?;
        let (bt, b_t) = operand(ops[1])?;
        let (at, bt) = (at.as_ref(), bt.as_ref());
        let k = if a_t {
            at.shape[at.shape.len() - 2]
        } else {
            at.shape[at.shape.len() - 1]
        };
        let view = |t: &Tensor, transposed: bool| {
            let s = &t.shape;
            let last = s[s.len() - 1] as isize;
            if transposed {
                MatView { rs: 1, cs: last }
            } else {
                MatView { rs: last, cs: 1 }
            }
        };
        // Element offset of batch index `bi` in an operand (broadcast batch axes add 0).
        let offsets = |t: &Tensor| -> Vec<usize> {
            let s = &t.shape;
            let mat = s[s.len() - 2] * s[s.len() - 1];
            let tb = &s[..s.len() - 2];
            (0..batch)
                .map(|bi| {
                    let mut rem = bi;
                    let mut off = 0;
                    let mut stride = mat;
                    for ax in (0..batch_dims.len()).rev() {
                        let i = rem % batch_dims[ax];
                        rem /= batch_dims[ax];
                        let ta = ax as isize - (batch_dims.len() as isize - tb.len() as isize);
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
        };
        // A few rows (a decode step) against a transposed weight: dot products streaming the
        // weight once, which `gemm`'s packing would read twice.
        if bt.shape.len() == 2
            && b_t
            && !a_t
            && at.shape.len() == r
            && at.shape[..r - 2] == *batch_dims
            && batch * m <= gemv::MAX_ROWS
        {
            let mut out = vec![0f32; batch * m * nn];
            let (av, bv) = (
                at.as_f32().ok_or("matmul on non-f32")?,
                bt.as_f32().ok_or("matmul on non-f32")?,
            );
            gemv::gemv_t(av, bv, &mut out, (batch * m, k, nn), self.threads);
            return Ok(Tensor::f32(out_shape, out));
        }
        // A weight without batch axes times a contiguous activation: fold the batch into the
        // rows and make one large GEMM (better blocking than `batch` small ones).
        if bt.shape.len() == 2 && !a_t && at.shape.len() == r && at.shape[..r - 2] == *batch_dims {
            let mut out = vec![0f32; batch * m * nn];
            let (av, bv) = (
                at.as_f32().ok_or("matmul on non-f32")?,
                bt.as_f32().ok_or("matmul on non-f32")?,
            );
            let view_a = MatView {
                rs: k as isize,
                cs: 1,
            };
            batched(
                av,
                view_a,
                &|_| 0,
                bv,
                view(bt, b_t),
                &|_| 0,
                &mut out,
                1,
                (batch * m, k, nn),
                self.threads,
            );
            return Ok(Tensor::f32(out_shape, out));
        }
        let (ao, bo) = (offsets(at), offsets(bt));
        let mut out = vec![0f32; batch * m * nn];
        let (av, bv) = (
            at.as_f32().ok_or("matmul on non-f32")?,
            bt.as_f32().ok_or("matmul on non-f32")?,
        );
        batched(
            av,
            view(at, a_t),
            &|i| ao[i],
            bv,
            view(bt, b_t),
            &|i| bo[i],
            &mut out,
            batch,
            (m, k, nn),
            self.threads,
        );
        Ok(Tensor::f32(out_shape, out))
    }
}
