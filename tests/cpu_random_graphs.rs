//! The CPU backend against the reference interpreter on random graphs built to stress
//! fusion and the kernels: elementwise chains over f32, i64 and bool (every unary and
//! binary op), broadcasting operands of lower rank or with size-1 axes, iota, where and
//! casts; last-axis reductions feeding broadcasting consumers (RMSNorm, softmax, layer
//! norm, log-softmax, softcaps, chains of several reductions); reductions over other
//! axes; reshape, permute, slice, concat, shift, expand and gather; matmuls with
//! transposed weights (read in place), batched and broadcast batch axes; casts to and from
//! bf16 and bf16 values moved around; attention in
//! every variant (mode, window, rule, softcap, GQA/MQA, key masks) and cross-entropy.
//! Shapes mix sizes that are not multiples of the vector width with symbolic dims bound
//! at run time: every graph is compiled once and run on two or three input sets of
//! different sizes (sometimes large enough for kernels to split rows across threads).
//! The contract (as `tests/cpu_backend.rs`): per output, max |cpu - ref| ≤ 1e-5 · max |ref|;
//! i64 and bool outputs exactly; NaN and infinities at the same positions.
//!
//! The generator evaluates every node on the reference interpreter as it adds it, so it
//! knows actual values: domains are kept safe (no log of a negative, no exp overflow)
//! except in "wild" graphs, whose inputs hold ±0, ±inf and NaN and which keep only values
//! the backend computes bit for bit. Each value carries an estimate of how far the backend
//! may legitimately differ: f32 sums, GEMMs and attention round differently from the
//! interpreter's f64 accumulation, and loop kernels take exp, log, sin, cos, pow and tanh
//! from libmvec, a few ulp off libm; the rest (arithmetic, sqrt, comparisons, casts,
//! max, movement) is bit-exact. Comparisons, casts to integers and conditions only read
//! bit-exact values (a rounding difference there is a different branch, not a bug), and a
//! value becomes an output only when its estimated error is well inside the tolerance.
//! That choice is made before the backend runs; nothing is skipped after it.
//!
//! A disagreement is minimised (one output, one input set, nodes cut into inputs or
//! bypassed while it still fails) and printed with its graph. Knobs: `CPU_RANDOM_CASE=n`
//! runs and prints graph n alone, `CPU_RANDOM_CASES=n` runs n graphs, `CPU_RANDOM_SEED`
//! changes the seed, `CPU_RANDOM_AVOID_KNOWN=1` stops generating what triggers the open
//! bugs pinned down by the regression tests at the end (to look for others meanwhile).

use encdecc_compiler::decompose::decompose;
use encdecc_compiler::fuse::Step;
use encdecc_compiler::ir::infer::broadcast;
use encdecc_compiler::ir::parse::parse_graph;
use encdecc_compiler::ir::print::print_graph;
use encdecc_compiler::ir::verify::verify;
use encdecc_compiler::ir::*;
use encdecc_compiler::kernel::{KOp, Stride};
use encdecc_runtime::interp::{self, Bindings};
use encdecc_runtime::{cpu, Data, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;
/// The backend's contract: max |cpu - ref| ≤ TOL · max |ref| per output.
const TOL: f64 = 1e-5;
/// A value is an output only if its estimated error is within this share of the tolerance.
const MARGIN: f64 = 0.5;
/// The most elements a generated value may have (in its largest input set).
const CAP: usize = 40_000;
/// How many ulp (of the largest result) libmvec's exp, log, sin, cos and pow may be off
/// libm's, to be safe (glibc documents 1–4).
const LIBM_ULPS: f64 = 8.0;
const SEED: u64 = 0x00c0_ffee_5eed_2024;
const CASES: usize = 200;

// ---------------------------------------------------------------------------------------
// Random numbers.

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Comparing the backend with the reference.

/// Why `got` breaks the contract against `want`, if it does.
fn mismatch(got: &Tensor, want: &Tensor) -> Option<String> {
    if got.shape != want.shape {
        return Some(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    match (&got.data, &want.data) {
        (Data::F32(a), Data::F32(b)) => {
            let scale = b
                .iter()
                .filter(|x| x.is_finite())
                .fold(0f64, |m, &x| m.max((x as f64).abs()));
            let tol = TOL * scale;
            let mut worst: Option<(usize, f64)> = None;
            for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
                if !x.is_finite() || !y.is_finite() {
                    if !(x == y || x.is_nan() && y.is_nan()) {
                        return Some(format!(
                            "element {i} is {x:e}, expected {y:e} (of {} elements)",
                            a.len()
                        ));
                    }
                    continue;
                }
                let d = (x as f64 - y as f64).abs();
                if d > tol && worst.is_none_or(|(_, w)| d > w) {
                    worst = Some((i, d));
                }
            }
            worst.map(|(i, d)| {
                let bad = a
                    .iter()
                    .zip(b)
                    .filter(|(x, y)| (**x as f64 - **y as f64).abs() > tol)
                    .count();
                format!(
                    "element {i} is {:e}, expected {:e}: |diff| {d:e} > {tol:e} \
                     (1e-5 · max|ref| {scale:e}); {bad} of {} elements differ",
                    a[i],
                    b[i],
                    a.len()
                )
            })
        }
        (Data::I64(a), Data::I64(b)) => first_difference(a, b),
        (Data::Bool(a), Data::Bool(b)) => first_difference(a, b),
        // bf16 values are only made from exact ones (`k_cast`): bit for bit, any NaN alike.
        (Data::Bf16(a), Data::Bf16(b)) => {
            let bits = |v: &[half::bf16]| -> Vec<u16> {
                v.iter()
                    .map(|x| if x.is_nan() { u16::MAX } else { x.to_bits() })
                    .collect()
            };
            first_difference(&bits(a), &bits(b))
        }
        _ => Some(format!(
            "dtype {}, expected {}",
            got.dtype_name(),
            want.dtype_name()
        )),
    }
}

fn first_difference<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<String> {
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let bad = a.iter().zip(b).filter(|(x, y)| x != y).count();
    Some(format!(
        "element {i} is {:?}, expected {:?}; {bad} of {} elements differ",
        a[i],
        b[i],
        a.len()
    ))
}

enum Outcome {
    Agree,
    /// The reference itself failed: a generator bug, not a backend bug.
    Reference(String),
    /// The backend failed, panicked or disagreed.
    Backend(String),
}

fn shapes_of(inputs: &HashMap<String, Tensor>) -> String {
    let mut v: Vec<String> = inputs
        .iter()
        .map(|(k, t)| format!("{k}: {:?}", t.shape))
        .collect();
    v.sort();
    v.join(", ")
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs `g` on the reference interpreter and on the CPU backend for every input set.
fn check(g: &Graph, params: &HashMap<String, Tensor>, sets: &[HashMap<String, Tensor>]) -> Outcome {
    let mut d = g.clone();
    if let Err(e) = decompose(&mut d) {
        return Outcome::Reference(e);
    }
    let mut wants = vec![];
    for inputs in sets {
        match interp::run(&d, params, inputs) {
            Ok(w) => wants.push(w),
            Err(e) => return Outcome::Reference(e),
        }
    }
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let model = cpu::prepare(g).map_err(|e| format!("cpu::prepare failed: {e}"))?;
        for (si, (inputs, want)) in sets.iter().zip(&wants).enumerate() {
            let got = model
                .run(params, inputs)
                .map_err(|e| format!("input set {si}: cpu run failed: {e}"))?;
            for (name, _) in &g.outputs {
                let Some(c) = got.get(name) else {
                    return Err(format!("input set {si}: no output `{name}`"));
                };
                if let Some(m) = mismatch(c, &want[name]) {
                    return Err(format!(
                        "input set {si} ({}): output `{name}`: {m}",
                        shapes_of(inputs)
                    ));
                }
            }
        }
        Ok(())
    }));
    match res {
        Ok(Ok(())) => Outcome::Agree,
        Ok(Err(e)) => Outcome::Backend(e),
        Err(p) => Outcome::Backend(format!("panicked: {}", panic_text(p))),
    }
}

/// Shrinks a failing graph: one failing output, one failing input set, then nodes cut
/// into inputs (holding their reference values) or bypassed while it still fails.
fn minimize(
    g: &Graph,
    params: &HashMap<String, Tensor>,
    sets: &[HashMap<String, Tensor>],
) -> (
    Graph,
    HashMap<String, Tensor>,
    HashMap<String, Tensor>,
    String,
) {
    let fails = |g: &Graph, p: &HashMap<String, Tensor>, s: &[HashMap<String, Tensor>]| match check(
        g, p, s,
    ) {
        Outcome::Backend(e) => Some(e),
        _ => None,
    };
    let mut g = g.clone();
    let mut params = params.clone();
    let mut inputs = sets[0].clone();
    let mut why = fails(&g, &params, sets).unwrap_or_default();
    'outputs: for (name, n) in g.outputs.clone() {
        let mut one = g.clone();
        one.outputs = vec![(name, n)];
        one.remove_dead();
        for s in sets {
            if let Some(e) = fails(&one, &params, std::slice::from_ref(s)) {
                g = one;
                inputs = s.clone();
                why = e;
                break 'outputs;
            }
        }
    }
    let mut cut = 0;
    let mut tries = 0;
    loop {
        let mut improved = false;
        let order: Vec<NodeId> = g.topo_order().into_iter().rev().collect();
        for n in order {
            if tries > 400 {
                break;
            }
            let node = g.node(n).clone();
            if matches!(
                node.op,
                Op::Input { .. } | Op::Param { .. } | Op::Const { .. }
            ) {
                continue;
            }
            let is_out = g.outputs.iter().any(|(_, o)| *o == n);
            // Bypass: the node replaced by an operand of the same type.
            let mut candidates: Vec<(Graph, HashMap<String, Tensor>)> = vec![];
            for o in g.operands(n) {
                if g.node(o).ty == node.ty {
                    let mut h = g.clone();
                    h.replace_uses(n, o);
                    candidates.push((h, inputs.clone()));
                }
            }
            // Cut: the node replaced by an input holding its reference value.
            if !is_out {
                let mut probe = g.clone();
                probe.outputs = vec![("v".into(), n)];
                if decompose(&mut probe).is_ok() {
                    if let Ok(mut v) = interp::run(&probe, &params, &inputs) {
                        let name = format!("cut{cut}");
                        let mut h = g.clone();
                        let new = h
                            .add(Op::Input { name: name.clone() }, &[], Some(node.ty.clone()))
                            .expect("an input of the node's type");
                        h.replace_uses(n, new);
                        let mut ins = inputs.clone();
                        ins.insert(name, v.remove("v").expect("probed"));
                        candidates.push((h, ins));
                    }
                }
            }
            for (mut h, mut ins) in candidates {
                tries += 1;
                h.remove_dead();
                // Drop interface nodes nothing uses any more.
                for m in h.dag.node_indices().collect::<Vec<_>>() {
                    if h.users(m).is_empty() && !h.outputs.iter().any(|(_, o)| *o == m) {
                        match &h.node(m).op {
                            Op::Input { name } => {
                                ins.remove(name);
                                h.dag.remove_node(m);
                            }
                            Op::Param { .. } => {
                                h.dag.remove_node(m);
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(e) = fails(&h, &params, std::slice::from_ref(&ins)) {
                    g = h;
                    inputs = ins;
                    why = e;
                    cut += 1;
                    improved = true;
                    break;
                }
            }
            if improved {
                break;
            }
        }
        if !improved || tries > 400 {
            break;
        }
    }
    // Inputs and parameters nothing reads, one at a time (an input may bind a symbol).
    for m in g.dag.node_indices().collect::<Vec<_>>() {
        if !g.users(m).is_empty() || g.outputs.iter().any(|(_, o)| *o == m) {
            continue;
        }
        let mut h = g.clone();
        let mut ins = inputs.clone();
        match &h.node(m).op {
            Op::Input { name } => {
                ins.remove(name);
            }
            Op::Param { .. } => {}
            _ => continue,
        }
        h.dag.remove_node(m);
        if let Some(e) = fails(&h, &params, std::slice::from_ref(&ins)) {
            g = h;
            inputs = ins;
            why = e;
        }
    }
    let live: HashSet<String> = g
        .dag
        .node_indices()
        .filter_map(|n| match &g.node(n).op {
            Op::Param { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    params.retain(|k, _| live.contains(k));
    (g, params, inputs, why)
}

// ---------------------------------------------------------------------------------------
// What the generator knows about each value.

#[derive(Clone, Debug)]
struct Info {
    /// Estimated absolute error of the backend's value; 0 when it is bit-exact.
    err: f64,
    /// The sign of zeros may differ (max, maxnum, f32 sums of ±0).
    zs: bool,
    /// Largest finite |x| over every input set.
    amax: f64,
    /// Smallest over the input sets of each set's largest finite |x| (what the tolerance
    /// of that run scales with).
    scale_min: f64,
    /// Smallest |x| over finite elements.
    amin: f64,
    lo: f64,
    hi: f64,
    finite: bool,
    has_zero: bool,
    /// Every finite f32 element is a multiple of 2^-quant.
    quant: u32,
}

/// Bits after the binary point in `x` (0 for integers).
fn frac_bits(x: f32) -> u32 {
    if x == 0.0 || !x.is_finite() {
        return 0;
    }
    let b = x.to_bits();
    let e = ((b >> 23) & 0xff) as i32;
    let m = (b & 0x7f_ffff) | if e > 0 { 0x80_0000 } else { 0 };
    let lsb = e.max(1) - 150 + m.trailing_zeros() as i32;
    (-lsb).max(0) as u32
}

fn stats(ts: &[Tensor]) -> Info {
    let mut i = Info {
        err: 0.0,
        zs: false,
        amax: 0.0,
        scale_min: f64::INFINITY,
        amin: f64::INFINITY,
        lo: f64::INFINITY,
        hi: f64::NEG_INFINITY,
        finite: true,
        has_zero: false,
        quant: 0,
    };
    for t in ts {
        let mut m = 0f64;
        let mut see = |x: f64, i: &mut Info| {
            let a = x.abs();
            m = m.max(a);
            i.amin = i.amin.min(a);
            i.lo = i.lo.min(x);
            i.hi = i.hi.max(x);
            i.has_zero |= x == 0.0;
        };
        match &t.data {
            Data::F32(v) => {
                for &x in v {
                    if !x.is_finite() {
                        i.finite = false;
                        continue;
                    }
                    i.quant = i.quant.max(frac_bits(x));
                    see(x as f64, &mut i);
                }
            }
            Data::I64(v) => v.iter().for_each(|&x| see(x as f64, &mut i)),
            Data::Bool(v) => v.iter().for_each(|&x| see(x as u8 as f64, &mut i)),
            // (The generator makes no bf16 values: precision lowering has its own tests.)
            Data::Bf16(v) => v.iter().for_each(|&x| see(x.to_f64(), &mut i)),
            Data::I8(v) => v.iter().for_each(|&x| see(x as f64, &mut i)),
        }
        i.amax = i.amax.max(m);
        i.scale_min = i.scale_min.min(m);
    }
    i
}

/// Per row of the last axis: the largest Σ|x| and the largest Σ_k |x_0 + … + x_k| (the
/// first-order bound on the rounding of a sequential f32 sum is u times that).
fn sum_bounds(t: &Tensor) -> (f64, f64) {
    let Data::F32(v) = &t.data else {
        return (0.0, 0.0);
    };
    let n = *t.shape.last().unwrap_or(&1);
    let (mut abs, mut partial) = (0f64, 0f64);
    for row in v.chunks(n.max(1)) {
        let (mut s, mut a, mut p) = (0f64, 0f64, 0f64);
        for &x in row {
            if !x.is_finite() {
                continue;
            }
            s += x as f64;
            a += (x as f64).abs();
            p += s.abs();
        }
        abs = abs.max(a);
        partial = partial.max(p);
    }
    (abs, partial)
}

fn abs_tensor(t: &Tensor) -> Tensor {
    match &t.data {
        Data::F32(v) => Tensor::f32(t.shape.clone(), v.iter().map(|x| x.abs()).collect()),
        _ => t.clone(),
    }
}

/// max over the result of |a| @ |b| (on the reference interpreter).
fn abs_matmul_max(a: &Tensor, b: &Tensor) -> f64 {
    let mut g = Graph::new("absmm");
    let ta = TensorType {
        dtype: DType::F32,
        shape: Shape::known(&a.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()),
    };
    let tb = TensorType {
        dtype: DType::F32,
        shape: Shape::known(&b.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()),
    };
    let x = g
        .add(Op::Input { name: "a".into() }, &[], Some(ta))
        .unwrap();
    let y = g
        .add(Op::Input { name: "b".into() }, &[], Some(tb))
        .unwrap();
    let m = g.add(Op::MatMul, &[x, y], None).unwrap();
    g.outputs.push(("m".into(), m));
    let ins = HashMap::from([("a".into(), abs_tensor(a)), ("b".into(), abs_tensor(b))]);
    let r = interp::run(&g, &HashMap::new(), &ins).unwrap();
    stats(&[r["m"].clone()]).amax
}

// ---------------------------------------------------------------------------------------
// The generator.

#[derive(Clone, Copy, Debug)]
enum Dist {
    /// f32 uniform in [-h, h].
    Uniform(f64),
    /// f32 multiples of 1/8 in [-h, h] (ties, exact sums).
    Quant(f64),
    /// f32 small integers and halves with ±0, ±inf and NaN.
    Special,
    /// i64 uniform in [lo, hi).
    Int(i64, i64),
    /// i64 class labels in [0, V), some replaced by `ignore`.
    Labels(i64, i64),
    /// bool, true with probability p.
    Bool(f64),
}

fn sample(rng: &mut Rng, dist: Dist, shape: Vec<usize>) -> Tensor {
    let n: usize = shape.iter().product();
    match dist {
        Dist::Uniform(h) => Tensor::f32(shape, (0..n).map(|_| rng.range(-h, h) as f32).collect()),
        Dist::Quant(h) => Tensor::f32(
            shape,
            (0..n)
                .map(|_| (rng.range(-h, h) * 8.0).round() as f32 / 8.0)
                .collect(),
        ),
        Dist::Special => {
            let special = [
                0.0f32,
                -0.0,
                1.0,
                -1.0,
                0.5,
                -2.5,
                3.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                2.0,
                -4.0,
            ];
            Tensor::f32(shape, (0..n).map(|_| rng.pick(&special)).collect())
        }
        Dist::Int(lo, hi) => Tensor::i64(
            shape,
            (0..n)
                .map(|_| lo + rng.below((hi - lo).max(1) as usize) as i64)
                .collect(),
        ),
        Dist::Labels(v, ignore) => {
            let mut l: Vec<i64> = (0..n)
                .map(|_| {
                    if rng.chance(0.2) {
                        ignore
                    } else {
                        rng.below(v as usize) as i64
                    }
                })
                .collect();
            if let Some(first) = l.first_mut() {
                // At least one label counts (else the mean is 0/0).
                *first = (0..v).find(|&c| c != ignore).unwrap_or(0);
            }
            Tensor::i64(shape, l)
        }
        Dist::Bool(p) => Tensor::bool(shape, (0..n).map(|_| rng.chance(p)).collect()),
    }
}

fn scalar_type(dtype: DType) -> TensorType {
    TensorType {
        dtype,
        shape: Shape::scalar(),
    }
}

/// Sizes the generator likes: many are not multiples of a vector width.
const DIMS: [u64; 14] = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 65];

/// One kind of generation step; `None` when it found nothing to work on.
type Kind = fn(&mut Gen) -> Option<()>;

struct Gen {
    rng: Rng,
    g: Graph,
    /// Inputs hold ±0, ±inf and NaN; only bit-exact operations stay.
    wild: bool,
    binds: Vec<Bindings>,
    inputs: Vec<HashMap<String, Tensor>>,
    params: HashMap<String, Tensor>,
    /// Reference value of every node, per input set.
    vals: Vec<HashMap<NodeId, Tensor>>,
    info: HashMap<NodeId, Info>,
    /// Values operands are drawn from (no constants).
    pool: Vec<NodeId>,
    syms: Vec<&'static str>,
    /// The model width: most shapes end in it, so that values meet in binary ops.
    width: u64,
    leaves: usize,
    /// Symbols some input binds.
    bound: HashSet<String>,
    /// Every finite value may be an output, whatever its estimated error (to check the
    /// estimates themselves).
    all_outputs: bool,
}

/// A generated case: the graph, its parameters and its input sets.
struct Case {
    graph: Graph,
    params: HashMap<String, Tensor>,
    sets: Vec<HashMap<String, Tensor>>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut rng = Rng::new(seed);
        let wild = rng.chance(0.12);
        let mut syms = vec![];
        if rng.chance(0.8) {
            syms.push("B");
        }
        if rng.chance(0.8) {
            syms.push("T");
        }
        if rng.chance(0.3) {
            syms.push("S");
        }
        let nsets = if syms.is_empty() { 1 } else { 2 + rng.below(2) };
        let mut binds = vec![];
        for s in 0..nsets {
            let mut b = Bindings::new();
            // The last set is sometimes large enough for the kernels to split rows
            // across threads.
            let big = s == nsets - 1 && rng.chance(0.15);
            for &sym in &syms {
                let v = match (sym, big) {
                    ("B", false) => rng.pick(&[1, 2, 3]),
                    ("B", true) => 3,
                    ("T", false) => rng.pick(&[1, 2, 3, 5, 7, 9, 17]),
                    ("T", true) => 129,
                    (_, false) => rng.pick(&[1, 3, 4, 6, 11]),
                    (_, true) => 67,
                };
                b.insert(sym.to_string(), v);
            }
            binds.push(b);
        }
        let width = rng.pick(&[1, 3, 4, 7, 8, 16, 17, 33, 65]);
        Gen {
            rng,
            g: Graph::new("random"),
            wild,
            inputs: vec![HashMap::new(); nsets],
            vals: vec![HashMap::new(); nsets],
            binds,
            params: HashMap::new(),
            info: HashMap::new(),
            pool: vec![],
            syms,
            width,
            leaves: 0,
            bound: HashSet::new(),
            all_outputs: false,
        }
    }

    fn ty(&self, n: NodeId) -> &TensorType {
        &self.g.node(n).ty
    }
    fn shape(&self, n: NodeId) -> Shape {
        self.ty(n).shape.clone()
    }
    fn dt(&self, n: NodeId) -> DType {
        self.ty(n).dtype
    }
    fn rank(&self, n: NodeId) -> usize {
        self.ty(n).shape.rank()
    }
    fn exact(&self, n: NodeId) -> bool {
        self.info[&n].err == 0.0
    }
    fn numel(&self, s: &Shape) -> usize {
        self.binds
            .iter()
            .map(|b| interp::resolve(s, b).unwrap().iter().product::<usize>())
            .max()
            .unwrap_or(0)
    }

    // --- adding nodes -------------------------------------------------------------------

    fn eval_composite(&self, op: &Op, ops: &[NodeId], set: usize) -> Result<Tensor, String> {
        let mut m = Graph::new("composite");
        let mut ins = HashMap::new();
        let mut ids = vec![];
        for (i, &o) in ops.iter().enumerate() {
            let name = format!("a{i}");
            ins.insert(name.clone(), self.vals[set][&o].clone());
            ids.push(m.add(Op::Input { name }, &[], Some(self.ty(o).clone()))?);
        }
        let r = m.add(op.clone(), &ids, None)?;
        m.outputs.push(("r".into(), r));
        decompose(&mut m)?;
        Ok(interp::run(&m, &HashMap::new(), &ins)?
            .remove("r")
            .expect("output"))
    }

    /// Adds a node, evaluates it on every input set and estimates its error; rejects it
    /// (None) when its values leave the safe domain or its error is unbounded.
    fn add_node(
        &mut self,
        op: Op,
        ops: &[NodeId],
        ty: Option<TensorType>,
        pool: bool,
    ) -> Option<NodeId> {
        let id = self.g.add(op.clone(), ops, ty).ok()?;
        // Symbols are bound by inputs: only an input may introduce one.
        let syms: Vec<String> = self
            .ty(id)
            .shape
            .0
            .iter()
            .filter_map(|d| match d {
                Dim::Sym(s) => Some(s.clone()),
                Dim::Known(_) => None,
            })
            .collect();
        if matches!(op, Op::Input { .. }) {
            self.bound.extend(syms);
        } else if syms.iter().any(|s| !self.bound.contains(s)) {
            self.g.dag.remove_node(id);
            return None;
        }
        let mut outs = vec![];
        for s in 0..self.binds.len() {
            let r = if op.is_composite() {
                self.eval_composite(&op, ops, s)
            } else {
                let node = self.g.node(id).clone();
                let args: Vec<&Tensor> = ops.iter().map(|o| &self.vals[s][o]).collect();
                interp::eval_node(
                    &self.g,
                    id,
                    &node,
                    &args,
                    &self.params,
                    &self.inputs[s],
                    &self.binds[s],
                )
            };
            match r {
                Ok(t) if t.numel() > 0 && t.numel() <= CAP => outs.push(t),
                _ => {
                    self.g.dag.remove_node(id);
                    return None;
                }
            }
        }
        let mut info = stats(&outs);
        let (err, zs) = self.estimate(id, &op, ops, &info);
        info.err = err;
        info.zs = zs;
        let ok = err.is_finite() && (info.finite || self.wild && err == 0.0);
        if !ok {
            self.g.dag.remove_node(id);
            return None;
        }
        for (s, t) in outs.into_iter().enumerate() {
            self.vals[s].insert(id, t);
        }
        self.info.insert(id, info);
        if pool {
            self.pool.push(id);
        }
        Some(id)
    }

    fn add(&mut self, op: Op, ops: &[NodeId]) -> Option<NodeId> {
        self.add_node(op, ops, None, true)
    }
    fn add_typed(&mut self, op: Op, ops: &[NodeId], ty: TensorType) -> Option<NodeId> {
        self.add_node(op, ops, Some(ty), true)
    }
    fn un(&mut self, u: UnaryOp, a: NodeId) -> Option<NodeId> {
        self.add(Op::Unary(u), &[a])
    }
    fn bin(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> Option<NodeId> {
        self.add(Op::Binary(b), &[x, y])
    }
    fn konst(&mut self, v: f64, dtype: DType) -> NodeId {
        self.add_node(
            Op::Const { value: F64(v) },
            &[],
            Some(scalar_type(dtype)),
            false,
        )
        .expect("a constant")
    }
    fn kpick(&mut self, v: &[f64], dtype: DType) -> NodeId {
        let x = self.rng.pick(v);
        self.konst(x, dtype)
    }
    fn reduce(&mut self, op: ReduceOp, x: NodeId, axis: usize) -> Option<NodeId> {
        self.add(Op::Reduce { op, axis }, &[x])
    }
    fn reduce_last(&mut self, op: ReduceOp, x: NodeId) -> Option<NodeId> {
        let r = self.rank(x);
        self.reduce(op, x, r.checked_sub(1)?)
    }
    fn cast(&mut self, x: NodeId, to: DType) -> Option<NodeId> {
        let shape = self.shape(x);
        self.add_typed(Op::Cast, &[x], TensorType { dtype: to, shape })
    }
    fn reshape(&mut self, x: NodeId, dims: Vec<Dim>) -> Option<NodeId> {
        let dtype = self.dt(x);
        self.add_typed(
            Op::Reshape,
            &[x],
            TensorType {
                dtype,
                shape: Shape(dims),
            },
        )
    }
    fn permute(&mut self, x: NodeId, perm: Vec<usize>) -> Option<NodeId> {
        self.add(Op::Permute { perm }, &[x])
    }
    fn swap_last(&mut self, x: NodeId) -> Option<NodeId> {
        let r = self.rank(x);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(x, perm)
    }

    fn default_dist(&mut self, dtype: DType) -> Dist {
        match dtype {
            DType::F32 if self.wild => Dist::Special,
            DType::F32 => {
                if self.rng.chance(0.35) {
                    Dist::Quant(3.0)
                } else {
                    Dist::Uniform(2.0)
                }
            }
            DType::I64 => Dist::Int(-4, 6),
            DType::Bool => Dist::Bool(self.rng.pick(&[0.5, 0.8])),
            DType::Bf16 | DType::I8 => unreachable!("no bf16 or i8 inputs are generated"),
        }
    }

    /// A new input (or a parameter, when every dim is known and it is f32).
    fn leaf(&mut self, dtype: DType, shape: Shape, dist: Option<Dist>) -> Option<NodeId> {
        let dist = dist.unwrap_or_else(|| self.default_dist(dtype));
        let all_known = shape.0.iter().all(|d| d.known().is_some());
        let param = all_known && dtype == DType::F32 && self.rng.chance(0.35);
        if self.numel(&shape) > CAP || self.numel(&shape) == 0 {
            return None;
        }
        self.leaves += 1;
        let name = format!("{}{}", if param { "w" } else { "x" }, self.leaves);
        let ty = TensorType { dtype, shape };
        if param {
            let dims = interp::resolve(&ty.shape, &self.binds[0]).unwrap();
            let t = sample(&mut self.rng, dist, dims);
            self.params.insert(name.clone(), t);
            self.add_typed(
                Op::Param {
                    path: name.clone(),
                    ckpt: name,
                },
                &[],
                ty,
            )
        } else {
            for s in 0..self.binds.len() {
                let dims = interp::resolve(&ty.shape, &self.binds[s]).unwrap();
                let t = sample(&mut self.rng, dist, dims);
                self.inputs[s].insert(name.clone(), t);
            }
            self.add_typed(Op::Input { name }, &[], ty)
        }
    }

    /// A weight `[rows, cols]` scaled for a fan-in of `fan`.
    fn weight(&mut self, rows: u64, cols: u64, fan: u64) -> Option<NodeId> {
        let h = 1.5 / (fan.max(1) as f64).sqrt();
        let dist = if self.wild {
            Dist::Special
        } else {
            Dist::Uniform(h)
        };
        let shape = Shape::known(&[rows, cols]);
        self.leaves += 1;
        let name = format!("w{}", self.leaves);
        let t = sample(&mut self.rng, dist, vec![rows as usize, cols as usize]);
        self.params.insert(name.clone(), t);
        self.add_typed(
            Op::Param {
                path: name.clone(),
                ckpt: name,
            },
            &[],
            TensorType {
                dtype: DType::F32,
                shape,
            },
        )
    }

    // --- shapes -------------------------------------------------------------------------

    fn sym_dim(&mut self) -> Option<Dim> {
        if self.syms.is_empty() {
            return None;
        }
        Some(Dim::Sym(self.rng.pick(&self.syms).to_string()))
    }
    fn rand_known(&mut self) -> u64 {
        if self.rng.chance(0.4) {
            self.width
        } else {
            self.rng.pick(&DIMS)
        }
    }
    fn rand_dim(&mut self) -> Dim {
        if self.rng.chance(0.3) {
            if let Some(d) = self.sym_dim() {
                return d;
            }
        }
        Dim::Known(self.rand_known())
    }
    fn batch_dim(&mut self) -> Dim {
        if self.syms.contains(&"B") && self.rng.chance(0.8) {
            Dim::Sym("B".into())
        } else {
            Dim::Known(self.rng.pick(&[1, 2, 3]))
        }
    }
    fn seq_dim(&mut self, sym: &str) -> Dim {
        if self.syms.contains(&sym) && self.rng.chance(0.8) {
            Dim::Sym(sym.into())
        } else {
            Dim::Known(self.rng.pick(&[1, 3, 5, 7, 8, 17]))
        }
    }
    fn rand_shape(&mut self) -> Shape {
        let rank = self.rng.pick(&[1, 2, 2, 3, 3, 3, 4]);
        let mut dims: Vec<Dim> = (0..rank - 1).map(|_| self.rand_dim()).collect();
        dims.push(if self.rng.chance(0.6) {
            Dim::Known(self.width)
        } else {
            self.rand_dim()
        });
        Shape(dims)
    }
    /// A shape that broadcasts against `s` into `s`: leading axes dropped, some axes 1.
    fn partner_shape(&mut self, s: &Shape) -> Shape {
        let drop = if self.rng.chance(0.4) {
            self.rng.below(s.rank() + 1)
        } else {
            0
        };
        let p = if self.rng.chance(0.5) { 0.0 } else { 0.35 };
        Shape(
            s.0[drop..]
                .iter()
                .map(|d| {
                    if self.rng.chance(p) {
                        Dim::Known(1)
                    } else {
                        d.clone()
                    }
                })
                .collect(),
        )
    }

    // --- picking operands ---------------------------------------------------------------

    fn pick_where(&mut self, f: impl Fn(&Gen, NodeId) -> bool) -> Option<NodeId> {
        let c: Vec<NodeId> = self.pool.iter().copied().filter(|&n| f(self, n)).collect();
        if c.is_empty() {
            return None;
        }
        // Recent values more often, so that chains grow.
        if self.rng.chance(0.5) {
            let k = self.rng.below(c.len().min(4));
            return Some(c[c.len() - 1 - k]);
        }
        Some(self.rng.pick(&c))
    }
    fn pick_f32(&mut self, min_rank: usize) -> Option<NodeId> {
        self.pick_where(|g, n| g.dt(n) == DType::F32 && g.rank(n) >= min_rank)
    }

    /// A value of `dtype` whose shape broadcasts against `s` (from the pool, a new leaf or
    /// a scalar constant).
    fn partner(&mut self, dtype: DType, s: &Shape) -> Option<NodeId> {
        match self.rng.below(6) {
            0 => Some(self.rand_const(dtype)),
            1 | 2 => {
                let s = s.clone();
                let found = self.pick_where(|g, n| {
                    g.dt(n) == dtype && broadcast(&g.ty(n).shape, &s).is_ok_and(|b| b == s)
                });
                match found {
                    Some(n) => Some(n),
                    None => {
                        let p = self.partner_shape(&s);
                        self.leaf(dtype, p, None)
                    }
                }
            }
            _ => {
                let p = self.partner_shape(s);
                self.leaf(dtype, p, None)
            }
        }
    }

    fn rand_const(&mut self, dtype: DType) -> NodeId {
        let v = match dtype {
            DType::F32 if self.wild => self.rng.pick(&[
                0.0,
                -0.0,
                1.0,
                -1.0,
                2.0,
                0.5,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
            ]),
            DType::F32 => self
                .rng
                .pick(&[0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -0.75, 3.0, 1e-3, 0.1]),
            DType::I64 => {
                self.rng
                    .pick(&[0.0, 1.0, -1.0, 2.0, 3.0, -7.0, 5.0, 1e18, i64::MIN as f64])
            }
            DType::Bool => self.rng.pick(&[0.0, 1.0]),
            DType::Bf16 | DType::I8 => unreachable!("no bf16 or i8 constants are generated"),
        };
        self.konst(v, dtype)
    }

    /// `x` made safe for log, sqrt, rsqrt and division: positive, away from 0.
    fn positive(&mut self, x: NodeId) -> Option<NodeId> {
        let i = &self.info[&x];
        if i.lo > 0.05 && i.finite {
            return Some(x);
        }
        match self.rng.below(3) {
            0 if i.hi < 10.0 => self.un(UnaryOp::Exp, x),
            1 => {
                let sq = self.bin(BinaryOp::Mul, x, x)?;
                let c = self.kpick(&[0.25, 1.0], DType::F32);
                self.bin(BinaryOp::Add, sq, c)
            }
            _ => {
                let a = self.un(UnaryOp::Abs, x)?;
                let c = self.kpick(&[0.125, 0.5, 1.0], DType::F32);
                self.bin(BinaryOp::Add, a, c)
            }
        }
    }

    /// An exact bool value broadcasting against `s`.
    fn condition(&mut self, s: &Shape) -> Option<NodeId> {
        let s = s.clone();
        if self.rng.chance(0.5) {
            if let Some(c) = self.pick_where(|g, n| {
                g.dt(n) == DType::Bool && broadcast(&g.ty(n).shape, &s).is_ok_and(|b| b == s)
            }) {
                return Some(c);
            }
        }
        if self.rng.chance(0.5) {
            // A comparison of an exact value with a constant.
            let x = self.pick_where(|g, n| {
                g.dt(n) != DType::Bool
                    && g.exact(n)
                    && broadcast(&g.ty(n).shape, &s).is_ok_and(|b| b == s)
            });
            if let Some(x) = x {
                let c = self.rand_const(self.dt(x));
                let op = self.rng.pick(&[BinaryOp::Lt, BinaryOp::Le, BinaryOp::Ne]);
                return self.bin(op, x, c);
            }
        }
        let p = self.partner_shape(&s);
        self.leaf(DType::Bool, p, None)
    }

    // --- the kinds of steps ---------------------------------------------------------------

    fn step(&mut self) -> Option<()> {
        let kinds: &[(u32, Kind)] = &[
            (10, Gen::k_unary),
            (16, Gen::k_binary),
            (5, Gen::k_where),
            (4, Gen::k_cast),
            (4, Gen::k_iota),
            (2, Gen::k_mask),
            (8, Gen::k_reduce_last),
            (8, Gen::k_norm),
            (4, Gen::k_reduce_other),
            (4, Gen::k_reshape),
            (4, Gen::k_permute),
            (3, Gen::k_slice),
            (3, Gen::k_concat),
            (3, Gen::k_shift),
            (3, Gen::k_expand),
            (3, Gen::k_gather),
            (8, Gen::k_matmul),
            (5, Gen::k_attention),
            (2, Gen::k_cross_entropy),
        ];
        let total: u32 = kinds.iter().map(|k| k.0).sum();
        let mut r = self.rng.below(total as usize) as u32;
        for (w, f) in kinds {
            if r < *w {
                return f(self);
            }
            r -= w;
        }
        None
    }

    fn k_unary(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) > 0)?;
        match self.dt(x) {
            DType::Bool => self.un(UnaryOp::Not, x).map(|_| ()),
            DType::Bf16 | DType::I8 => None,
            DType::I64 => {
                let u = self.rng.pick(&[UnaryOp::Neg, UnaryOp::Abs]);
                self.un(u, x).map(|_| ())
            }
            DType::F32 => {
                use UnaryOp::*;
                let u = self
                    .rng
                    .pick(&[Neg, Exp, Log, Tanh, Sqrt, Rsqrt, Sin, Cos, Abs]);
                let i = self.info[&x].clone();
                let x = match u {
                    Log | Sqrt | Rsqrt if !self.wild => self.positive(x)?,
                    Exp if !self.wild && i.hi > 8.0 => {
                        let c = self.konst(0.125, DType::F32);
                        self.bin(BinaryOp::Mul, x, c)?
                    }
                    _ => x,
                };
                self.un(u, x).map(|_| ())
            }
        }
    }

    fn k_binary(&mut self) -> Option<()> {
        use BinaryOp::*;
        let a = self.pick_where(|g, n| g.rank(n) > 0)?;
        let dtype = self.dt(a);
        let s = self.shape(a);
        let op = match dtype {
            DType::Bool => self.rng.pick(&[And, Or, Eq, Ne]),
            DType::I64 => self
                .rng
                .pick(&[Add, Sub, Mul, Div, Pow, Max, Min, Eq, Ne, Lt, Le]),
            DType::F32 if self.exact(a) => self
                .rng
                .pick(&[Add, Sub, Mul, Div, Pow, Max, Min, Add, Mul, Eq, Ne, Lt, Le]),
            DType::F32 => self.rng.pick(&[Add, Sub, Mul, Div, Pow, Max, Min]),
            // bf16 is storage: no arithmetic on it.
            DType::Bf16 | DType::I8 => return None,
        };
        let mut b = if self.rng.chance(0.1) {
            a
        } else {
            self.partner(dtype, &s)?
        };
        if op.is_comparison() && !self.exact(b) {
            return None;
        }
        let mut a = a;
        if self.rng.chance(0.3) {
            std::mem::swap(&mut a, &mut b);
        }
        if dtype == DType::F32 && !self.wild {
            match op {
                Div => b = self.positive(b)?,
                Pow => {
                    a = self.positive(a)?;
                    if self.info[&b].amax > 3.0 || self.rng.chance(0.5) {
                        b = self.kpick(&[2.0, 0.5, -1.0, 3.0, -0.5], dtype);
                    }
                }
                _ => {}
            }
        }
        if dtype == DType::I64 && op == Pow && self.rng.chance(0.7) {
            b = self.kpick(&[0.0, 1.0, 2.0, 3.0], dtype);
        }
        self.bin(op, a, b).map(|_| ())
    }

    fn k_where(&mut self) -> Option<()> {
        let a = self.pick_where(|g, n| g.rank(n) > 0)?;
        let dtype = self.dt(a);
        let s = self.shape(a);
        let b = self.partner(dtype, &s)?;
        let full = broadcast(&s, &self.shape(b)).ok()?;
        let c = self.condition(&full)?;
        let (x, y) = if self.rng.chance(0.5) { (a, b) } else { (b, a) };
        self.add(Op::Where, &[c, x, y]).map(|_| ())
    }

    fn k_cast(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) > 0 && g.exact(n))?;
        let to = match self.dt(x) {
            // Rounding an exact value to bf16 is exact (the same bits on both backends);
            // bf16 values then go through movement, `where`, and casts back.
            DType::F32 => self.rng.pick(&[DType::I64, DType::Bool, DType::Bf16]),
            DType::I64 => self.rng.pick(&[DType::F32, DType::Bool]),
            DType::Bool => self.rng.pick(&[DType::F32, DType::I64]),
            DType::Bf16 => self
                .rng
                .pick(&[DType::F32, DType::F32, DType::I64, DType::Bool]),
            // (No i8 values are generated: int8 lowering has its own tests.)
            DType::I8 => return None,
        };
        let c = self.cast(x, to)?;
        // Back into arithmetic with the source's neighbours now and then.
        if to == DType::F32 && self.rng.chance(0.5) {
            let s = self.shape(c);
            let p = self.partner(DType::F32, &s)?;
            self.bin(BinaryOp::Add, c, p)?;
        }
        Some(())
    }

    /// Iota in the shape of a value, its row shape `[..., 1]`, or a broadcasting shape,
    /// combined with that value.
    fn k_iota(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) > 0)?;
        let s = self.shape(x);
        let mut is = match self.rng.below(3) {
            0 => s.clone(),
            1 => self.partner_shape(&s),
            _ => {
                let mut r = s.clone();
                *r.0.last_mut()? = Dim::Known(1);
                r
            }
        };
        if is.rank() == 0 {
            is = s.clone();
        }
        let axis = self.rng.below(is.rank());
        if avoid_known_bugs() && axis + 1 == is.rank() && is.0[axis] == Dim::Known(1) {
            return None;
        }
        let dtype = self.dt(x);
        let ity = if dtype == DType::Bool {
            self.rng.pick(&[DType::I64, DType::Bool])
        } else {
            self.rng.pick(&[DType::I64, dtype, dtype])
        };
        let i = self.add_typed(
            Op::Iota { axis },
            &[],
            TensorType {
                dtype: ity,
                shape: is,
            },
        )?;
        let i = if ity != dtype {
            self.cast(i, dtype)?
        } else {
            i
        };
        let op = match dtype {
            DType::Bool => BinaryOp::Or,
            _ => self
                .rng
                .pick(&[BinaryOp::Add, BinaryOp::Mul, BinaryOp::Lt, BinaryOp::Sub]),
        };
        if op == BinaryOp::Lt && !self.exact(x) {
            return None;
        }
        let (a, b) = if self.rng.chance(0.5) { (x, i) } else { (i, x) };
        self.bin(op, a, b).map(|_| ())
    }

    /// Causal / banded masks from iotas, applied with where: the decomposition's pattern.
    fn k_mask(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.dt(n) == DType::F32 && g.rank(n) >= 2)?;
        let s = self.shape(x);
        let r = s.rank();
        let (t1, t2) = (s.0[r - 2].clone(), s.0[r - 1].clone());
        let i = self.add_typed(
            Op::Iota { axis: 0 },
            &[],
            TensorType {
                dtype: DType::I64,
                shape: Shape(vec![t1, Dim::Known(1)]),
            },
        )?;
        let j = self.add_typed(
            Op::Iota { axis: 1 },
            &[],
            TensorType {
                dtype: DType::I64,
                shape: Shape(vec![Dim::Known(1), t2]),
            },
        )?;
        let mut m = self.bin(BinaryOp::Le, j, i)?;
        if self.rng.chance(0.5) {
            let w = self.kpick(&[1.0, 2.0, 3.0], DType::I64);
            let d = self.bin(BinaryOp::Sub, i, j)?;
            let d = self.un(UnaryOp::Abs, d)?;
            let band = self.bin(BinaryOp::Lt, d, w)?;
            m = self.bin(BinaryOp::And, m, band)?;
        }
        let fill = self.kpick(&[f32::MIN as f64, -1e4, 0.0, -1.0], DType::F32);
        let y = self.add(Op::Where, &[m, x, fill])?;
        if self.rng.chance(0.6) {
            self.softmax(y)?;
        }
        Some(())
    }

    fn softmax(&mut self, x: NodeId) -> Option<NodeId> {
        let m = self.reduce_last(ReduceOp::Max, x)?;
        let d = self.bin(BinaryOp::Sub, x, m)?;
        let e = self.un(UnaryOp::Exp, d)?;
        let z = self.reduce_last(ReduceOp::Sum, e)?;
        self.bin(BinaryOp::Div, e, z)
    }

    fn k_reduce_last(&mut self) -> Option<()> {
        let x = if self.rng.chance(0.15) && !avoid_known_bugs() {
            self.pick_where(|g, n| g.dt(n) != DType::F32 && g.rank(n) > 0)?
        } else {
            self.pick_f32(1)?
        };
        let op = self.rng.pick(&[ReduceOp::Sum, ReduceOp::Max]);
        let r = self.reduce_last(op, x)?;
        if self.dt(x) != DType::F32 || self.rng.chance(0.2) {
            return Some(());
        }
        // A broadcasting consumer.
        match self.rng.below(4) {
            0 => self.bin(BinaryOp::Sub, x, r).map(|_| ()),
            1 => self.bin(BinaryOp::Mul, x, r).map(|_| ()),
            2 if !self.wild => {
                let p = self.positive(r)?;
                self.bin(BinaryOp::Div, x, p).map(|_| ())
            }
            _ => {
                let s = self.shape(r);
                let c = self.partner(DType::F32, &s)?;
                let y = self.bin(BinaryOp::Add, r, c)?;
                self.bin(BinaryOp::Max, x, y).map(|_| ())
            }
        }
    }

    /// Normalisations and softmaxes: several reductions and row values in one chain.
    fn k_norm(&mut self) -> Option<()> {
        if self.wild {
            return self.k_reduce_last();
        }
        let x = self.pick_f32(1)?;
        let s = self.shape(x);
        let last = s.0.last()?.clone();
        let inv_n = 1.0 / last.known().unwrap_or(8) as f64;
        let eps = self.rng.pick(&[1e-6, 1e-5, 1e-2]);
        match self.rng.below(6) {
            0 => {
                // RMSNorm with a (1 + w) scale.
                let sq = self.bin(BinaryOp::Mul, x, x)?;
                let ss = self.reduce_last(ReduceOp::Sum, sq)?;
                let c = self.konst(inv_n, DType::F32);
                let ms = self.bin(BinaryOp::Mul, ss, c)?;
                let e = self.konst(eps, DType::F32);
                let v = self.bin(BinaryOp::Add, ms, e)?;
                let r = self.un(UnaryOp::Rsqrt, v)?;
                let y = self.bin(BinaryOp::Mul, x, r)?;
                let w = self.leaf(DType::F32, Shape(vec![last]), Some(Dist::Uniform(0.5)))?;
                let one = self.konst(1.0, DType::F32);
                let w1 = self.bin(BinaryOp::Add, w, one)?;
                self.bin(BinaryOp::Mul, y, w1).map(|_| ())
            }
            1 => self.softmax(x).map(|_| ()),
            2 => {
                // Layer norm.
                let sum = self.reduce_last(ReduceOp::Sum, x)?;
                let c = self.konst(inv_n, DType::F32);
                let mu = self.bin(BinaryOp::Mul, sum, c)?;
                let d = self.bin(BinaryOp::Sub, x, mu)?;
                let d2 = self.bin(BinaryOp::Mul, d, d)?;
                let var = self.reduce_last(ReduceOp::Sum, d2)?;
                let var = self.bin(BinaryOp::Mul, var, c)?;
                let e = self.konst(eps.max(1e-2), DType::F32);
                let v = self.bin(BinaryOp::Add, var, e)?;
                let r = self.un(UnaryOp::Rsqrt, v)?;
                let y = self.bin(BinaryOp::Mul, d, r)?;
                let b = self.partner(DType::F32, &s)?;
                self.bin(BinaryOp::Add, y, b).map(|_| ())
            }
            3 => {
                // log-softmax.
                let m = self.reduce_last(ReduceOp::Max, x)?;
                let d = self.bin(BinaryOp::Sub, x, m)?;
                let e = self.un(UnaryOp::Exp, d)?;
                let z = self.reduce_last(ReduceOp::Sum, e)?;
                let l = self.un(UnaryOp::Log, z)?;
                self.bin(BinaryOp::Sub, d, l).map(|_| ())
            }
            4 => {
                // Softcap, then a masked softmax.
                let cap = self.kpick(&[0.5, 5.0, 30.0], DType::F32);
                let d = self.bin(BinaryOp::Div, x, cap)?;
                let t = self.un(UnaryOp::Tanh, d)?;
                let y = self.bin(BinaryOp::Mul, t, cap)?;
                let y = if self.rng.chance(0.5) {
                    let c = self.condition(&s)?;
                    let min = self.konst(f32::MIN as f64, DType::F32);
                    self.add(Op::Where, &[c, y, min])?
                } else {
                    y
                };
                self.softmax(y).map(|_| ())
            }
            _ => {
                // A chain of reductions, each reading the previous row values.
                let mut cur = x;
                let mut rows: Vec<NodeId> = vec![];
                for _ in 0..2 + self.rng.below(3) {
                    if let Some(&r) = rows.last() {
                        cur = match self.rng.below(4) {
                            0 => self.bin(BinaryOp::Sub, x, r)?,
                            1 => {
                                let p = self.positive(r)?;
                                self.bin(BinaryOp::Div, cur, p)?
                            }
                            2 => {
                                let d = self.bin(BinaryOp::Sub, cur, r)?;
                                let c = self.konst(0.25, DType::F32);
                                let d = self.bin(BinaryOp::Mul, d, c)?;
                                self.un(UnaryOp::Exp, d)?
                            }
                            _ => self.bin(BinaryOp::Mul, cur, r)?,
                        };
                    }
                    let op = self.rng.pick(&[ReduceOp::Sum, ReduceOp::Max]);
                    rows.push(self.reduce_last(op, cur)?);
                }
                let mut y = cur;
                for r in rows {
                    let op = self
                        .rng
                        .pick(&[BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul]);
                    y = self.bin(op, y, r)?;
                }
                Some(())
            }
        }
    }

    fn k_reduce_other(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) >= 2)?;
        let axis = self.rng.below(self.rank(x) - 1);
        let op = self.rng.pick(&[ReduceOp::Sum, ReduceOp::Max]);
        let r = self.reduce(op, x, axis)?;
        if self.dt(x) == DType::F32 && self.rng.chance(0.5) {
            self.bin(BinaryOp::Sub, x, r)?;
        }
        Some(())
    }

    fn k_reshape(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) > 0)?;
        let s = self.shape(x);
        let syms: Vec<Dim> =
            s.0.iter()
                .filter(|d| d.known().is_none())
                .cloned()
                .collect();
        let mut p: u64 = s.0.iter().filter_map(|d| d.known()).product();
        // Factor the known product into 1–3 dims, plus size-1 axes now and then.
        let mut dims: Vec<Dim> = vec![];
        for _ in 0..self.rng.below(3) {
            let divs: Vec<u64> = (1..=p).filter(|d| p.is_multiple_of(*d)).collect();
            let d = self.rng.pick(&divs);
            dims.push(Dim::Known(d));
            p /= d;
        }
        dims.push(Dim::Known(p));
        if self.rng.chance(0.3) {
            dims.push(Dim::Known(1));
        }
        dims.retain(|d| *d != Dim::Known(1) || self.rng.chance(0.5));
        // Symbols keep their order, at random places among the known dims.
        for sym in syms {
            let at = if self.rng.chance(0.6) {
                0
            } else {
                self.rng.below(dims.len() + 1)
            };
            dims.insert(at, sym);
        }
        if dims.is_empty() {
            dims.push(Dim::Known(1));
        }
        self.reshape(x, dims).map(|_| ())
    }

    fn k_permute(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) >= 2)?;
        let r = self.rank(x);
        let mut perm: Vec<usize> = (0..r).collect();
        match self.rng.below(3) {
            // Keeping the last axis (row copies).
            0 => self.rng.shuffle(&mut perm[..r - 1]),
            1 => perm.swap(r - 2, r - 1),
            _ => self.rng.shuffle(&mut perm),
        }
        self.permute(x, perm).map(|_| ())
    }

    fn k_slice(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.ty(n).shape.0.iter().any(|d| d.known() > Some(1)))?;
        let s = self.shape(x);
        let axes: Vec<usize> = (0..s.rank())
            .filter(|&a| s.0[a].known() > Some(1))
            .collect();
        let axis = self.rng.pick(&axes);
        let n = s.0[axis].known()?;
        let start = self.rng.below(n as usize) as u64;
        let end = start + 1 + self.rng.below((n - start) as usize) as u64;
        let y = self.add(Op::Slice { axis, start, end }, &[x])?;
        if self.rng.chance(0.3) {
            self.un(
                if self.dt(y) == DType::Bool {
                    UnaryOp::Not
                } else {
                    UnaryOp::Neg
                },
                y,
            )?;
        }
        Some(())
    }

    fn k_concat(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.ty(n).shape.0.iter().any(|d| d.known().is_some()))?;
        let s = self.shape(x);
        let axes: Vec<usize> = (0..s.rank())
            .filter(|&a| s.0[a].known().is_some())
            .collect();
        let axis = self.rng.pick(&axes);
        let mut parts = vec![x];
        for _ in 0..1 + self.rng.below(2) {
            let p = match self.rng.below(3) {
                0 => x,
                1 => {
                    let mut t = s.clone();
                    t.0[axis] = Dim::Known(self.rng.pick(&[1, 2, 3, 5, 8]));
                    let dt = self.dt(x);
                    self.leaf(dt, t, None)?
                }
                _ => {
                    let n = s.0[axis].known()?;
                    let start = self.rng.below(n as usize) as u64;
                    self.add(
                        Op::Slice {
                            axis,
                            start,
                            end: n,
                        },
                        &[x],
                    )?
                }
            };
            parts.push(p);
        }
        self.rng.shuffle(&mut parts);
        self.add(Op::Concat { axis }, &parts).map(|_| ())
    }

    fn k_shift(&mut self) -> Option<()> {
        let x = self.pick_where(|g, n| g.rank(n) > 0)?;
        let axis = self.rng.below(self.rank(x));
        let offset = self.rng.below(9) as i64 - 4;
        let fill = match self.dt(x) {
            DType::F32 if self.wild => self.rng.pick(&[0.0, -0.0, f64::NEG_INFINITY, 1.5]),
            DType::F32 => self.rng.pick(&[0.0, -1.5, 2.0]),
            DType::I64 => self.rng.pick(&[0.0, -1.0, 7.0]),
            DType::Bool => self.rng.pick(&[0.0, 1.0]),
            DType::Bf16 => self.rng.pick(&[0.0, -1.5, 2.0]),
            DType::I8 => self.rng.pick(&[0.0, -1.0, 7.0]),
        };
        self.add(
            Op::Shift {
                axis,
                offset,
                fill: F64(fill),
            },
            &[x],
        )
        .map(|_| ())
    }

    fn k_expand(&mut self) -> Option<()> {
        if self.rng.chance(0.25) {
            // A splat: a constant expanded to a value's shape, combined with it.
            let x = self.pick_where(|g, n| g.rank(n) > 0)?;
            let dtype = self.dt(x);
            let c = self.rand_const(dtype);
            let shape = if self.rng.chance(0.5) {
                self.shape(x)
            } else {
                self.partner_shape(&self.shape(x))
            };
            let e = self.add_typed(Op::Expand, &[c], TensorType { dtype, shape })?;
            let op = match dtype {
                DType::Bool => BinaryOp::And,
                _ => self
                    .rng
                    .pick(&[BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub]),
            };
            let (a, b) = if self.rng.chance(0.5) { (x, e) } else { (e, x) };
            return self.bin(op, a, b).map(|_| ());
        }
        let x = self.pick_where(|g, n| g.rank(n) > 0)?;
        let s = self.shape(x);
        let mut t: Vec<Dim> =
            s.0.iter()
                .map(|d| {
                    if *d == Dim::Known(1) && self.rng.chance(0.7) {
                        self.rand_dim()
                    } else {
                        d.clone()
                    }
                })
                .collect();
        for _ in 0..self.rng.below(2) {
            let d = self.rand_dim();
            t.insert(0, d);
        }
        if Shape(t.clone()) == s {
            t.insert(0, Dim::Known(2));
        }
        let dtype = self.dt(x);
        let e = self.add_typed(
            Op::Expand,
            &[x],
            TensorType {
                dtype,
                shape: Shape(t),
            },
        )?;
        if dtype == DType::F32 && self.rng.chance(0.6) {
            let s = self.shape(e);
            let p = self.partner(DType::F32, &s)?;
            self.bin(BinaryOp::Mul, e, p)?;
        }
        Some(())
    }

    fn k_gather(&mut self) -> Option<()> {
        let table = if self.rng.chance(0.4) {
            let rows = self.rng.pick(&[1, 5, 17, 33]);
            let w = self.width;
            self.weight(rows, w, 1)?
        } else {
            self.pick_where(|g, n| g.rank(n) >= 1 && g.ty(n).shape.0[0].known().is_some())?
        };
        let rows = self.shape(table).0[0].known()? as i64;
        let shape = if self.rng.chance(0.5) {
            let b = self.batch_dim();
            let t = self.seq_dim("T");
            Shape(vec![b, t])
        } else {
            let r = self.rng.below(3);
            Shape((0..r).map(|_| self.rand_dim()).collect())
        };
        let idx = match self.rng.below(3) {
            0 => {
                // Clamped from an exact integer value.
                let v = self.pick_where(|g, n| g.dt(n) == DType::I64 && g.exact(n))?;
                let lo = self.konst(0.0, DType::I64);
                let hi = self.konst((rows - 1) as f64, DType::I64);
                let v = self.bin(BinaryOp::Max, v, lo)?;
                self.bin(BinaryOp::Min, v, hi)?
            }
            1 => {
                // From an iota, wrapped.
                let r = shape.rank().max(1);
                let sh = if shape.rank() == 0 {
                    Shape(vec![Dim::Known(3)])
                } else {
                    shape.clone()
                };
                let axis = self.rng.below(r);
                let i = self.add_typed(
                    Op::Iota { axis },
                    &[],
                    TensorType {
                        dtype: DType::I64,
                        shape: sh,
                    },
                )?;
                let n = self.konst(rows as f64, DType::I64);
                let q = self.bin(BinaryOp::Div, i, n)?;
                let qn = self.bin(BinaryOp::Mul, q, n)?;
                self.bin(BinaryOp::Sub, i, qn)?
            }
            _ => self.leaf(DType::I64, shape, Some(Dist::Int(0, rows)))?,
        };
        let y = self.add(Op::Gather, &[table, idx])?;
        if self.dt(y) == DType::F32 && self.rng.chance(0.5) {
            let c = self.kpick(&[2.0, 0.5], DType::F32);
            self.bin(BinaryOp::Mul, y, c)?;
        }
        Some(())
    }

    /// Matmuls: weights plain, transposed (read in place) or batched with broadcast batch
    /// axes; activations times activations, transposed or not.
    fn k_matmul(&mut self) -> Option<()> {
        let a = match self.pick_f32(2) {
            Some(a) if self.rng.chance(0.8) => a,
            _ => {
                let s = self.rand_shape();
                let s = if s.rank() < 2 {
                    Shape(vec![self.seq_dim("T"), s.0[0].clone()])
                } else {
                    s
                };
                self.leaf(DType::F32, s, None)?
            }
        };
        let s = self.shape(a);
        let r = s.rank();
        let k = s.0[r - 1].clone();
        let n = self.rand_known();
        let kn = k.known();
        let fan = kn.unwrap_or(8);
        let y = match self.rng.below(7) {
            0 if kn.is_some() => {
                let w = self.weight(kn?, n, fan)?;
                self.add(Op::MatMul, &[a, w])?
            }
            1 | 2 if kn.is_some() => {
                // x @ w.T with w [N, K]: read in place.
                let w = self.weight(n, kn?, fan)?;
                let wt = self.swap_last(w)?;
                let y = self.add(Op::MatMul, &[a, wt])?;
                if self.rng.chance(0.25) {
                    // The same transposed weight in a second matmul (still a view), or
                    // read by something else too (materialised).
                    if self.rng.chance(0.5) {
                        let z = self.un(UnaryOp::Tanh, a)?;
                        self.add(Op::MatMul, &[z, wt])?;
                    } else {
                        let c = self.konst(0.5, DType::F32);
                        self.bin(BinaryOp::Mul, wt, c)?;
                    }
                }
                y
            }
            3 if kn.is_some() => {
                // A batched weight whose batch axes broadcast against a's.
                let batch = self.partner_shape(&Shape(s.0[..r - 2].to_vec()));
                let mut dims: Vec<Dim> = batch
                    .0
                    .iter()
                    .map(|d| {
                        if d.known().is_none() {
                            Dim::Known(1)
                        } else {
                            d.clone()
                        }
                    })
                    .collect();
                if dims.is_empty() || self.rng.chance(0.3) {
                    dims.insert(0, Dim::Known(self.rng.pick(&[1, 2, 3])));
                }
                let transposed = self.rng.chance(0.5);
                let mut wd = dims.clone();
                if transposed {
                    wd.extend([Dim::Known(n), k.clone()]);
                } else {
                    wd.extend([k.clone(), Dim::Known(n)]);
                }
                let h = 1.5 / (fan as f64).sqrt();
                let w = self.leaf(DType::F32, Shape(wd), Some(Dist::Uniform(h)))?;
                let w = if transposed { self.swap_last(w)? } else { w };
                self.add(Op::MatMul, &[a, w])?
            }
            4 => {
                // Activation @ activation, batch axes broadcasting.
                let mut bd = self.partner_shape(&Shape(s.0[..r - 2].to_vec())).0;
                bd.extend([k.clone(), Dim::Known(n)]);
                let b = self.leaf(DType::F32, Shape(bd), Some(Dist::Uniform(1.0)))?;
                self.add(Op::MatMul, &[a, b])?
            }
            5 => {
                // a @ c.T: c [.., N, K] (or a itself: a Gram matrix).
                let c = if self.rng.chance(0.4) {
                    a
                } else {
                    let mut cd = self.partner_shape(&Shape(s.0[..r - 2].to_vec())).0;
                    let nd = if self.rng.chance(0.3) {
                        self.seq_dim("S")
                    } else {
                        Dim::Known(n)
                    };
                    cd.extend([nd, k.clone()]);
                    self.leaf(DType::F32, Shape(cd), Some(Dist::Uniform(1.0)))?
                };
                let ct = self.swap_last(c)?;
                self.add(Op::MatMul, &[a, ct])?
            }
            _ => {
                // a.T @ w: a transposed operand on the left (materialised).
                let m = s.0[r - 2].known()?;
                let at = self.swap_last(a)?;
                let w = self.weight(m, n, m)?;
                self.add(Op::MatMul, &[at, w])?
            }
        };
        if self.rng.chance(0.4) {
            let s = self.shape(y);
            let b = self.partner(DType::F32, &s)?;
            self.bin(BinaryOp::Add, y, b)?;
        }
        Some(())
    }

    /// `[B, H, T, D]` heads: fresh, or projected from a `[B, T, E]` value and split.
    fn heads(&mut self, b: &Dim, t: &Dim, h: u64, d: u64) -> Option<NodeId> {
        let src = self.pick_where(|g, n| {
            let s = &g.ty(n).shape;
            g.dt(n) == DType::F32
                && s.rank() == 3
                && s.0[0] == *b
                && s.0[1] == *t
                && s.0[2].known().is_some()
                && g.info[&n].amax < 10.0
        });
        match src {
            Some(x) if self.rng.chance(0.7) => {
                let e = self.shape(x).0[2].known()?;
                let w = if self.rng.chance(0.5) {
                    self.weight(e, h * d, e)?
                } else {
                    let w = self.weight(h * d, e, e)?;
                    self.swap_last(w)?
                };
                let p = self.add(Op::MatMul, &[x, w])?;
                let p =
                    self.reshape(p, vec![b.clone(), t.clone(), Dim::Known(h), Dim::Known(d)])?;
                self.permute(p, vec![0, 2, 1, 3])
            }
            _ => self.leaf(
                DType::F32,
                Shape(vec![b.clone(), Dim::Known(h), t.clone(), Dim::Known(d)]),
                Some(Dist::Uniform(1.5)),
            ),
        }
    }

    fn k_attention(&mut self) -> Option<()> {
        if self.wild {
            return None;
        }
        let hk = self.rng.pick(&[1, 1, 2, 3]);
        let hq = hk * self.rng.pick(&[1, 2, 3]);
        let d = self.rng.pick(&[1, 3, 4, 7, 8, 16, 17]);
        let dv = if self.rng.chance(0.7) {
            d
        } else {
            self.rng.pick(&[1, 5, 8])
        };
        let b = self.batch_dim();
        let tq = self.seq_dim("T");
        let tk = if self.rng.chance(0.6) {
            tq.clone()
        } else {
            self.seq_dim("S")
        };
        let q = self.heads(&b, &tq, hq, d)?;
        let k = self.heads(&b, &tk, hk, d)?;
        let v = self.heads(&b, &tk, hk, dv)?;
        let mut ops = vec![q, k, v];
        if self.rng.chance(0.5) {
            let ms = Shape(vec![b.clone(), tk.clone()]);
            let m = if self.rng.chance(0.7) {
                let p = self.rng.pick(&[0.5, 0.8, 0.95]);
                self.leaf(DType::Bool, ms, Some(Dist::Bool(p)))?
            } else {
                let ids = self.leaf(DType::I64, ms, Some(Dist::Int(0, 4)))?;
                let z = self.konst(0.0, DType::I64);
                self.bin(BinaryOp::Ne, ids, z)?
            };
            ops.push(m);
        }
        let attrs = AttentionAttrs {
            mode: self.rng.pick(&[AttnMode::Causal, AttnMode::Bidirectional]),
            window: if self.rng.chance(0.4) {
                Some(self.rng.pick(&[0, 1, 2, 3, 5]))
            } else {
                None
            },
            window_rule: self
                .rng
                .pick(&[WindowRule::Inclusive, WindowRule::Exclusive]),
            softcap: if self.rng.chance(0.4) {
                Some(F64(self.rng.pick(&[1.0, 5.0, 50.0])))
            } else {
                None
            },
            scale: F64(if self.rng.chance(0.6) {
                1.0 / (d as f64).sqrt()
            } else {
                self.rng.pick(&[0.25, 1.0])
            }),
        };
        let o = self.add(Op::Attention(attrs), &ops)?;
        if self.rng.chance(0.6) {
            // Merge the heads and project back.
            let o = self.permute(o, vec![0, 2, 1, 3])?;
            let o = self.reshape(o, vec![b, tq, Dim::Known(hq * dv)])?;
            if self.rng.chance(0.5) {
                let w = self.weight(self.width, hq * dv, hq * dv)?;
                let wt = self.swap_last(w)?;
                self.add(Op::MatMul, &[o, wt])?;
            }
        }
        Some(())
    }

    fn k_cross_entropy(&mut self) -> Option<()> {
        if self.wild {
            return None;
        }
        let logits = self.pick_where(|g, n| {
            g.dt(n) == DType::F32
                && g.rank(n) >= 1
                && g.ty(n).shape.0.last().and_then(|d| d.known()).is_some()
        })?;
        let s = self.shape(logits);
        let v = s.0.last()?.known()? as i64;
        let ignore = if self.rng.chance(0.7) { -100 } else { 0 };
        let ls = Shape(s.0[..s.rank() - 1].to_vec());
        let labels = self.leaf(DType::I64, ls, Some(Dist::Labels(v, ignore)))?;
        self.add(
            Op::CrossEntropy {
                ignore_index: ignore,
            },
            &[logits, labels],
        )
        .map(|_| ())
    }

    // --- error estimates ------------------------------------------------------------------

    /// How far the backend's value of a new node may be from the reference's, and whether
    /// the sign of its zeros may differ. Infinite: the node must not be built.
    fn estimate(&self, id: NodeId, op: &Op, ops: &[NodeId], out: &Info) -> (f64, bool) {
        const NO: (f64, bool) = (f64::INFINITY, false);
        let info = |i: usize| &self.info[&ops[i]];
        let e = |i: usize| self.info[&ops[i]].err;
        let any_zs = ops.iter().any(|o| self.info[o].zs);
        let inexact = ops.iter().any(|o| self.info[o].err > 0.0);
        let own = 2.0 * U * out.amax;
        let f32_out = self.dt(id) == DType::F32;
        // A comparison or integer cast of a rounded value is a coin toss, not a test.
        if !f32_out && inexact {
            return NO;
        }
        // Where the sign of a zero decides between +inf and -inf.
        let zero_sensitive = |i: usize| info(i).zs && info(i).has_zero;
        let round = |err: f64| if err > 0.0 { err + own } else { 0.0 };
        let vals = |i: usize| -> Vec<&Tensor> { self.vals.iter().map(|v| &v[&ops[i]]).collect() };
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::Const { .. } | Op::Iota { .. } => {
                (0.0, false)
            }
            // One rounding of an exact product (int8 weights; not generated here).
            Op::Dequant => (round(info(0).err + info(1).err) + own, false),
            Op::Unary(u) => {
                let a = info(0);
                use UnaryOp::*;
                let zs = a.zs && matches!(u, Neg | Sqrt | Sin | Tanh);
                if *u == Rsqrt && zero_sensitive(0) {
                    return NO;
                }
                // Loop kernels compute exp, log, sin and cos with libmvec and tanh from
                // exp: a few ulp, not the interpreter's libm bits.
                let ulps = LIBM_ULPS * U * out.amax;
                let err = match u {
                    Neg | Abs | Not => a.err,
                    Tanh => a.err + 4.0 * ulps,
                    Exp => a.err * out.amax * 1.01 + ulps + own,
                    Log => a.err / a.amin + ulps + own,
                    Sqrt => round(a.err / (2.0 * a.amin.sqrt())),
                    Rsqrt => round(a.err / (2.0 * a.amin.powf(1.5))),
                    Sin | Cos => a.err + ulps + own,
                };
                (if err.is_nan() { f64::INFINITY } else { err }, zs)
            }
            Op::Binary(b) => {
                use BinaryOp::*;
                if !f32_out || self.dt(ops[0]) != DType::F32 {
                    return (0.0, false);
                }
                let (x, y) = (info(0), info(1));
                let err = match b {
                    Add | Sub => round(e(0) + e(1)),
                    Mul => round(x.amax * e(1) + y.amax * e(0) + e(0) * e(1)),
                    Div => {
                        if zero_sensitive(1) {
                            return NO;
                        }
                        round((e(0) + out.amax * e(1)) / y.amin)
                    }
                    Pow => {
                        if zero_sensitive(0) {
                            return NO;
                        }
                        let ymax = y.lo.abs().max(y.hi.abs());
                        let ln = x.amin.ln().abs().max(x.amax.ln().abs());
                        out.amax * (ymax * e(0) / x.amin + ln * e(1))
                            + LIBM_ULPS * U * out.amax
                            + own
                    }
                    Max | Min => return (e(0).max(e(1)), true),
                    _ => 0.0,
                };
                (if err.is_nan() { f64::INFINITY } else { err }, any_zs)
            }
            Op::Where => (e(1).max(e(2)), any_zs),
            Op::Cast => (0.0, false),
            Op::Reduce { op, axis } => {
                if !f32_out {
                    return (0.0, false);
                }
                let x = info(0);
                let last = *axis + 1 == self.rank(ops[0]);
                let n = vals(0).iter().map(|t| t.shape[*axis]).max().unwrap_or(1) as f64;
                match op {
                    ReduceOp::Max => (x.err, true),
                    // Other axes run on the interpreter's own routine.
                    ReduceOp::Sum if !last => (round(n * x.err), x.zs),
                    ReduceOp::Sum => {
                        let (mut abs, mut partial) = (0f64, 0f64);
                        for t in vals(0) {
                            let (a, p) = sum_bounds(t);
                            abs = abs.max(a);
                            partial = partial.max(p);
                        }
                        // Multiples of 2^-q whose sums stay below 2^24 · 2^-q add exactly,
                        // in any order.
                        if x.err == 0.0 && abs * 2f64.powi(x.quant as i32) < (1u64 << 24) as f64 {
                            return (0.0, true);
                        }
                        (n * x.err + U * (partial + 4.0 * abs) + own, true)
                    }
                }
            }
            Op::Reshape
            | Op::Permute { .. }
            | Op::Expand
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Shift { .. }
            | Op::Gather => {
                let err = ops
                    .iter()
                    .filter(|&&o| self.dt(o) == DType::F32)
                    .map(|o| self.info[o].err)
                    .fold(0.0, f64::max);
                (err, any_zs)
            }
            // Only gradient graphs make scatter-adds; the generator does not (they are checked
            // in runtime/tests/autodiff.rs and tests/grad_parity.rs).
            Op::ScatterAdd => NO,
            Op::MatMul => {
                let (x, y) = (info(0), info(1));
                let k = vals(0)
                    .iter()
                    .map(|t| *t.shape.last().unwrap())
                    .max()
                    .unwrap_or(1) as f64;
                let absmm = vals(0)
                    .into_iter()
                    .zip(vals(1))
                    .map(|(p, q)| abs_matmul_max(p, q))
                    .fold(0.0, f64::max);
                if !inexact && absmm * 2f64.powi((x.quant + y.quant) as i32) < (1u64 << 24) as f64 {
                    return (0.0, true);
                }
                let err =
                    k * (x.amax * e(1) + y.amax * e(0)) + 2.0 * U * (1.0 + k.sqrt()) * absmm + own;
                (err, true)
            }
            Op::Attention(a) => {
                let (q, k, v) = (info(0), info(1), info(2));
                let d = vals(0).iter().map(|t| t.shape[3]).max().unwrap_or(1) as f64;
                let tk = vals(1).iter().map(|t| t.shape[2]).max().unwrap_or(1) as f64;
                let scale = a.scale.0.abs();
                let s_abs = scale * d * q.amax * k.amax;
                // Scores: an f32 GEMM (scale folded in), the softcap's tanh; then exp and
                // the sums in f32 (a few ulp each).
                let e_s = scale * d * (q.amax * e(1) + k.amax * e(0))
                    + U * (1.0 + d.sqrt()) * s_abs
                    + 2.0 * U * a.softcap.map_or(s_abs, |c| c.0.min(s_abs));
                let err = e_s * v.amax + e(2) + U * (8.0 + tk.sqrt()) * v.amax + own;
                (err, true)
            }
            // Not generated: runtime/tests/attention_grad_kernel.rs tests the kernel, and
            // tests/grad_parity.rs both gradients against torch.
            Op::AttentionGrad { .. } | Op::CrossEntropyGrad { .. } => NO,
            Op::CrossEntropy { .. } => {
                let l = info(0);
                let v = vals(0)
                    .iter()
                    .map(|t| *t.shape.last().unwrap())
                    .max()
                    .unwrap_or(1) as f64;
                let err = 2.0 * l.err + 8.0 * U * (l.amax + v.ln() + 1.0) + own;
                (err, false)
            }
        }
    }

    // --- the whole case -----------------------------------------------------------------

    fn eligible(&self, n: NodeId) -> bool {
        let i = &self.info[&n];
        if self.all_outputs {
            return i.finite;
        }
        i.err == 0.0 || i.finite && i.err <= MARGIN * TOL * i.scale_min
    }

    fn build(mut self) -> Case {
        // A few inputs to start from, shaped like activations.
        let b = self.batch_dim();
        let t = self.seq_dim("T");
        let w = self.width;
        self.leaf(
            DType::F32,
            Shape(vec![b.clone(), t.clone(), Dim::Known(w)]),
            None,
        );
        for _ in 0..1 + self.rng.below(3) {
            let dtype = self
                .rng
                .pick(&[DType::F32, DType::F32, DType::I64, DType::Bool]);
            let s = if self.rng.chance(0.5) {
                Shape(vec![b.clone(), t.clone()])
            } else {
                self.rand_shape()
            };
            self.leaf(dtype, s, None);
        }
        let target = 10 + self.rng.below(30);
        let mut tries = 0;
        while self.g.dag.node_count() < target && tries < 300 {
            tries += 1;
            self.step();
        }
        // Outputs: values nothing uses, and some used ones (which stops them from fusing
        // into their users), if their estimated error is well inside the tolerance.
        let mut outs = vec![];
        for &n in &self.pool {
            if matches!(self.g.node(n).op, Op::Input { .. } | Op::Param { .. }) {
                continue;
            }
            let unused = self.g.users(n).is_empty();
            if (unused || self.rng.chance(0.25)) && self.eligible(n) {
                outs.push(n);
            }
        }
        if outs.is_empty() {
            // Nothing well-conditioned: an exact function of an input.
            let leaf = self
                .pool
                .iter()
                .copied()
                .find(|&n| matches!(self.g.node(n).op, Op::Input { .. }) && self.exact(n));
            if let Some(x) = leaf {
                let u = match self.dt(x) {
                    DType::Bool => UnaryOp::Not,
                    _ => UnaryOp::Neg,
                };
                outs.extend(self.un(u, x));
            }
        }
        for (k, n) in outs.into_iter().enumerate() {
            self.g.outputs.push((format!("o{k}"), n));
        }
        self.g.remove_dead();
        // Inputs and parameters nothing reads: gone, so that printed cases stay short.
        for n in self.g.dag.node_indices().collect::<Vec<_>>() {
            if !self.g.users(n).is_empty() || self.g.outputs.iter().any(|(_, o)| *o == n) {
                continue;
            }
            let symbolic = self.ty(n).shape.0.iter().any(|d| d.known().is_none());
            match &self.g.node(n).op {
                // Kept if it binds a symbol (which another node may need).
                Op::Input { name } if !symbolic => {
                    for s in &mut self.inputs {
                        s.remove(name);
                    }
                    self.g.dag.remove_node(n);
                }
                Op::Param { path, .. } => {
                    self.params.remove(path);
                    self.g.dag.remove_node(n);
                }
                _ => {}
            }
        }
        // Data for leaves that `add_node` rejected.
        let live: HashSet<String> = self
            .g
            .dag
            .node_indices()
            .filter_map(|n| match &self.g.node(n).op {
                Op::Input { name } | Op::Param { path: name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        for s in &mut self.inputs {
            s.retain(|k, _| live.contains(k));
        }
        self.params.retain(|k, _| live.contains(k));
        Case {
            graph: self.g,
            params: self.params,
            sets: self.inputs,
        }
    }
}

/// `CPU_RANDOM_AVOID_KNOWN=1` leaves out what triggers the bugs the regression tests
/// below pin down, to look for others while those are open.
fn avoid_known_bugs() -> bool {
    std::env::var_os("CPU_RANDOM_AVOID_KNOWN").is_some()
}

fn case_seed(case: usize) -> u64 {
    let base = std::env::var("CPU_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    base ^ (case as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

// ---------------------------------------------------------------------------------------
// Coverage: what the generated graphs and their kernel programs contain.

fn coverage(g: &Graph, tally: &mut BTreeMap<String, usize>) {
    let mut seen: HashSet<String> = HashSet::new();
    for n in g.dag.node_indices() {
        let node = g.node(n);
        let ops = g.operands(n);
        let in_dt = ops.first().map(|&o| g.node(o).ty.dtype);
        let m = node.op.mnemonic();
        match &node.op {
            Op::Unary(_) | Op::Binary(_) | Op::Reduce { .. } => {
                seen.insert(format!("{m}:{}", in_dt.unwrap().name()));
            }
            Op::Cast => {
                seen.insert(format!(
                    "cast:{}->{}",
                    in_dt.unwrap().name(),
                    node.ty.dtype.name()
                ));
            }
            Op::Iota { .. } => {
                seen.insert(format!("iota:{}", node.ty.dtype.name()));
            }
            Op::Attention(a) => {
                seen.insert("attention".into());
                if ops.len() == 4 {
                    seen.insert("attention:key_mask".into());
                }
                if a.window.is_some() {
                    seen.insert(format!("attention:window:{:?}:{:?}", a.mode, a.window_rule));
                }
                if a.softcap.is_some() {
                    seen.insert("attention:softcap".into());
                }
                let (hq, hk) = (
                    g.node(ops[0]).ty.shape.0[1].known(),
                    g.node(ops[1]).ty.shape.0[1].known(),
                );
                if hq != hk {
                    seen.insert("attention:gqa".into());
                }
            }
            Op::MatMul => {
                seen.insert("matmul".into());
                let (a, b) = (&g.node(ops[0]).ty.shape, &g.node(ops[1]).ty.shape);
                if a.rank() > 2 || b.rank() > 2 {
                    seen.insert("matmul:batched".into());
                }
                if a.rank() != b.rank()
                    || a.0[..a.rank() - 2]
                        .iter()
                        .zip(&b.0[..b.rank() - 2])
                        .any(|(x, y)| x != y)
                {
                    seen.insert("matmul:broadcast_batch".into());
                }
                if let Op::Permute { perm } = &g.node(ops[1]).op {
                    let r = perm.len();
                    if perm[r - 2] == r - 1
                        && matches!(g.node(g.operands(ops[1])[0]).op, Op::Param { .. })
                    {
                        seen.insert("matmul:transposed_weight".into());
                    }
                }
            }
            _ => {
                seen.insert(m.to_string());
            }
        }
        if node.ty.shape.0.iter().any(|d| d.known().is_none()) {
            seen.insert("symbolic".into());
        }
    }
    if let Ok(p) = encdecc_compiler::fuse::lower(g) {
        for k in &p.kernels {
            if k.stages.len() >= 2 {
                seen.insert("kernel:2+stages".into());
            }
            if k.stages.len() >= 3 {
                seen.insert("kernel:3+stages".into());
            }
            if k.outputs.iter().any(|o| o.per_row) {
                seen.insert("kernel:per_row_output".into());
            }
            if k.inputs
                .iter()
                .any(|i| i.strides[..k.rank - 1].contains(&Stride::Zero))
            {
                seen.insert("kernel:broadcast_row".into());
            }
            if k.inputs
                .iter()
                .any(|i| i.strides[k.rank - 1] == Stride::Zero)
            {
                seen.insert("kernel:broadcast_inner".into());
            }
            for st in &k.stages {
                for op in &st.ops {
                    match op {
                        KOp::RowValue { .. } => seen.insert("kernel:row_value".into()),
                        KOp::Index { .. } => seen.insert("kernel:index".into()),
                        _ => false,
                    };
                }
            }
        }
        let loops = p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Loop { .. }))
            .count();
        if loops >= 3 {
            seen.insert("program:3+kernels".into());
        }
    }
    for s in seen {
        *tally.entry(s).or_default() += 1;
    }
}

/// Features every run of the random test must have exercised (in this many graphs).
const REQUIRED: &[(&str, usize)] = &[
    ("neg:f32", 10),
    ("exp:f32", 10),
    ("log:f32", 5),
    ("tanh:f32", 5),
    ("sqrt:f32", 5),
    ("rsqrt:f32", 10),
    ("sin:f32", 5),
    ("cos:f32", 3),
    ("abs:f32", 10),
    ("neg:i64", 3),
    ("abs:i64", 3),
    ("not:bool", 5),
    ("add:f32", 20),
    ("sub:f32", 20),
    ("mul:f32", 20),
    ("div:f32", 20),
    ("pow:f32", 5),
    ("max:f32", 10),
    ("min:f32", 5),
    ("eq:f32", 3),
    ("lt:f32", 5),
    ("le:i64", 5),
    ("add:i64", 5),
    ("div:i64", 3),
    ("pow:i64", 3),
    ("and:bool", 5),
    ("or:bool", 5),
    ("where", 20),
    ("cast:f32->i64", 3),
    ("cast:bool->f32", 2),
    ("cast:i64->f32", 3),
    ("iota:i64", 10),
    ("iota:f32", 3),
    ("reduce_sum:f32", 40),
    ("reduce_max:f32", 40),
    ("reshape", 20),
    ("permute", 20),
    ("slice", 10),
    ("concat", 10),
    ("shift", 10),
    ("expand", 10),
    ("gather", 10),
    ("matmul", 40),
    ("matmul:batched", 10),
    ("matmul:broadcast_batch", 5),
    ("matmul:transposed_weight", 15),
    ("attention", 15),
    ("attention:key_mask", 5),
    ("attention:softcap", 5),
    ("attention:gqa", 5),
    ("cross_entropy", 8),
    ("symbolic", 100),
    ("nonfinite_inputs", 10),
    ("kernel:3+stages", 15),
    ("kernel:row_value", 30),
    ("kernel:per_row_output", 30),
    ("kernel:broadcast_row", 20),
    ("kernel:broadcast_inner", 30),
    ("kernel:index", 10),
];

// ---------------------------------------------------------------------------------------
// The random test.

#[test]
fn cpu_matches_reference_on_random_graphs() {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<usize>().ok());
    let only = env("CPU_RANDOM_CASE");
    let cases = env("CPU_RANDOM_CASES").unwrap_or(CASES);
    let t0 = std::time::Instant::now();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = vec![];
    let (mut outputs, mut nodes) = (0, 0);
    let (mut t_gen, mut t_check) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for case in 0..cases {
        if only.is_some_and(|c| c != case) {
            continue;
        }
        let t = std::time::Instant::now();
        let c = Gen::new(case_seed(case)).build();
        t_gen += t.elapsed();
        verify(&c.graph).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert!(!c.graph.outputs.is_empty(), "case {case}: no outputs");
        outputs += c.graph.outputs.len();
        nodes += c.graph.dag.node_count();
        coverage(&c.graph, &mut tally);
        let nonfinite = |t: &Tensor| t.as_f32().is_some_and(|v| v.iter().any(|x| !x.is_finite()));
        if c.sets.iter().flat_map(|s| s.values()).any(nonfinite) {
            *tally.entry("nonfinite_inputs".into()).or_default() += 1;
        }
        if only.is_some() {
            eprintln!("{}", print_graph(&c.graph));
        }
        let t = std::time::Instant::now();
        let outcome = check(&c.graph, &c.params, &c.sets);
        t_check += t.elapsed();
        match outcome {
            Outcome::Agree => {}
            Outcome::Reference(e) => panic!(
                "case {case}: the reference failed (a generator bug): {e}\n{}",
                print_graph(&c.graph)
            ),
            Outcome::Backend(e) => {
                let (m, _, inputs, why) = minimize(&c.graph, &c.params, &c.sets);
                failures.push(format!(
                    "case {case}: {e}\nminimised ({}): {why}\n{}",
                    shapes_of(&inputs),
                    print_graph(&m)
                ));
            }
        }
    }
    eprintln!(
        "{cases} random graphs ({nodes} nodes, {outputs} outputs) in {:.1?} \
         (generating {t_gen:.1?}, checking {t_check:.1?}); coverage: {tally:?}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} graph(s) disagree with the reference:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
    if only.is_none() && cases >= CASES {
        let thin: Vec<String> = REQUIRED
            .iter()
            .filter(|(k, n)| tally.get(*k).copied().unwrap_or(0) < *n)
            .map(|(k, n)| format!("{k}: {} < {n}", tally.get(*k).copied().unwrap_or(0)))
            .collect();
        assert!(thin.is_empty(), "coverage too thin: {thin:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Regression tests: minimised graphs the random test found.

/// Runs a printed graph on the reference and the CPU backend, inputs from `inputs`.
fn assert_agrees(text: &str, inputs: &[(&str, Tensor)]) {
    let g = parse_graph(text).unwrap();
    let inputs: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    match check(&g, &HashMap::new(), &[inputs]) {
        Outcome::Agree => {}
        Outcome::Reference(e) => panic!("reference failed: {e}"),
        Outcome::Backend(e) => panic!("{e}\n{text}"),
    }
}

fn ramp(shape: Vec<usize>) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f32(shape, (0..n).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect())
}

/// Bug: an iota of row shape `[..., 1]` along its last axis is 0 everywhere, but fused
/// into a kernel over `[..., N]` it becomes the inner loop index (0, 1, …, N-1).
///
/// `fuse` lets a node join a group whose space is `[..., N]` when its shape is the space or
/// the space's row shape `[..., 1]` (`fits` in `compiler/src/fuse.rs`), and `emit` lowers
/// `iota[axis=a]` to `KOp::Index { axis: space.rank() - rank + a }` without looking at the
/// iota's own size on that axis: on the last axis that is the kernel's inner index `j`,
/// where the iota's size-1 axis means index 0. The reference gives `x + 0`; the backend
/// `x + [0, 1, 2, 3]` per row (and `or(iota as bool, m)` is `true` from column 1 on).
#[test]
fn iota_of_row_shape_along_last_axis() {
    assert_agrees(
        "graph t {
  %0 = input \"x\" : f32[3, 4]
  %1 = iota[axis=1] : i64[3, 1]
  %2 = cast %1 : f32[3, 1]
  %3 = add %0, %2 : f32[3, 4]
  %4 = input \"m\" : bool[3, 4]
  %5 = iota[axis=1] : bool[3, 1]
  %6 = or %5, %4 : bool[3, 4]
  out \"sum\" = %3
  out \"any\" = %6
}",
        &[
            ("x", ramp(vec![3, 4])),
            ("m", Tensor::bool(vec![3, 4], vec![false; 12])),
        ],
    );
}

/// Bug: sums and maxima over the last axis of i64 and bool tensors. The IR types them
/// (the result keeps the operand's dtype) and the interpreter computes them (in f64, then
/// converted back: a bool sum or max is "any"), but `space_of` in `compiler/src/fuse.rs`
/// fuses every last-axis reduction into a loop kernel, whose reductions are f32 only, so
/// `cpu::prepare` fails: "compiling loop kernels: kernel `k0`, stage 0: Sum reduction of
/// value 0, which is not an f32 op" (`codegen/src/check.rs`). In a build without LLVM the
/// evaluator (`runtime/src/cpu/loops.rs`) would instead store the f32 accumulator through
/// an f32 pointer into the i64 or bool output buffer.
#[test]
fn integer_and_bool_reductions_over_last_axis() {
    assert_agrees(
        "graph t {
  %0 = input \"i\" : i64[3, 5]
  %1 = reduce_sum[axis=1] %0 : i64[3, 1]
  %2 = reduce_max[axis=1] %0 : i64[3, 1]
  %3 = input \"b\" : bool[3, 5]
  %4 = reduce_sum[axis=1] %3 : bool[3, 1]
  %5 = reduce_max[axis=1] %3 : bool[3, 1]
  out \"isum\" = %1
  out \"imax\" = %2
  out \"bsum\" = %4
  out \"bmax\" = %5
}",
        &[
            (
                "i",
                Tensor::i64(vec![3, 5], (0..15).map(|v| v - 7).collect()),
            ),
            (
                "b",
                Tensor::bool(vec![3, 5], (0..15).map(|v| v % 11 == 3).collect()),
            ),
        ],
    );
}
