//! Reductions the fuser leaves alone (over a non-last axis, such as summing a gradient over
//! the batch): f32 in, f64 accumulation in the interpreter's order, so results equal the
//! reference's bit for bit, with the inner axis contiguous so the adds vectorise.

use crate::tensor::Tensor;
use encdecc_compiler::ir::ReduceOp;

/// `op` over `axis` of an f32 tensor, keeping the axis with size 1; `None` for other dtypes.
pub fn reduce_f32(op: ReduceOp, t: &Tensor, axis: usize) -> Option<Tensor> {
    let v = t.as_f32()?;
    let outer: usize = t.shape[..axis].iter().product();
    let n = t.shape[axis];
    let inner: usize = t.shape[axis + 1..].iter().product();
    let init = match op {
        // As `Iterator::sum` of f64, which starts from -0.0 (an all -0.0 sum stays -0.0).
        ReduceOp::Sum => -0f64,
        ReduceOp::Max => f64::NEG_INFINITY,
    };
    let mut out = vec![0f32; outer * inner];
    let mut acc = vec![init; inner];
    for o in 0..outer {
        acc.fill(init);
        for k in 0..n {
            let row = &v[(o * n + k) * inner..][..inner];
            match op {
                ReduceOp::Sum => acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64),
                ReduceOp::Max => acc
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, &x)| *a = a.max(x as f64)),
            }
        }
        for (d, a) in out[o * inner..][..inner].iter_mut().zip(&acc) {
            *d = *a as f32;
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = 1;
    Some(Tensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal, bit for bit, to the interpreter's reduction over every axis of an odd shape.
    #[test]
    fn equals_the_interpreter() {
        use encdecc_compiler::ir::parse::parse_graph;
        let shape = [3usize, 5, 7];
        let n: usize = shape.iter().product();
        let x = Tensor::f32(
            shape.to_vec(),
            (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect(),
        );
        for (op, name) in [(ReduceOp::Sum, "reduce_sum"), (ReduceOp::Max, "reduce_max")] {
            for axis in 0..3 {
                let mut out = shape;
                out[axis] = 1;
                let g = parse_graph(&format!(
                    "graph g {{\n  %0 = input \"x\" : f32[3, 5, 7]\n  %1 = {name}[axis={axis}] %0 : f32[{}, {}, {}]\n  out \"y\" = %1\n}}\n",
                    out[0], out[1], out[2]
                ))
                .unwrap();
                let inputs = std::collections::HashMap::from([("x".to_string(), x.clone())]);
                let want = &crate::interp::run(&g, &Default::default(), &inputs).unwrap()["y"];
                assert_eq!(
                    &reduce_f32(op, &x, axis).unwrap(),
                    want,
                    "{name} axis {axis}"
                );
            }
        }
    }
}
