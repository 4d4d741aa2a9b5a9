//! Built-in functions of the language. Tensor builtins map onto IR ops one to one (or
//! onto a composite); everything else in the prelude is written in the DSL itself.

use super::eval::{as_f64, error, Args, Evaluator, MAX_STR_LEN, R};
use super::value::Value;
use crate::decompose::{attention_mask, normalize_axis};
use crate::ir::*;
use encdecc_dsl::{Diagnostic, Span};

const NAMES: &[&str] = &[
    "exp",
    "log",
    "tanh",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "abs",
    "sum",
    "amax",
    "mean",
    "reshape",
    "permute",
    "transpose",
    "unsqueeze",
    "expand",
    "slice",
    "concat",
    "gather",
    "shift",
    "where",
    "float",
    "int",
    "bool",
    "arange",
    "attention",
    "attention_mask",
    "cross_entropy",
    "maximum",
    "minimum",
    "len",
    "min",
    "max",
    "str",
];

pub fn lookup(name: &str) -> Option<&'static str> {
    NAMES.iter().find(|n| **n == name).copied()
}

impl Args {
    /// Argument `i` (positional) or `name` (named).
    fn get(&self, i: usize, name: &str) -> Option<&Value> {
        self.items
            .iter()
            .find(|a| a.name.as_ref().is_some_and(|n| n.node == name))
            .map(|a| &a.value)
            .or_else(|| {
                self.items
                    .iter()
                    .filter(|a| a.name.is_none())
                    .nth(i)
                    .map(|a| &a.value)
            })
    }
    fn span_of(&self, i: usize, name: &str) -> Span {
        self.items
            .iter()
            .find(|a| a.name.as_ref().is_some_and(|n| n.node == name))
            .or_else(|| self.items.iter().filter(|a| a.name.is_none()).nth(i))
            .map(|a| a.span)
            .unwrap_or(self.span)
    }
    fn req(&self, i: usize, name: &str) -> R<&Value> {
        self.get(i, name)
            .ok_or_else(|| Diagnostic::new(format!("missing argument `{name}`"), self.span))
    }
    fn tensor(&self, i: usize, name: &str) -> R<NodeId> {
        match self.req(i, name)? {
            Value::Tensor(n) => Ok(*n),
            v => error(
                format!("argument `{name}` must be a tensor, found {}", v.kind()),
                self.span_of(i, name),
            ),
        }
    }
    fn opt_tensor(&self, i: usize, name: &str) -> R<Option<NodeId>> {
        match self.get(i, name) {
            None | Some(Value::None) => Ok(None),
            Some(Value::Tensor(n)) => Ok(Some(*n)),
            Some(v) => error(
                format!(
                    "argument `{name}` must be a tensor or none, found {}",
                    v.kind()
                ),
                self.span_of(i, name),
            ),
        }
    }
    fn int(&self, i: usize, name: &str) -> R<i64> {
        match self.req(i, name)? {
            Value::Int(n) => Ok(*n),
            Value::Dim(Dim::Known(n)) => Ok(*n as i64),
            v => error(
                format!("argument `{name}` must be an int, found {}", v.kind()),
                self.span_of(i, name),
            ),
        }
    }
    fn opt_int(&self, i: usize, name: &str) -> R<Option<i64>> {
        match self.get(i, name) {
            None | Some(Value::None) => Ok(None),
            Some(_) => self.int(i, name).map(Some),
        }
    }
    fn float(&self, i: usize, name: &str) -> R<f64> {
        let v = self.req(i, name)?;
        as_f64(v).ok_or_else(|| {
            Diagnostic::new(
                format!("argument `{name}` must be a number, found {}", v.kind()),
                self.span_of(i, name),
            )
        })
    }
    fn opt_float(&self, i: usize, name: &str) -> R<Option<f64>> {
        match self.get(i, name) {
            None | Some(Value::None) => Ok(None),
            Some(_) => self.float(i, name).map(Some),
        }
    }
    fn str(&self, i: usize, name: &str) -> R<String> {
        match self.req(i, name)? {
            Value::Str(s) => Ok(s.to_string()),
            v => error(
                format!("argument `{name}` must be a string, found {}", v.kind()),
                self.span_of(i, name),
            ),
        }
    }
}

fn tensor(n: NodeId) -> R<Value> {
    Ok(Value::Tensor(n))
}

pub fn call(ev: &mut Evaluator, name: &str, a: Args) -> R<Value> {
    let sp = a.span;
    let unary = |ev: &mut Evaluator, u: UnaryOp, f: fn(f64) -> f64| -> R<Value> {
        match a.req(0, "x")? {
            Value::Tensor(n) => tensor(ev.add(Op::Unary(u), &[*n], None, sp)?),
            v => match as_f64(v) {
                Some(x) => Ok(Value::Float(f(x))),
                None => error(
                    format!("`{name}` takes a tensor or a number, found {}", v.kind()),
                    sp,
                ),
            },
        }
    };
    match name {
        "exp" => unary(ev, UnaryOp::Exp, f64::exp),
        "log" => unary(ev, UnaryOp::Log, f64::ln),
        "tanh" => unary(ev, UnaryOp::Tanh, f64::tanh),
        "sqrt" => unary(ev, UnaryOp::Sqrt, f64::sqrt),
        "rsqrt" => unary(ev, UnaryOp::Rsqrt, |x| 1.0 / x.sqrt()),
        "sin" => unary(ev, UnaryOp::Sin, f64::sin),
        "cos" => unary(ev, UnaryOp::Cos, f64::cos),
        "abs" => unary(ev, UnaryOp::Abs, f64::abs),
        "sum" | "amax" | "mean" => {
            let x = a.tensor(0, "x")?;
            let ty = ev.ty(x);
            let axis = axis_arg(ev, &a, 1, x)?;
            let op = if name == "amax" {
                ReduceOp::Max
            } else {
                ReduceOp::Sum
            };
            let r = ev.add(Op::Reduce { op, axis }, &[x], None, sp)?;
            if name != "mean" {
                return tensor(r);
            }
            let Some(n) = ty.shape.0[axis].known() else {
                return error("`mean` over a symbolic axis", sp);
            };
            let c = ev.constant(n as f64, ty.dtype, sp)?;
            tensor(ev.add(Op::Binary(BinaryOp::Div), &[r, c], None, sp)?)
        }
        "reshape" => {
            let x = a.tensor(0, "x")?;
            let ty = ev.ty(x);
            let Value::List(dims) = a.req(1, "shape")? else {
                return error("`reshape` takes a list of dimensions", sp);
            };
            let mut out = vec![];
            for (i, d) in dims.iter().enumerate() {
                out.push(match d {
                    Value::Keep => ty.shape.0.get(i).cloned().ok_or_else(|| {
                        Diagnostic::new(
                            format!(
                                "`_` at position {i} but the input has rank {}",
                                ty.shape.rank()
                            ),
                            sp,
                        )
                    })?,
                    Value::Int(n) if *n >= 0 => Dim::Known(*n as u64),
                    Value::Dim(d) => d.clone(),
                    v => return error(format!("bad reshape dimension {}", v.brief()), sp),
                });
            }
            let t = TensorType {
                dtype: ty.dtype,
                shape: Shape(out),
            };
            tensor(ev.add(Op::Reshape, &[x], Some(t), sp)?)
        }
        "permute" => {
            let x = a.tensor(0, "x")?;
            let Value::List(p) = a.req(1, "perm")? else {
                return error("`permute` takes a list of axes", sp);
            };
            let perm = p
                .iter()
                .map(|v| match v {
                    Value::Int(i) if *i >= 0 => Ok(*i as usize),
                    _ => error("bad axis", sp),
                })
                .collect::<R<Vec<_>>>()?;
            tensor(ev.add(Op::Permute { perm }, &[x], None, sp)?)
        }
        "transpose" => {
            let x = a.tensor(0, "x")?;
            let r = ev.ty(x).shape.rank();
            if r < 2 {
                return error("`transpose` needs rank >= 2", sp);
            }
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 1, r - 2);
            tensor(ev.add(Op::Permute { perm }, &[x], None, sp)?)
        }
        "unsqueeze" => {
            let x = a.tensor(0, "x")?;
            let ty = ev.ty(x);
            let ax = a.int(1, "axis")?;
            let r = ty.shape.rank() as i64 + 1;
            let ax = if ax < 0 { ax + r } else { ax };
            if ax < 0 || ax >= r {
                return error(format!("axis out of range for rank {}", r - 1), sp);
            }
            let mut s = ty.shape.0.clone();
            s.insert(ax as usize, Dim::Known(1));
            tensor(ev.add(
                Op::Reshape,
                &[x],
                Some(TensorType {
                    dtype: ty.dtype,
                    shape: Shape(s),
                }),
                sp,
            )?)
        }
        "expand" => {
            let x = a.tensor(0, "x")?;
            let ty = ev.ty(x);
            let Value::List(dims) = a.req(1, "shape")? else {
                return error("`expand` takes a list of dimensions", sp);
            };
            let s = dims
                .iter()
                .map(|d| match d {
                    Value::Int(n) if *n >= 0 => Ok(Dim::Known(*n as u64)),
                    Value::Dim(d) => Ok(d.clone()),
                    v => error(format!("bad dimension {}", v.brief()), sp),
                })
                .collect::<R<Vec<_>>>()?;
            tensor(ev.add(
                Op::Expand,
                &[x],
                Some(TensorType {
                    dtype: ty.dtype,
                    shape: Shape(s),
                }),
                sp,
            )?)
        }
        "slice" => {
            let x = a.tensor(0, "x")?;
            let axis = axis_arg(ev, &a, 1, x)?;
            let (start, end) = (a.int(2, "start")?, a.int(3, "end")?);
            if start < 0 || end < 0 {
                return error("slice bounds must be non-negative", sp);
            }
            tensor(ev.add(
                Op::Slice {
                    axis,
                    start: start as u64,
                    end: end as u64,
                },
                &[x],
                None,
                sp,
            )?)
        }
        "concat" => {
            let Value::List(items) = a.req(0, "xs")? else {
                return error("`concat` takes a list of tensors", sp);
            };
            let nodes = items
                .iter()
                .map(|v| match v {
                    Value::Tensor(n) => Ok(*n),
                    _ => error("`concat` takes a list of tensors", sp),
                })
                .collect::<R<Vec<_>>>()?;
            let first = *nodes
                .first()
                .ok_or_else(|| Diagnostic::new("`concat` of nothing", sp))?;
            let axis = axis_arg(ev, &a, 1, first)?;
            tensor(ev.add(Op::Concat { axis }, &nodes, None, sp)?)
        }
        "gather" => {
            let (t, i) = (a.tensor(0, "table")?, a.tensor(1, "indices")?);
            tensor(ev.add(Op::Gather, &[t, i], None, sp)?)
        }
        "shift" => {
            let x = a.tensor(0, "x")?;
            let axis = axis_arg(ev, &a, 1, x)?;
            let offset = a.int(2, "offset")?;
            let fill = a.float(3, "fill")?;
            tensor(ev.add(
                Op::Shift {
                    axis,
                    offset,
                    fill: F64(fill),
                },
                &[x],
                None,
                sp,
            )?)
        }
        "where" => {
            let c = a.tensor(0, "cond")?;
            let (x, y) = (a.req(1, "a")?.clone(), a.req(2, "b")?.clone());
            let dt = match (&x, &y) {
                (Value::Tensor(n), _) | (_, Value::Tensor(n)) => ev.ty(*n).dtype,
                (Value::Int(_), Value::Int(_)) => DType::I64,
                _ => DType::F32,
            };
            let xn = ev.to_node(&x, dt, sp)?;
            let yn = ev.to_node(&y, dt, sp)?;
            tensor(ev.add(Op::Where, &[c, xn, yn], None, sp)?)
        }
        "float" | "int" | "bool" => {
            let v = a.req(0, "x")?.clone();
            match (name, &v) {
                (_, Value::Tensor(n)) => {
                    let ty = ev.ty(*n);
                    let dtype = match name {
                        "float" => DType::F32,
                        "int" => DType::I64,
                        _ => DType::Bool,
                    };
                    if dtype == ty.dtype {
                        return Ok(v);
                    }
                    tensor(ev.add(
                        Op::Cast,
                        &[*n],
                        Some(TensorType {
                            dtype,
                            shape: ty.shape,
                        }),
                        sp,
                    )?)
                }
                ("float", _) => as_f64(&v).map(Value::Float).ok_or_else(|| {
                    Diagnostic::new(format!("cannot convert {} to float", v.kind()), sp)
                }),
                // Truncation toward zero, as Python's `int`; what no i64 holds is an error.
                ("int", Value::Float(f)) if f.is_finite() && f.abs() < i64::MAX as f64 => {
                    Ok(Value::Int(*f as i64))
                }
                ("int", Value::Float(f)) => error(
                    format!(
                        "`int({})`: the value does not fit in 64 bits",
                        crate::ir::print::fmt_f64(*f)
                    ),
                    sp,
                ),
                ("int", Value::Int(_)) => Ok(v),
                ("int", Value::Str(s)) => s
                    .parse()
                    .map(Value::Int)
                    .map_err(|_| Diagnostic::new(format!("`{s}` is not an int"), sp)),
                _ => error(format!("cannot convert {} with `{name}`", v.kind()), sp),
            }
        }
        "arange" => {
            let n = match a.req(0, "n")? {
                Value::Int(n) if *n >= 0 => Dim::Known(*n as u64),
                Value::Dim(d) => d.clone(),
                v => return error(format!("`arange` takes a length, found {}", v.kind()), sp),
            };
            let t = TensorType {
                dtype: DType::I64,
                shape: Shape(vec![n]),
            };
            tensor(ev.add(Op::Iota { axis: 0 }, &[], Some(t), sp)?)
        }
        "attention" => {
            let (q, k, v) = (a.tensor(0, "q")?, a.tensor(1, "k")?, a.tensor(2, "v")?);
            let mask = a.opt_tensor(3, "key_mask")?;
            if a.get(usize::MAX, "scale").is_none() {
                return error(
                    "attention needs `scale:` (HF uses query_pre_attn_scalar ** -0.5)",
                    sp,
                );
            }
            let attrs = attention_attrs(&a)?;
            let mut ops = vec![q, k, v];
            if let Some(m) = mask {
                ops.push(bool_mask(ev, m, sp)?);
            }
            tensor(ev.add(Op::Attention(attrs), &ops, None, sp)?)
        }
        "attention_mask" => {
            let (q, k) = (a.tensor(0, "q")?, a.tensor(1, "k")?);
            let mask = match a.opt_tensor(2, "key_mask")? {
                Some(m) => Some(bool_mask(ev, m, sp)?),
                None => None,
            };
            let attrs = attention_attrs(&a)?;
            let m = attention_mask(&mut ev.graph, q, k, mask, &attrs)
                .map_err(|e| Diagnostic::new(e, sp))?;
            tensor(m)
        }
        "cross_entropy" => {
            let (l, y) = (a.tensor(0, "logits")?, a.tensor(1, "labels")?);
            let ignore_index = a.opt_int(2, "ignore_index")?.unwrap_or(-100);
            tensor(ev.add(Op::CrossEntropy { ignore_index }, &[l, y], None, sp)?)
        }
        "maximum" | "minimum" => {
            let (x, y) = (a.req(0, "a")?.clone(), a.req(1, "b")?.clone());
            let dt = match (&x, &y) {
                (Value::Tensor(n), _) | (_, Value::Tensor(n)) => ev.ty(*n).dtype,
                _ => {
                    return error(
                        format!("`{name}` takes tensors; use `min`/`max` for numbers"),
                        sp,
                    )
                }
            };
            let (xn, yn) = (ev.to_node(&x, dt, sp)?, ev.to_node(&y, dt, sp)?);
            let op = if name == "maximum" {
                BinaryOp::Max
            } else {
                BinaryOp::Min
            };
            tensor(ev.add(Op::Binary(op), &[xn, yn], None, sp)?)
        }
        "len" => match a.req(0, "x")? {
            Value::List(l) => Ok(Value::Int(l.len() as i64)),
            Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
            v => error(format!("`len` of a {}", v.kind()), sp),
        },
        "min" | "max" => {
            let (x, y) = (a.float(0, "a")?, a.float(1, "b")?);
            // Two ints exactly, not through f64 (which rounds above 2^53).
            if let (Value::Int(i), Value::Int(j)) = (a.req(0, "a")?, a.req(1, "b")?) {
                return Ok(Value::Int(if name == "min" {
                    *i.min(j)
                } else {
                    *i.max(j)
                }));
            }
            Ok(Value::Float(if name == "min" {
                x.min(y)
            } else {
                x.max(y)
            }))
        }
        "str" => {
            let text = a.req(0, "x")?.display_capped(MAX_STR_LEN).ok_or_else(|| {
                Diagnostic::new(
                    format!(
                        "`str` would give a string longer than the limit of {MAX_STR_LEN} bytes"
                    ),
                    sp,
                )
            })?;
            ev.burn(text.len() as u64, sp)?;
            Ok(Value::Str(text.into()))
        }
        other => error(format!("unknown builtin `{other}`"), sp),
    }
}

fn axis_arg(ev: &Evaluator, a: &Args, i: usize, x: NodeId) -> R<usize> {
    let rank = ev.ty(x).shape.rank();
    let ax = a.int(i, "axis")?;
    normalize_axis(ax, rank).ok_or_else(|| {
        Diagnostic::new(
            format!("axis {ax} out of range for rank {rank}"),
            a.span_of(i, "axis"),
        )
    })
}

/// Padding masks arrive as ints (HF's `attention_mask`); attention wants bool.
fn bool_mask(ev: &mut Evaluator, m: NodeId, sp: Span) -> R<NodeId> {
    let ty = ev.ty(m);
    if ty.dtype == DType::Bool {
        return Ok(m);
    }
    let zero = ev.constant(0.0, ty.dtype, sp)?;
    ev.add(Op::Binary(BinaryOp::Ne), &[m, zero], None, sp)
}

fn attention_attrs(a: &Args) -> R<AttentionAttrs> {
    let mode = match a.str(usize::MAX, "mode")?.as_str() {
        "causal" => AttnMode::Causal,
        "bidirectional" => AttnMode::Bidirectional,
        m => {
            return error(
                format!("attention mode must be \"causal\" or \"bidirectional\", found \"{m}\""),
                a.span_of(usize::MAX, "mode"),
            )
        }
    };
    let window_rule = match a.get(usize::MAX, "window_rule") {
        None => WindowRule::Inclusive,
        Some(_) => match a.str(usize::MAX, "window_rule")?.as_str() {
            "inclusive" => WindowRule::Inclusive,
            "exclusive" => WindowRule::Exclusive,
            r => return error(format!("window_rule must be \"inclusive\" (|i-j| <= W) or \"exclusive\" (|i-j| < W), found \"{r}\""), a.span_of(usize::MAX, "window_rule")),
        },
    };
    let window = match a.opt_int(usize::MAX, "window")? {
        None => None,
        Some(w) if w > 0 => Some(w as u64),
        Some(w) => {
            return error(
                format!("window must be positive, found {w}"),
                a.span_of(usize::MAX, "window"),
            )
        }
    };
    let softcap = a.opt_float(usize::MAX, "softcap")?.map(F64);
    // Masks do not depend on the scale; attention itself insists on one.
    let scale = a.opt_float(usize::MAX, "scale")?.unwrap_or(1.0);
    Ok(AttentionAttrs {
        mode,
        window,
        window_rule,
        softcap,
        scale: F64(scale),
    })
}
