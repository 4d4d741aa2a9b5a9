//! One element's arithmetic as CUDA C expressions, with the reference interpreter's
//! semantics (see `prelude.cuh` for the integer and cast helpers). Bools are `bool` in
//! registers and one byte in memory.

use encdecc_compiler::ir::{BinaryOp, DType, UnaryOp};

pub fn c_type(t: DType) -> &'static str {
    match t {
        // A bf16 value sits in an f32 register, rounded (`cast` below).
        DType::F32 | DType::Bf16 => "float",
        DType::I64 => "i64",
        DType::I8 => "int",
        DType::Bool => "bool",
    }
}

/// An f32 literal that reads back as exactly `v` (Rust's shortest round-trip form);
/// non-finite values by their bits.
pub fn float_literal(v: f32) -> String {
    if v.is_finite() {
        let s = format!("{v:?}");
        let s = if s.contains(['.', 'e']) {
            s
        } else {
            format!("{s}.0")
        };
        format!("{s}f")
    } else {
        format!("__int_as_float(0x{:08x})", v.to_bits())
    }
}

/// The constant of `dtype` that the interpreter's `fill` makes from `v`.
pub fn constant(v: f64, dtype: DType) -> String {
    match dtype {
        DType::F32 => float_literal(v as f32),
        DType::Bf16 => format!("enc_ld(enc_to_bf16({}))", float_literal(v as f32)),
        DType::I64 => match v as i64 {
            i64::MIN => "ENC_I64_MIN".into(),
            n => format!("{n}LL"),
        },
        DType::Bool => (v != 0.0).to_string(),
        DType::I8 => (v as i8).to_string(),
    }
}

pub fn unary(op: UnaryOp, t: DType, a: &str) -> String {
    match (t, op) {
        (DType::F32, UnaryOp::Neg) => format!("-{a}"),
        (DType::F32, UnaryOp::Exp) => format!("expf({a})"),
        (DType::F32, UnaryOp::Log) => format!("logf({a})"),
        (DType::F32, UnaryOp::Tanh) => format!("tanhf({a})"),
        (DType::F32, UnaryOp::Sqrt) => format!("sqrtf({a})"),
        // Two roundings, as the interpreter's `1.0 / x.sqrt()` (not the approximate rsqrtf).
        (DType::F32, UnaryOp::Rsqrt) => format!("1.0f / sqrtf({a})"),
        (DType::F32, UnaryOp::Sin) => format!("sinf({a})"),
        (DType::F32, UnaryOp::Cos) => format!("cosf({a})"),
        (DType::F32, UnaryOp::Abs) => format!("fabsf({a})"),
        (DType::I64, UnaryOp::Neg) => format!("enc_ineg({a})"),
        (DType::I64, UnaryOp::Abs) => format!("enc_iabs({a})"),
        (DType::Bool, UnaryOp::Not) => format!("!{a}"),
        _ => unreachable!("checked by type inference: {op:?} on {t:?}"),
    }
}

pub fn binary(op: BinaryOp, t: DType, a: &str, b: &str) -> String {
    use BinaryOp as B;
    match (t, op) {
        (DType::F32, B::Add) => format!("{a} + {b}"),
        (DType::F32, B::Sub) => format!("{a} - {b}"),
        (DType::F32, B::Mul) => format!("{a} * {b}"),
        (DType::F32, B::Div) => format!("{a} / {b}"),
        (DType::F32, B::Pow) => format!("powf({a}, {b})"),
        // fmaxf/fminf ignore a NaN operand, like f32::max/min.
        (DType::F32, B::Max) => format!("fmaxf({a}, {b})"),
        (DType::F32, B::Min) => format!("fminf({a}, {b})"),
        (DType::I64, B::Add) => format!("enc_iadd({a}, {b})"),
        (DType::I64, B::Sub) => format!("enc_isub({a}, {b})"),
        (DType::I64, B::Mul) => format!("enc_imul({a}, {b})"),
        (DType::I64, B::Div) => format!("enc_idiv({a}, {b})"),
        (DType::I64, B::Pow) => format!("enc_ipow({a}, {b})"),
        (DType::I64, B::Max) => format!("enc_imax({a}, {b})"),
        (DType::I64, B::Min) => format!("enc_imin({a}, {b})"),
        // C's comparisons are IEEE: `!=` is true on NaN, the others false, as in Rust.
        (_, B::Eq) => format!("{a} == {b}"),
        (_, B::Ne) => format!("{a} != {b}"),
        (DType::F32 | DType::I64, B::Lt) => format!("{a} < {b}"),
        (DType::F32 | DType::I64, B::Le) => format!("{a} <= {b}"),
        (DType::Bool, B::And) => format!("{a} && {b}"),
        (DType::Bool, B::Or) => format!("{a} || {b}"),
        _ => unreachable!("checked by type inference: {op:?} on {t:?}"),
    }
}

/// The interpreter's `convert` (Rust `as` casts, `!= 0` for bools).
pub fn cast(from: DType, to: DType, a: &str) -> String {
    match (from, to) {
        (DType::Bf16, _) => cast(DType::F32, to, a),
        (_, DType::Bf16) => format!("enc_ld(enc_to_bf16({}))", cast(from, DType::F32, a)),
        (DType::F32, DType::I64) => format!("enc_f2i({a})"),
        (DType::F32, DType::Bool) => format!("{a} != 0.0f"),
        (DType::I64, DType::F32) => format!("(float){a}"),
        (DType::I64, DType::Bool) => format!("{a} != 0"),
        (DType::Bool, DType::F32) => format!("{a} ? 1.0f : 0.0f"),
        (DType::Bool, DType::I64) => format!("(i64){a}"),
        _ => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_literals_round_trip() {
        let check = |v: f32, want: &str| assert_eq!(float_literal(v), want, "{v}");
        check(1.0, "1.0f");
        check(-0.0, "-0.0f");
        check(1e-6, "1e-6f");
        check(0.1, "0.1f");
        check(f32::MIN, "-3.4028235e38f");
        check(f32::INFINITY, "__int_as_float(0x7f800000)");
        check(f32::NEG_INFINITY, "__int_as_float(0xff800000)");
        for v in [0.1f32, 1.0 / 3.0, 2.5e-38, 123456.79, 1e30] {
            let s = float_literal(v);
            let back: f32 = s.trim_end_matches('f').parse().unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{s}");
        }
    }

    #[test]
    fn integer_constants() {
        assert_eq!(constant(-3.0, DType::I64), "-3LL");
        assert_eq!(constant(i64::MIN as f64, DType::I64), "ENC_I64_MIN");
        assert_eq!(constant(2.0, DType::Bool), "true");
        assert_eq!(constant(0.0, DType::Bool), "false");
    }
}
