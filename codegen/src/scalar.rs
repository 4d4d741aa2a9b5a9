//! Lowering of one element's arithmetic (unary, binary, where, cast, constants) to LLVM IR
//! instructions, with the reference interpreter's semantics (`runtime/src/interp.rs`).
//!
//! Values live in registers as `float`, `i64`, `i16` (bf16: its bits; only casts and moves
//! touch it) or `i1` (bools are bytes only in memory).
//! No fast-math flags: arithmetic, sqrt, comparisons and casts give the IEEE result of the
//! same operation the interpreter performs, bit for bit. Transcendentals do not: in
//! vectorised loops `llvm.exp`/`log`/`sin`/`cos`/`pow` become glibc's libmvec (a few ulp
//! from libm: exp ≤ 2, log ≤ 4, sin/cos 1), and `tanh` is our own f32 formula (a few ulp);
//! the scalar remainder of a loop calls libm. So a comparison on such a value can differ
//! from the reference — results agree within the backend's 1e-5 contract, not bit for bit.

use encdecc_compiler::ir::{BinaryOp, DType, UnaryOp};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Module-level items the body needs (intrinsic declarations, helper definitions), kept
/// sorted so the printed module is deterministic.
pub type Prelude = BTreeSet<String>;

pub fn llvm_type(t: DType) -> &'static str {
    match t {
        DType::F32 => "float",
        DType::Bf16 => "i16",
        DType::I8 => "i8",
        DType::I64 => "i64",
        DType::Bool => "i1",
    }
}

/// A float constant in LLVM's exact hexadecimal form (the bits of the value as a double;
/// a decimal literal that is not exactly representable is rejected by the parser).
pub fn float_const(v: f32) -> String {
    format!("0x{:016X}", (v as f64).to_bits())
}

/// The constant of `dtype` that the interpreter's `fill` makes from `v`.
pub fn constant(v: f64, dtype: DType) -> String {
    match dtype {
        DType::F32 => float_const(v as f32),
        DType::Bf16 => (bf16_bits(v as f32) as i16).to_string(),
        DType::I8 => (v as i8).to_string(),
        DType::I64 => (v as i64).to_string(),
        DType::Bool => (v != 0.0).to_string(),
    }
}

/// The bits of `x` rounded to bf16, to nearest even; a NaN stays a (quiet) NaN. The same
/// rule as the `half` crate the interpreter uses, and as `f32_to_bf16` below.
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `dst = call ret @name(args)`, declaring `name` in the prelude.
pub fn call(
    out: &mut String,
    pre: &mut Prelude,
    dst: &str,
    ret: &str,
    name: &str,
    args: &[(&str, &str)],
) {
    let types: Vec<&str> = args.iter().map(|a| a.0).collect();
    pre.insert(format!("declare {ret} @{name}({})", types.join(", ")));
    let args: Vec<String> = args.iter().map(|(t, v)| format!("{t} {v}")).collect();
    writeln!(out, "  {dst} = call {ret} @{name}({})", args.join(", ")).unwrap();
}

pub fn unary(out: &mut String, pre: &mut Prelude, dst: &str, op: UnaryOp, t: DType, a: &str) {
    let intrinsic = |out: &mut String, pre: &mut Prelude, f: &str| {
        call(
            out,
            pre,
            dst,
            "float",
            &format!("llvm.{f}.f32"),
            &[("float", a)],
        )
    };
    match (t, op) {
        (DType::F32, UnaryOp::Neg) => writeln!(out, "  {dst} = fneg float {a}").unwrap(),
        (DType::F32, UnaryOp::Exp) => intrinsic(out, pre, "exp"),
        (DType::F32, UnaryOp::Log) => intrinsic(out, pre, "log"),
        (DType::F32, UnaryOp::Sqrt) => intrinsic(out, pre, "sqrt"),
        (DType::F32, UnaryOp::Sin) => intrinsic(out, pre, "sin"),
        (DType::F32, UnaryOp::Cos) => intrinsic(out, pre, "cos"),
        (DType::F32, UnaryOp::Abs) => intrinsic(out, pre, "fabs"),
        (DType::F32, UnaryOp::Rsqrt) => {
            // 1/sqrt, not an approximate rsqrt: without fast-math LLVM keeps both roundings,
            // as the interpreter does.
            let s = format!("{dst}.sqrt");
            call(out, pre, &s, "float", "llvm.sqrt.f32", &[("float", a)]);
            writeln!(out, "  {dst} = fdiv float {}, {s}", float_const(1.0)).unwrap();
        }
        (DType::F32, UnaryOp::Tanh) => tanh(out, pre, dst, a),
        (DType::I64, UnaryOp::Neg) => writeln!(out, "  {dst} = sub i64 0, {a}").unwrap(),
        // `false`: abs(i64::MIN) wraps to i64::MIN instead of being poison.
        (DType::I64, UnaryOp::Abs) => call(
            out,
            pre,
            dst,
            "i64",
            "llvm.abs.i64",
            &[("i64", a), ("i1", "false")],
        ),
        (DType::Bool, UnaryOp::Not) => writeln!(out, "  {dst} = xor i1 {a}, true").unwrap(),
        _ => unreachable!("checked: {op:?} on {t:?}"),
    }
}

/// tanh without a libm call, so loops containing it still vectorise (a call to `tanhf`
/// would block the loop vectoriser). In f32, 8 lanes wide with libmvec's `exp`:
/// `sign(x)·(1-e)/(1+e)` with `e = exp(-2|x|)` for |x| ≥ 1/8 (cancellation costs at most
/// ~2 bits there: a few ulp), and the odd series `x + x³(-1/3 + x²(2/15 - 17x²/315))` below
/// (truncation ≤ 2e-9 relative). An earlier f64 version was ±1 ulp but made the
/// GeGLU and logit-softcap kernels compute-bound (2–3× slower).
fn tanh(out: &mut String, pre: &mut Prelude, dst: &str, a: &str) {
    let f = float_const;
    call(
        out,
        pre,
        &format!("{dst}.abs"),
        "float",
        "llvm.fabs.f32",
        &[("float", a)],
    );
    writeln!(out, "  {dst}.m2 = fmul float {dst}.abs, {}", f(-2.0)).unwrap();
    call(
        out,
        pre,
        &format!("{dst}.e"),
        "float",
        "llvm.exp.f32",
        &[("float", &format!("{dst}.m2"))],
    );
    writeln!(out, "  {dst}.num = fsub float {}, {dst}.e", f(1.0)).unwrap();
    writeln!(out, "  {dst}.den = fadd float {}, {dst}.e", f(1.0)).unwrap();
    writeln!(out, "  {dst}.q = fdiv float {dst}.num, {dst}.den").unwrap();
    call(
        out,
        pre,
        &format!("{dst}.big"),
        "float",
        "llvm.copysign.f32",
        &[("float", &format!("{dst}.q")), ("float", a)],
    );
    writeln!(out, "  {dst}.x2 = fmul float {a}, {a}").unwrap();
    writeln!(
        out,
        "  {dst}.p0 = fmul float {dst}.x2, {}",
        f((-17.0f64 / 315.0) as f32)
    )
    .unwrap();
    writeln!(
        out,
        "  {dst}.p1 = fadd float {dst}.p0, {}",
        f((2.0f64 / 15.0) as f32)
    )
    .unwrap();
    writeln!(out, "  {dst}.p2 = fmul float {dst}.p1, {dst}.x2").unwrap();
    writeln!(
        out,
        "  {dst}.p3 = fadd float {dst}.p2, {}",
        f((-1.0f64 / 3.0) as f32)
    )
    .unwrap();
    writeln!(out, "  {dst}.x3 = fmul float {dst}.x2, {a}").unwrap();
    writeln!(out, "  {dst}.p4 = fmul float {dst}.p3, {dst}.x3").unwrap();
    writeln!(out, "  {dst}.small = fadd float {a}, {dst}.p4").unwrap();
    writeln!(
        out,
        "  {dst}.is_small = fcmp olt float {dst}.abs, {}",
        f(0.125)
    )
    .unwrap();
    writeln!(
        out,
        "  {dst} = select i1 {dst}.is_small, float {dst}.small, float {dst}.big"
    )
    .unwrap();
}

pub fn binary(
    out: &mut String,
    pre: &mut Prelude,
    dst: &str,
    op: BinaryOp,
    t: DType,
    a: &str,
    b: &str,
) {
    use BinaryOp as B;
    let simple = |out: &mut String, inst: &str| {
        writeln!(out, "  {dst} = {inst} {} {a}, {b}", llvm_type(t)).unwrap()
    };
    match (t, op) {
        (DType::F32, B::Add) => simple(out, "fadd"),
        (DType::F32, B::Sub) => simple(out, "fsub"),
        (DType::F32, B::Mul) => simple(out, "fmul"),
        (DType::F32, B::Div) => simple(out, "fdiv"),
        (DType::F32, B::Pow) => call(
            out,
            pre,
            dst,
            "float",
            "llvm.pow.f32",
            &[("float", a), ("float", b)],
        ),
        // maxnum/minnum ignore a NaN operand, exactly like f32::max/min.
        (DType::F32, B::Max) => call(
            out,
            pre,
            dst,
            "float",
            "llvm.maxnum.f32",
            &[("float", a), ("float", b)],
        ),
        (DType::F32, B::Min) => call(
            out,
            pre,
            dst,
            "float",
            "llvm.minnum.f32",
            &[("float", a), ("float", b)],
        ),
        (DType::F32, B::Eq) => simple(out, "fcmp oeq"),
        // Unordered: NaN != x is true, as in Rust.
        (DType::F32, B::Ne) => simple(out, "fcmp une"),
        (DType::F32, B::Lt) => simple(out, "fcmp olt"),
        (DType::F32, B::Le) => simple(out, "fcmp ole"),
        // No nsw/nuw: i64 arithmetic wraps, as the interpreter's wrapping_* does.
        (DType::I64, B::Add) => simple(out, "add"),
        (DType::I64, B::Sub) => simple(out, "sub"),
        (DType::I64, B::Mul) => simple(out, "mul"),
        (DType::I64, B::Div) => int_div(out, dst, a, b),
        (DType::I64, B::Pow) => {
            pre.insert(IPOW.to_string());
            writeln!(out, "  {dst} = call i64 @encdecc.ipow(i64 {a}, i64 {b})").unwrap();
        }
        (DType::I64, B::Max) => call(
            out,
            pre,
            dst,
            "i64",
            "llvm.smax.i64",
            &[("i64", a), ("i64", b)],
        ),
        (DType::I64, B::Min) => call(
            out,
            pre,
            dst,
            "i64",
            "llvm.smin.i64",
            &[("i64", a), ("i64", b)],
        ),
        (DType::I64, B::Eq) | (DType::Bool, B::Eq) => simple(out, "icmp eq"),
        (DType::I64, B::Ne) | (DType::Bool, B::Ne) => simple(out, "icmp ne"),
        (DType::I64, B::Lt) => simple(out, "icmp slt"),
        (DType::I64, B::Le) => simple(out, "icmp sle"),
        (DType::Bool, B::And) => simple(out, "and"),
        (DType::Bool, B::Or) => simple(out, "or"),
        _ => unreachable!("checked: {op:?} on {t:?}"),
    }
}

/// The interpreter's `if b == 0 { 0 } else { a.wrapping_div(b) }`. `sdiv` is undefined for
/// a zero divisor and for `i64::MIN / -1`, so both are divided by 1 and patched afterwards
/// (by 0, and by `0 - a`, which wraps like `wrapping_div`).
fn int_div(out: &mut String, dst: &str, a: &str, b: &str) {
    writeln!(out, "  {dst}.zero = icmp eq i64 {b}, 0").unwrap();
    writeln!(out, "  {dst}.minus1 = icmp eq i64 {b}, -1").unwrap();
    writeln!(out, "  {dst}.odd = or i1 {dst}.zero, {dst}.minus1").unwrap();
    writeln!(out, "  {dst}.d = select i1 {dst}.odd, i64 1, i64 {b}").unwrap();
    writeln!(out, "  {dst}.q = sdiv i64 {a}, {dst}.d").unwrap();
    writeln!(out, "  {dst}.neg = sub i64 0, {a}").unwrap();
    writeln!(
        out,
        "  {dst}.q1 = select i1 {dst}.minus1, i64 {dst}.neg, i64 {dst}.q"
    )
    .unwrap();
    writeln!(out, "  {dst} = select i1 {dst}.zero, i64 0, i64 {dst}.q1").unwrap();
}

/// `a.wrapping_pow(b.clamp(0, u32::MAX))` by squaring (equal mod 2^64 to repeated
/// multiplication). A helper function rather than an inline loop so that a stage stays one
/// basic block; it carries the kernels' attribute group so the inliner may inline it.
const IPOW: &str = "define private i64 @encdecc.ipow(i64 %a, i64 %b) #1 {
entry:
  %neg = icmp slt i64 %b, 0
  %big = icmp sgt i64 %b, 4294967295
  %e.lo = select i1 %neg, i64 0, i64 %b
  %e0 = select i1 %big, i64 4294967295, i64 %e.lo
  %none = icmp eq i64 %e0, 0
  br i1 %none, label %done, label %loop
loop:
  %e = phi i64 [ %e0, %entry ], [ %e.next, %loop ]
  %base = phi i64 [ %a, %entry ], [ %base.next, %loop ]
  %acc = phi i64 [ 1, %entry ], [ %acc.next, %loop ]
  %bit = and i64 %e, 1
  %odd = icmp ne i64 %bit, 0
  %prod = mul i64 %acc, %base
  %acc.next = select i1 %odd, i64 %prod, i64 %acc
  %base.next = mul i64 %base, %base
  %e.next = lshr i64 %e, 1
  %more = icmp ne i64 %e.next, 0
  br i1 %more, label %loop, label %done
done:
  %r = phi i64 [ 1, %entry ], [ %acc.next, %loop ]
  ret i64 %r
}";

/// The interpreter's `convert`: Rust `as` casts (f32 → i64 saturates, NaN → 0, which is
/// `fptosi.sat`; plain `fptosi` would be poison out of range) and `!= 0` for bools.
pub fn cast(out: &mut String, pre: &mut Prelude, dst: &str, from: DType, to: DType, a: &str) {
    match (from, to) {
        (DType::Bf16, DType::F32) => {
            writeln!(out, "  {dst}.w = zext i16 {a} to i32").unwrap();
            writeln!(out, "  {dst}.h = shl i32 {dst}.w, 16").unwrap();
            writeln!(out, "  {dst} = bitcast i32 {dst}.h to float").unwrap();
        }
        (DType::F32, DType::Bf16) => f32_to_bf16(out, dst, a),
        // Other casts to and from bf16 go through f32 (as the interpreter's `convert`).
        (DType::Bf16, _) => {
            let f = format!("{dst}.f");
            cast(out, pre, &f, DType::Bf16, DType::F32, a);
            cast(out, pre, dst, DType::F32, to, &f);
        }
        (_, DType::Bf16) => {
            let f = format!("{dst}.f");
            cast(out, pre, &f, from, DType::F32, a);
            f32_to_bf16(out, dst, &f);
        }
        (DType::F32, DType::I64) => call(
            out,
            pre,
            dst,
            "i64",
            "llvm.fptosi.sat.i64.f32",
            &[("float", a)],
        ),
        (DType::F32, DType::Bool) => {
            writeln!(out, "  {dst} = fcmp une float {a}, {}", float_const(0.0)).unwrap()
        }
        (DType::I64, DType::F32) => writeln!(out, "  {dst} = sitofp i64 {a} to float").unwrap(),
        (DType::I64, DType::Bool) => writeln!(out, "  {dst} = icmp ne i64 {a}, 0").unwrap(),
        (DType::Bool, DType::F32) => writeln!(out, "  {dst} = uitofp i1 {a} to float").unwrap(),
        (DType::Bool, DType::I64) => writeln!(out, "  {dst} = zext i1 {a} to i64").unwrap(),
        // Same dtype: the caller reuses the operand's name; there is nothing to emit.
        _ => unreachable!("identity cast {from:?} -> {to:?}"),
    }
}

/// Rounds the float `a` to bf16 bits (`bf16_bits`): add `0x7fff` plus the lowest kept bit
/// and truncate (to nearest, ties to even; overflow carries into the exponent, giving
/// ±inf as it should), except that a NaN keeps its upper half with the quiet bit set.
fn f32_to_bf16(out: &mut String, dst: &str, a: &str) {
    writeln!(out, "  {dst}.b = bitcast float {a} to i32").unwrap();
    writeln!(out, "  {dst}.hi = lshr i32 {dst}.b, 16").unwrap();
    writeln!(out, "  {dst}.lsb = and i32 {dst}.hi, 1").unwrap();
    writeln!(out, "  {dst}.bias = add i32 {dst}.lsb, 32767").unwrap();
    writeln!(out, "  {dst}.sum = add i32 {dst}.b, {dst}.bias").unwrap();
    writeln!(out, "  {dst}.rne = lshr i32 {dst}.sum, 16").unwrap();
    writeln!(out, "  {dst}.qnan = or i32 {dst}.hi, 64").unwrap();
    writeln!(out, "  {dst}.nan = fcmp uno float {a}, {a}").unwrap();
    writeln!(
        out,
        "  {dst}.r = select i1 {dst}.nan, i32 {dst}.qnan, i32 {dst}.rne"
    )
    .unwrap();
    writeln!(out, "  {dst} = trunc i32 {dst}.r to i16").unwrap();
}
