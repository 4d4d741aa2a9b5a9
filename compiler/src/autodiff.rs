//! Reverse-mode automatic differentiation as a graph → graph transform.
//!
//! The forward graph is decomposed into primitives, then every node on a path from a
//! differentiated parameter to the loss gets a vector-Jacobian product written as more
//! primitives of the same graph. The result is an ordinary graph (forward outputs plus one
//! gradient output per parameter), so it goes through the same passes, fusion and codegen
//! as a forward graph, and the reference interpreter checks it.
//!
//! Gradients of a value used several times are summed in a fixed order (users in reverse
//! topological order), so the program — and its floating-point results — are deterministic.

use crate::decompose::{decompose_attention, decompose_where};
use crate::ir::*;
use std::collections::{HashMap, HashSet};

type Res<T> = Result<T, String>;

/// What to differentiate.
#[derive(Clone, Debug, Default)]
pub struct GradRequest {
    /// The output to differentiate: an f32 value with one element (such as `loss`).
    pub loss: String,
    /// Parameters (DSL paths) to differentiate with respect to; `None` means all of them.
    pub wrt: Option<Vec<String>>,
}

/// A forward graph extended with gradients.
#[derive(Clone, Debug)]
pub struct GradGraph {
    pub graph: Graph,
    /// `(parameter path, name of the output holding its gradient)`, in parameter order.
    pub grads: Vec<(String, String)>,
}

/// The output name under which the gradient of parameter `path` is returned.
pub fn grad_output(path: &str) -> String {
    format!("grad.{path}")
}

/// Differentiates `req.loss` with respect to the selected parameters. Parameters that the
/// loss does not depend on get zero gradients, so the result always has one gradient per
/// selected parameter.
pub fn differentiate(forward: &Graph, req: &GradRequest) -> Res<GradGraph> {
    let mut g = forward.clone();
    // Attention and cross-entropy stay whole: their gradients are the composites
    // `attention_grad` (one fused backward pass; defined by this module's rules on the
    // decomposition) and `cross_entropy_grad` (softmax minus one-hot, as torch computes it).
    decompose_where(&mut g, |op| {
        !matches!(op, Op::Attention(_) | Op::CrossEntropy { .. })
    })?;
    let loss = g.output(&req.loss).ok_or_else(|| {
        let names: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "the graph has no output `{}` to differentiate (outputs: {})",
            req.loss,
            names.join(", ")
        )
    })?;
    let lt = g.node(loss).ty.clone();
    if lt.dtype != DType::F32 || lt.shape.numel() != Some(1) {
        return Err(format!(
            "`{}` must be an f32 value with one element to differentiate, not {lt}",
            req.loss
        ));
    }
    let params = select_params(&g, req.wrt.as_deref())?;
    let sources: Vec<NodeId> = params.iter().map(|(_, p)| *p).collect();
    let relevant = relevant_nodes(&g, &sources, loss);

    let mut ad = Ad {
        g: &mut g,
        acc: HashMap::new(),
        relevant,
    };
    let one = ad.cnst(1.0)?;
    let seed = ad.expand(one, &lt.shape)?;
    ad.acc.insert(loss, seed);
    ad.backprop()?;

    let mut grads = vec![];
    for (path, p) in params {
        let gp = match ad.acc.get(&p) {
            Some(&gp) => gp,
            None => {
                let zero = ad.cnst(0.0)?;
                let shape = ad.g.node(p).ty.shape.clone();
                ad.expand(zero, &shape)?
            }
        };
        let name = grad_output(&path);
        ad.g.set_name(gp, &name);
        ad.g.outputs.push((name.clone(), gp));
        grads.push((path, name));
    }
    crate::ir::verify::debug_verify(&g, "autodiff");
    Ok(GradGraph { graph: g, grads })
}

/// The parameters to differentiate, by path, in topological order; one node per path.
fn select_params(g: &Graph, wrt: Option<&[String]>) -> Res<Vec<(String, NodeId)>> {
    let mut all: Vec<(String, NodeId)> = vec![];
    let mut seen = HashSet::new();
    for p in g.params() {
        if let Op::Param { path, .. } = &g.node(p).op {
            if g.node(p).ty.dtype == DType::F32 && seen.insert(path.clone()) {
                all.push((path.clone(), p));
            }
        }
    }
    let Some(wrt) = wrt else { return Ok(all) };
    let mut out = vec![];
    for w in wrt {
        match all.iter().find(|(p, _)| p == w) {
            Some(x) => out.push(x.clone()),
            None => return Err(format!("no f32 parameter `{w}` to differentiate")),
        }
    }
    Ok(out)
}

/// Nodes on some path from one of `sources` to `target`, through f32 values.
fn relevant_nodes(g: &Graph, sources: &[NodeId], target: NodeId) -> HashSet<NodeId> {
    let mut from_params: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = sources.to_vec();
    while let Some(n) = stack.pop() {
        if g.node(n).ty.dtype != DType::F32 || !from_params.insert(n) {
            continue;
        }
        stack.extend(g.users(n).into_iter().map(|(u, _)| u));
    }
    let mut relevant = HashSet::new();
    let mut stack = vec![target];
    while let Some(n) = stack.pop() {
        if !from_params.contains(&n) || !relevant.insert(n) {
            continue;
        }
        stack.extend(g.operands(n));
    }
    relevant
}

/// The gradients with respect to operands `wrts` of `attention_grad` nodes that share
/// `ops` (`q, k, v, dout`, optional mask): attention decomposed into primitives, then
/// differentiated with this module's rules. This is the composite's definition.
pub(crate) fn attention_grads(
    g: &mut Graph,
    ops: &[NodeId],
    attrs: &AttentionAttrs,
    wrts: &[AttnOperand],
) -> Res<Vec<NodeId>> {
    // One fresh node per operand slot: each gradient is a partial derivative, even when
    // the same value fills two slots.
    let mut slots = vec![];
    for &x in &ops[..3] {
        let t = g.node(x).ty.clone();
        slots.push(g.add(Op::Reshape, &[x], Some(t))?);
    }
    let mut aops = slots.clone();
    aops.extend(ops.get(4));
    let att = decompose_attention(g, &aops, attrs)?;
    let targets: Vec<NodeId> = wrts.iter().map(|w| slots[w.position()]).collect();
    let relevant = relevant_nodes(g, &targets, att);
    let mut ad = Ad {
        g,
        acc: HashMap::from([(att, ops[3])]),
        relevant,
    };
    ad.backprop()?;
    let mut out = vec![];
    for t in targets {
        out.push(match ad.acc.get(&t) {
            Some(&d) => d,
            None => {
                let zero = ad.cnst(0.0)?;
                let shape = ad.ty(t).shape;
                ad.expand(zero, &shape)?
            }
        });
    }
    Ok(out)
}

struct Ad<'a> {
    g: &'a mut Graph,
    /// The gradient accumulated so far for each node.
    acc: HashMap<NodeId, NodeId>,
    /// The nodes whose gradients are wanted: on a path from a source to the seed.
    relevant: HashSet<NodeId>,
}

impl Ad<'_> {
    /// Pushes the seeded gradients back through every relevant node, users before
    /// operands.
    fn backprop(&mut self) -> Res<()> {
        let order = self.g.topo_order();
        for &n in order.iter().rev() {
            if !self.relevant.contains(&n) {
                continue;
            }
            let Some(&gn) = self.acc.get(&n) else {
                continue;
            };
            let ops = self.g.operands(n);
            for (i, contrib) in self.vjp(n, &ops, gn)? {
                if self.relevant.contains(&ops[i]) {
                    self.accumulate(ops[i], contrib)?;
                }
            }
        }
        Ok(())
    }

    fn ty(&self, n: NodeId) -> TensorType {
        self.g.node(n).ty.clone()
    }

    fn cnst(&mut self, v: f64) -> Res<NodeId> {
        self.g.add(
            Op::Const { value: F64(v) },
            &[],
            Some(TensorType {
                dtype: DType::F32,
                shape: Shape::scalar(),
            }),
        )
    }

    fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Res<NodeId> {
        self.g.add(Op::Binary(op), &[a, b], None)
    }

    fn un(&mut self, op: UnaryOp, a: NodeId) -> Res<NodeId> {
        self.g.add(Op::Unary(op), &[a], None)
    }

    fn mul_c(&mut self, a: NodeId, c: f64) -> Res<NodeId> {
        let k = self.cnst(c)?;
        self.bin(BinaryOp::Mul, a, k)
    }

    fn select(&mut self, c: NodeId, a: NodeId, b: NodeId) -> Res<NodeId> {
        self.g.add(Op::Where, &[c, a, b], None)
    }

    fn reshape(&mut self, x: NodeId, shape: &Shape) -> Res<NodeId> {
        if self.ty(x).shape == *shape {
            return Ok(x);
        }
        let dtype = self.ty(x).dtype;
        self.g.add(
            Op::Reshape,
            &[x],
            Some(TensorType {
                dtype,
                shape: shape.clone(),
            }),
        )
    }

    fn expand(&mut self, x: NodeId, shape: &Shape) -> Res<NodeId> {
        if self.ty(x).shape == *shape {
            return Ok(x);
        }
        let dtype = self.ty(x).dtype;
        self.g.add(
            Op::Expand,
            &[x],
            Some(TensorType {
                dtype,
                shape: shape.clone(),
            }),
        )
    }

    fn permute(&mut self, x: NodeId, perm: Vec<usize>) -> Res<NodeId> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.g.add(Op::Permute { perm }, &[x], None)
    }

    fn sum(&mut self, x: NodeId, axis: usize) -> Res<NodeId> {
        self.g.add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axis,
            },
            &[x],
            None,
        )
    }

    /// Swaps the last two axes.
    fn transpose(&mut self, x: NodeId) -> Res<NodeId> {
        let r = self.ty(x).shape.rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(x, perm)
    }

    fn accumulate(&mut self, n: NodeId, contrib: NodeId) -> Res<()> {
        let total = match self.acc.get(&n) {
            Some(&prev) => match self.scatter_onto(prev, contrib)? {
                Some(s) => s,
                None => self.bin(BinaryOp::Add, prev, contrib)?,
            },
            None => contrib,
        };
        self.acc.insert(n, total);
        Ok(())
    }

    /// Sums a gradient of a broadcast result back to the shape of the operand that was
    /// broadcast: over leading axes the operand lacks and over its size-1 axes.
    fn unbroadcast(&mut self, gr: NodeId, to: &Shape) -> Res<NodeId> {
        let from = self.ty(gr).shape;
        if from == *to {
            return Ok(gr);
        }
        let lead = from.rank() - to.rank();
        let mut x = gr;
        for axis in 0..from.rank() {
            let reduce = axis < lead
                || (to.0[axis - lead] == Dim::Known(1) && from.0[axis] != Dim::Known(1));
            if reduce {
                x = self.sum(x, axis)?;
            }
        }
        self.reshape(x, to)
    }

    /// The gradient of a sliced value, as zeros around `gr` along `axis`.
    fn pad(&mut self, gr: NodeId, axis: usize, before: u64, after: u64) -> Res<NodeId> {
        let shape = self.ty(gr).shape;
        let mut parts = vec![];
        for (n, is_grad) in [(before, false), (0, true), (after, false)] {
            if is_grad {
                parts.push(gr);
            } else if n > 0 {
                let mut s = shape.clone();
                s.0[axis] = Dim::Known(n);
                let zero = self.cnst(0.0)?;
                parts.push(self.expand(zero, &s)?);
            }
        }
        if parts.len() == 1 {
            return Ok(gr);
        }
        self.g.add(Op::Concat { axis }, &parts, None)
    }

    /// The vector-Jacobian product of node `n` (operands `x`, result gradient `gr`):
    /// `(operand position, gradient contribution)` for each differentiable operand.
    fn vjp(&mut self, n: NodeId, x: &[NodeId], gr: NodeId) -> Res<Vec<(usize, NodeId)>> {
        let op = self.g.node(n).op.clone();
        let shape_of = |s: &Self, i: usize| s.ty(x[i]).shape;
        Ok(match op {
            Op::Param { .. } | Op::Input { .. } | Op::Const { .. } | Op::Iota { .. } => vec![],
            // int8 weights serve inference only (training refuses `--dtype int8`).
            Op::Dequant => vec![],
            Op::Unary(u) => {
                let d = match u {
                    UnaryOp::Neg => self.un(UnaryOp::Neg, gr)?,
                    UnaryOp::Exp => self.bin(BinaryOp::Mul, gr, n)?,
                    UnaryOp::Log => self.bin(BinaryOp::Div, gr, x[0])?,
                    UnaryOp::Tanh => {
                        // 1 - y²
                        let y2 = self.bin(BinaryOp::Mul, n, n)?;
                        let one = self.cnst(1.0)?;
                        let d = self.bin(BinaryOp::Sub, one, y2)?;
                        self.bin(BinaryOp::Mul, gr, d)?
                    }
                    UnaryOp::Sqrt => {
                        let two_y = self.mul_c(n, 2.0)?;
                        self.bin(BinaryOp::Div, gr, two_y)?
                    }
                    UnaryOp::Rsqrt => {
                        // d x^-1/2 = -1/2 · y³
                        let y2 = self.bin(BinaryOp::Mul, n, n)?;
                        let y3 = self.bin(BinaryOp::Mul, y2, n)?;
                        let d = self.mul_c(y3, -0.5)?;
                        self.bin(BinaryOp::Mul, gr, d)?
                    }
                    UnaryOp::Sin => {
                        let c = self.un(UnaryOp::Cos, x[0])?;
                        self.bin(BinaryOp::Mul, gr, c)?
                    }
                    UnaryOp::Cos => {
                        let s = self.un(UnaryOp::Sin, x[0])?;
                        let d = self.bin(BinaryOp::Mul, gr, s)?;
                        self.un(UnaryOp::Neg, d)?
                    }
                    UnaryOp::Abs => {
                        // sign(x), 0 at 0 as torch.
                        let zero = self.cnst(0.0)?;
                        let pos = self.bin(BinaryOp::Lt, zero, x[0])?;
                        let neg = self.bin(BinaryOp::Lt, x[0], zero)?;
                        let ng = self.un(UnaryOp::Neg, gr)?;
                        let inner = self.select(neg, ng, zero)?;
                        self.select(pos, gr, inner)?
                    }
                    UnaryOp::Not => return Ok(vec![]),
                };
                vec![(0, d)]
            }
            Op::Binary(b) => {
                let (a, c) = (x[0], x[1]);
                let (ga, gb) = match b {
                    BinaryOp::Add => (gr, gr),
                    BinaryOp::Sub => (gr, self.un(UnaryOp::Neg, gr)?),
                    BinaryOp::Mul => (
                        self.bin(BinaryOp::Mul, gr, c)?,
                        self.bin(BinaryOp::Mul, gr, a)?,
                    ),
                    BinaryOp::Div => {
                        let ga = self.bin(BinaryOp::Div, gr, c)?;
                        // d(a/b)/db = -y/b
                        let gy = self.bin(BinaryOp::Mul, gr, n)?;
                        let q = self.bin(BinaryOp::Div, gy, c)?;
                        (ga, self.un(UnaryOp::Neg, q)?)
                    }
                    BinaryOp::Pow => {
                        // d a^b/da = b·a^(b-1); d a^b/db = y·ln a
                        let one = self.cnst(1.0)?;
                        let bm1 = self.bin(BinaryOp::Sub, c, one)?;
                        let p = self.bin(BinaryOp::Pow, a, bm1)?;
                        let d = self.bin(BinaryOp::Mul, c, p)?;
                        let ga = self.bin(BinaryOp::Mul, gr, d)?;
                        let la = self.un(UnaryOp::Log, a)?;
                        let d = self.bin(BinaryOp::Mul, n, la)?;
                        (ga, self.bin(BinaryOp::Mul, gr, d)?)
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        // The gradient goes to the operand that was picked (the first one on ties).
                        let first = match b {
                            BinaryOp::Max => self.bin(BinaryOp::Le, c, a)?,
                            _ => self.bin(BinaryOp::Le, a, c)?,
                        };
                        let zero = self.cnst(0.0)?;
                        (self.select(first, gr, zero)?, self.select(first, zero, gr)?)
                    }
                    _ => return Ok(vec![]),
                };
                let (sa, sb) = (shape_of(self, 0), shape_of(self, 1));
                vec![
                    (0, self.unbroadcast(ga, &sa)?),
                    (1, self.unbroadcast(gb, &sb)?),
                ]
            }
            Op::Where => {
                let zero = self.cnst(0.0)?;
                let ga = self.select(x[0], gr, zero)?;
                let gb = self.select(x[0], zero, gr)?;
                let (sa, sb) = (shape_of(self, 1), shape_of(self, 2));
                vec![
                    (1, self.unbroadcast(ga, &sa)?),
                    (2, self.unbroadcast(gb, &sb)?),
                ]
            }
            Op::Cast => {
                if self.ty(x[0]).dtype == DType::F32 {
                    vec![(0, gr)]
                } else {
                    vec![]
                }
            }
            Op::Reduce { op, axis } => {
                let s = shape_of(self, 0);
                let d = match op {
                    ReduceOp::Sum => self.expand(gr, &s)?,
                    ReduceOp::Max => {
                        // Shared equally among the maxima, as torch's amax.
                        let hit = self.bin(BinaryOp::Eq, x[0], n)?;
                        let hitf = self.g.add(
                            Op::Cast,
                            &[hit],
                            Some(TensorType {
                                dtype: DType::F32,
                                shape: s.clone(),
                            }),
                        )?;
                        let count = self.sum(hitf, axis)?;
                        let share = self.bin(BinaryOp::Div, gr, count)?;
                        let zero = self.cnst(0.0)?;
                        let d = self.select(hit, share, zero)?;
                        self.expand(d, &s)?
                    }
                };
                vec![(0, d)]
            }
            Op::Reshape => {
                let s = shape_of(self, 0);
                vec![(0, self.reshape(gr, &s)?)]
            }
            Op::Permute { perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                let d = match self.transposed_product(gr, &inv)? {
                    Some(d) => d,
                    None => self.permute(gr, inv)?,
                };
                vec![(0, d)]
            }
            Op::Expand => {
                let s = shape_of(self, 0);
                vec![(0, self.unbroadcast(gr, &s)?)]
            }
            Op::Slice { axis, start, end } => {
                let s = shape_of(self, 0);
                let n_in = s.0[axis].known().ok_or("slice of a symbolic axis")?;
                vec![(0, self.pad(gr, axis, start, n_in - end)?)]
            }
            Op::Concat { axis } => {
                let mut out = vec![];
                let mut off = 0;
                for (i, &xi) in x.iter().enumerate() {
                    let len = self.ty(xi).shape.0[axis]
                        .known()
                        .ok_or("concat along a symbolic axis")?;
                    let part = self.g.add(
                        Op::Slice {
                            axis,
                            start: off,
                            end: off + len,
                        },
                        &[gr],
                        None,
                    )?;
                    out.push((i, part));
                    off += len;
                }
                out
            }
            Op::Gather => vec![(0, self.scatter_add(x[0], x[1], gr)?)],
            // Each row of the source lands in one row of the table: read it back from there.
            Op::ScatterAdd => {
                let mut v = vec![(1, self.g.add(Op::Gather, &[gr, x[0]], None)?)];
                if x.len() == 3 {
                    v.push((2, gr));
                }
                v
            }
            Op::Shift { axis, offset, .. } => {
                let d = self.g.add(
                    Op::Shift {
                        axis,
                        offset: -offset,
                        fill: F64(0.0),
                    },
                    &[gr],
                    None,
                )?;
                vec![(0, d)]
            }
            Op::MatMul => {
                let (sa, sb) = (shape_of(self, 0), shape_of(self, 1));
                let bt = self.transpose(x[1])?;
                let ga = self.g.add(Op::MatMul, &[gr, bt], None)?;
                let gb = self.matmul_rhs_grad(x[0], gr, &sb)?;
                vec![(0, self.unbroadcast(ga, &sa)?), (1, gb)]
            }
            Op::Attention(attrs) => {
                let mut gops = vec![x[0], x[1], x[2], gr];
                gops.extend(x.get(3));
                let mut out = vec![];
                for wrt in AttnOperand::ALL {
                    if self.relevant.contains(&x[wrt.position()]) {
                        let op = Op::AttentionGrad {
                            attrs: attrs.clone(),
                            wrt,
                        };
                        out.push((wrt.position(), self.g.add(op, &gops, None)?));
                    }
                }
                out
            }
            Op::CrossEntropy { ignore_index } => {
                let gr = self.reshape(gr, &Shape::known(&[1]))?;
                let op = Op::CrossEntropyGrad { ignore_index };
                vec![(0, self.g.add(op, &[x[0], x[1], gr], None)?)]
            }
            Op::AttentionGrad { .. } | Op::CrossEntropyGrad { .. } => {
                return Err(format!(
                    "`{}` cannot be differentiated again",
                    op.mnemonic()
                ))
            }
        })
    }

    /// `(a · b)ᵀ` as `bᵀ · aᵀ` when `gr` is a 2-D product this module just made and `perm`
    /// swaps its axes: the gradient of a weight used transposed (`x · Wᵀ`) then comes out
    /// of one GEMM in the weight's own layout (the operand transposes are read in place),
    /// instead of a GEMM and a materialised transpose.
    fn transposed_product(&mut self, gr: NodeId, perm: &[usize]) -> Res<Option<NodeId>> {
        if perm != [1, 0]
            || !matches!(self.g.node(gr).op, Op::MatMul)
            || !self.g.users(gr).is_empty()
            // Also the gradient of another node (an `add`'s operands share it).
            || self.acc.values().filter(|&&v| v == gr).count() > 1
        {
            return Ok(None);
        }
        let ops = self.g.operands(gr);
        if self.ty(ops[0]).shape.rank() != 2 || self.ty(ops[1]).shape.rank() != 2 {
            return Ok(None);
        }
        let bt = self.transpose(ops[1])?;
        let at = self.transpose(ops[0])?;
        Ok(Some(self.g.add(Op::MatMul, &[bt, at], None)?))
    }

    /// `aᵀ · g` summed to the shape of `b`. When `b` is a matrix shared by a batch of
    /// rows with known sizes (a weight), the batch is folded into the contraction — one
    /// GEMM instead of a batch of them and a reduction.
    fn matmul_rhs_grad(&mut self, a: NodeId, gr: NodeId, sb: &Shape) -> Res<NodeId> {
        let sa = self.ty(a).shape;
        let sg = self.ty(gr).shape;
        if sb.rank() == 2 && sa.rank() > 2 && sg.rank() == sa.rank() {
            let rows: Option<u64> = sa.0[..sa.rank() - 1].iter().map(|d| d.known()).product();
            if let Some(rows) = rows {
                let k = sa.0[sa.rank() - 1].clone();
                let nn = sg.0[sg.rank() - 1].clone();
                let a2 = self.reshape(a, &Shape(vec![Dim::Known(rows), k]))?;
                let g2 = self.reshape(gr, &Shape(vec![Dim::Known(rows), nn]))?;
                let at = self.transpose(a2)?;
                return self.g.add(Op::MatMul, &[at, g2], None);
            }
        }
        let at = self.transpose(a)?;
        let gb = self.g.add(Op::MatMul, &[at, gr], None)?;
        self.unbroadcast(gb, sb)
    }

    /// `a + b` when one of them is a table-sized gather gradient made here (a plain
    /// `scatter_add`, used nowhere else yet): its rows scattered onto the other instead —
    /// a tied embedding's gradient, which would otherwise add two [vocab, d] tensors (2 ms
    /// on an H200 for Gemma 2's 256k vocabulary) after zeroing one of them.
    fn scatter_onto(&mut self, a: NodeId, b: NodeId) -> Res<Option<NodeId>> {
        for (s, other) in [(b, a), (a, b)] {
            let fresh = matches!(self.g.node(s).op, Op::ScatterAdd)
                && self.g.operands(s).len() == 2
                && self.g.users(s).is_empty()
                && self.ty(other) == self.ty(s);
            if fresh {
                let ops = self.g.operands(s);
                let ty = self.ty(s);
                return Ok(Some(self.g.add(
                    Op::ScatterAdd,
                    &[ops[0], ops[1], other],
                    Some(ty),
                )?));
            }
        }
        Ok(None)
    }

    /// The gradient of `gather(table, idx)` with respect to the table: the result rows
    /// summed into the rows they were read from.
    fn scatter_add(&mut self, table: NodeId, idx: NodeId, gr: NodeId) -> Res<NodeId> {
        let ty = self.ty(table);
        self.g.add(Op::ScatterAdd, &[idx, gr], Some(ty))
    }
}
