//! The reference interpreter: executes any graph of primitive ops on the CPU, in f32 with
//! f64 accumulation in reductions and matmuls. Simple and obviously correct; slow is fine.
//! It is the oracle every fast backend is tested against. Composites are run through
//! their decomposition (`encdecc_compiler::decompose`).

use crate::finite::{report_nodes, Checked, Checks, Tracker};
use crate::tensor::{strides, Data, Tensor};
use encdecc_compiler::ir::*;
use std::collections::HashMap;

/// Symbol bindings (batch, lengths) learnt from the inputs.
pub type Bindings = HashMap<String, usize>;

pub fn resolve(shape: &Shape, b: &Bindings) -> Result<Vec<usize>, String> {
    shape
        .0
        .iter()
        .map(|d| match d {
            Dim::Known(n) => Ok(*n as usize),
            Dim::Sym(s) => b
                .get(s)
                .copied()
                .ok_or(format!("dimension `{s}` is not bound by any input")),
        })
        .collect()
}

/// Binds the symbols of `declared` to the actual shape, or says what disagrees.
pub fn bind(
    name: &str,
    declared: &Shape,
    actual: &[usize],
    b: &mut Bindings,
) -> Result<(), String> {
    if declared.rank() != actual.len() {
        return Err(format!(
            "input `{name}` has shape {actual:?}, expected rank {} ({declared})",
            declared.rank()
        ));
    }
    for (d, &a) in declared.0.iter().zip(actual) {
        match d {
            Dim::Known(n) if *n as usize != a => {
                return Err(format!(
                    "input `{name}` has shape {actual:?}, expected {declared}"
                ));
            }
            Dim::Known(_) => {}
            Dim::Sym(s) => match b.get(s) {
                Some(&v) if v != a => {
                    return Err(format!(
                        "input `{name}` has shape {actual:?}, but `{s}` is {v} from another input"
                    ))
                }
                _ => {
                    b.insert(s.clone(), a);
                }
            },
        }
    }
    Ok(())
}

/// Binds every symbolic dimension from the inputs' actual shapes.
pub fn bind_inputs(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Bindings, String> {
    let mut b = Bindings::new();
    for n in g.inputs() {
        let Op::Input { name } = &g.node(n).op else {
            continue;
        };
        let t = inputs.get(name).ok_or(format!("missing input `{name}`"))?;
        bind(name, &g.node(n).ty.shape, &t.shape, &mut b)?;
    }
    Ok(b)
}

/// Runs a graph of primitives. `params` are looked up by DSL path, `inputs` by name.
/// Checks nothing: the oracle of the tests that feed infinities and NaN on purpose (the
/// reference *backend* runs `run_with` and the finite check).
pub fn run(
    g: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, String> {
    run_with(g, params, inputs, Checks::default()).map(|c| c.outputs)
}

/// `run` with `checks`; with `checks.finite`, a non-finite output comes back with the
/// node that first produced a non-finite value on its way (`finite.rs`).
pub fn run_with(
    g: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    checks: Checks,
) -> Result<Checked, String> {
    // Composites are defined by their decompositions: run those.
    if g.dag.node_weights().any(|n| n.op.is_composite()) {
        let mut d = g.clone();
        encdecc_compiler::decompose::decompose(&mut d)?;
        return run_with(&d, params, inputs, checks);
    }
    let mut tracker = checks.finite.then(Tracker::default);
    let b = bind_inputs(g, inputs)?;
    let order = g.topo_order();
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &n in &order {
        for o in g.operands(n) {
            *uses.entry(o).or_default() += 1;
        }
    }
    let outputs: std::collections::HashSet<NodeId> = g.outputs.iter().map(|(_, n)| *n).collect();
    let mut vals: HashMap<NodeId, Tensor> = HashMap::new();
    for (i, &n) in order.iter().enumerate() {
        let node = g.node(n);
        let ops = g.operands(n);
        let args: Vec<&Tensor> = ops.iter().map(|o| &vals[o]).collect();
        let out =
            eval_node(g, n, node, &args, params, inputs, &b).map_err(|e| match &node.name {
                Some(name) => format!("{e} (at `{name}`)"),
                None => e,
            })?;
        if let Some(t) = &mut tracker {
            t.record(Some(i), n, &out);
        }
        vals.insert(n, out);
        for o in ops {
            let u = uses.get_mut(&o).expect("counted");
            *u -= 1;
            if *u == 0 && !outputs.contains(&o) {
                vals.remove(&o);
            }
        }
    }
    let non_finite = tracker.and_then(|t| {
        let trace = t.trace(g, |i| g.operands(order[i]))?;
        Some(report_nodes(g, trace))
    });
    Ok(Checked {
        outputs: g
            .outputs
            .iter()
            .map(|(name, n)| (name.clone(), vals[n].clone()))
            .collect(),
        non_finite,
    })
}

/// Evaluates one node from its operands' values (any primitive op; composites excepted).
pub fn eval_node(
    g: &Graph,
    id: NodeId,
    node: &Node,
    a: &[&Tensor],
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    b: &Bindings,
) -> Result<Tensor, String> {
    let shape = resolve(&node.ty.shape, b)?;
    Ok(match &node.op {
        Op::Param { path, .. } => {
            let t = params
                .get(path)
                .ok_or(format!("no value for parameter `{path}`"))?;
            if t.shape != shape {
                return Err(format!(
                    "parameter `{path}` has shape {:?}, expected {shape:?}",
                    t.shape
                ));
            }
            // A weight that a lowered graph stores in bf16 is rounded here if it was
            // loaded in f32 (and widened in the other case).
            match (&t.data, node.ty.dtype) {
                (Data::F32(_), DType::Bf16) | (Data::Bf16(_), DType::F32) => {
                    convert(t, node.ty.dtype)
                }
                _ => t.clone(),
            }
        }
        Op::Input { name } => {
            let t = inputs.get(name).ok_or(format!("missing input `{name}`"))?;
            convert(t, node.ty.dtype)
        }
        Op::Const { value } => fill(shape, node.ty.dtype, value.0),
        Op::Iota { axis } => {
            let st = strides(&shape);
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|i| ((i / st[*axis]) % shape[*axis]) as i64)
                .collect();
            convert(&Tensor::i64(shape, v), node.ty.dtype)
        }
        Op::Unary(u) => unary(*u, a[0]),
        Op::Binary(op) => binary(*op, a[0], a[1], &shape)?,
        Op::Where => {
            let c = broadcast_to(a[0], &shape);
            let (x, y) = (broadcast_to(a[1], &shape), broadcast_to(a[2], &shape));
            let Data::Bool(cv) = &c.data else {
                return Err("where: condition is not bool".into());
            };
            match (&x.data, &y.data) {
                (Data::F32(p), Data::F32(q)) => Tensor::f32(shape, sel(cv, p, q)),
                (Data::Bf16(p), Data::Bf16(q)) => Tensor::bf16(shape, sel(cv, p, q)),
                (Data::I8(p), Data::I8(q)) => Tensor::i8(shape, sel(cv, p, q)),
                (Data::I64(p), Data::I64(q)) => Tensor::i64(shape, sel(cv, p, q)),
                (Data::Bool(p), Data::Bool(q)) => Tensor::bool(shape, sel(cv, p, q)),
                _ => return Err("where: branch dtypes differ".into()),
            }
        }
        Op::Cast => convert(a[0], node.ty.dtype),
        Op::Reduce { op, axis } => reduce(*op, a[0], *axis),
        Op::Reshape => Tensor {
            shape,
            data: a[0].data.clone(),
        },
        Op::Expand => broadcast_to(a[0], &shape),
        Op::Permute { perm } => permute(a[0], perm),
        Op::Slice { axis, start, end } => slice(a[0], *axis, *start as usize, *end as usize),
        Op::Concat { axis } => concat(a, *axis),
        Op::Gather => gather(g, id, a[0], a[1])?,
        Op::ScatterAdd => scatter_add(a[0], a[1], a.get(2).copied(), shape)?,
        Op::Shift { axis, offset, fill } => shift(a[0], *axis, *offset, fill.0),
        Op::MatMul => matmul(a[0], a[1], &shape),
        Op::Dequant => dequant(a[0], a[1])?,
        Op::Attention(_)
        | Op::AttentionGrad { .. }
        | Op::CrossEntropy { .. }
        | Op::CrossEntropyGrad { .. } => {
            return Err(format!(
                "composite `{}` must be decomposed before interpretation",
                node.op.mnemonic()
            ))
        }
    })
}

fn sel<T: Copy>(c: &[bool], p: &[T], q: &[T]) -> Vec<T> {
    c.iter()
        .zip(p.iter().zip(q))
        .map(|(&c, (&x, &y))| if c { x } else { y })
        .collect()
}

/// A tensor of `shape` holding `v` as `dtype` (a `const`, a shift's fill).
pub fn fill(shape: Vec<usize>, dtype: DType, v: f64) -> Tensor {
    let n = shape.iter().product();
    match dtype {
        DType::F32 => Tensor::f32(shape, vec![v as f32; n]),
        DType::Bf16 => Tensor::bf16(shape, vec![half::bf16::from_f64(v); n]),
        DType::I8 => Tensor::i8(shape, vec![v as i8; n]),
        DType::I64 => Tensor::i64(shape, vec![v as i64; n]),
        DType::Bool => Tensor::bool(shape, vec![v != 0.0; n]),
    }
}

/// `cast`: to bf16 rounds to nearest even (as PyTorch's `.to(torch.bfloat16)`); from bf16
/// is exact, and other targets go through f32.
pub fn convert(t: &Tensor, dtype: DType) -> Tensor {
    let shape = t.shape.clone();
    match (&t.data, dtype) {
        (Data::F32(_), DType::F32)
        | (Data::Bf16(_), DType::Bf16)
        | (Data::I8(_), DType::I8)
        | (Data::I64(_), DType::I64)
        | (Data::Bool(_), DType::Bool) => t.clone(),
        (Data::Bf16(v), _) => convert(
            &Tensor::f32(shape, v.iter().map(|x| x.to_f32()).collect()),
            dtype,
        ),
        (Data::F32(v), DType::Bf16) => {
            Tensor::bf16(shape, v.iter().map(|&x| half::bf16::from_f32(x)).collect())
        }
        (_, DType::Bf16) => convert(&convert(t, DType::F32), DType::Bf16),
        // (Typing admits no cast to or from i8; were one built: through i64, wrapping.)
        (Data::I8(v), _) => convert(
            &Tensor::i64(shape, v.iter().map(|&x| x as i64).collect()),
            dtype,
        ),
        (_, DType::I8) => match convert(t, DType::I64).data {
            Data::I64(v) => Tensor::i8(shape, v.iter().map(|&x| x as i8).collect()),
            _ => unreachable!("converted to i64"),
        },
        (Data::F32(v), DType::I64) => Tensor::i64(shape, v.iter().map(|&x| x as i64).collect()),
        (Data::F32(v), DType::Bool) => Tensor::bool(shape, v.iter().map(|&x| x != 0.0).collect()),
        (Data::I64(v), DType::F32) => Tensor::f32(shape, v.iter().map(|&x| x as f32).collect()),
        (Data::I64(v), DType::Bool) => Tensor::bool(shape, v.iter().map(|&x| x != 0).collect()),
        (Data::Bool(v), DType::F32) => {
            Tensor::f32(shape, v.iter().map(|&x| x as u8 as f32).collect())
        }
        (Data::Bool(v), DType::I64) => Tensor::i64(shape, v.iter().map(|&x| x as i64).collect()),
    }
}

fn unary(u: UnaryOp, t: &Tensor) -> Tensor {
    let shape = t.shape.clone();
    match &t.data {
        Data::F32(v) => {
            let f: fn(f32) -> f32 = match u {
                UnaryOp::Neg => |x| -x,
                UnaryOp::Exp => f32::exp,
                UnaryOp::Log => f32::ln,
                UnaryOp::Tanh => f32::tanh,
                UnaryOp::Sqrt => f32::sqrt,
                UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
                UnaryOp::Sin => f32::sin,
                UnaryOp::Cos => f32::cos,
                UnaryOp::Abs => f32::abs,
                UnaryOp::Not => |x| x,
            };
            Tensor::f32(shape, v.iter().map(|&x| f(x)).collect())
        }
        Data::I64(v) => Tensor::i64(
            shape,
            v.iter()
                .map(|&x| {
                    if u == UnaryOp::Neg {
                        x.wrapping_neg()
                    } else {
                        x.wrapping_abs()
                    }
                })
                .collect(),
        ),
        Data::Bool(v) => Tensor::bool(shape, v.iter().map(|&x| !x).collect()),
        // Typing admits no unary op on bf16 or i8; were one built, it computes in f32.
        Data::Bf16(_) => convert(&unary(u, &convert(t, DType::F32)), DType::Bf16),
        Data::I8(_) => convert(&unary(u, &convert(t, DType::I64)), DType::I8),
    }
}

/// Offsets into `t` for every element of `out`, with broadcasting (numpy rules).
fn offsets(in_shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let rank = out.len();
    let ist = strides(in_shape);
    let mut st = vec![0; rank];
    for i in 0..in_shape.len() {
        let o = rank - in_shape.len() + i;
        st[o] = if in_shape[i] == 1 { 0 } else { ist[i] };
    }
    let mut res = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let mut off = 0usize;
    for _ in 0..n {
        res.push(off);
        for d in (0..rank).rev() {
            idx[d] += 1;
            off += st[d];
            if idx[d] < out[d] {
                break;
            }
            off -= st[d] * idx[d];
            idx[d] = 0;
        }
    }
    res
}

fn broadcast_to(t: &Tensor, shape: &[usize]) -> Tensor {
    if t.shape == shape {
        return t.clone();
    }
    let off = offsets(&t.shape, shape);
    let shape = shape.to_vec();
    match &t.data {
        Data::F32(v) => Tensor::f32(shape, off.iter().map(|&o| v[o]).collect()),
        Data::Bf16(v) => Tensor::bf16(shape, off.iter().map(|&o| v[o]).collect()),
        Data::I8(v) => Tensor::i8(shape, off.iter().map(|&o| v[o]).collect()),
        Data::I64(v) => Tensor::i64(shape, off.iter().map(|&o| v[o]).collect()),
        Data::Bool(v) => Tensor::bool(shape, off.iter().map(|&o| v[o]).collect()),
    }
}

fn binary(op: BinaryOp, x: &Tensor, y: &Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let (x, y) = (broadcast_to(x, shape), broadcast_to(y, shape));
    let shape = shape.to_vec();
    Ok(match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => {
            if op.is_comparison() {
                let f: fn(f32, f32) -> bool = match op {
                    BinaryOp::Eq => |a, b| a == b,
                    BinaryOp::Ne => |a, b| a != b,
                    BinaryOp::Lt => |a, b| a < b,
                    _ => |a, b| a <= b,
                };
                Tensor::bool(shape, p.iter().zip(q).map(|(&a, &b)| f(a, b)).collect())
            } else {
                let f: fn(f32, f32) -> f32 = match op {
                    BinaryOp::Add => |a, b| a + b,
                    BinaryOp::Sub => |a, b| a - b,
                    BinaryOp::Mul => |a, b| a * b,
                    BinaryOp::Div => |a, b| a / b,
                    BinaryOp::Pow => f32::powf,
                    BinaryOp::Max => f32::max,
                    BinaryOp::Min => f32::min,
                    _ => return Err(format!("`{}` on f32", Op::Binary(op).mnemonic())),
                };
                Tensor::f32(shape, p.iter().zip(q).map(|(&a, &b)| f(a, b)).collect())
            }
        }
        (Data::I64(p), Data::I64(q)) => {
            if op.is_comparison() {
                let f: fn(i64, i64) -> bool = match op {
                    BinaryOp::Eq => |a, b| a == b,
                    BinaryOp::Ne => |a, b| a != b,
                    BinaryOp::Lt => |a, b| a < b,
                    _ => |a, b| a <= b,
                };
                Tensor::bool(shape, p.iter().zip(q).map(|(&a, &b)| f(a, b)).collect())
            } else {
                let f: fn(i64, i64) -> i64 = match op {
                    BinaryOp::Add => i64::wrapping_add,
                    BinaryOp::Sub => i64::wrapping_sub,
                    BinaryOp::Mul => i64::wrapping_mul,
                    BinaryOp::Div => |a, b| if b == 0 { 0 } else { a.wrapping_div(b) },
                    BinaryOp::Pow => |a, b| a.wrapping_pow(b.clamp(0, u32::MAX as i64) as u32),
                    BinaryOp::Max => i64::max,
                    BinaryOp::Min => i64::min,
                    _ => return Err(format!("`{}` on i64", Op::Binary(op).mnemonic())),
                };
                Tensor::i64(shape, p.iter().zip(q).map(|(&a, &b)| f(a, b)).collect())
            }
        }
        (Data::Bool(p), Data::Bool(q)) => {
            let f: fn(bool, bool) -> bool = match op {
                BinaryOp::And => |a, b| a && b,
                BinaryOp::Or => |a, b| a || b,
                BinaryOp::Eq => |a, b| a == b,
                BinaryOp::Ne => |a, b| a != b,
                _ => return Err(format!("`{}` on bool", Op::Binary(op).mnemonic())),
            };
            Tensor::bool(shape, p.iter().zip(q).map(|(&a, &b)| f(a, b)).collect())
        }
        _ => return Err("binary operands differ in dtype".into()),
    })
}

/// `[outer, axis, inner]` view of a shape around `axis`.
fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn reduce(op: ReduceOp, t: &Tensor, axis: usize) -> Tensor {
    let (outer, n, inner) = split3(&t.shape, axis);
    let mut shape = t.shape.clone();
    shape[axis] = 1;
    let v64 = t.to_f64();
    let mut out = vec![0f64; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let it = (0..n).map(|k| v64[(o * n + k) * inner + i]);
            out[o * inner + i] = match op {
                ReduceOp::Sum => it.sum(),
                ReduceOp::Max => it.fold(f64::NEG_INFINITY, f64::max),
            };
        }
    }
    match t.data {
        Data::F32(_) => Tensor::f32(shape, out.iter().map(|&x| x as f32).collect()),
        Data::Bf16(_) => Tensor::bf16(
            shape,
            out.iter().map(|&x| half::bf16::from_f64(x)).collect(),
        ),
        Data::I8(_) => Tensor::i8(shape, out.iter().map(|&x| x as i8).collect()),
        Data::I64(_) => Tensor::i64(shape, out.iter().map(|&x| x as i64).collect()),
        Data::Bool(_) => Tensor::bool(shape, out.iter().map(|&x| x != 0.0).collect()),
    }
}

fn gather_idx(t: &Tensor, idx: &[usize]) -> Tensor {
    match &t.data {
        Data::F32(v) => Tensor::f32(vec![idx.len()], idx.iter().map(|&i| v[i]).collect()),
        Data::Bf16(v) => Tensor::bf16(vec![idx.len()], idx.iter().map(|&i| v[i]).collect()),
        Data::I8(v) => Tensor::i8(vec![idx.len()], idx.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Tensor::i64(vec![idx.len()], idx.iter().map(|&i| v[i]).collect()),
        Data::Bool(v) => Tensor::bool(vec![idx.len()], idx.iter().map(|&i| v[i]).collect()),
    }
}

fn reshaped(mut t: Tensor, shape: Vec<usize>) -> Tensor {
    t.shape = shape;
    t
}

fn permute(t: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let ist = strides(&t.shape);
    let pst: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
    let n = t.numel();
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    let mut offs = Vec::with_capacity(n);
    for _ in 0..n {
        offs.push(off);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += pst[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= pst[d] * idx[d];
            idx[d] = 0;
        }
    }
    reshaped(gather_idx(t, &offs), shape)
}

fn slice(t: &Tensor, axis: usize, start: usize, end: usize) -> Tensor {
    let (outer, n, inner) = split3(&t.shape, axis);
    let mut offs = vec![];
    for o in 0..outer {
        for k in start..end {
            offs.extend((0..inner).map(|i| (o * n + k) * inner + i));
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = end - start;
    reshaped(gather_idx(t, &offs), shape)
}

fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let (outer, _, inner) = split3(&shape, axis);
    let mut f = vec![];
    let mut hv = vec![];
    let mut i8v = vec![];
    let mut iv = vec![];
    let mut bv = vec![];
    for o in 0..outer {
        for p in parts {
            let n = p.shape[axis];
            let range = o * n * inner..(o + 1) * n * inner;
            match &p.data {
                Data::F32(v) => f.extend_from_slice(&v[range]),
                Data::Bf16(v) => hv.extend_from_slice(&v[range]),
                Data::I8(v) => i8v.extend_from_slice(&v[range]),
                Data::I64(v) => iv.extend_from_slice(&v[range]),
                Data::Bool(v) => bv.extend_from_slice(&v[range]),
            }
        }
    }
    match parts[0].data {
        Data::F32(_) => Tensor::f32(shape, f),
        Data::Bf16(_) => Tensor::bf16(shape, hv),
        Data::I8(_) => Tensor::i8(shape, i8v),
        Data::I64(_) => Tensor::i64(shape, iv),
        Data::Bool(_) => Tensor::bool(shape, bv),
    }
}

/// Rows of `table` at the ids `idx` of the gather node `id` (named in errors).
pub fn gather(g: &Graph, id: NodeId, table: &Tensor, idx: &Tensor) -> Result<Tensor, String> {
    let rows = table.shape[0];
    let row: usize = table.shape[1..].iter().product();
    let ids = idx.as_i64().ok_or("gather indices must be i64")?;
    let mut offs = Vec::with_capacity(ids.len() * row);
    for &i in ids {
        if i < 0 || i as usize >= rows {
            let ops = g.operands(id);
            let what = |n: NodeId| match &g.node(n).op {
                Op::Input { name } => format!("input {name}"),
                Op::Param { ckpt, .. } => ckpt.clone(),
                _ => g
                    .node(n)
                    .name
                    .clone()
                    .unwrap_or_else(|| "a computed tensor".into()),
            };
            return Err(format!(
                "id {i} in `{}` is out of range: `{}` has {rows} rows (valid ids are 0..={})",
                what(ops[1]),
                what(ops[0]),
                rows.saturating_sub(1)
            ));
        }
        offs.extend((0..row).map(|k| i as usize * row + k));
    }
    let mut shape = idx.shape.clone();
    shape.extend_from_slice(&table.shape[1..]);
    Ok(reshaped(gather_idx(table, &offs), shape))
}

/// Rows of `src` summed into a `[N, ..row]` table (the base, or zeros) at the rows `idx`
/// names, in index order with f64 accumulation, rounded once at the end.
fn scatter_add(
    idx: &Tensor,
    src: &Tensor,
    base: Option<&Tensor>,
    shape: Vec<usize>,
) -> Result<Tensor, String> {
    let ids = idx.as_i64().ok_or("scatter_add indices must be i64")?;
    let rows = shape[0];
    let row: usize = shape[1..].iter().product();
    let v = src.as_f32().ok_or("scatter_add rows must be f32")?;
    let mut acc = match base {
        Some(t) => {
            let b = t.as_f32().ok_or("scatter_add base must be f32")?;
            if b.len() != rows * row {
                return Err(format!(
                    "scatter_add base has {} elements, the table {}",
                    b.len(),
                    rows * row
                ));
            }
            b.iter().map(|&x| x as f64).collect()
        }
        None => vec![0f64; rows * row],
    };
    for (k, &i) in ids.iter().enumerate() {
        if i < 0 || i as usize >= rows {
            return Err(format!(
                "scatter_add index {i} is out of range for a table of {rows} rows"
            ));
        }
        let dst = &mut acc[i as usize * row..][..row];
        for (d, &x) in dst.iter_mut().zip(&v[k * row..][..row]) {
            *d += x as f64;
        }
    }
    Ok(Tensor::f32(shape, acc.iter().map(|&x| x as f32).collect()))
}

fn shift(t: &Tensor, axis: usize, offset: i64, fillv: f64) -> Tensor {
    let (outer, n, inner) = split3(&t.shape, axis);
    let src = |o: usize, k: usize, i: usize| -> Option<usize> {
        let s = k as i64 + offset;
        (s >= 0 && (s as usize) < n).then(|| (o * n + s as usize) * inner + i)
    };
    macro_rules! go {
        ($v:expr, $fill:expr, $mk:path) => {{
            let mut out = Vec::with_capacity($v.len());
            for o in 0..outer {
                for k in 0..n {
                    for i in 0..inner {
                        out.push(src(o, k, i).map(|j| $v[j]).unwrap_or($fill));
                    }
                }
            }
            $mk(t.shape.clone(), out)
        }};
    }
    match &t.data {
        Data::F32(v) => go!(v, fillv as f32, Tensor::f32),
        Data::Bf16(v) => go!(v, half::bf16::from_f64(fillv), Tensor::bf16),
        Data::I8(v) => go!(v, fillv as i8, Tensor::i8),
        Data::I64(v) => go!(v, fillv as i64, Tensor::i64),
        Data::Bool(v) => go!(v, fillv != 0.0, Tensor::bool),
    }
}

/// `q · scale` per row: `q [.., N, K]` i8, `scale [.., N, 1]` f32, rounded once (in f32).
pub fn dequant(q: &Tensor, scale: &Tensor) -> Result<Tensor, String> {
    let (Some(q8), Some(s)) = (q.as_i8(), scale.as_f32()) else {
        return Err("dequant: needs i8 values and f32 scales".into());
    };
    let k = *q.shape.last().unwrap_or(&1);
    if s.len() * k != q8.len() {
        return Err(format!(
            "dequant: {} scales for {} values in rows of {k}",
            s.len(),
            q8.len()
        ));
    }
    let v = q8
        .chunks(k.max(1))
        .zip(s)
        .flat_map(|(row, &s)| row.iter().map(move |&x| x as f32 * s))
        .collect();
    Ok(Tensor::f32(q.shape.clone(), v))
}

/// Batched matmul with broadcast batch dims, f64 accumulation.
fn matmul(a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Tensor {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = a.shape[a.shape.len() - 1];
    let batch = &out_shape[..r - 2];
    let mut ashape = batch.to_vec();
    ashape.extend([m, k]);
    let mut bshape = batch.to_vec();
    bshape.extend([k, n]);
    // bf16 operands are exact in f32 (and their products in f64).
    let a = convert(&broadcast_to(a, &ashape), DType::F32);
    let b = convert(&broadcast_to(b, &bshape), DType::F32);
    let (av, bv) = (a.as_f32().expect("f32"), b.as_f32().expect("f32"));
    let nb: usize = batch.iter().product();
    let mut out = vec![0f32; nb * m * n];
    let mut acc = vec![0f64; n];
    for bi in 0..nb {
        let (ao, bo, oo) = (bi * m * k, bi * k * n, bi * m * n);
        for i in 0..m {
            acc.iter_mut().for_each(|x| *x = 0.0);
            for kk in 0..k {
                let x = av[ao + i * k + kk] as f64;
                let brow = &bv[bo + kk * n..bo + kk * n + n];
                for (s, &y) in acc.iter_mut().zip(brow) {
                    *s += x * y as f64;
                }
            }
            for (o, s) in out[oo + i * n..oo + i * n + n].iter_mut().zip(&acc) {
                *o = *s as f32;
            }
        }
    }
    Tensor::f32(out_shape.to_vec(), out)
}
