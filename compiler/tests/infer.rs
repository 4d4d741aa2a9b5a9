//! Typing rules, one line per case: `check(op, operand types, declared, expected)` where
//! `expected` is the printed result type or the start of the error.

use encdecc_compiler::ir::infer::infer_type;
use encdecc_compiler::ir::parse::parse_type;
use encdecc_compiler::ir::*;

fn check(op: Op, operands: &[&str], declared: Option<&str>, expected: &str) {
    let tys: Vec<TensorType> = operands.iter().map(|t| parse_type(t).unwrap()).collect();
    let refs: Vec<&TensorType> = tys.iter().collect();
    let decl = declared.map(|d| parse_type(d).unwrap());
    let got = match infer_type(&op, &refs, decl.as_ref()) {
        Ok(t) => t.to_string(),
        Err(e) => format!("error: {e}"),
    };
    assert!(
        got.starts_with(expected),
        "{op:?} {operands:?}: got `{got}`, expected `{expected}`"
    );
}

fn attn(mode: AttnMode) -> Op {
    Op::Attention(AttentionAttrs {
        mode,
        window: Some(4),
        window_rule: WindowRule::Inclusive,
        softcap: None,
        scale: F64(0.25),
    })
}

#[test]
fn elementwise() {
    use BinaryOp::*;
    check(
        Op::Binary(Add),
        &["f32[B, S, 64]", "f32[64]"],
        None,
        "f32[B, S, 64]",
    );
    check(
        Op::Binary(Mul),
        &["f32[B, 1, T]", "f32[4, 1]"],
        None,
        "f32[B, 4, T]",
    );
    check(
        Op::Binary(Add),
        &["f32[B, S]", "f32[B, T]"],
        None,
        "error: shapes [B, S] and [B, T] do not broadcast",
    );
    check(
        Op::Binary(Add),
        &["f32[3]", "i64[3]"],
        None,
        "error: `add` operands differ in dtype",
    );
    check(
        Op::Binary(Lt),
        &["i64[T, 1]", "i64[1, T]"],
        None,
        "bool[T, T]",
    );
    check(Op::Binary(And), &["bool[2]", "bool[2]"], None, "bool[2]");
    check(
        Op::Binary(And),
        &["f32[2]", "f32[2]"],
        None,
        "error: `and` needs bool operands",
    );
    check(
        Op::Binary(Add),
        &["bool[2]", "bool[2]"],
        None,
        "error: `add` is not defined on bool",
    );
    check(
        Op::Unary(UnaryOp::Exp),
        &["i64[2]"],
        None,
        "error: `exp` is not defined on i64",
    );
    check(Op::Unary(UnaryOp::Neg), &["i64[2]"], None, "i64[2]");
    check(Op::Unary(UnaryOp::Not), &["bool[S]"], None, "bool[S]");
    check(
        Op::Where,
        &["bool[B, 1, T]", "f32[]", "f32[B, 4, T]"],
        None,
        "f32[B, 4, T]",
    );
    check(
        Op::Where,
        &["i64[2]", "f32[2]", "f32[2]"],
        None,
        "error: `where` needs a bool condition",
    );
    check(Op::Cast, &["i64[B, S]"], Some("f32[B, S]"), "f32[B, S]");
    check(
        Op::Cast,
        &["i64[B, S]"],
        Some("f32[B, T]"),
        "error: `cast` keeps the shape",
    );
}

#[test]
fn movement() {
    check(
        Op::Reshape,
        &["f32[B, S, 64]"],
        Some("f32[B, S, 4, 16]"),
        "f32[B, S, 4, 16]",
    );
    check(
        Op::Reshape,
        &["f32[B, S, 64]"],
        Some("f32[S, B, 64]"),
        "f32[S, B, 64]",
    );
    check(
        Op::Reshape,
        &["f32[B, S, 64]"],
        Some("f32[B, T, 64]"),
        "error: cannot reshape",
    );
    check(
        Op::Reshape,
        &["f32[B, S, 64]"],
        Some("f32[B, S, 60]"),
        "error: cannot reshape",
    );
    check(
        Op::Permute {
            perm: vec![0, 2, 1, 3],
        },
        &["f32[B, S, 4, 16]"],
        None,
        "f32[B, 4, S, 16]",
    );
    check(
        Op::Permute {
            perm: vec![0, 0, 1],
        },
        &["f32[B, S, 4]"],
        None,
        "error: [0, 0, 1] is not a permutation",
    );
    check(
        Op::Expand,
        &["f32[B, 1, 1, S]"],
        Some("f32[B, 4, T, S]"),
        "f32[B, 4, T, S]",
    );
    check(
        Op::Expand,
        &["f32[B, 2, S]"],
        Some("f32[B, 4, S]"),
        "error: shapes [B, 2, S] and [B, 4, S] do not broadcast",
    );
    check(
        Op::Slice {
            axis: 3,
            start: 8,
            end: 16,
        },
        &["f32[B, 4, S, 16]"],
        None,
        "f32[B, 4, S, 8]",
    );
    check(
        Op::Slice {
            axis: 3,
            start: 8,
            end: 17,
        },
        &["f32[B, 4, S, 16]"],
        None,
        "error: slice 8..17 out of range",
    );
    check(
        Op::Slice {
            axis: 2,
            start: 0,
            end: 1,
        },
        &["f32[B, 4, S, 16]"],
        None,
        "error: cannot slice symbolic axis",
    );
    check(
        Op::Concat { axis: 1 },
        &["f32[S, 8]", "f32[S, 8]"],
        None,
        "f32[S, 16]",
    );
    check(
        Op::Concat { axis: 0 },
        &["f32[S, 8]", "f32[S, 8]"],
        None,
        "error: cannot concat along a symbolic axis",
    );
    check(
        Op::Gather,
        &["f32[256, 64]", "i64[B, S]"],
        None,
        "f32[B, S, 64]",
    );
    check(
        Op::Gather,
        &["f32[256, 64]", "f32[B, S]"],
        None,
        "error: `gather` indices must be i64",
    );
    check(
        Op::ScatterAdd,
        &["i64[B, S]", "f32[B, S, 64]"],
        Some("f32[256, 64]"),
        "f32[256, 64]",
    );
    check(
        Op::ScatterAdd,
        &["i64[B, S]", "f32[B, S, 64]", "f32[256, 64]"],
        Some("f32[256, 64]"),
        "f32[256, 64]",
    );
    check(
        Op::ScatterAdd,
        &["i64[B, S]", "f32[B, S, 64]", "f32[255, 64]"],
        Some("f32[256, 64]"),
        "error: `scatter_add` adds onto a table of its result type f32[256, 64], got f32[255, 64]",
    );
    check(
        Op::ScatterAdd,
        &["i64[B, S]"],
        Some("f32[256, 64]"),
        "error: `scatter_add` takes 2 operand(s), got 1",
    );
    check(
        Op::Shift {
            axis: 1,
            offset: -1,
            fill: F64(2.0),
        },
        &["i64[B, T]"],
        None,
        "i64[B, T]",
    );
    check(
        Op::Reduce {
            op: ReduceOp::Sum,
            axis: 2,
        },
        &["f32[B, S, 64]"],
        None,
        "f32[B, S, 1]",
    );
    check(Op::Iota { axis: 1 }, &[], Some("i64[1, T]"), "i64[1, T]");
    check(
        Op::Iota { axis: 2 },
        &[],
        Some("i64[1, T]"),
        "error: iota axis 2 out of range",
    );
}

#[test]
fn contractions_and_composites() {
    check(
        Op::MatMul,
        &["f32[B, S, 64]", "f32[64, 128]"],
        None,
        "f32[B, S, 128]",
    );
    check(
        Op::MatMul,
        &["f32[B, 4, T, 16]", "f32[B, 4, 16, S]"],
        None,
        "f32[B, 4, T, S]",
    );
    check(
        Op::MatMul,
        &["f32[B, S, 64]", "f32[32, 128]"],
        None,
        "error: matmul inner dimensions differ",
    );
    check(
        Op::MatMul,
        &["f32[64]", "f32[64, 2]"],
        None,
        "error: `matmul` needs rank >= 2",
    );
    let (q, kv) = ("f32[B, 4, T, 16]", "f32[B, 2, S, 16]");
    check(
        attn(AttnMode::Causal),
        &[q, kv, kv],
        None,
        "f32[B, 4, T, 16]",
    );
    check(
        attn(AttnMode::Bidirectional),
        &[q, kv, kv, "bool[B, S]"],
        None,
        "f32[B, 4, T, 16]",
    );
    check(
        attn(AttnMode::Bidirectional),
        &[q, kv, kv, "bool[B, T]"],
        None,
        "error: attention key mask must be bool[B, S]",
    );
    check(
        attn(AttnMode::Causal),
        &[q, "f32[B, 3, S, 16]", "f32[B, 3, S, 16]"],
        None,
        "error: query heads 4 must be a multiple of kv heads 3",
    );
    check(
        attn(AttnMode::Causal),
        &[q, "f32[B, 2, S, 8]", "f32[B, 2, S, 16]"],
        None,
        "error: attention operands disagree",
    );
    check(
        Op::CrossEntropy { ignore_index: -100 },
        &["f32[B, T, 256]", "i64[B, T]"],
        None,
        "f32[1]",
    );
    check(
        Op::CrossEntropy { ignore_index: -100 },
        &["f32[B, T, 256]", "i64[B, S]"],
        None,
        "error: logits [B, T, 256] do not match labels [B, S]",
    );
}

#[test]
fn leaves_need_declared_types() {
    check(
        Op::Input { name: "x".into() },
        &[],
        None,
        "error: `input` needs a declared result type",
    );
    check(
        Op::Const { value: F64(1.0) },
        &[],
        Some("f32[2]"),
        "error: `const` is a scalar",
    );
    check(
        Op::Binary(BinaryOp::Add),
        &["f32[2]"],
        None,
        "error: `add` takes 2 operand(s), got 1",
    );
    check(
        Op::Binary(BinaryOp::Add),
        &["f32[2]", "f32[2]"],
        Some("f32[3]"),
        "error: `add` has type f32[2], declared f32[3]",
    );
}
