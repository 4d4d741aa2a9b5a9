//! The finite check names the op that first produced a non-finite output's NaN or
//! infinity, on the reference interpreter and on the CPU backend, and stays quiet where a
//! non-finite intermediate never reaches an output.

use encdecc_compiler::ir::parse::parse_graph;
use encdecc_runtime::finite::Checks;
use encdecc_runtime::{cpu, interp, Tensor};
use std::collections::HashMap;

const ON: Checks = Checks { finite: true };

type Values<'a> = &'a [(&'a str, Vec<usize>, Vec<f32>)];

fn tensors(v: Values) -> HashMap<String, Tensor> {
    v.iter()
        .map(|(n, s, x)| (n.to_string(), Tensor::f32(s.clone(), x.clone())))
        .collect()
}

/// Runs `ir` on both backends with the check on; `reference` and `cpu` are the expected
/// reports (`None`: the run succeeds).
fn check(ir: &str, params: Values, inputs: Values, reference: Option<&str>, cpu: Option<&str>) {
    let g = parse_graph(ir).unwrap_or_else(|e| panic!("{e}\n{ir}"));
    let (params, inputs) = (tensors(params), tensors(inputs));
    let got = interp::run_with(&g, &params, &inputs, ON).expect("reference runs");
    assert_eq!(
        got.non_finite.as_ref().map(|r| r.to_string()).as_deref(),
        reference,
        "reference"
    );
    let mut m = cpu::prepare(&g).expect("cpu prepares");
    m.checks = ON;
    let got = m.run_checked(&params, &inputs).expect("cpu runs");
    assert_eq!(
        got.non_finite.as_ref().map(|r| r.to_string()).as_deref(),
        cpu,
        "cpu"
    );
    // Unchecked, both run as before.
    assert!(interp::run(&g, &params, &inputs).is_ok());
    m.checks = Checks::default();
    assert!(m.run(&params, &inputs).is_ok());
}

/// `check` where both backends report the same.
fn check_both(ir: &str, params: Values, inputs: Values, report: Option<&str>) {
    check(ir, params, inputs, report, report);
}

/// A `[3, 2]` weight whose 1e20 makes `x · W` overflow where `x[1, 1]` is 1e20 too.
fn overflowing_weight() -> (&'static str, Vec<usize>, Vec<f32>) {
    (
        "lin.weight",
        vec![3, 2],
        vec![1.0, 0.0, 0.0, 1e20, 0.0, 0.0],
    )
}

/// `y = exp(x)`, named `blk.exp`.
const EXP: &str = r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = exp %0 : f32[2, 3] @blk.exp
  out "y" = %1
}"#;

fn x23(v: f32, at: usize) -> Vec<f32> {
    let mut x = vec![0.5, -1.0, 2.0, 0.25, 1.0, -0.5];
    x[at] = v;
    x
}

#[test]
fn exp_overflow() {
    check(
        r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = exp %0 : f32[2, 3] @blk.exp
  %2 = add %1, %0 : f32[2, 3] @blk.out
  out "y" = %2
}"#,
        &[],
        &[("x", vec![2, 3], x23(100.0, 5))],
        Some("non-finite value (inf at [1, 2]) first produced by `blk.exp` (op exp) — operands were finite; it reaches output `y`"),
        Some("non-finite value (inf at [1, 2]) first produced by `blk.out` (loop kernel `k0`: exp, add) — its inputs were finite; it reaches output `y`"),
    );
}

#[test]
fn matmul_overflow() {
    // 1e20 · 1e20 overflows f32 in the matmul; the square after it only carries the inf.
    check_both(
        r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = param "lin.weight" ckpt "model.lin.weight" : f32[3, 2]
  %2 = matmul %0, %1 : f32[2, 2] @lin.out
  %3 = mul %2, %2 : f32[2, 2] @lin.sq
  out "y" = %3
}"#,
        &[overflowing_weight()],
        &[("x", vec![2, 3], x23(1e20, 4))],
        Some("non-finite value (inf at [1, 1]) first produced by `lin.out` (op matmul) — operands were finite; it reaches output `y`"),
    );
}

#[test]
fn a_non_finite_value_that_reaches_no_output_is_no_error() {
    // The same overflow, saturated by tanh (tanh(inf) = 1), and an infinity a `where`
    // selects away: both outputs are finite.
    check_both(
        r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = param "lin.weight" ckpt "lin.weight" : f32[3, 2]
  %2 = matmul %0, %1 : f32[2, 2] @lin.out
  %3 = tanh %2 : f32[2, 2] @lin.act
  %4 = exp %0 : f32[2, 3]
  %5 = const 0.0 : f32[]
  %8 = expand %5 : f32[2, 3]
  %6 = lt %0, %8 : bool[2, 3]
  %7 = where %6, %4, %0 : f32[2, 3] @neg.exp
  out "y" = %3
  out "z" = %7
}"#,
        &[overflowing_weight()],
        &[("x", vec![2, 3], x23(1e20, 4))],
        None,
    );
}

#[test]
fn a_nan_parameter_is_named_as_such() {
    check_both(
        r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = param "lin.weight" ckpt "model.lin.weight" : f32[3, 2]
  %2 = matmul %0, %1 : f32[2, 2] @lin.out
  out "y" = %2
}"#,
        &[("lin.weight", vec![3, 2], vec![1.0, f32::NAN, 0.0, 1.0, 0.0, 0.0])],
        &[("x", vec![2, 3], x23(1.0, 0))],
        Some("parameter `model.lin.weight` (`lin.weight`) is non-finite (NaN at [0, 1]); it reaches output `y`"),
    );
}

#[test]
fn a_non_finite_input_is_named_as_such() {
    // exp(-inf) = 0: a non-finite input whose infinity reaches no output is no error.
    check_both(
        EXP,
        &[],
        &[("x", vec![2, 3], x23(f32::NEG_INFINITY, 1))],
        None,
    );
    // A NaN input stays NaN.
    check_both(
        EXP,
        &[],
        &[("x", vec![2, 3], x23(f32::NAN, 3))],
        Some("input `x` is non-finite (NaN at [1, 0]); it reaches output `y`"),
    );
}

#[test]
fn the_earliest_of_two_origins_and_unnamed_values() {
    // An unnamed log(0) = -inf starts one chain, a matmul's overflow another; both reach
    // `y`, and the one that ran first is named.
    check(
        r#"graph g {
  %0 = input "x" : f32[2, 3]
  %1 = input "z" : f32[2, 3]
  %2 = log %0 : f32[2, 3]
  %3 = param "lin.weight" ckpt "lin.weight" : f32[3, 2]
  %4 = matmul %1, %3 : f32[2, 2] @lin.out
  %5 = reduce_sum[axis=1] %2 : f32[2, 1] @row.sum
  %6 = reduce_sum[axis=1] %4 : f32[2, 1] @lin.sum
  %7 = add %5, %6 : f32[2, 1] @both
  out "y" = %7
}"#,
        &[overflowing_weight()],
        &[
            ("x", vec![2, 3], vec![0.5, 1.0, 0.0, 0.25, 1.0, 0.5]),
            ("z", vec![2, 3], x23(1e20, 4)),
        ],
        Some("non-finite value (-inf at [0, 2]) first produced by `%2` (unnamed, from `x`, feeding `row.sum`) (op log) — operands were finite; it reaches output `y`"),
        // The CPU program runs the matmul before the fused log and sum: first there.
        Some("non-finite value (inf at [1, 1]) first produced by `lin.out` (op matmul) — operands were finite; it reaches output `y`"),
    );
}
