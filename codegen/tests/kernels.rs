//! The LLVM backend against a plain Rust evaluation of the same `LoopKernel` (with the
//! reference interpreter's semantics: f32 ops, wrapping i64, f64-accumulated reductions).
//! Every case runs over the whole row range in one call and again split into row ranges,
//! which checks the `row_begin`/`row_end` contract.

#![cfg(feature = "llvm")]

use encdecc_codegen::{compile, emit, emit_llvm_ir, Emit};
use encdecc_compiler::ir::{BinaryOp as B, DType, ReduceOp, UnaryOp as U, F64};
use encdecc_compiler::kernel::{KOp, LoopKernel, Stride};

// ---------------------------------------------------------------------------------------
// Buffers and values

#[derive(Clone, Debug, PartialEq)]
enum Buf {
    F32(Vec<f32>),
    /// The bits of each bf16 (the upper half of an f32's).
    Bf16(Vec<u16>),
    I64(Vec<i64>),
    /// One byte per element, 0 or 1, as the calling convention stores bools.
    Bool(Vec<u8>),
}

impl Buf {
    fn zeros(dtype: DType, n: usize) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(vec![0.0; n]),
            DType::Bf16 => Buf::Bf16(vec![0; n]),
            DType::I8 => unreachable!("i8 is weight storage: no kernel here reads it"),
            DType::I64 => Buf::I64(vec![0; n]),
            DType::Bool => Buf::Bool(vec![0; n]),
        }
    }
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buf::F32(v) => v.as_mut_ptr() as *mut u8,
            Buf::Bf16(v) => v.as_mut_ptr() as *mut u8,
            Buf::I64(v) => v.as_mut_ptr() as *mut u8,
            Buf::Bool(v) => v.as_mut_ptr(),
        }
    }
    fn get(&self, i: usize) -> V {
        match self {
            Buf::F32(v) => V::F(v[i]),
            Buf::Bf16(v) => V::F(f32::from_bits((v[i] as u32) << 16)),
            Buf::I64(v) => V::I(v[i]),
            Buf::Bool(v) => V::B(v[i] != 0),
        }
    }
    fn set(&mut self, i: usize, x: V) {
        match (self, x) {
            (Buf::F32(v), V::F(x)) => v[i] = x,
            // (A value of bf16 dtype is held as the f32 it equals: its upper half.)
            (Buf::Bf16(v), V::F(x)) => v[i] = bf16_bits(x),
            (Buf::I64(v), V::I(x)) => v[i] = x,
            (Buf::Bool(v), V::B(x)) => v[i] = x as u8,
            (b, x) => panic!("storing {x:?} into {b:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum V {
    F(f32),
    I(i64),
    B(bool),
}

// ---------------------------------------------------------------------------------------
// The reference: the interpreter's elementwise semantics, one element at a time

fn unary(op: U, a: V) -> V {
    match a {
        V::F(x) => V::F(match op {
            U::Neg => -x,
            U::Exp => x.exp(),
            U::Log => x.ln(),
            U::Tanh => x.tanh(),
            U::Sqrt => x.sqrt(),
            U::Rsqrt => 1.0 / x.sqrt(),
            U::Sin => x.sin(),
            U::Cos => x.cos(),
            U::Abs => x.abs(),
            U::Not => unreachable!(),
        }),
        V::I(x) => V::I(if op == U::Neg {
            x.wrapping_neg()
        } else {
            x.wrapping_abs()
        }),
        V::B(x) => V::B(!x),
    }
}

fn binary(op: B, a: V, b: V) -> V {
    match (a, b) {
        (V::F(x), V::F(y)) => match op {
            B::Eq => V::B(x == y),
            B::Ne => V::B(x != y),
            B::Lt => V::B(x < y),
            B::Le => V::B(x <= y),
            B::Add => V::F(x + y),
            B::Sub => V::F(x - y),
            B::Mul => V::F(x * y),
            B::Div => V::F(x / y),
            B::Pow => V::F(x.powf(y)),
            B::Max => V::F(x.max(y)),
            B::Min => V::F(x.min(y)),
            _ => unreachable!(),
        },
        (V::I(x), V::I(y)) => match op {
            B::Eq => V::B(x == y),
            B::Ne => V::B(x != y),
            B::Lt => V::B(x < y),
            B::Le => V::B(x <= y),
            B::Add => V::I(x.wrapping_add(y)),
            B::Sub => V::I(x.wrapping_sub(y)),
            B::Mul => V::I(x.wrapping_mul(y)),
            B::Div => V::I(if y == 0 { 0 } else { x.wrapping_div(y) }),
            B::Pow => V::I(x.wrapping_pow(y.clamp(0, u32::MAX as i64) as u32)),
            B::Max => V::I(x.max(y)),
            B::Min => V::I(x.min(y)),
            _ => unreachable!(),
        },
        (V::B(x), V::B(y)) => V::B(match op {
            B::And => x && y,
            B::Or => x || y,
            B::Eq => x == y,
            B::Ne => x != y,
            _ => unreachable!(),
        }),
        _ => unreachable!(),
    }
}

/// Round to nearest even, overflow to ±inf, NaN quieted (PyTorch's and `half`'s rule),
/// written from the definition: the kept half, plus one if the dropped half is above
/// 0x8000, or equal to it with the kept half odd.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let (hi, lo) = (b >> 16, b & 0xffff);
    (hi + (lo > 0x8000 || (lo == 0x8000 && hi & 1 == 1)) as u32) as u16
}

fn cast(a: V, to: DType) -> V {
    match (a, to) {
        (V::F(x), DType::Bf16) => V::F(f32::from_bits((bf16_bits(x) as u32) << 16)),
        (V::I(x), DType::Bf16) => cast(V::F(x as f32), DType::Bf16),
        (V::B(x), DType::Bf16) => cast(V::F(x as u8 as f32), DType::Bf16),
        (_, DType::I8) => unreachable!("kernels reject casts to i8"),
        (V::F(x), DType::F32) => V::F(x),
        (V::F(x), DType::I64) => V::I(x as i64),
        (V::F(x), DType::Bool) => V::B(x != 0.0),
        (V::I(x), DType::F32) => V::F(x as f32),
        (V::I(x), DType::I64) => V::I(x),
        (V::I(x), DType::Bool) => V::B(x != 0),
        (V::B(x), DType::F32) => V::F(x as u8 as f32),
        (V::B(x), DType::I64) => V::I(x as i64),
        (V::B(x), DType::Bool) => V::B(x),
    }
}

fn constant(v: f64, dtype: DType) -> V {
    match dtype {
        DType::F32 => V::F(v as f32),
        DType::Bf16 => cast(V::F(v as f32), DType::Bf16),
        DType::I8 => V::I(v as i8 as i64),
        DType::I64 => V::I(v as i64),
        DType::Bool => V::B(v != 0.0),
    }
}

/// A kernel with its run-time arguments.
struct Case {
    kernel: LoopKernel,
    dims: Vec<usize>,
    /// `strides[input * R + axis]`, in elements.
    strides: Vec<i64>,
    inputs: Vec<Buf>,
}

impl Case {
    fn rows(&self) -> usize {
        self.dims[..self.dims.len() - 1].iter().product()
    }
    fn inner(&self) -> usize {
        *self.dims.last().unwrap()
    }
    fn output_len(&self, o: usize) -> usize {
        if self.kernel.outputs[o].per_row {
            self.rows()
        } else {
            self.rows() * self.inner()
        }
    }
}

fn reference(c: &Case) -> Vec<Buf> {
    let k = &c.kernel;
    let r = k.rank;
    let mut outs: Vec<Buf> = (0..k.outputs.len())
        .map(|o| Buf::zeros(k.outputs[o].dtype, c.output_len(o)))
        .collect();
    for row in 0..c.rows() {
        let mut index = vec![0usize; r];
        let mut rest = row;
        for a in (0..r - 1).rev() {
            index[a] = rest % c.dims[a];
            rest /= c.dims[a];
        }
        let mut reduced: Vec<f32> = vec![];
        for st in &k.stages {
            let mut acc = match st.reduce {
                Some((ReduceOp::Max, _)) => f64::NEG_INFINITY,
                _ => 0.0,
            };
            for j in 0..c.inner() {
                index[r - 1] = j;
                let mut vals: Vec<V> = vec![];
                for op in &st.ops {
                    let v = match *op {
                        KOp::Load { input } => {
                            let off: i64 = (0..r)
                                .map(|a| index[a] as i64 * c.strides[input * r + a])
                                .sum();
                            c.inputs[input].get(off as usize)
                        }
                        KOp::Const { value, dtype } => constant(value.0, dtype),
                        KOp::Index { axis } => V::I(index[axis] as i64),
                        KOp::RowValue { stage } => V::F(reduced[stage]),
                        KOp::Unary { op, a } => unary(op, vals[a]),
                        KOp::Binary { op, a, b } => binary(op, vals[a], vals[b]),
                        KOp::Where { cond, a, b } => match vals[cond] {
                            V::B(true) => vals[a],
                            _ => vals[b],
                        },
                        KOp::Cast { to, a } => cast(vals[a], to),
                    };
                    vals.push(v);
                }
                match st.reduce {
                    Some((ReduceOp::Sum, v)) => acc += f(vals[v]) as f64,
                    Some((ReduceOp::Max, v)) => acc = acc.max(f(vals[v]) as f64),
                    None => {}
                }
                for &(o, v) in &st.stores {
                    if !k.outputs[o].per_row {
                        outs[o].set(row * c.inner() + j, vals[v]);
                    }
                }
            }
            reduced.push(acc as f32);
            for &(o, _) in &st.stores {
                if k.outputs[o].per_row {
                    outs[o].set(row, V::F(acc as f32));
                }
            }
        }
    }
    outs
}

fn f(v: V) -> f32 {
    match v {
        V::F(x) => x,
        other => panic!("reduction of {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The check

/// Compiles `c.kernel`, runs it over all rows at once and split at a few row boundaries,
/// and compares every output with the reference: f32 to a relative 1e-5 (NaNs and
/// infinities exactly), ints and bools exactly.
fn check(c: Case) {
    let k = &c.kernel;
    assert_eq!(c.strides.len(), k.inputs.len() * k.rank, "case strides");
    for (i, input) in k.inputs.iter().enumerate() {
        for (a, s) in input.strides.iter().enumerate() {
            let actual = c.strides[i * k.rank + a];
            assert!(
                match s {
                    Stride::Zero => actual == 0,
                    Stride::One => actual == 1,
                    Stride::Dynamic => true,
                },
                "case stride of input {i} on axis {a} is {actual}, pattern {s:?}"
            );
        }
    }
    let expected = reference(&c);
    let compiled = compile(std::slice::from_ref(k)).unwrap_or_else(|e| panic!("compile: {e}"));
    let kf = compiled.get(&k.name).expect("kernel entry point");
    let rows = c.rows() as i64;
    let splits: Vec<Vec<i64>> = vec![
        vec![0, rows],
        vec![0, rows / 2, rows],
        vec![0, 1.min(rows), rows / 3, rows],
    ];
    for split in splits {
        let mut inputs = c.inputs.clone();
        let mut outputs: Vec<Buf> = (0..k.outputs.len())
            .map(|o| Buf::zeros(k.outputs[o].dtype, c.output_len(o)))
            .collect();
        let buffers: Vec<*mut u8> = inputs
            .iter_mut()
            .chain(outputs.iter_mut())
            .map(|b| b.ptr())
            .collect();
        let dims: Vec<i64> = c.dims.iter().map(|&d| d as i64).collect();
        for w in split.windows(2) {
            // SAFETY: buffers hold every element the kernel addresses (see `input`).
            unsafe {
                kf(
                    buffers.as_ptr(),
                    dims.as_ptr(),
                    c.strides.as_ptr(),
                    w[0],
                    w[1],
                )
            };
        }
        for (o, (got, want)) in outputs.iter().zip(&expected).enumerate() {
            compare(
                &format!("kernel `{}` output {o}, rows split {split:?}", k.name),
                got,
                want,
            );
        }
    }
}

fn compare(what: &str, got: &Buf, want: &Buf) {
    match (got, want) {
        (Buf::F32(g), Buf::F32(w)) => {
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                let ok = a == b || (a.is_nan() && b.is_nan()) || ((a - b).abs() <= 1e-5 * b.abs());
                assert!(ok, "{what}: element {i} is {a}, expected {b}");
            }
        }
        // Bit for bit, except that two NaNs are equal (arithmetic may pick either NaN
        // operand's payload).
        (Buf::Bf16(g), Buf::Bf16(w)) => {
            let nan = |h: u16| h & 0x7f80 == 0x7f80 && h & 0x7f != 0;
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                assert!(
                    a == b || (nan(a) && nan(b)),
                    "{what}: element {i} is {a:#x}, expected {b:#x}"
                );
            }
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

// ---------------------------------------------------------------------------------------
// Building cases

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and dependency-free.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [lo, hi).
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn i64(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
}

/// Contiguous strides of the value an input pattern reads: extent 1 on broadcast axes.
fn contiguous(pattern: &[Stride], dims: &[usize]) -> Vec<i64> {
    let mut st = vec![0i64; dims.len()];
    let mut n = 1i64;
    for a in (0..dims.len()).rev() {
        if pattern[a] != Stride::Zero {
            st[a] = n;
            n *= dims[a] as i64;
        }
    }
    st
}

/// Elements an input buffer needs: one past the largest offset addressed.
fn extent(dims: &[usize], strides: &[i64]) -> usize {
    1 + dims
        .iter()
        .zip(strides)
        .map(|(&d, &s)| (d.max(1) - 1) as i64 * s)
        .sum::<i64>() as usize
}

/// A case whose inputs are contiguous (per their pattern) and filled by `fill`.
fn case(kernel: LoopKernel, dims: &[usize], fill: impl Fn(usize, &mut Rng) -> V) -> Case {
    let strides: Vec<Vec<i64>> = kernel
        .inputs
        .iter()
        .map(|i| contiguous(&i.strides, dims))
        .collect();
    case_with_strides(kernel, dims, strides, fill)
}

fn case_with_strides(
    kernel: LoopKernel,
    dims: &[usize],
    strides: Vec<Vec<i64>>,
    fill: impl Fn(usize, &mut Rng) -> V,
) -> Case {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let inputs = kernel
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let mut b = Buf::zeros(input.dtype, extent(dims, &strides[i]));
            let n = extent(dims, &strides[i]);
            for e in 0..n {
                b.set(e, fill(i, &mut rng));
            }
            b
        })
        .collect();
    Case {
        kernel,
        dims: dims.to_vec(),
        strides: strides.concat(),
        inputs,
    }
}

fn i64c(v: i64) -> KOp {
    KOp::Const {
        value: F64(v as f64),
        dtype: DType::I64,
    }
}
fn un(op: U, a: usize) -> KOp {
    KOp::Unary { op, a }
}
fn bin(op: B, a: usize, b: usize) -> KOp {
    KOp::Binary { op, a, b }
}
fn cast_to(to: DType, a: usize) -> KOp {
    KOp::Cast { to, a }
}

use Stride::{Dynamic as D, One as O, Zero as Z};
mod common;
use common::{f32c, full, input, kernel, load, per_row, stage};

fn normal(_: usize, r: &mut Rng) -> V {
    V::F(r.f32(-2.0, 2.0))
}

const INNER_SIZES: [usize; 4] = [1, 7, 33, 1000];

// ---------------------------------------------------------------------------------------
// Elementwise

/// `(x + bias) * scale`: bias broadcast over rows, scale over the inner axis.
fn add_mul_broadcast(inner: usize) -> Case {
    let k = kernel(
        "add_mul",
        3,
        vec![
            input(DType::F32, &[D, D, O]),
            input(DType::F32, &[Z, Z, O]),
            input(DType::F32, &[D, D, Z]),
        ],
        vec![full(DType::F32)],
        vec![stage(
            vec![
                load(0),
                load(1),
                bin(B::Add, 0, 1),
                load(2),
                bin(B::Mul, 2, 3),
            ],
            None,
            vec![(0, 4)],
        )],
    );
    case(k, &[2, 3, inner], normal)
}

#[test]
fn elementwise_broadcast_at_odd_inner_sizes() {
    for n in INNER_SIZES {
        check(add_mul_broadcast(n));
    }
}

#[test]
fn transposed_read_uses_dynamic_inner_stride() {
    // y[i, j] = x[j, i] + 1 for x of shape [33, 5]: strides (1, 5) over the space [5, 33].
    let k = kernel(
        "transpose",
        2,
        vec![input(DType::F32, &[D, D])],
        vec![full(DType::F32)],
        vec![stage(
            vec![load(0), f32c(1.0), bin(B::Add, 0, 1)],
            None,
            vec![(0, 2)],
        )],
    );
    check(case_with_strides(k, &[5, 33], vec![vec![1, 5]], normal));
}

#[test]
fn rank_one_is_a_single_row() {
    for n in INNER_SIZES {
        let k = kernel(
            "rank1",
            1,
            vec![input(DType::F32, &[O]), input(DType::F32, &[Z])],
            vec![full(DType::F32)],
            vec![stage(
                vec![load(0), load(1), bin(B::Sub, 0, 1)],
                None,
                vec![(0, 2)],
            )],
        );
        check(case(k, &[n], normal));
    }
}

#[test]
fn rank_four_rows_and_leading_indices() {
    // out = x + index0·1000 + index1·100 + index2·10 + index3, as f32: checks the row's
    // multi-index on every leading axis and a broadcast input in the middle axes.
    let k = kernel(
        "rank4",
        4,
        vec![input(DType::F32, &[D, Z, D, O])],
        vec![full(DType::F32)],
        vec![stage(
            vec![
                KOp::Index { axis: 0 },
                i64c(1000),
                bin(B::Mul, 0, 1),
                KOp::Index { axis: 1 },
                i64c(100),
                bin(B::Mul, 3, 4),
                KOp::Index { axis: 2 },
                i64c(10),
                bin(B::Mul, 6, 7),
                KOp::Index { axis: 3 },
                bin(B::Add, 2, 5),
                bin(B::Add, 10, 8),
                bin(B::Add, 11, 9),
                cast_to(DType::F32, 12),
                load(0),
                bin(B::Add, 13, 14),
            ],
            None,
            vec![(0, 15)],
        )],
    );
    check(case(k, &[3, 4, 5, 7], normal));
}

/// One kernel per f32 unary op, over inputs in its domain.
#[test]
fn f32_unary_ops() {
    let ops = [
        U::Neg,
        U::Exp,
        U::Log,
        U::Tanh,
        U::Sqrt,
        U::Rsqrt,
        U::Sin,
        U::Cos,
        U::Abs,
    ];
    for op in ops {
        for n in [7, 1000] {
            let k = kernel(
                &format!("{op:?}"),
                2,
                vec![input(DType::F32, &[D, O])],
                vec![full(DType::F32)],
                vec![stage(vec![load(0), un(op, 0)], None, vec![(0, 1)])],
            );
            let positive = matches!(op, U::Log | U::Sqrt | U::Rsqrt);
            check(case(k, &[3, n], move |_, r| {
                // Magnitudes from 1e-30 to 20 so tanh's small-|x| branch and saturation run.
                let m = 10f32.powf(r.f32(-30.0, 1.3));
                V::F(if positive || r.next() % 2 == 0 { m } else { -m })
            }));
        }
    }
}

/// Wide arguments: sin/cos far from 0 (RoPE angles reach thousands of radians), exp and log
/// across the whole f32 range, where vector math libraries take their special-case paths.
#[test]
fn f32_unary_ops_at_extreme_arguments() {
    for (op, lo, hi) in [
        (U::Sin, -1e4, 1e4),
        (U::Cos, -1e4, 1e4),
        (U::Exp, -110.0, 90.0),
        (U::Tanh, -30.0, 30.0),
    ] {
        let k = kernel(
            &format!("wide_{op:?}"),
            2,
            vec![input(DType::F32, &[D, O])],
            vec![full(DType::F32)],
            vec![stage(vec![load(0), un(op, 0)], None, vec![(0, 1)])],
        );
        check(case(k, &[4, 1000], move |_, r| V::F(r.f32(lo, hi))));
    }
    let k = kernel(
        "wide_log",
        2,
        vec![input(DType::F32, &[D, O])],
        vec![full(DType::F32)],
        vec![stage(vec![load(0), un(U::Log, 0)], None, vec![(0, 1)])],
    );
    check(case(k, &[4, 1000], |_, r| {
        V::F(10f32.powf(r.f32(-44.0, 38.0)))
    }));
}

#[test]
fn f32_binary_ops_and_comparisons() {
    for op in [B::Add, B::Sub, B::Mul, B::Div, B::Pow, B::Max, B::Min] {
        let k = kernel(
            &format!("{op:?}"),
            2,
            vec![input(DType::F32, &[D, O]), input(DType::F32, &[D, O])],
            vec![full(DType::F32)],
            vec![stage(
                vec![load(0), load(1), bin(op, 0, 1)],
                None,
                vec![(0, 2)],
            )],
        );
        // Pow on a positive base keeps it real; NaNs elsewhere check max/min's NaN rule.
        check(case(k, &[4, 33], move |i, r| match (op, r.next() % 16) {
            (B::Pow, _) if i == 0 => V::F(r.f32(0.1, 3.0)),
            (B::Max | B::Min, 0) => V::F(f32::NAN),
            _ => V::F(r.f32(-3.0, 3.0)),
        }));
    }
    for op in [B::Eq, B::Ne, B::Lt, B::Le] {
        let k = kernel(
            &format!("f{op:?}"),
            2,
            vec![input(DType::F32, &[D, O]), input(DType::F32, &[D, O])],
            vec![full(DType::Bool)],
            vec![stage(
                vec![load(0), load(1), bin(op, 0, 1)],
                None,
                vec![(0, 2)],
            )],
        );
        // Few distinct values, so equal pairs occur; NaN checks the unordered cases.
        check(case(k, &[4, 33], |_, r| {
            V::F([0.0, 1.0, -1.0, f32::NAN][(r.next() % 4) as usize])
        }));
    }
}

// ---------------------------------------------------------------------------------------
// Integers and bools

#[test]
fn i64_arithmetic_wraps_and_divides_like_the_interpreter() {
    for op in [B::Add, B::Sub, B::Mul, B::Div, B::Pow, B::Max, B::Min] {
        let k = kernel(
            &format!("i{op:?}"),
            2,
            vec![input(DType::I64, &[D, O]), input(DType::I64, &[D, O])],
            vec![full(DType::I64)],
            vec![stage(
                vec![load(0), load(1), bin(op, 0, 1)],
                None,
                vec![(0, 2)],
            )],
        );
        // Extremes and small values: overflow, division by 0 and -1, negative exponents.
        check(case(k, &[3, 33], |_, r| {
            let special = [0, 1, -1, 2, -2, 3, 63, 64, i64::MAX, i64::MIN];
            V::I(if r.next() % 2 == 0 {
                special[(r.next() % 10) as usize]
            } else {
                r.i64(-1000, 1000)
            })
        }));
    }
}

#[test]
fn i64_unary_comparisons_and_where() {
    // out0 = where(a < b, -a, abs(b)); out1 = a == b; out2 = a != b; out3 = a <= b
    let k = kernel(
        "icmp",
        2,
        vec![input(DType::I64, &[D, O]), input(DType::I64, &[D, O])],
        vec![
            full(DType::I64),
            full(DType::Bool),
            full(DType::Bool),
            full(DType::Bool),
        ],
        vec![stage(
            vec![
                load(0),
                load(1),
                bin(B::Lt, 0, 1),
                un(U::Neg, 0),
                un(U::Abs, 1),
                KOp::Where {
                    cond: 2,
                    a: 3,
                    b: 4,
                },
                bin(B::Eq, 0, 1),
                bin(B::Ne, 0, 1),
                bin(B::Le, 0, 1),
            ],
            None,
            vec![(0, 5), (1, 6), (2, 7), (3, 8)],
        )],
    );
    check(case(k, &[5, 7], |_, r| {
        V::I([i64::MIN, -3, 0, 3, i64::MAX][(r.next() % 5) as usize])
    }));
}

#[test]
fn casts_between_all_dtypes() {
    // From f32 (with NaN, infinities and values beyond i64): to i64 (saturating), bool,
    // and back; from i64 to f32/bool; from bool to f32/i64.
    let k = kernel(
        "casts",
        2,
        vec![
            input(DType::F32, &[D, O]),
            input(DType::I64, &[D, O]),
            input(DType::Bool, &[D, O]),
        ],
        vec![
            full(DType::I64),
            full(DType::Bool),
            full(DType::F32),
            full(DType::Bool),
            full(DType::F32),
            full(DType::I64),
            full(DType::F32),
        ],
        vec![stage(
            vec![
                load(0),
                cast_to(DType::I64, 0),
                cast_to(DType::Bool, 0),
                load(1),
                cast_to(DType::F32, 3),
                cast_to(DType::Bool, 3),
                load(2),
                cast_to(DType::F32, 6),
                cast_to(DType::I64, 6),
                cast_to(DType::F32, 0),
            ],
            None,
            vec![(0, 1), (1, 2), (2, 4), (3, 5), (4, 7), (5, 8), (6, 9)],
        )],
    );
    check(case(k, &[3, 33], |i, r| match i {
        0 => {
            let special = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e30,
                -1e30,
                0.0,
                -0.0,
                2.5,
                -2.5,
            ];
            V::F(if r.next() % 2 == 0 {
                special[(r.next() % 9) as usize]
            } else {
                r.f32(-100.0, 100.0)
            })
        }
        1 => V::I([0, 1, -7, i64::MAX, i64::MIN, 1 << 40][(r.next() % 6) as usize]),
        _ => V::B(r.next() % 2 == 0),
    }));
}

/// bf16 loads widen exactly; casts to bf16 round to nearest even (ties at both parities,
/// overflow to inf, NaN quieted, subnormals) and store the bits; bf16 to i64 and bool go
/// through f32. Every value compared bit for bit (the bf16 buffers as integers).
#[test]
fn bf16_loads_casts_and_stores() {
    let k = kernel(
        "bf16",
        2,
        vec![input(DType::F32, &[D, O]), input(DType::Bf16, &[D, O])],
        vec![
            full(DType::Bf16),
            full(DType::F32),
            full(DType::I64),
            full(DType::Bool),
            full(DType::Bf16),
        ],
        vec![stage(
            vec![
                load(0),
                cast_to(DType::Bf16, 0),
                load(1),
                cast_to(DType::F32, 2),
                bin(B::Mul, 3, 0),
                cast_to(DType::I64, 2),
                cast_to(DType::Bool, 2),
                cast_to(DType::Bf16, 4),
            ],
            None,
            vec![(0, 1), (1, 4), (2, 5), (3, 6), (4, 7)],
        )],
    );
    let one = 1f32.to_bits();
    let special = [
        f32::from_bits(one + 0x8000),
        f32::from_bits(one + 0x1_8000),
        f32::from_bits(one + 0x8001),
        f32::from_bits(one + 0x7fff),
        f32::MAX,
        f32::from_bits(0x7f7f_7fff),
        f32::from_bits(0x0000_8000),
        f32::from_bits(0x0001_8000),
        f32::from_bits(1),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7f80_0001),
        -0.0,
        -1e30,
    ];
    check(case(k, &[3, 1000], |i, r| {
        let x = match r.next() % 3 {
            0 => special[(r.next() % special.len() as u64) as usize],
            1 => f32::from_bits(r.next() as u32),
            _ => r.f32(-300.0, 300.0),
        };
        // The bf16 input holds bf16 values (an f32's upper half).
        V::F(if i == 1 {
            f32::from_bits(x.to_bits() & 0xffff_0000)
        } else {
            x
        })
    }));
    assert_eq!(bf16_bits(special[0]), 0x3f80);
    assert_eq!(bf16_bits(special[1]), 0x3f82);
    assert_eq!(bf16_bits(special[4]), 0x7f80);
}

#[test]
fn bool_logic_and_index_masks() {
    // A causal-style mask: out0 = (j <= i) && m, out1 = !(m || (j == i)), out2 = m != (j < i),
    // out3 = where(out0, x, -inf) — Index on both axes, bool loads and stores.
    let k = kernel(
        "mask",
        2,
        vec![input(DType::Bool, &[Z, O]), input(DType::F32, &[D, O])],
        vec![
            full(DType::Bool),
            full(DType::Bool),
            full(DType::Bool),
            full(DType::F32),
        ],
        vec![stage(
            vec![
                KOp::Index { axis: 1 },
                KOp::Index { axis: 0 },
                bin(B::Le, 0, 1),
                load(0),
                bin(B::And, 2, 3),
                bin(B::Eq, 0, 1),
                bin(B::Or, 3, 5),
                un(U::Not, 6),
                bin(B::Lt, 0, 1),
                bin(B::Ne, 3, 8),
                load(1),
                f32c(f64::NEG_INFINITY),
                KOp::Where {
                    cond: 4,
                    a: 10,
                    b: 11,
                },
                bin(B::Eq, 4, 4),
                KOp::Const {
                    value: F64(1.0),
                    dtype: DType::Bool,
                },
                bin(B::And, 13, 14),
                bin(B::And, 4, 15),
            ],
            None,
            vec![(0, 16), (1, 7), (2, 9), (3, 12)],
        )],
    );
    for n in [1, 7, 33] {
        check(case(k.clone(), &[9, n], |i, r| {
            if i == 0 {
                V::B(r.next() % 3 != 0)
            } else {
                normal(i, r)
            }
        }));
    }
}

// ---------------------------------------------------------------------------------------
// Reductions

/// `y = x · rsqrt(mean(x²) + eps) · (1 + w)`, Gemma's RMSNorm.
fn rms_norm(inner: usize) -> Case {
    let k = kernel(
        "rms_norm",
        3,
        vec![input(DType::F32, &[D, D, O]), input(DType::F32, &[Z, Z, O])],
        vec![full(DType::F32)],
        vec![
            stage(
                vec![load(0), bin(B::Mul, 0, 0)],
                Some((ReduceOp::Sum, 1)),
                vec![],
            ),
            stage(
                vec![
                    KOp::RowValue { stage: 0 },
                    f32c(inner as f64),
                    bin(B::Div, 0, 1),
                    f32c(1e-6),
                    bin(B::Add, 2, 3),
                    un(U::Rsqrt, 4),
                    load(0),
                    bin(B::Mul, 6, 5),
                    load(1),
                    f32c(1.0),
                    bin(B::Add, 8, 9),
                    bin(B::Mul, 7, 10),
                ],
                None,
                vec![(0, 11)],
            ),
        ],
    );
    case(k, &[2, 3, inner], normal)
}

/// Softmax over the inner axis: max, sum of exp(x - max), exp(x - max) / sum.
fn softmax(rows: usize, inner: usize) -> Case {
    let k = softmax_kernel("softmax");
    case(k, &[rows, inner], |_, r| V::F(r.f32(-8.0, 8.0)))
}

fn softmax_kernel(name: &str) -> LoopKernel {
    kernel(
        name,
        2,
        vec![input(DType::F32, &[D, O])],
        vec![full(DType::F32)],
        vec![
            stage(vec![load(0)], Some((ReduceOp::Max, 0)), vec![]),
            stage(
                vec![
                    load(0),
                    KOp::RowValue { stage: 0 },
                    bin(B::Sub, 0, 1),
                    un(U::Exp, 2),
                ],
                Some((ReduceOp::Sum, 3)),
                vec![],
            ),
            stage(
                vec![
                    load(0),
                    KOp::RowValue { stage: 0 },
                    bin(B::Sub, 0, 1),
                    un(U::Exp, 2),
                    KOp::RowValue { stage: 1 },
                    bin(B::Div, 3, 4),
                ],
                None,
                vec![(0, 5)],
            ),
        ],
    )
}

#[test]
fn rms_norm_two_stages() {
    for n in INNER_SIZES {
        check(rms_norm(n));
    }
}

#[test]
fn softmax_three_stages() {
    for n in INNER_SIZES {
        check(softmax(6, n));
    }
}

#[test]
fn per_row_outputs_of_sum_and_max() {
    // Per-row sum of x and max of |x| - 1, plus a full output of x scaled by the sum.
    let k = kernel(
        "row_stats",
        3,
        vec![input(DType::F32, &[D, D, O])],
        vec![per_row(), per_row(), full(DType::F32)],
        vec![
            stage(
                vec![load(0), un(U::Abs, 0)],
                Some((ReduceOp::Sum, 1)),
                vec![(0, 1)],
            ),
            stage(
                vec![load(0), f32c(1.0), bin(B::Sub, 0, 1)],
                Some((ReduceOp::Max, 2)),
                vec![(1, 2)],
            ),
            stage(
                vec![load(0), KOp::RowValue { stage: 0 }, bin(B::Mul, 0, 1)],
                None,
                vec![(2, 2)],
            ),
        ],
    );
    for n in INNER_SIZES {
        check(case(k.clone(), &[3, 2, n], normal));
    }
}

#[test]
fn max_reduction_ignores_nan_and_starts_at_minus_infinity() {
    // Rows mix NaNs in; the all-NaN row (inner 1, NaN-filled) must give -inf, as the
    // interpreter's f64::max fold does. An empty inner axis gives -inf and 0.
    let k = kernel(
        "nan_max",
        2,
        vec![input(DType::F32, &[D, O])],
        vec![per_row(), per_row()],
        vec![
            stage(vec![load(0)], Some((ReduceOp::Max, 0)), vec![(0, 0)]),
            stage(
                vec![load(0), f32c(0.0), bin(B::Max, 0, 1)],
                Some((ReduceOp::Sum, 2)),
                vec![(1, 2)],
            ),
        ],
    );
    for n in [33, 1000] {
        check(case(k.clone(), &[4, n], |_, r| {
            if r.next() % 5 == 0 {
                V::F(f32::NAN)
            } else {
                normal(0, r)
            }
        }));
    }
    check(case(k.clone(), &[3, 1], |_, _| V::F(f32::NAN)));
    check(case(k, &[3, 0], normal));
}

#[test]
fn max_reduction_with_a_transposed_input() {
    // Column max of a [7, 33] matrix: the inner axis has a dynamic stride of 33.
    let k = kernel(
        "col_max",
        2,
        vec![input(DType::F32, &[D, D])],
        vec![per_row()],
        vec![stage(vec![load(0)], Some((ReduceOp::Max, 0)), vec![(0, 0)])],
    );
    check(case_with_strides(k, &[33, 7], vec![vec![1, 33]], normal));
}

// ---------------------------------------------------------------------------------------
// Compilation as a whole

#[test]
fn kernels_identical_up_to_name_share_one_function() {
    let a = softmax_kernel("a");
    let b = softmax_kernel("b");
    let c = rms_norm(8).kernel;
    let compiled = compile(&[a, b, c]).unwrap();
    assert_eq!(compiled.function_count(), 2);
    let (fa, fb, fc) = (
        compiled.get("a").unwrap(),
        compiled.get("b").unwrap(),
        compiled.get("rms_norm").unwrap(),
    );
    assert_eq!(fa as usize, fb as usize);
    assert_ne!(fa as usize, fc as usize);
    assert!(compiled.get("missing").is_none());
}

#[test]
fn malformed_kernels_are_errors_not_crashes() {
    let cases: Vec<(LoopKernel, &str)> = vec![
        (
            kernel(
                "k",
                2,
                vec![input(DType::F32, &[D, O])],
                vec![full(DType::F32)],
                vec![stage(vec![load(0), un(U::Not, 0)], None, vec![(0, 1)])],
            ),
            "Not is not defined on f32",
        ),
        (
            kernel(
                "k",
                2,
                vec![input(DType::F32, &[D, O])],
                vec![full(DType::I64)],
                vec![stage(vec![load(0)], None, vec![(0, 0)])],
            ),
            "output 0 is i64 but value 0 is f32",
        ),
        (
            kernel("k", 2, vec![input(DType::F32, &[D])], vec![], vec![]),
            "input 0 has 1 strides, expected rank 2",
        ),
        (kernel("llvm.k", 1, vec![], vec![], vec![]), "reserved"),
        (
            kernel(
                "k",
                1,
                vec![],
                vec![per_row()],
                vec![stage(vec![f32c(1.0)], None, vec![(0, 0)])],
            ),
            "must store the stage's reduced value",
        ),
    ];
    for (k, want) in cases {
        let err = compile(&[k]).err().expect("an error");
        assert!(err.contains(want), "error `{err}` should mention `{want}`");
    }
    let err = compile(&[
        softmax_kernel("x"),
        rms_norm(4).kernel.clone(),
        LoopKernel {
            name: "x".into(),
            ..rms_norm(4).kernel
        },
    ])
    .err()
    .expect("an error");
    assert!(err.contains("two different kernels are named `x`"), "{err}");
}

#[test]
fn odd_names_are_valid_symbols() {
    let k = LoopKernel {
        name: "decoder.layers.3/\"norm\" \\ ü".into(),
        ..add_mul_broadcast(7).kernel
    };
    let compiled = compile(std::slice::from_ref(&k)).unwrap();
    assert!(compiled.get(&k.name).is_some());
}

/// The module text for a small kernel, with the host's CPU and features masked.
#[test]
fn llvm_ir_snapshot() {
    let k = kernel(
        "scale_rows",
        2,
        vec![input(DType::F32, &[D, O]), input(DType::F32, &[D, Z])],
        vec![full(DType::F32), per_row()],
        vec![
            stage(
                vec![load(0), load(1), bin(B::Mul, 0, 1)],
                Some((ReduceOp::Sum, 2)),
                vec![(1, 2)],
            ),
            stage(
                vec![load(0), KOp::RowValue { stage: 0 }, bin(B::Div, 0, 1)],
                None,
                vec![(0, 2)],
            ),
        ],
    );
    let ir = emit_llvm_ir(&[k]).unwrap();
    assert!(
        ir.contains("\"target-cpu\"=\"") && ir.contains("\"target-features\"=\""),
        "{ir}"
    );
    insta::assert_snapshot!(mask_host(&ir));
}

/// Replaces the values of the host-dependent attributes so the snapshot is portable.
fn mask_host(ir: &str) -> String {
    let mut out = String::new();
    for line in ir.lines() {
        let mut l = line.to_string();
        for key in ["\"target-cpu\"=\"", "\"target-features\"=\""] {
            if let Some(start) = l.find(key).map(|s| s + key.len()) {
                let end = start + l[start..].find('"').unwrap();
                l.replace_range(start..end, "<host>");
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// After O3 the functions still name the host CPU (the JIT needs it), and on an AVX2 host
/// the loops of an elementwise kernel and of softmax are vectorised at least 8 wide.
#[test]
fn optimized_module_keeps_target_attributes_and_vectorises() {
    let kernels = [add_mul_broadcast(33).kernel, softmax_kernel("softmax")];
    let ir = emit(&kernels, Emit::OptimizedIr).unwrap();
    assert!(
        ir.contains("\"target-cpu\"=\"") && ir.contains("\"target-features\"=\""),
        "{ir}"
    );
    if ir.contains("+avx2") {
        // 8 lanes with AVX2; LLVM may pick 16 where AVX-512 is there too.
        for f in ir.split("\ndefine ").skip(1) {
            assert!(
                f.contains("<8 x float>") || f.contains("<16 x float>"),
                "not vectorised:\n{f}"
            );
        }
        let asm = emit(&kernels, Emit::Asm).unwrap();
        assert!(
            asm.contains("ymm") || asm.contains("zmm"),
            "no AVX registers in:\n{asm}"
        );
    }
}
