//! The params a lowered graph stores in reduced precision (`encdecc_compiler::precision`):
//! int8 weights read from a quantised checkpoint or quantised at load, and f32 weights made
//! into what such a graph reads.

use super::TensorFiles;
use crate::finite::first_non_finite_index;
use crate::tensor::{Data, Tensor};
use encdecc_compiler::elab::ParamInfo;
use encdecc_compiler::ir::DType;
use encdecc_compiler::precision::scale_path;
use std::collections::HashMap;

/// An int8 weight and its per-row scales `[.., N, 1]`: as stored in a quantised checkpoint
/// (`encdecc quantize`: i8 values beside `<name>_scale`), or quantised now from a float one
/// (`quantize_rows`). `None`: the checkpoint lacks the tensor.
pub(super) fn read_int8(
    files: &TensorFiles,
    p: &ParamInfo,
) -> Result<Option<(Tensor, Tensor)>, String> {
    let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
    let Some(t) = files.get_as(&p.ckpt, DType::I8)? else {
        return Ok(None);
    };
    if t.shape != expected {
        return Err(format!(
            "tensor `{}` has shape {:?} ({}), expected {expected:?}",
            p.ckpt,
            t.shape,
            files.dtype_of(&p.ckpt).unwrap_or_default()
        ));
    }
    let k = *expected.last().unwrap_or(&1);
    let mut row = expected.clone();
    if let Some(last) = row.last_mut() {
        *last = 1;
    }
    if let Data::I8(q) = t.data {
        let name = scale_path(&p.ckpt);
        let s = files.get(&name)?.ok_or_else(|| {
            format!(
                "tensor `{}` in `{}` is int8 but its scales `{name}` are missing",
                p.ckpt,
                files.file_of(&p.ckpt)
            )
        })?;
        let n = q.len() / k.max(1);
        match s.as_f32() {
            Some(v) if v.len() == n && v.iter().all(|x| x.is_finite() && *x >= 0.0) => {
                return Ok(Some((
                    Tensor::i8(expected, q),
                    Tensor::f32(row, v.to_vec()),
                )))
            }
            _ => {
                return Err(format!(
                    "tensor `{name}` must hold {n} finite, non-negative f32 scales (one per row \
                     of `{}`), got {} {:?}",
                    p.ckpt,
                    files.dtype_of(&name).unwrap_or_default(),
                    s.shape
                ))
            }
        }
    }
    let w = t.as_f32().ok_or_else(|| {
        format!(
            "tensor `{}` in `{}` has dtype {}, expected a float dtype to quantise",
            p.ckpt,
            files.file_of(&p.ckpt),
            files.dtype_of(&p.ckpt).unwrap_or_default()
        )
    })?;
    if let Some(i) = (!files.allow_non_finite)
        .then(|| first_non_finite_index(w))
        .flatten()
    {
        return Err(format!(
            "tensor `{}` in `{}` has a non-finite value ({}) at element {i}: it cannot be quantised",
            p.ckpt,
            files.file_of(&p.ckpt),
            w[i]
        ));
    }
    let (q, scales) = quantize_rows(w, k);
    Ok(Some((Tensor::i8(expected, q), Tensor::f32(row, scales))))
}

/// Symmetric int8 per row of `k` values: `scale = max |row| / 127`, `q = round(x / scale)`
/// (an all-zero row gets scale 0 and zeros), so that `q · scale` is within `scale / 2` of
/// each weight. Non-finite weights are refused before this.
pub fn quantize_rows(w: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let k = k.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / k);
    for row in w.chunks(k) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        q.extend(row.iter().map(|&x| match scale > 0.0 {
            true => (x / scale).round().clamp(-127.0, 127.0) as i8,
            false => 0,
        }));
    }
    (q, scales)
}

/// `params` (f32, by DSL path) made what a lowered graph reads: those `stored` in bf16
/// rounded, those stored in i8 quantised (`quantize_rows`) with their scales added at
/// `scale_path`; once, so that no run converts them.
pub fn store_as(
    mut params: HashMap<String, Tensor>,
    stored: &HashMap<String, DType>,
) -> HashMap<String, Tensor> {
    for (path, dtype) in stored {
        let Some(t) = params.get_mut(path) else {
            continue;
        };
        match (dtype, t.as_f32()) {
            (DType::I8, Some(w)) => {
                let k = *t.shape.last().unwrap_or(&1);
                let (q, scales) = quantize_rows(w, k);
                let mut row = t.shape.clone();
                if let Some(last) = row.last_mut() {
                    *last = 1;
                }
                *t = Tensor::i8(t.shape.clone(), q);
                params.insert(scale_path(path), Tensor::f32(row, scales));
            }
            (DType::I8, None) => {}
            (d, _) => *t = crate::interp::convert(t, *d),
        }
    }
    params
}
