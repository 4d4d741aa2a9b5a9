//! Movement steps as strided copies (`EncStrided` in `library.cu`): element `e` of an
//! iteration space is read at `ioff + Σ idx·ist` and written at `ooff + Σ idx·ost`.
//! Permute, slice, expand, each part of a concat and the kept part of a shift are all
//! one such copy; `apply` runs a descriptor on the host, which the tests compare with the
//! interpreter.

use crate::tensor::strides;

pub const MAX_RANK: usize = 8;

/// Mirrors `struct EncStrided` (all `long long`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strided {
    pub n: i64,
    pub rank: i64,
    pub ioff: i64,
    pub ooff: i64,
    pub dims: [i64; MAX_RANK],
    pub ist: [i64; MAX_RANK],
    pub ost: [i64; MAX_RANK],
}

fn fill(a: &[usize]) -> [i64; MAX_RANK] {
    let mut out = [0i64; MAX_RANK];
    for (o, &x) in out.iter_mut().zip(a) {
        *o = x as i64;
    }
    out
}

/// A copy over `dims` with the given input and output strides and offsets. Axes of size 1
/// are dropped and runs contiguous on both sides merged, which keeps ranks small.
pub fn strided(
    dims: &[usize],
    ist: &[usize],
    ost: &[usize],
    ioff: usize,
    ooff: usize,
) -> Result<Strided, String> {
    let mut axes: Vec<(usize, usize, usize)> = vec![];
    for a in 0..dims.len() {
        if dims[a] == 1 {
            continue;
        }
        if let Some(last) = axes.last_mut() {
            // Merge with the previous (outer) axis when it steps exactly over this one.
            if last.1 == ist[a] * dims[a] && last.2 == ost[a] * dims[a] {
                *last = (last.0 * dims[a], ist[a], ost[a]);
                continue;
            }
        }
        axes.push((dims[a], ist[a], ost[a]));
    }
    if axes.len() > MAX_RANK {
        return Err(format!(
            "a copy over {} axes exceeds the CUDA backend's {MAX_RANK}",
            axes.len()
        ));
    }
    let d: Vec<usize> = axes.iter().map(|x| x.0).collect();
    let i: Vec<usize> = axes.iter().map(|x| x.1).collect();
    let o: Vec<usize> = axes.iter().map(|x| x.2).collect();
    Ok(Strided {
        n: dims.iter().product::<usize>() as i64,
        rank: axes.len() as i64,
        ioff: ioff as i64,
        ooff: ooff as i64,
        dims: fill(&d),
        ist: fill(&i),
        ost: fill(&o),
    })
}

/// `out = permute(in, perm)`, contiguous both sides.
pub fn permute(in_shape: &[usize], perm: &[usize]) -> Result<Strided, String> {
    let ist = strides(in_shape);
    let dims: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
    strided(&dims, &pst, &strides(&dims), 0, 0)
}

/// `out = in[.., start..end, ..]` along `axis`.
pub fn slice(in_shape: &[usize], axis: usize, start: usize, end: usize) -> Result<Strided, String> {
    let ist = strides(in_shape);
    let mut dims = in_shape.to_vec();
    dims[axis] = end - start;
    strided(&dims, &ist, &strides(&dims), start * ist[axis], 0)
}

/// `out = expand(in)` to `out_shape` (right-aligned; size-1 axes broadcast).
pub fn expand(in_shape: &[usize], out_shape: &[usize]) -> Result<Strided, String> {
    let off = out_shape.len() - in_shape.len();
    let ist = strides(in_shape);
    let st: Vec<usize> = (0..out_shape.len())
        .map(|a| {
            if a < off || in_shape[a - off] == 1 {
                0
            } else {
                ist[a - off]
            }
        })
        .collect();
    strided(out_shape, &st, &strides(out_shape), 0, 0)
}

/// One operand of a concat along `axis`, placed at `at` along that axis of the output.
pub fn concat_part(
    part: &[usize],
    out_shape: &[usize],
    axis: usize,
    at: usize,
) -> Result<Strided, String> {
    let ost = strides(out_shape);
    strided(part, &strides(part), &ost, 0, at * ost[axis])
}

/// The kept part of a shift: `out[.., t, ..] = in[.., t + offset, ..]` where that is in
/// range (the rest is filled first). `None` when nothing is kept.
pub fn shift(shape: &[usize], axis: usize, offset: i64) -> Result<Option<Strided>, String> {
    let n = shape[axis] as i64;
    let (t0, t1) = ((-offset).max(0), (n - offset).min(n));
    if t0 >= t1 {
        return Ok(None);
    }
    let st = strides(shape);
    let mut dims = shape.to_vec();
    dims[axis] = (t1 - t0) as usize;
    let s = strided(
        &dims,
        &st,
        &st,
        (t0 + offset) as usize * st[axis],
        t0 as usize * st[axis],
    )?;
    Ok(Some(s))
}

/// Runs a descriptor on the host (what the kernel does, element by element).
pub fn apply<T: Copy>(s: &Strided, input: &[T], out: &mut [T]) {
    for e in 0..s.n {
        let (mut r, mut io, mut oo) = (e, s.ioff, s.ooff);
        for a in (0..s.rank as usize).rev() {
            let i = r % s.dims[a];
            r /= s.dims[a];
            io += i * s.ist[a];
            oo += i * s.ost[a];
        }
        out[oo as usize] = input[io as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::eval_node;
    use crate::tensor::Tensor;
    use encdecc_compiler::ir::*;
    use std::collections::HashMap;

    fn ramp(shape: &[usize]) -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|i| i as f32)
            .collect()
    }

    /// The interpreter's result of `op` on operands of the given shapes (ramps).
    fn reference(op: Op, shapes: &[Vec<usize>]) -> Tensor {
        let mut g = Graph::new("t");
        let mut ins = vec![];
        for (i, s) in shapes.iter().enumerate() {
            let ty = TensorType {
                dtype: DType::F32,
                shape: Shape::known(&s.iter().map(|&x| x as u64).collect::<Vec<_>>()),
            };
            let name = format!("x{i}");
            ins.push(g.add(Op::Input { name }, &[], Some(ty)).expect("typed"));
        }
        let n = g.add(op, &ins, None).expect("typed");
        let args: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::f32(s.clone(), ramp(s)))
            .collect();
        let refs: Vec<&Tensor> = args.iter().collect();
        eval_node(
            &g,
            n,
            g.node(n),
            &refs,
            &HashMap::new(),
            &HashMap::new(),
            &HashMap::new(),
        )
        .expect("runs")
    }

    fn run(parts: &[(Strided, Vec<usize>)], out_len: usize, init: f32) -> Vec<f32> {
        let mut out = vec![init; out_len];
        for (s, shape) in parts {
            apply(s, &ramp(shape), &mut out);
        }
        out
    }

    #[test]
    fn permutes() {
        for (shape, perm) in [
            (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
            (vec![2, 3, 4, 5], vec![3, 2, 1, 0]),
            (vec![2, 1, 4], vec![2, 0, 1]),
            (vec![6, 7], vec![1, 0]),
            (vec![3], vec![0]),
        ] {
            let want = reference(
                Op::Permute { perm: perm.clone() },
                std::slice::from_ref(&shape),
            );
            let s = permute(&shape, &perm).unwrap();
            assert_eq!(
                Some(&run(&[(s, shape.clone())], want.numel(), -1.0)[..]),
                want.as_f32(),
                "{shape:?} {perm:?}"
            );
        }
    }

    #[test]
    fn slices_and_expands() {
        for (shape, axis, a, b) in [
            (vec![2, 5, 3], 1, 1, 4),
            (vec![4, 6], 1, 0, 3),
            (vec![4, 6], 0, 2, 4),
            (vec![7], 0, 6, 7),
        ] {
            let want = reference(
                Op::Slice {
                    axis,
                    start: a as u64,
                    end: b as u64,
                },
                std::slice::from_ref(&shape),
            );
            let s = slice(&shape, axis, a, b).unwrap();
            assert_eq!(
                Some(&run(&[(s, shape.clone())], want.numel(), -1.0)[..]),
                want.as_f32()
            );
        }
        for (shape, out) in [
            (vec![1, 3], vec![4, 3]),
            (vec![3, 1], vec![2, 3, 5]),
            (vec![5], vec![2, 5]),
        ] {
            let s = expand(&shape, &out).unwrap();
            let got = run(&[(s, shape.clone())], out.iter().product(), -1.0);
            // expand is a broadcast: compare with an add of zeros.
            let want: Vec<f32> = {
                let strides_out = strides(&out);
                let ist = strides(&shape);
                let off = out.len() - shape.len();
                (0..got.len())
                    .map(|e| {
                        let mut src = 0;
                        for a in 0..out.len() {
                            let i = e / strides_out[a] % out[a];
                            if a >= off && shape[a - off] != 1 {
                                src += i * ist[a - off];
                            }
                        }
                        src as f32
                    })
                    .collect()
            };
            assert_eq!(got, want, "{shape:?} -> {out:?}");
        }
    }

    #[test]
    fn concats_and_shifts() {
        for (shapes, axis) in [
            (vec![vec![2, 3, 4], vec![2, 1, 4], vec![2, 2, 4]], 1),
            (vec![vec![2, 3], vec![2, 5]], 1),
            (vec![vec![1, 3], vec![4, 3]], 0),
        ] {
            let want = reference(Op::Concat { axis }, &shapes);
            let mut at = 0;
            let mut parts = vec![];
            for s in &shapes {
                parts.push((concat_part(s, &want.shape, axis, at).unwrap(), s.clone()));
                at += s[axis];
            }
            assert_eq!(
                Some(&run(&parts, want.numel(), -1.0)[..]),
                want.as_f32(),
                "{shapes:?}"
            );
        }
        for (shape, axis, offset) in [
            (vec![2, 5, 3], 1, 1i64),
            (vec![2, 5, 3], 1, -2),
            (vec![4, 3], 0, 9),
            (vec![4, 3], 1, 0),
        ] {
            let want = reference(
                Op::Shift {
                    axis,
                    offset,
                    fill: F64(-7.0),
                },
                std::slice::from_ref(&shape),
            );
            let parts: Vec<_> = shift(&shape, axis, offset)
                .unwrap()
                .into_iter()
                .map(|s| (s, shape.clone()))
                .collect();
            assert_eq!(
                Some(&run(&parts, want.numel(), -7.0)[..]),
                want.as_f32(),
                "{shape:?} {offset}"
            );
        }
    }

    #[test]
    fn merging_keeps_ranks_small() {
        let s = permute(&[2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 1, 2, 3, 4, 5, 6, 8, 7]).unwrap();
        assert_eq!(s.rank, 3);
        let s = permute(&[4, 5], &[0, 1]).unwrap();
        assert_eq!((s.rank, s.dims[0], s.ist[0]), (1, 20, 1));
    }
}
