//! The CPU backend: the graph is fused into a kernel program (loop kernels plus library
//! steps) and executed with loop kernels from the LLVM JIT, matmuls and attention from
//! `gemm`, and the reference interpreter's routines for the remaining movement ops.

pub mod attention;
pub mod attention_grad;
mod finite;
pub mod gemv;
pub mod loops;
pub mod lowp;
pub mod matmul;
pub mod movement;
pub mod plan;
pub mod pool;
pub mod reduce;
mod simd;

use crate::finite::{Checked, Checks, Tracker};
use crate::interp::{self, Bindings};
use crate::tensor::{Data, Tensor};
use encdecc_compiler::fuse::{lower, KernelProgram, Step};
use encdecc_compiler::ir::*;
use encdecc_compiler::kernel::KernelFn;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub struct CpuModel {
    pub program: KernelProgram,
    /// Compiled kernels by index (`None`: run by the evaluator).
    functions: Vec<Option<KernelFn>>,
    /// Keeps the JIT's code alive.
    _jit: Option<Box<dyn std::any::Any>>,
    /// Transposes that matmuls read in place (never materialised).
    views: HashSet<NodeId>,
    /// int8 weights (`dequant`) that matmuls (directly or through a transpose) and gathers
    /// read from their i8 values and scales (never materialised).
    dequants: HashSet<NodeId>,
    /// Layers of stacked tensors read in place: `reshape(slice(stack, 0, i, i + 1))` (the
    /// DSL's `layer_of`, a decode step's caches) maps to `(stack, i)`; the slice is skipped.
    layers: HashMap<NodeId, (NodeId, usize)>,
    layer_slices: HashSet<NodeId>,
    /// Per step, the values it reads (`step_inputs`), and the last step reading each value:
    /// known before the first run, so a decode step does not recompute them per token.
    reads: Vec<Vec<NodeId>>,
    last_use: HashMap<NodeId, usize>,
    /// The parameter and input nodes, bound first in every run.
    leaves: Vec<NodeId>,
    pub threads: usize,
    /// Off by default; `checks.finite` scans every value a step stores (`finite.rs`).
    pub checks: Checks,
    /// The most bytes the last run held at once in values it allocated (its inputs and
    /// parameters in place are not counted): the executor allocates each value when it is
    /// made and frees it after its last use, so this is what the run really took, beside
    /// the memory plan's arena (`plan.rs`).
    last_peak_bytes: std::sync::atomic::AtomicU64,
}

/// Bytes a run holds in the values it allocated, now and at most.
#[derive(Default)]
struct Held {
    now: u64,
    peak: u64,
}

impl Held {
    fn put<'a>(&mut self, vals: &mut HashMap<NodeId, Cow<'a, Tensor>>, n: NodeId, t: Tensor) {
        self.now += t.bytes();
        if let Some(Cow::Owned(old)) = vals.insert(n, Cow::Owned(t)) {
            self.now -= old.bytes();
        }
        self.peak = self.peak.max(self.now);
    }

    fn drop_value(&mut self, vals: &mut HashMap<NodeId, Cow<Tensor>>, n: NodeId) {
        if let Some(Cow::Owned(t)) = vals.remove(&n) {
            self.now -= t.bytes();
        }
    }
}

/// `[0, 1, …, r-1, r-2]`: a transpose of the last two axes.
fn is_last2_swap(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2
}

pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Prepares a graph for the CPU: cross-entropy is decomposed (attention stays one kernel),
/// then fused and compiled.
pub fn prepare(graph: &Graph) -> Result<CpuModel, String> {
    let program = lower(graph)?;
    let g = &program.graph;
    let views = program
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Node(n) => Some(*n),
            _ => None,
        })
        .filter(|&n| {
            let Op::Permute { perm } = &g.node(n).op else {
                return false;
            };
            let users = g.users(n);
            let transpose = is_last2_swap(perm)
                && users
                    .iter()
                    .all(|(u, pos)| matches!(g.node(*u).op, Op::MatMul) && *pos <= 1);
            // The head transpose `[B, T, H, D] -> [B, H, T, D]` in front of attention: the
            // kernel reads q, k and v with a row stride of H·D instead.
            let heads = *perm == [0, 2, 1, 3]
                && users.iter().all(|(u, pos)| match g.node(*u).op {
                    Op::Attention(_) => *pos <= 2,
                    // q, k, v and dout.
                    Op::AttentionGrad { .. } => *pos <= 3,
                    _ => false,
                });
            (transpose || heads) && !users.is_empty() && !g.outputs.iter().any(|(_, o)| *o == n)
        })
        .collect();
    let dequants = dequant_views(&program, &views);
    let (layers, layer_slices) = layer_views(&program);
    let (functions, jit) = compile_kernels(&program)?;
    let mut m = CpuModel {
        functions,
        _jit: jit,
        views,
        dequants,
        layers,
        layer_slices,
        reads: vec![],
        last_use: HashMap::new(),
        leaves: vec![],
        program,
        threads: threads(),
        checks: Checks::default(),
        last_peak_bytes: Default::default(),
    };
    m.reads = m.program.steps.iter().map(|s| m.step_inputs(s)).collect();
    let g = &m.program.graph;
    // Leaves nothing reads are not bound: a decode step's graph holds every parameter of
    // the model, and converting the unused encoder weights to its dtype on every token
    // (bf16 weights loaded for another entry) cost 10× the step.
    let is_output = |n: NodeId| g.outputs.iter().any(|(_, o)| *o == n);
    m.leaves = g
        .dag
        .node_indices()
        .filter(|&n| matches!(g.node(n).op, Op::Param { .. } | Op::Input { .. }))
        .filter(|&n| !g.users(n).is_empty() || is_output(n))
        .collect();
    for (i, r) in m.reads.iter().enumerate() {
        for &o in r {
            m.last_use.insert(o, i);
        }
    }
    Ok(m)
}

/// `dequant` steps whose every user reads the weight in place: a matmul, a transpose that
/// only matmuls read (`views`), or a gather's table.
fn dequant_views(p: &KernelProgram, views: &HashSet<NodeId>) -> HashSet<NodeId> {
    let g = &p.graph;
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Node(n) if matches!(g.node(*n).op, Op::Dequant) => Some(*n),
            _ => None,
        })
        .filter(|&n| {
            let users = g.users(n);
            !users.is_empty()
                && !g.outputs.iter().any(|(_, o)| *o == n)
                && users.iter().all(|&(u, pos)| match g.node(u).op {
                    Op::MatMul => true,
                    Op::Gather => pos == 0,
                    _ => views.contains(&u),
                })
        })
        .collect()
}

/// `reshape(slice(stack, axis 0, i, i + 1))` dropping the sliced axis, where the slice has no
/// other user and the reshape is read only by loop kernels and as attention's q, k or v:
/// both read the layer in place, a contiguous range of `stack`, instead of a copy of it.
#[allow(clippy::type_complexity)]
fn layer_views(p: &KernelProgram) -> (HashMap<NodeId, (NodeId, usize)>, HashSet<NodeId>) {
    let g = &p.graph;
    let nodes: HashSet<NodeId> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Node(n) => Some(*n),
            _ => None,
        })
        .collect();
    let is_output = |n: NodeId| g.outputs.iter().any(|(_, o)| *o == n);
    let (mut layers, mut slices) = (HashMap::new(), HashSet::new());
    for &r in &nodes {
        if !matches!(g.node(r).op, Op::Reshape) || is_output(r) {
            continue;
        }
        let sl = g.operands(r)[0];
        let Op::Slice {
            axis: 0,
            start,
            end,
        } = g.node(sl).op
        else {
            continue;
        };
        let users = g.users(r);
        let in_place = nodes.contains(&sl)
            && end == start + 1
            && !is_output(sl)
            && g.users(sl).len() == 1
            && g.node(r).ty.shape.0[..] == g.node(sl).ty.shape.0[1..]
            && !users.is_empty()
            && users.iter().all(|(u, pos)| {
                // A user that is no step of its own is inside a loop kernel.
                !nodes.contains(u) || matches!(g.node(*u).op, Op::Attention(_)) && *pos <= 2
            });
        if in_place {
            layers.insert(r, (g.operands(sl)[0], start as usize));
            slices.insert(sl);
        }
    }
    (layers, slices)
}

#[allow(clippy::type_complexity)]
fn compile_kernels(
    p: &KernelProgram,
) -> Result<(Vec<Option<KernelFn>>, Option<Box<dyn std::any::Any>>), String> {
    match encdecc_codegen::compile(&p.kernels) {
        Ok(ck) => {
            let fns = p.kernels.iter().map(|k| ck.get(&k.name)).collect();
            Ok((fns, Some(Box::new(ck))))
        }
        // Built without LLVM: the kernels are evaluated directly (same results, slower).
        Err(e) if e == encdecc_codegen::WITHOUT_LLVM => Ok((vec![None; p.kernels.len()], None)),
        // Debug and test builds fail loudly: a rejected kernel is a fusion bug.
        Err(e) if cfg!(debug_assertions) => Err(format!("compiling loop kernels: {e}")),
        // A JIT failure on an odd host should cost speed, not the run.
        Err(e) => {
            eprintln!("warning: LLVM could not compile the loop kernels ({e}); evaluating them directly (slow)");
            Ok((vec![None; p.kernels.len()], None))
        }
    }
}

impl CpuModel {
    /// Runs the program; with `checks.finite`, a non-finite output is an error naming the
    /// step that first produced a non-finite value on its way.
    pub fn run(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, String> {
        self.run_checked(params, inputs)?.into_result()
    }

    /// `run`, with the finite check's report beside the outputs instead of as the error.
    pub fn run_checked(
        &self,
        params: &HashMap<String, Tensor>,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Checked, String> {
        let g = &self.program.graph;
        let b = interp::bind_inputs(g, inputs)?;
        let mut vals: HashMap<NodeId, Cow<Tensor>> = HashMap::with_capacity(self.leaves.len());
        for &n in &self.leaves {
            match &g.node(n).op {
                Op::Param { path, .. } => {
                    let t = params
                        .get(path)
                        .ok_or(format!("no value for parameter `{path}`"))?;
                    // A weight the graph stores in bf16 is best loaded so
                    // (`HostProgram::stored`); else it is rounded here, on every run.
                    let v = match (&t.data, g.node(n).ty.dtype) {
                        (Data::F32(_), DType::Bf16) | (Data::Bf16(_), DType::F32) => {
                            Cow::Owned(interp::convert(t, g.node(n).ty.dtype))
                        }
                        _ => Cow::Borrowed(t),
                    };
                    vals.insert(n, v);
                }
                Op::Input { name } => {
                    let t = inputs.get(name).ok_or(format!("missing input `{name}`"))?;
                    // Read in place when the dtype already fits: a decode step's caches
                    // are inputs, and copying them every token costs bandwidth.
                    let want = g.node(n).ty.dtype;
                    let v = if t.dtype_name() == want.name() {
                        Cow::Borrowed(t)
                    } else {
                        Cow::Owned(interp::convert(t, want))
                    };
                    vals.insert(n, v);
                }
                _ => {}
            }
        }
        let mut held = Held::default();
        for v in vals.values() {
            if let Cow::Owned(t) = v {
                held.now += t.bytes();
            }
        }
        held.peak = held.now;
        let mut tracker = self.checks.finite.then(Tracker::default);
        if let Some(t) = &mut tracker {
            self.record_leaves(&vals, t);
        }
        // Values die after their last reading step (outputs live to the end).
        let last_use = &self.last_use;
        let keep: HashSet<NodeId> = g.outputs.iter().map(|(_, n)| *n).collect();
        // ENCDECC_PROFILE=1 prints where the time went, per kind of step.
        let profile = std::env::var_os("ENCDECC_PROFILE").is_some();
        let mut spent: HashMap<&'static str, (f64, usize)> = HashMap::new();
        let profile_kernels = std::env::var("ENCDECC_PROFILE").is_ok_and(|v| v == "kernels");
        let mut per_kernel: HashMap<String, (f64, usize)> = HashMap::new();
        for (i, s) in self.program.steps.iter().enumerate() {
            let t0 = std::time::Instant::now();
            match s {
                Step::Loop {
                    kernel,
                    space,
                    inputs,
                    outputs,
                } => {
                    let space = interp::resolve(space, &b)?;
                    let k = &self.program.kernels[*kernel];
                    let ins: Vec<loops::Input> = inputs
                        .iter()
                        .map(|n| match self.layer(*n, &vals) {
                            Some((t, offset, shape)) => loops::Input {
                                tensor: t,
                                offset,
                                shape,
                            },
                            None => loops::Input::whole(vals[n].as_ref()),
                        })
                        .collect();
                    let mut outs = loops::alloc_outputs(k, &space);
                    loops::run_inputs(
                        k,
                        self.functions[*kernel],
                        &space,
                        &ins,
                        &mut outs,
                        self.threads,
                    );
                    for (n, t) in outputs.iter().zip(outs) {
                        held.put(&mut vals, *n, t);
                    }
                }
                Step::Node(n) => {
                    let reshape_of = match g.node(*n).op {
                        Op::Reshape => Some(g.operands(*n)[0]),
                        _ => None,
                    };
                    match reshape_of {
                        _ if self.is_view(*n)
                            || self.layers.contains_key(n)
                            || self.layer_slices.contains(n) => {}
                        // A reshape of a value read for the last time takes its buffer.
                        Some(o)
                            if last_use.get(&o) == Some(&i)
                                && !keep.contains(&o)
                                && matches!(vals[&o], Cow::Owned(_)) =>
                        {
                            let mut t = vals.remove(&o).expect("live").into_owned();
                            held.now -= t.bytes();
                            t.shape = interp::resolve(&g.node(*n).ty.shape, &b)?;
                            held.put(&mut vals, *n, t);
                        }
                        // The gradients of one attention come out of one pass: the first
                        // of them computes its siblings too.
                        _ if matches!(g.node(*n).op, Op::AttentionGrad { .. }) => {
                            if !vals.contains_key(n) {
                                for (id, t) in self.attention_grads(*n, &vals)? {
                                    held.put(&mut vals, id, t);
                                }
                            }
                        }
                        _ => {
                            let t = self.node(*n, &vals, &b)?;
                            held.put(&mut vals, *n, t);
                        }
                    }
                }
            }
            if let Some(t) = &mut tracker {
                self.record_step(i, s, &vals, t);
            }
            if profile_kernels {
                let key = match s {
                    Step::Loop { space, .. } => {
                        Some(format!("loop {:?}", interp::resolve(space, &b)?))
                    }
                    // Matmuls by operand shapes; `ᵀ` marks a transpose read in place.
                    Step::Node(n) if matches!(g.node(*n).op, Op::MatMul) => {
                        let operand = |o: NodeId| {
                            let t = if self.views.contains(&o) { "ᵀ" } else { "" };
                            let shape = interp::resolve(&g.node(o).ty.shape, &b);
                            format!("{:?}{t}", shape.unwrap_or_default())
                        };
                        let ops = g.operands(*n);
                        Some(format!("matmul {} · {}", operand(ops[0]), operand(ops[1])))
                    }
                    _ => None,
                };
                if let Some(key) = key {
                    let e = per_kernel.entry(key).or_insert((0.0, 0));
                    e.0 += t0.elapsed().as_secs_f64() * 1e3;
                    e.1 += 1;
                }
            }
            if profile {
                let kind = match s {
                    Step::Loop { .. } => "loop kernel",
                    Step::Node(n)
                        if self.is_view(*n)
                            || self.layers.contains_key(n)
                            || self.layer_slices.contains(n) =>
                    {
                        "view"
                    }
                    Step::Node(n) => g.node(*n).op.mnemonic(),
                };
                let e = spent.entry(kind).or_default();
                e.0 += t0.elapsed().as_secs_f64() * 1e3;
                e.1 += 1;
            }
            for o in &self.reads[i] {
                if last_use.get(o) == Some(&i) && !keep.contains(o) {
                    held.drop_value(&mut vals, *o);
                }
            }
        }
        self.last_peak_bytes
            .store(held.peak, std::sync::atomic::Ordering::Relaxed);
        if profile {
            let mut v: Vec<_> = spent.into_iter().collect();
            v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            for (k, (ms, n)) in v {
                eprintln!("{k:>14} {ms:9.1} ms  {n:5} steps");
            }
            let mut v: Vec<_> = per_kernel.into_iter().collect();
            v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            for (k, (ms, n)) in v.into_iter().take(40) {
                eprintln!("{ms:9.1} ms  {n:5}x  {k}");
            }
        }
        // Outputs are moved out (a decode step's logits are 128 KB), copied only when one
        // value is two outputs or is borrowed (a parameter or input returned as is).
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, n)) in g.outputs.iter().enumerate() {
            let t = match g.outputs[i + 1..].iter().any(|(_, m)| m == n) {
                true => vals[n].clone().into_owned(),
                false => vals
                    .remove(n)
                    .expect("outputs live to the end")
                    .into_owned(),
            };
            out.insert(name.clone(), t);
        }
        Ok(Checked {
            outputs: out,
            non_finite: tracker.and_then(|t| self.non_finite(&t)),
        })
    }

    /// A `[B, H, T, D]` operand of attention: its f32 elements (`None`: not f32), layout and
    /// logical shape. A head transpose of `[B, T, H, D]` and a layer of a stacked tensor are
    /// read in place.
    fn heads_operand<'a>(
        &self,
        o: NodeId,
        vals: &'a HashMap<NodeId, Cow<Tensor>>,
    ) -> (Option<&'a [f32]>, attention::Layout, [usize; 4]) {
        let g = &self.program.graph;
        if self.views.contains(&o) {
            let u = vals[&g.operands(o)[0]].as_ref();
            let sh = [u.shape[0], u.shape[2], u.shape[1], u.shape[3]];
            (u.as_f32(), attention::Layout::TimeMajor, sh)
        } else if let Some((t, offset, s)) = self.layer(o, vals) {
            let n = s.iter().product::<usize>();
            let x = t.as_f32().map(|v| &v[offset..offset + n]);
            (x, attention::Layout::HeadsMajor, [s[0], s[1], s[2], s[3]])
        } else {
            let x = vals[&o].as_ref();
            let sh = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
            (x.as_f32(), attention::Layout::HeadsMajor, sh)
        }
    }

    /// Attention's `q, k, v` (read in place: f32 slices and their layouts, in the shapes)
    /// and its key mask.
    #[allow(clippy::type_complexity)]
    fn attention_operands<'a>(
        &self,
        ops: &[NodeId],
        mask: Option<&NodeId>,
        vals: &'a HashMap<NodeId, Cow<Tensor>>,
    ) -> Result<(attention::AttnShapes, [&'a [f32]; 3], Option<&'a [bool]>), String> {
        let [(q, lq, qs), (k, lk, ks), (v, lv, vs)] =
            [0, 1, 2].map(|i| self.heads_operand(ops[i], vals));
        let s = attention::AttnShapes {
            b: qs[0],
            hq: qs[1],
            hk: ks[1],
            tq: qs[2],
            tk: ks[2],
            d: qs[3],
            dv: vs[3],
            layout: [lq, lk, lv],
        };
        let mask = match mask {
            Some(m) => match &vals[m].data {
                crate::tensor::Data::Bool(m) if m.len() == s.b * s.tk => Some(m.as_slice()),
                _ => return Err("attention: the key mask is not bool [B, Tk]".into()),
            },
            None => None,
        };
        let (Some(q), Some(k), Some(v)) = (q, k, v) else {
            return Err("attention: q, k, v must be f32".into());
        };
        Ok((s, [q, k, v], mask))
    }

    /// A layer of a stacked tensor read in place (`layer_views`): the stack, the layer's
    /// first element, and its shape (the stack's without the leading axis).
    fn layer<'a>(
        &self,
        n: NodeId,
        vals: &'a HashMap<NodeId, Cow<Tensor>>,
    ) -> Option<(&'a Tensor, usize, &'a [usize])> {
        let &(stack, i) = self.layers.get(&n)?;
        let t = vals[&stack].as_ref();
        let shape = &t.shape[1..];
        Some((t, i * shape.iter().product::<usize>(), shape))
    }

    /// The `attention_grad` node `n` and every sibling (same operands and attributes,
    /// another `wrt`), computed in one backward pass.
    fn attention_grads(
        &self,
        n: NodeId,
        vals: &HashMap<NodeId, Cow<Tensor>>,
    ) -> Result<Vec<(NodeId, Tensor)>, String> {
        let g = &self.program.graph;
        let ops = g.operands(n);
        let Op::AttentionGrad { attrs, .. } = &g.node(n).op else {
            return Err("internal: not an attention gradient".into());
        };
        let group = encdecc_compiler::decompose::attention_grad_siblings(g, n);
        let (s, [q, k, v], mask) = self.attention_operands(&ops, ops.get(4), vals)?;
        let (dout, ldout, _) = self.heads_operand(ops[3], vals);
        let dout = dout.ok_or("attention_grad: dout must be f32")?;
        let has = |w: AttnOperand| group.iter().any(|(_, x)| *x == w);
        let want = attention_grad::Want {
            q: has(AttnOperand::Q),
            k: has(AttnOperand::K),
            v: has(AttnOperand::V),
        };
        let input = attention_grad::GradIn {
            q,
            k,
            v,
            dout,
            dout_layout: ldout,
            mask,
        };
        let mut gr = attention_grad::attention_grad(attrs, &s, &input, want, self.threads);
        Ok(group
            .into_iter()
            .map(|(u, w)| {
                let (data, shape) = match w {
                    AttnOperand::Q => (std::mem::take(&mut gr.dq), [s.hq, s.tq, s.d]),
                    AttnOperand::K => (std::mem::take(&mut gr.dk), [s.hk, s.tk, s.d]),
                    AttnOperand::V => (std::mem::take(&mut gr.dv), [s.hk, s.tk, s.dv]),
                };
                (
                    u,
                    Tensor::f32(vec![s.b, shape[0], shape[1], shape[2]], data),
                )
            })
            .collect())
    }

    /// The most bytes the last run held at once in the values it allocated.
    pub fn last_peak_bytes(&self) -> u64 {
        self.last_peak_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The i8 values and f32 row scales of the int8 weight `dequant` node `n`.
    pub(super) fn int8_weight<'a>(
        &self,
        n: NodeId,
        vals: &'a HashMap<NodeId, Cow<Tensor>>,
    ) -> [&'a Tensor; 2] {
        let ops = self.program.graph.operands(n);
        [vals[&ops[0]].as_ref(), vals[&ops[1]].as_ref()]
    }

    /// A transpose that matmuls read in place, or an int8 weight read from its bytes.
    pub fn is_view(&self, n: NodeId) -> bool {
        self.views.contains(&n) || self.dequants.contains(&n)
    }

    /// The values a step reads (through views, the viewed value; through layers read in
    /// place, the stack).
    pub fn step_inputs(&self, s: &Step) -> Vec<NodeId> {
        let g = &self.program.graph;
        // A transpose view reads its operand, which may be an int8 weight (its values and
        // scales).
        let dequant = |o: NodeId| match self.dequants.contains(&o) {
            true => g.operands(o),
            false => vec![o],
        };
        let read = |o: NodeId| match self.layers.get(&o) {
            Some(&(stack, _)) => vec![stack],
            None if self.views.contains(&o) => {
                g.operands(o).into_iter().flat_map(dequant).collect()
            }
            None => dequant(o),
        };
        match s {
            Step::Loop { inputs, .. } => inputs.iter().flat_map(|&o| read(o)).collect(),
            Step::Node(n) => g.operands(*n).into_iter().flat_map(read).collect(),
        }
    }

    fn node(
        &self,
        n: NodeId,
        vals: &HashMap<NodeId, Cow<Tensor>>,
        b: &Bindings,
    ) -> Result<Tensor, String> {
        let g = &self.program.graph;
        let node = g.node(n);
        let ops = g.operands(n);
        match &node.op {
            Op::MatMul => self.matmul(n, &ops, vals, b),
            Op::Gather if self.dequants.contains(&ops[0]) => {
                // Rows of the int8 table, dequantised: an embedding lookup reads B·T rows,
                // not the table.
                let [q, s] = self.int8_weight(ops[0], vals);
                let ids = vals[&ops[1]].as_ref();
                let rows = interp::gather(g, n, q, ids)?;
                let scales = interp::gather(g, n, s, ids)?;
                let mut t = interp::dequant(&rows, &scales)?;
                t.shape = interp::resolve(&node.ty.shape, b)?;
                Ok(t)
            }
            Op::Permute { perm } if perm.last() == Some(&(perm.len() - 1)) => {
                Ok(movement::permute_rows(vals[&ops[0]].as_ref(), perm))
            }
            Op::Permute { perm } if is_last2_swap(perm) => {
                Ok(movement::transpose_last2(vals[&ops[0]].as_ref()))
            }
            Op::Slice { axis, start, end } => Ok(movement::slice(
                vals[&ops[0]].as_ref(),
                *axis,
                *start as usize,
                *end as usize,
            )),
            Op::Attention(a) => {
                let (s, [qv, kv, vv], mask) = self.attention_operands(&ops, ops.get(3), vals)?;
                let mut out = vec![0f32; s.b * s.hq * s.tq * s.dv];
                attention::attention(a, &s, qv, kv, vv, mask, &mut out, self.threads);
                Ok(Tensor::f32(vec![s.b, s.hq, s.tq, s.dv], out))
            }
            Op::Reduce { op, axis } if node.ty.dtype == DType::F32 => {
                reduce::reduce_f32(*op, vals[&ops[0]].as_ref(), *axis)
                    .ok_or_else(|| "internal: f32 reduction of a non-f32 value".to_string())
            }
            _ => {
                let args: Vec<&Tensor> = ops.iter().map(|o| vals[o].as_ref()).collect();
                interp::eval_node(g, n, node, &args, &HashMap::new(), &HashMap::new(), b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use encdecc_compiler::ir::parse::parse_graph;

    /// An input given in another dtype than the graph's is converted as the interpreter
    /// does (ids as i64 for an f32 input); one in the graph's dtype is read in place.
    #[test]
    fn inputs_of_another_dtype_are_converted() {
        let g = parse_graph(
            "graph g {\n  %0 = input \"x\" : f32[3]\n  %1 = add %0, %0 : f32[3]\n  out \"y\" = %1\n}",
        )
        .expect("parses");
        let m = prepare(&g).expect("prepares");
        let inputs = HashMap::from([("x".to_string(), Tensor::i64(vec![3], vec![1, 2, -3]))]);
        let got = m.run(&HashMap::new(), &inputs).expect("runs");
        assert_eq!(got["y"], Tensor::f32(vec![3], vec![2.0, 4.0, -6.0]));
        assert_eq!(
            got["y"],
            interp::run(&g, &HashMap::new(), &inputs).unwrap()["y"]
        );
    }

    /// Layer 1 of a stacked input is attention's keys and layer 2 feeds a loop kernel whose
    /// result is the values, both read in place; a layer that is also an output is copied.
    /// Results equal the reference interpreter's (the loop kernel bit for bit).
    #[test]
    fn layers_of_a_stack_are_read_in_place() {
        let g = parse_graph(
            r#"graph g {
  %0 = input "q" : f32[B, 2, 1, 4]
  %1 = input "stack" : f32[3, B, 2, 5, 4]
  %2 = slice[axis=0, start=1, end=2] %1 : f32[1, B, 2, 5, 4]
  %3 = reshape %2 : f32[B, 2, 5, 4]
  %4 = slice[axis=0, start=2, end=3] %1 : f32[1, B, 2, 5, 4]
  %5 = reshape %4 : f32[B, 2, 5, 4]
  %6 = add %5, %5 : f32[B, 2, 5, 4]
  %7 = attention[mode=bidirectional, window=none, rule=inclusive, softcap=none, scale=0.5] %0, %3, %6 : f32[B, 2, 1, 4]
  %8 = slice[axis=0, start=0, end=1] %1 : f32[1, B, 2, 5, 4]
  %9 = reshape %8 : f32[B, 2, 5, 4]
  out "o" = %7
  out "d" = %6
  out "layer0" = %9
}"#,
        )
        .expect("parses");
        let m = prepare(&g).expect("prepares");
        assert_eq!(m.layers.len(), 2, "layers 1 and 2 in place, not the output");
        let mut rng = Rng::new(7);
        let mut t = |shape: Vec<usize>| {
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| rng.uniform() - 0.5).collect())
        };
        let inputs = HashMap::from([
            ("q".to_string(), t(vec![2, 2, 1, 4])),
            ("stack".to_string(), t(vec![3, 2, 2, 5, 4])),
        ]);
        let cpu = m.run(&HashMap::new(), &inputs).expect("cpu runs");
        let want = interp::run(&g, &HashMap::new(), &inputs).expect("reference runs");
        assert_eq!(cpu["d"], want["d"]);
        assert_eq!(cpu["layer0"], want["layer0"]);
        let (o, w) = (cpu["o"].as_f32().unwrap(), want["o"].as_f32().unwrap());
        assert!(
            o.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-6),
            "{o:?} vs {w:?}"
        );
    }
}
