//! The optimisation passes keep values exactly: graphs run on the reference interpreter
//! give the same bits (NaN for NaN) before and after `optimize`. On every fixture model
//! (optimised before and after decomposition), and on random graphs built to hit every
//! rewrite (chains of movement ops, constants 0, -0, 1, duplicates) with inputs holding
//! -0.0, infinities and NaN.

mod common;
use common::*;
use encdecc_compiler::decompose::decompose;
use encdecc_compiler::ir::verify::verify;
use encdecc_compiler::ir::*;
use encdecc_compiler::passes::optimize;
use encdecc_runtime::interp;
use encdecc_runtime::rng::Rng;
use encdecc_runtime::weights::{load_params, TensorFiles};
use encdecc_runtime::{Data, Tensor};
use std::collections::HashMap;

/// Bit-for-bit equality, every NaN equal to every NaN.
fn same_bits(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    match (&got.data, &want.data) {
        (Data::F32(a), Data::F32(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{name}[{i}]: {x:e} vs {y:e}"
                );
            }
        }
        _ => assert_eq!(got.data, want.data, "{name}"),
    }
}

fn run_all(
    what: &str,
    graphs: &[(&str, &Graph)],
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
) {
    let base = interp::run(graphs[0].1, params, inputs).unwrap();
    for (label, g) in &graphs[1..] {
        let got = interp::run(g, params, inputs).unwrap();
        assert_eq!(got.len(), base.len(), "{what} {label}: outputs");
        for (name, want) in &base {
            same_bits(&format!("{what} {label} `{name}`"), &got[name], want);
        }
    }
}

#[test]
fn fixtures_give_the_same_bits() {
    let mut cases: Vec<std::path::PathBuf> = vec![];
    for set in ["tests/fixtures/hf", "tests/fixtures/hf-extra"] {
        let Ok(rd) = std::fs::read_dir(root().join(set)) else {
            continue;
        };
        cases.extend(
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.join("inputs.safetensors").exists()),
        );
    }
    cases.sort();
    assert!(cases.len() >= 4);
    for dir in cases {
        let inputs = read_all(&dir.join("inputs.safetensors"));
        let model = compile(&dir, &[], &inputs, true);
        let (params, _) =
            load_params(&TensorFiles::open_dir(&dir).unwrap(), &model.params).unwrap();
        let mut plain = model.graph.clone();
        decompose(&mut plain).unwrap();
        let mut opt_first = model.graph.clone();
        optimize(&mut opt_first);
        decompose(&mut opt_first).unwrap();
        let mut opt_last = plain.clone();
        let stats = optimize(&mut opt_last);
        assert!(stats.nodes_after < stats.nodes_before);
        run_all(
            &dir.display().to_string(),
            &[
                ("decomposed", &plain),
                ("optimized, decomposed", &opt_first),
                ("decomposed, optimized", &opt_last),
            ],
            &params,
            &inputs,
        );
    }
}

/// Picks a random element.
fn pick<T: Clone>(rng: &mut Rng, v: &[T]) -> T {
    v[rng.below(v.len())].clone()
}

const SHAPES: [&[u64]; 6] = [&[2, 3, 4], &[6, 4], &[24], &[4, 6], &[2, 12], &[3, 2, 4]];
const F32S: [f64; 8] = [0.0, -0.0, 1.0, 2.0, 0.5, -1.0, 3.0, f64::INFINITY];

fn ty(dtype: DType, dims: &[u64]) -> TensorType {
    TensorType {
        dtype,
        shape: Shape::known(dims),
    }
}

fn known(g: &Graph, n: NodeId) -> Vec<u64> {
    g.node(n)
        .ty
        .shape
        .0
        .iter()
        .map(|d| d.known().unwrap())
        .collect()
}

/// A random graph over three inputs, biased towards what the passes rewrite.
fn random_graph(rng: &mut Rng) -> Graph {
    let mut g = Graph::new("random");
    let mut vals: Vec<NodeId> = vec![];
    for (name, dtype) in [
        ("x", DType::F32),
        ("y", DType::F32),
        ("i", DType::I64),
        ("b", DType::Bool),
    ] {
        let n = g
            .add(
                Op::Input { name: name.into() },
                &[],
                Some(ty(dtype, &[2, 3, 4])),
            )
            .unwrap();
        vals.push(n);
    }
    let mut tries = 0;
    while g.dag.node_count() < 40 && tries < 400 {
        tries += 1;
        let a = pick(rng, &vals);
        let at = g.node(a).ty.clone();
        let dims = known(&g, a);
        let scalar = |g: &mut Graph, rng: &mut Rng, dtype: DType| {
            let v = match dtype {
                DType::F32 | DType::Bf16 => pick(rng, &F32S),
                DType::I8 => rng.below(3) as f64,
                DType::I64 => rng.below(3) as f64,
                DType::Bool => rng.below(2) as f64,
            };
            g.add(Op::Const { value: F64(v) }, &[], Some(ty(dtype, &[])))
                .unwrap()
        };
        let r = match rng.below(14) {
            0 => {
                let u = pick(
                    rng,
                    &[
                        UnaryOp::Neg,
                        UnaryOp::Neg,
                        UnaryOp::Exp,
                        UnaryOp::Abs,
                        UnaryOp::Not,
                        UnaryOp::Sqrt,
                    ],
                );
                if at.dtype == DType::I64 {
                    // The interpreter's i64 `neg`/`abs` overflow-panic on i64::MIN (a
                    // cast of -inf) in debug builds.
                    continue;
                }
                g.add(Op::Unary(u), &[a], None)
            }
            1 | 2 => {
                // With a scalar constant on either side, or another value.
                let b = match rng.below(3) {
                    0 => pick(rng, &vals),
                    _ => scalar(&mut g, rng, at.dtype),
                };
                let bop = pick(
                    rng,
                    &[
                        BinaryOp::Add,
                        BinaryOp::Sub,
                        BinaryOp::Mul,
                        BinaryOp::Div,
                        BinaryOp::Max,
                        BinaryOp::Lt,
                        BinaryOp::And,
                        BinaryOp::Or,
                    ],
                );
                if bop == BinaryOp::Lt && at.dtype == DType::Bool {
                    continue; // typed, but the interpreter rejects it
                }
                let ops = if rng.below(2) == 0 { [a, b] } else { [b, a] };
                g.add(Op::Binary(bop), &ops, None)
            }
            3 => {
                // Constant-only arithmetic, for folding.
                let dt = pick(rng, &[DType::F32, DType::I64, DType::Bool]);
                let (p, q) = (scalar(&mut g, rng, dt), scalar(&mut g, rng, dt));
                let bop = pick(
                    rng,
                    &[
                        BinaryOp::Add,
                        BinaryOp::Mul,
                        BinaryOp::Div,
                        BinaryOp::Eq,
                        BinaryOp::Or,
                    ],
                );
                g.add(Op::Binary(bop), &[p, q], None)
            }
            4 => {
                let c = pick(rng, &vals);
                let b = if rng.below(2) == 0 {
                    a
                } else {
                    pick(rng, &vals)
                };
                g.add(Op::Where, &[c, a, b], None)
            }
            5 => {
                let dt = pick(rng, &[DType::F32, DType::I64, DType::Bool, at.dtype]);
                g.add(
                    Op::Cast,
                    &[a],
                    Some(TensorType {
                        dtype: dt,
                        shape: at.shape.clone(),
                    }),
                )
            }
            6 | 7 => {
                let mut perm: Vec<usize> = (0..dims.len()).collect();
                for i in (1..perm.len()).rev() {
                    perm.swap(i, rng.below(i + 1));
                }
                g.add(Op::Permute { perm }, &[a], None)
            }
            8 => {
                let s: Vec<u64> = if rng.below(3) == 0 {
                    dims.clone()
                } else {
                    pick(rng, &SHAPES).to_vec()
                };
                g.add(Op::Reshape, &[a], Some(ty(at.dtype, &s)))
            }
            9 => {
                let mut s = dims.clone();
                if rng.below(2) == 0 {
                    s.insert(0, 2);
                }
                g.add(Op::Expand, &[a], Some(ty(at.dtype, &s)))
            }
            10 | 11 => {
                let axis = rng.below(dims.len().max(1));
                let n = *dims.get(axis).unwrap_or(&0);
                let start = rng.below(n as usize + 1) as u64;
                let end = start + rng.below((n - start) as usize + 1) as u64;
                g.add(Op::Slice { axis, start, end }, &[a], None)
            }
            12 => {
                let b = pick(rng, &vals);
                let axis = rng.below(dims.len().max(1));
                g.add(Op::Concat { axis }, &[a, b], None)
            }
            _ => {
                // A duplicate of an existing node, for CSE.
                let n = pick(rng, &vals);
                let node = g.node(n).clone();
                if matches!(node.op, Op::Input { .. }) {
                    continue;
                }
                let ops = g.operands(n);
                g.add(node.op, &ops, Some(node.ty))
            }
        };
        if let Ok(n) = r {
            if g.node(n)
                .ty
                .shape
                .numel()
                .is_some_and(|e| e > 0 && e <= 512)
            {
                vals.push(n);
            }
        }
    }
    // Outputs: every value nothing uses, so that rewrites land in live code, and a few
    // used ones.
    let mut outs: Vec<NodeId> = vals
        .iter()
        .copied()
        .filter(|&n| g.users(n).is_empty() && !matches!(g.node(n).op, Op::Input { .. }))
        .collect();
    for _ in 0..4 {
        outs.push(pick(rng, &vals));
    }
    outs.sort();
    outs.dedup();
    for (k, n) in outs.into_iter().enumerate() {
        g.outputs.push((format!("out{k}"), n));
    }
    g
}

fn random_inputs(rng: &mut Rng) -> HashMap<String, Tensor> {
    let special = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        0.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-30,
        3.5,
    ];
    let f = |rng: &mut Rng| {
        Tensor::f32(
            vec![2, 3, 4],
            (0..24).map(|_| pick(rng, &special)).collect(),
        )
    };
    let mut m = HashMap::new();
    m.insert("x".into(), f(rng));
    m.insert("y".into(), f(rng));
    m.insert(
        "i".into(),
        Tensor::i64(
            vec![2, 3, 4],
            (0..24).map(|_| rng.below(7) as i64 - 3).collect(),
        ),
    );
    m.insert(
        "b".into(),
        Tensor::bool(vec![2, 3, 4], (0..24).map(|_| rng.below(2) == 1).collect()),
    );
    m
}

#[test]
fn random_graphs_give_the_same_bits() {
    let mut rng = Rng::new(1);
    let mut per_pass: HashMap<&str, usize> = HashMap::new();
    for case in 0..300 {
        let g = random_graph(&mut rng);
        verify(&g).unwrap();
        let mut opt = g.clone();
        for p in optimize(&mut opt).passes {
            *per_pass.entry(p.name).or_default() += p.changes;
        }
        let inputs = random_inputs(&mut rng);
        let want = interp::run(&g, &HashMap::new(), &inputs)
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert!(!want.is_empty());
        run_all(
            &format!("case {case}"),
            &[("plain", &g), ("optimized", &opt)],
            &HashMap::new(),
            &inputs,
        );
    }
    // Every pass must have had work to do, or the test proves little.
    for pass in ["fold", "simplify", "layout", "cse", "dce"] {
        let n = per_pass.get(pass).copied().unwrap_or(0);
        assert!(n >= 50, "`{pass}` made only {n} changes: {per_pass:?}");
    }
    eprintln!("{per_pass:?}");
}
