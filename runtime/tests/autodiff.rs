//! Every VJP rule against central finite differences on the reference interpreter.
//!
//! Each case is a small graph in the printed IR whose output `y` uses the op under test.
//! The check differentiates `loss = Σ y ⊙ w` (a fixed random `w`, so every entry of the
//! Jacobian counts) and compares the directional derivative `∇loss · v` along random
//! directions `v` with `(loss(p + εv) − loss(p − εv)) / 2ε`. The interpreter stores f32
//! (accumulating in f64), so ε = 1e-2 balances truncation (O(ε²)) against rounding
//! (O(1e-7/ε)); the tolerance, 2e-3 relative to the directional derivative's scale, is
//! far below the error of any wrong rule (a dropped term or sign flips it by O(1)).

use encdecc_compiler::autodiff::{differentiate, grad_output, GradRequest};
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::parse::parse_graph;
use encdecc_compiler::ir::*;
use encdecc_runtime::interp;
use encdecc_runtime::Tensor;
use std::collections::HashMap;

mod common;
use common::Rng;

struct Case {
    name: &'static str,
    ir: &'static str,
    /// Value range of every f32 param (some rules need positive operands).
    range: (f64, f64),
    /// Integer inputs: name, shape, values.
    ints: &'static [(&'static str, &'static [usize], &'static [i64])],
}

fn shape_of(t: &TensorType) -> Vec<usize> {
    t.shape
        .0
        .iter()
        .map(|d| d.known().unwrap() as usize)
        .collect()
}

/// Appends `loss = Σ y ⊙ w` with `w` an input.
fn with_loss(mut g: Graph) -> Graph {
    let y = g.output("y").expect("case has an output y");
    let ty = g.node(y).ty.clone();
    let w = g
        .add(Op::Input { name: "w".into() }, &[], Some(ty.clone()))
        .unwrap();
    let mut acc = g.add(Op::Binary(BinaryOp::Mul), &[y, w], None).unwrap();
    for axis in 0..ty.shape.rank() {
        acc = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axis,
                },
                &[acc],
                None,
            )
            .unwrap();
    }
    let loss = g
        .add(
            Op::Reshape,
            &[acc],
            Some(TensorType {
                dtype: DType::F32,
                shape: Shape::known(&[1]),
            }),
        )
        .unwrap();
    g.outputs.push(("loss".into(), loss));
    g
}

fn loss_at(g: &Graph, params: &HashMap<String, Tensor>, inputs: &HashMap<String, Tensor>) -> f64 {
    let out = interp::run(g, params, inputs).unwrap();
    out["loss"].to_f64()[0]
}

fn check(c: &Case) {
    let g = with_loss(parse_graph(c.ir).unwrap_or_else(|e| panic!("{}: {e}", c.name)));
    let mut rng = Rng(0x5eed ^ (c.name.len() as u64 * 7919));
    let mut params = HashMap::new();
    let mut inputs = HashMap::new();
    for n in g.topo_order() {
        let node = g.node(n);
        match &node.op {
            Op::Param { path, .. } => {
                let s = shape_of(&node.ty);
                let k: usize = s.iter().product();
                let (lo, hi) = c.range;
                let v = (0..k)
                    .map(|_| (lo + (hi - lo) * rng.next()) as f32)
                    .collect();
                params.insert(path.clone(), Tensor::f32(s, v));
            }
            Op::Input { name } if name == "w" => {
                let s = shape_of(&node.ty);
                let k = s.iter().product();
                inputs.insert(name.clone(), Tensor::f32(s, rng.vec(k, 1.0)));
            }
            Op::Input { name } => {
                let (_, s, v) = c
                    .ints
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .unwrap_or_else(|| panic!("{}: no values for input {name}", c.name));
                inputs.insert(name.clone(), Tensor::i64(s.to_vec(), v.to_vec()));
            }
            _ => {}
        }
    }
    let gg = differentiate(
        &g,
        &GradRequest {
            loss: "loss".into(),
            wrt: None,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let out = interp::run(&gg.graph, &params, &inputs).unwrap();
    assert!(!gg.grads.is_empty(), "{}: nothing to differentiate", c.name);
    let eps = 1e-2;
    let mut primitive = g.clone();
    decompose(&mut primitive).unwrap();
    for trial in 0..3 {
        let mut plus = params.clone();
        let mut minus = params.clone();
        let mut analytic = 0f64;
        let mut scale = 0f64;
        for (path, gname) in &gg.grads {
            let grad = out[gname].to_f64();
            let p = &params[path];
            assert_eq!(
                out[gname].shape, p.shape,
                "{}: gradient shape of {path}",
                c.name
            );
            let v: Vec<f32> = rng.vec(p.numel(), 1.0);
            let base = p.as_f32().unwrap();
            let step = |sign: f32| -> Tensor {
                let d = base
                    .iter()
                    .zip(&v)
                    .map(|(x, d)| x + sign * eps as f32 * d)
                    .collect();
                Tensor::f32(p.shape.clone(), d)
            };
            plus.insert(path.clone(), step(1.0));
            minus.insert(path.clone(), step(-1.0));
            for (gi, vi) in grad.iter().zip(&v) {
                analytic += gi * *vi as f64;
                scale += (gi * *vi as f64).abs();
            }
        }
        let numeric = (loss_at(&primitive, &plus, &inputs) - loss_at(&primitive, &minus, &inputs))
            / (2.0 * eps);
        let tol = 2e-3 * scale.max(1e-3);
        assert!(
            (analytic - numeric).abs() <= tol,
            "{} (trial {trial}): autodiff {analytic:.6} vs finite differences {numeric:.6} (tolerance {tol:.2e})",
            c.name
        );
    }
}

const ANY: (f64, f64) = (-1.5, 1.5);
const POS: (f64, f64) = (0.5, 2.0);

macro_rules! case {
    ($name:literal, $range:expr, $ir:literal) => {
        Case {
            name: $name,
            ir: $ir,
            range: $range,
            ints: &[],
        }
    };
}

fn unary_cases() -> Vec<Case> {
    vec![
        case!("neg", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = neg %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("exp", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = exp %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("log", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = log %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("tanh", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = tanh %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("sqrt", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = sqrt %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("rsqrt", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = rsqrt %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("sin", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = sin %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("cos", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = cos %0 : f32[3, 4]\n out \"y\" = %1\n}"),
        case!("abs", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = neg %0 : f32[3, 4]\n %2 = abs %1 : f32[3, 4]\n %3 = mul %2, %0 : f32[3, 4]\n out \"y\" = %3\n}"),
    ]
}

#[test]
fn unary_rules() {
    for c in unary_cases() {
        check(&c);
    }
}

#[test]
fn binary_rules_with_broadcasting() {
    let bin = |name: &'static str, range, ir: &'static str| Case {
        name,
        ir,
        range,
        ints: &[],
    };
    for c in [
        bin("add", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[3, 1]\n %2 = add %0, %1 : f32[2, 3, 4]\n %3 = mul %2, %2 : f32[2, 3, 4]\n out \"y\" = %3\n}"),
        bin("sub", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[4]\n %1 = param \"b\" ckpt \"b\" : f32[2, 3, 1]\n %2 = sub %0, %1 : f32[2, 3, 4]\n %3 = mul %2, %2 : f32[2, 3, 4]\n out \"y\" = %3\n}"),
        bin("mul", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 1, 4]\n %1 = param \"b\" ckpt \"b\" : f32[1, 3, 4]\n %2 = mul %0, %1 : f32[2, 3, 4]\n out \"y\" = %2\n}"),
        bin("div", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3]\n %1 = param \"b\" ckpt \"b\" : f32[3]\n %2 = div %0, %1 : f32[2, 3]\n out \"y\" = %2\n}"),
        bin("pow", POS, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3]\n %1 = param \"b\" ckpt \"b\" : f32[2, 3]\n %2 = pow %0, %1 : f32[2, 3]\n out \"y\" = %2\n}"),
        bin("pow_const", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3]\n %1 = const 3 : f32[]\n %2 = pow %0, %1 : f32[2, 3]\n out \"y\" = %2\n}"),
        bin("max", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[3, 4]\n %2 = max %0, %1 : f32[3, 4]\n out \"y\" = %2\n}"),
        bin("min", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[1, 4]\n %2 = min %0, %1 : f32[3, 4]\n out \"y\" = %2\n}"),
        bin("where", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[4]\n %2 = const 0 : f32[]\n %3 = lt %0, %2 : bool[3, 4]\n %4 = where %3, %0, %1 : f32[3, 4]\n %5 = mul %4, %4 : f32[3, 4]\n out \"y\" = %5\n}"),
        bin("same_operand", ANY, "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = mul %0, %0 : f32[3, 4]\n %2 = mul %1, %0 : f32[3, 4]\n out \"y\" = %2\n}"),
    ] {
        check(&c);
    }
}

#[test]
fn reduction_and_movement_rules() {
    let c = |name: &'static str, ir: &'static str| Case {
        name,
        ir,
        range: ANY,
        ints: &[],
    };
    for case in [
        c("reduce_sum", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4, 5]\n %1 = reduce_sum[axis=1] %0 : f32[3, 1, 5]\n %2 = mul %1, %1 : f32[3, 1, 5]\n out \"y\" = %2\n}"),
        c("reduce_max", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 7]\n %1 = reduce_max[axis=1] %0 : f32[3, 1]\n %2 = mul %1, %1 : f32[3, 1]\n out \"y\" = %2\n}"),
        c("reshape", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 4]\n %1 = reshape %0 : f32[2, 6]\n %2 = mul %1, %1 : f32[2, 6]\n out \"y\" = %2\n}"),
        c("permute", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3, 4]\n %1 = permute[2, 0, 1] %0 : f32[4, 2, 3]\n %2 = iota[axis=2] : i64[4, 2, 3]\n %3 = cast %2 : f32[4, 2, 3]\n %4 = mul %1, %3 : f32[4, 2, 3]\n %5 = mul %4, %1 : f32[4, 2, 3]\n out \"y\" = %5\n}"),
        c("expand", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 1]\n %1 = expand %0 : f32[2, 3, 4]\n %2 = mul %1, %1 : f32[2, 3, 4]\n out \"y\" = %2\n}"),
        c("slice", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 6]\n %1 = slice[axis=1, start=1, end=4] %0 : f32[3, 3]\n %2 = mul %1, %1 : f32[3, 3]\n out \"y\" = %2\n}"),
        c("concat", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[3, 2]\n %1 = param \"b\" ckpt \"b\" : f32[3, 3]\n %2 = concat[axis=1] %0, %1, %0 : f32[3, 7]\n %3 = mul %2, %2 : f32[3, 7]\n out \"y\" = %3\n}"),
        c("shift", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 5]\n %1 = shift[axis=1, offset=-2, fill=7] %0 : f32[2, 5]\n %2 = mul %1, %1 : f32[2, 5]\n out \"y\" = %2\n}"),
        c("cast", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 5]\n %1 = cast %0 : f32[2, 5]\n %2 = mul %1, %0 : f32[2, 5]\n out \"y\" = %2\n}"),
        c("matmul", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[4, 5]\n %2 = matmul %0, %1 : f32[2, 3, 5]\n out \"y\" = %2\n}"),
        c("matmul_batched", "graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2, 1, 3, 4]\n %1 = param \"b\" ckpt \"b\" : f32[3, 4, 2]\n %2 = matmul %0, %1 : f32[2, 3, 3, 2]\n out \"y\" = %2\n}"),
    ] {
        check(&case);
    }
}

#[test]
fn gather_sums_repeated_rows() {
    check(&Case {
        name: "gather",
        ir: "graph g {\n %0 = param \"t\" ckpt \"t\" : f32[5, 3]\n %1 = input \"idx\" : i64[2, 3]\n %2 = gather %0, %1 : f32[2, 3, 3]\n %3 = mul %2, %2 : f32[2, 3, 3]\n out \"y\" = %3\n}",
        range: ANY,
        ints: &[("idx", &[2, 3], &[4, 0, 4, 1, 4, 0])],
    });
}

#[test]
fn scatter_add_reads_its_rows_back() {
    check(&Case {
        name: "scatter_add",
        ir: "graph g {\n %0 = param \"s\" ckpt \"s\" : f32[2, 3, 3]\n %1 = input \"idx\" : i64[2, 3]\n %2 = scatter_add %1, %0 : f32[5, 3]\n %3 = mul %2, %2 : f32[5, 3]\n out \"y\" = %3\n}",
        range: ANY,
        ints: &[("idx", &[2, 3], &[4, 0, 4, 1, 4, 0])],
    });
}

#[test]
fn composites_through_their_decompositions() {
    // GQA attention with a causal window, softcap and key padding; then cross-entropy
    // with an ignored label.
    check(&Case {
        name: "attention",
        ir: "graph g {\n %0 = param \"q\" ckpt \"q\" : f32[2, 4, 5, 3]\n %1 = param \"k\" ckpt \"k\" : f32[2, 2, 5, 3]\n %2 = param \"v\" ckpt \"v\" : f32[2, 2, 5, 3]\n %3 = input \"m\" : i64[2, 5]\n %4 = const 0 : i64[]\n %5 = ne %3, %4 : bool[2, 5]\n %6 = attention[mode=causal, window=3, rule=inclusive, softcap=2, scale=0.5] %0, %1, %2, %5 : f32[2, 4, 5, 3]\n out \"y\" = %6\n}",
        range: ANY,
        ints: &[("m", &[2, 5], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0])],
    });
    check(&Case {
        name: "bidirectional_attention",
        ir: "graph g {\n %0 = param \"q\" ckpt \"q\" : f32[1, 2, 4, 3]\n %1 = param \"k\" ckpt \"k\" : f32[1, 1, 6, 3]\n %2 = param \"v\" ckpt \"v\" : f32[1, 1, 6, 3]\n %3 = attention[mode=bidirectional, window=2, rule=exclusive, softcap=none, scale=0.7] %0, %1, %2 : f32[1, 2, 4, 3]\n out \"y\" = %3\n}",
        range: ANY,
        ints: &[],
    });
    check(&Case {
        name: "cross_entropy",
        ir: "graph g {\n %0 = param \"l\" ckpt \"l\" : f32[2, 3, 7]\n %1 = input \"labels\" : i64[2, 3]\n %2 = cross_entropy[ignore=-100] %0, %1 : f32[1]\n %3 = mul %2, %2 : f32[1]\n out \"y\" = %3\n}",
        range: (-3.0, 3.0),
        ints: &[("labels", &[2, 3], &[6, 0, -100, 2, 2, 5])],
    });
}

#[test]
fn unused_parameters_get_zero_gradients() {
    let g = with_loss(
        parse_graph("graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2]\n %1 = param \"b\" ckpt \"b\" : f32[3]\n %2 = exp %0 : f32[2]\n out \"y\" = %2\n}")
            .unwrap(),
    );
    let gg = differentiate(
        &g,
        &GradRequest {
            loss: "loss".into(),
            wrt: None,
        },
    )
    .unwrap();
    let params = HashMap::from([
        ("a".to_string(), Tensor::f32(vec![2], vec![0.0, 1.0])),
        ("b".to_string(), Tensor::f32(vec![3], vec![1.0, 2.0, 3.0])),
    ]);
    let inputs = HashMap::from([("w".to_string(), Tensor::f32(vec![2], vec![1.0, -2.0]))]);
    let out = interp::run(&gg.graph, &params, &inputs).unwrap();
    assert_eq!(out[&grad_output("b")].to_f64(), vec![0.0; 3]);
    let ga = out[&grad_output("a")].to_f64();
    assert!((ga[0] - 1.0).abs() < 1e-6 && (ga[1] + 2.0 * std::f64::consts::E).abs() < 1e-5);
}

#[test]
fn bad_requests_are_errors() {
    let g = parse_graph("graph g {\n %0 = param \"a\" ckpt \"a\" : f32[2]\n %1 = exp %0 : f32[2]\n out \"y\" = %1\n}").unwrap();
    let err = |loss: &str, wrt: Option<Vec<String>>| {
        differentiate(
            &g,
            &GradRequest {
                loss: loss.into(),
                wrt,
            },
        )
        .unwrap_err()
    };
    assert!(err("loss", None).contains("no output `loss`"));
    assert!(err("y", None).contains("one element"));
    let g1 = with_loss(g.clone());
    let e = differentiate(
        &g1,
        &GradRequest {
            loss: "loss".into(),
            wrt: Some(vec!["nope".into()]),
        },
    )
    .unwrap_err();
    assert!(e.contains("no f32 parameter `nope`"), "{e}");
}
