//! The evaluator: runs `.edl` code at elaboration time. Compile-time values are computed
//! directly; tensor operations add nodes to the graph. Blocks are instantiated once per
//! member (creating their parameters), entry points are run once per compiled graph.

use super::value::{Instance, Record, Value};
use crate::ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, Shape, TensorType, UnaryOp, F64};
use encdecc_dsl::ast::*;
use encdecc_dsl::{Diagnostic, Span};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub type R<T> = Result<T, Diagnostic>;

pub fn error<T>(msg: impl Into<String>, span: Span) -> R<T> {
    Err(Diagnostic::new(msg, span))
}

/// A parameter of the model as the checkpoint sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub path: String,
    pub ckpt: String,
    pub shape: Vec<u64>,
    pub node: NodeId,
}

pub(crate) struct Frame {
    scopes: Vec<HashMap<String, Value>>,
    inst: Option<Rc<Instance>>,
    /// Prefix for value names: the instance's path, or for a plain function its caller's.
    path: String,
}

pub enum Flow {
    Normal,
    Return(Value),
}

pub struct Evaluator {
    pub graph: Graph,
    pub globals: HashMap<String, Value>,
    pub configs: HashMap<String, Rc<ConfigDef>>,
    pub params: Vec<ParamInfo>,
    params_by_path: HashMap<String, NodeId>,
    /// Tied parameter (absolute path) → the parameter it aliases.
    ties: HashMap<String, (String, Span)>,
    pub probes: bool,
    frames: Vec<Frame>,
    depth: usize,
    /// Expressions being evaluated, nested through calls (see [`MAX_EVAL_DEPTH`]).
    eval_depth: usize,
    /// Evaluation steps left (see [`FUEL`]).
    pub(crate) fuel: u64,
    /// Set when a budget on steps, nodes or list lengths stopped elaboration, so that the
    /// driver can name the `--set` overrides that may have caused it.
    pub(crate) over_budget: bool,
    /// Elements of every parameter so far (see [`MAX_PARAM_ELEMENTS`]).
    param_elements: u64,
}

const MAX_DEPTH: usize = 200;

/// Expressions nested inside one another, counting through calls and blocks: the evaluator
/// recurses on the Rust stack, and calls ([`MAX_DEPTH`]) times nesting (the parser's limit)
/// could otherwise overflow it. 9b-9b reaches 17; 2000 fits a 2 MiB thread.
const MAX_EVAL_DEPTH: usize = 2000;

// Budgets: bounds on what any `.edl` program or `--set` override can make elaboration do,
// so that a runaway value (`--set encoder.num_hidden_layers=100000000000`, `0..2**62`, a
// string doubled in a loop, exponential recursion) ends as a diagnostic, never as an
// allocation abort or a hang. Each is far above what real models need: T5Gemma 9b-9b
// (42+42 layers, 1180 parameters holding 20.3e9 elements, the largest 917e6) takes 59e3
// evaluation steps and 14e3 nodes.

/// Elements of one compile-time list (a range, a comprehension, a concatenation, a
/// `repeat`): 2^20.
pub const MAX_LIST_LEN: u64 = 1 << 20;
/// Bytes of one compile-time string: 2^20.
pub const MAX_STR_LEN: usize = 1 << 20;
/// Evaluation steps of one elaboration: every expression evaluated, loop iteration, list
/// element or string byte built, and list element compared or type-checked costs one.
/// 2^24 (17e6, 280 times what 9b-9b takes) steps take seconds at most.
pub const FUEL: u64 = 1 << 24;
/// Graph nodes of one elaboration: 2^20 (70 times what 9b-9b makes).
pub const MAX_NODES: usize = 1 << 20;
/// Elements of one tensor, the product of its known dimensions (each zero counted as one, so
/// that no dimension escapes the bound): 2^40 (4 TiB of f32). Every product of known
/// dimensions downstream then fits in u64.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// Parameters of one model: 2^16 (55 times 9b-9b's 1180).
pub const MAX_PARAMS: usize = 1 << 16;
/// Elements of all parameters together: 2^40.
pub const MAX_PARAM_ELEMENTS: u64 = 1 << 40;
/// Values (list elements and record fields, counted through nesting) in one config field:
/// 2^20, so that config dumps stay small.
pub const MAX_CONFIG_VALUE_SIZE: u64 = 1 << 20;

impl Evaluator {
    pub fn new(probes: bool) -> Evaluator {
        Evaluator {
            graph: Graph::new("model"),
            globals: HashMap::new(),
            configs: HashMap::new(),
            params: vec![],
            params_by_path: HashMap::new(),
            ties: HashMap::new(),
            probes,
            frames: vec![Frame {
                scopes: vec![HashMap::new()],
                inst: None,
                path: String::new(),
            }],
            depth: 0,
            eval_depth: 0,
            fuel: FUEL,
            over_budget: false,
            param_elements: 0,
        }
    }

    /// Spends `n` evaluation steps; an error once [`FUEL`] is spent.
    pub(crate) fn burn(&mut self, n: u64, span: Span) -> R<()> {
        match self.fuel.checked_sub(n) {
            Some(left) => {
                self.fuel = left;
                Ok(())
            }
            None => {
                self.fuel = 0;
                self.over_budget = true;
                Err(out_of_fuel(span))
            }
        }
    }

    /// Checks a list about to be built: at most [`MAX_LIST_LEN`] elements, paid for.
    fn list_len(&mut self, len: u64, what: impl FnOnce() -> String, span: Span) -> R<()> {
        if len > MAX_LIST_LEN {
            self.over_budget = true;
            return error(
                format!(
                    "{} would have {len} elements, more than the limit of {MAX_LIST_LEN}",
                    what()
                ),
                span,
            );
        }
        self.burn(len, span)
    }

    pub(crate) fn push_frame_scope(&mut self) {
        self.frame().scopes.push(HashMap::new());
    }

    pub fn pop_scope(&mut self) {
        self.frame().scopes.pop();
    }

    /// Runs an entry point's body with the model instance in scope.
    pub fn run_entry(
        &mut self,
        inst: Rc<Instance>,
        inputs: Vec<(String, Value)>,
        body: &[Stmt],
    ) -> R<()> {
        self.frames
            .push(self.frame_for(vec![inputs.into_iter().collect()], Some(inst)));
        let r = self.exec_block(body);
        self.frames.pop();
        r.map(|_| ())
    }

    fn frame(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("a frame")
    }

    fn inst_path(&self) -> String {
        self.frames
            .last()
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }

    fn frame_for(&self, scopes: Vec<HashMap<String, Value>>, inst: Option<Rc<Instance>>) -> Frame {
        let path = match &inst {
            Some(i) => i.path.clone(),
            None => self.inst_path(),
        };
        Frame { scopes, inst, path }
    }

    pub fn define(&mut self, name: &str, v: Value) {
        self.frame()
            .scopes
            .last_mut()
            .expect("a scope")
            .insert(name.to_string(), v);
    }

    fn lookup(&self, name: &str) -> Option<Value> {
        let f = self.frames.last()?;
        for s in f.scopes.iter().rev() {
            if let Some(v) = s.get(name) {
                return Some(v.clone());
            }
        }
        if let Some(i) = &f.inst {
            if let Some(v) = i.get(name) {
                return Some(v);
            }
        }
        if let Some(v) = self.globals.get(name) {
            return Some(v.clone());
        }
        if name == "_" {
            return Some(Value::Keep);
        }
        super::builtins::lookup(name).map(Value::Builtin)
    }

    fn assign(&mut self, name: &Ident, v: Value) -> R<()> {
        let f = self.frame();
        for s in f.scopes.iter_mut().rev() {
            if let Some(slot) = s.get_mut(&name.node) {
                *slot = v;
                return Ok(());
            }
        }
        error(
            format!("assignment to undeclared name `{}`", name.node),
            name.span,
        )
        .map_err(|d| d.with_note(format!("declare it first: `let {} = ...`", name.node)))
    }

    // ---------------------------------------------------------------- graph helpers

    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: Option<TensorType>,
        span: Span,
    ) -> R<NodeId> {
        if self.graph.dag.node_count() >= MAX_NODES {
            self.over_budget = true;
            return error(
                format!("the graph would have more than {MAX_NODES} nodes, the elaboration limit"),
                span,
            );
        }
        if let Some(t) = &declared {
            check_tensor_size(&t.shape, "a tensor", span)?;
        }
        let n = self
            .graph
            .add(op, operands, declared)
            .or_else(|e| error(e, span))?;
        check_tensor_size(&self.graph.node(n).ty.shape, "the result", span)?;
        Ok(n)
    }

    pub fn ty(&self, n: NodeId) -> TensorType {
        self.graph.node(n).ty.clone()
    }

    pub fn constant(&mut self, v: f64, dtype: DType, span: Span) -> R<NodeId> {
        self.add(
            Op::Const { value: F64(v) },
            &[],
            Some(TensorType {
                dtype,
                shape: Shape::scalar(),
            }),
            span,
        )
    }

    /// A scalar value as a node of the given dtype (for mixing scalars with tensors).
    pub fn to_node(&mut self, v: &Value, like: DType, span: Span) -> R<NodeId> {
        match v {
            Value::Tensor(n) => Ok(*n),
            Value::Int(i) => self.constant(*i as f64, like, span),
            Value::Float(f) if like != DType::I64 => self.constant(*f, like, span),
            Value::Bool(b) => self.constant(if *b { 1.0 } else { 0.0 }, DType::Bool, span),
            Value::Dim(Dim::Known(n)) => self.constant(*n as f64, like, span),
            other => error(
                format!("expected a tensor or a number, found {}", other.kind()),
                span,
            ),
        }
    }

    // ---------------------------------------------------------------- expressions

    pub fn eval(&mut self, e: &Expr) -> R<Value> {
        self.burn(1, e.span)?;
        if self.eval_depth >= MAX_EVAL_DEPTH {
            return error(
                format!("expressions nested too deeply while elaborating (more than {MAX_EVAL_DEPTH} levels, through calls)"),
                e.span,
            )
            .map_err(|d| d.with_note("is there a recursion that does not end?"));
        }
        self.eval_depth += 1;
        let r = self.eval_inner(e);
        self.eval_depth -= 1;
        r
    }

    fn eval_inner(&mut self, e: &Expr) -> R<Value> {
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(f) => Ok(Value::Float(*f)),
            ExprKind::Str(s) => Ok(Value::Str(s.as_str().into())),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::Name(n) => self.lookup(n).ok_or_else(|| {
                Diagnostic::new(format!("unknown name `{n}`"), e.span)
                    .with_label("not defined here")
            }),
            ExprKind::List(items) => {
                let vs = items.iter().map(|i| self.eval(i)).collect::<R<Vec<_>>>()?;
                Ok(Value::List(Rc::new(vs)))
            }
            ExprKind::Comprehension { elem, var, iter } => {
                let items = self.iterable(iter)?;
                let mut out = vec![];
                self.frame().scopes.push(HashMap::new());
                let r = (|| {
                    for it in items {
                        self.burn(1, e.span)?;
                        self.define(&var.node, it);
                        out.push(self.eval(elem)?);
                    }
                    Ok(())
                })();
                self.frame().scopes.pop();
                r.map(|_| Value::List(Rc::new(out)))
            }
            ExprKind::Map(entries) => {
                let mut fields: Vec<(String, Value)> = vec![];
                for (k, v) in entries {
                    if fields.iter().any(|(n, _)| *n == k.node) {
                        return error(format!("duplicate key `{}`", k.node), k.span);
                    }
                    fields.push((k.node.clone(), self.eval(v)?));
                }
                Ok(Value::Record(Rc::new(Record {
                    type_name: String::new(),
                    fields,
                })))
            }
            ExprKind::Unary { op, operand } => {
                let v = self.eval(operand)?;
                self.unary(*op, v, e.span)
            }
            ExprKind::Binary {
                op: op @ (BinOp::And | BinOp::Or),
                lhs,
                rhs,
            } => {
                let l = self.eval(lhs)?;
                if let Value::Bool(b) = l {
                    // Short-circuit on compile-time booleans.
                    if (*op == BinOp::And && !b) || (*op == BinOp::Or && b) {
                        return Ok(Value::Bool(b));
                    }
                    let r = self.eval(rhs)?;
                    return match r {
                        Value::Bool(_) => Ok(r),
                        _ => self.binary(*op, l, r, e.span),
                    };
                }
                let r = self.eval(rhs)?;
                self.binary(*op, l, r, e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.eval(lhs)?;
                let r = self.eval(rhs)?;
                self.binary(*op, l, r, e.span)
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                if self.truthy(cond)? {
                    self.eval(then)
                } else {
                    self.eval(otherwise)
                }
            }
            ExprKind::Call { callee, args } => {
                let f = self.eval(callee)?;
                let mut vals = vec![];
                for a in args {
                    vals.push(CallArg {
                        name: a.name.clone(),
                        value: self.eval(&a.value)?,
                        span: a.value.span,
                    });
                }
                self.call(f, vals, e.span)
            }
            ExprKind::Field { base, name } => {
                let b = self.eval(base)?;
                self.field(b, name)
            }
            ExprKind::Index { base, index } => {
                let b = self.eval(base)?;
                let i = self.eval(index)?;
                match (&b, &i) {
                    (Value::List(l), Value::Int(k)) => {
                        let n = l.len() as i64;
                        let k2 = if *k < 0 { k + n } else { *k };
                        if k2 < 0 || k2 >= n {
                            return error(
                                format!("index {k} out of range for a list of length {n}"),
                                index.span,
                            );
                        }
                        Ok(l[k2 as usize].clone())
                    }
                    (Value::Record(r), Value::Str(s)) => r
                        .get(s)
                        .cloned()
                        .ok_or_else(|| Diagnostic::new(format!("no field `{s}`"), index.span)),
                    _ => error(
                        format!("cannot index a {} with a {}", b.kind(), i.kind()),
                        e.span,
                    ),
                }
            }
        }
    }

    pub fn truthy(&mut self, e: &Expr) -> R<bool> {
        match self.eval(e)? {
            Value::Bool(b) => Ok(b),
            v => error(
                format!("expected a compile-time bool, found {}", v.kind()),
                e.span,
            ),
        }
    }

    pub fn iterable(&mut self, e: &Expr) -> R<Vec<Value>> {
        match self.eval(e)? {
            Value::List(l) => Ok(l.as_ref().clone()),
            v => error(
                format!("expected a list or a range, found {}", v.kind()),
                e.span,
            ),
        }
    }

    fn field(&mut self, b: Value, name: &Ident) -> R<Value> {
        let missing = |what: String| Diagnostic::new(what, name.span).with_label("no such member");
        match &b {
            Value::Record(r) => r.get(&name.node).cloned().ok_or_else(|| {
                let known: Vec<&str> = r.fields.iter().map(|(k, _)| k.as_str()).collect();
                missing(format!(
                    "`{}` has no field `{}`",
                    if r.type_name.is_empty() {
                        "record"
                    } else {
                        &r.type_name
                    },
                    name.node
                ))
                .with_note(format!("fields: {}", known.join(", ")))
            }),
            Value::Inst(i) => i.get(&name.node).ok_or_else(|| {
                missing(format!(
                    "block `{}` at `{}` has no member `{}`",
                    i.def.name.node, i.path, name.node
                ))
            }),
            Value::Tensor(n) => {
                let ty = self.ty(*n);
                match name.node.as_str() {
                    "T" => {
                        let r = ty.shape.rank();
                        if r < 2 {
                            return error(
                                format!("`.T` needs rank >= 2, got {}", ty.shape),
                                name.span,
                            );
                        }
                        let mut perm: Vec<usize> = (0..r).collect();
                        perm.swap(r - 1, r - 2);
                        Ok(Value::Tensor(self.add(
                            Op::Permute { perm },
                            &[*n],
                            None,
                            name.span,
                        )?))
                    }
                    "shape" => Ok(Value::List(Rc::new(
                        ty.shape.0.iter().map(dim_value).collect(),
                    ))),
                    "rank" => Ok(Value::Int(ty.shape.rank() as i64)),
                    "dtype" => Ok(Value::Str(ty.dtype.name().into())),
                    _ => Err(missing(format!(
                        "tensors have `.T`, `.shape`, `.rank` and `.dtype`, not `.{}`",
                        name.node
                    ))),
                }
            }
            other => error(format!("a {} has no fields", other.kind()), name.span),
        }
    }

    fn unary(&mut self, op: UnOp, v: Value, span: Span) -> R<Value> {
        match (op, v) {
            (UnOp::Neg, Value::Int(i)) => i.checked_neg().map(Value::Int).ok_or_else(|| {
                Diagnostic::new(
                    format!("integer overflow: -({i}) does not fit in 64 bits"),
                    span,
                )
            }),
            (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (UnOp::Neg, Value::Tensor(n)) => Ok(Value::Tensor(self.add(
                Op::Unary(UnaryOp::Neg),
                &[n],
                None,
                span,
            )?)),
            (UnOp::Not, Value::Tensor(n)) => Ok(Value::Tensor(self.add(
                Op::Unary(UnaryOp::Not),
                &[n],
                None,
                span,
            )?)),
            (op, v) => error(
                format!(
                    "cannot apply `{}` to a {}",
                    if op == UnOp::Neg { "-" } else { "not" },
                    v.kind()
                ),
                span,
            ),
        }
    }

    pub fn binary(&mut self, op: BinOp, l: Value, r: Value, span: Span) -> R<Value> {
        let l = known_dim(l);
        let r = known_dim(r);
        // `x == none` is a compile-time question even when x is a tensor.
        if matches!(op, BinOp::Eq | BinOp::Ne)
            && (matches!(l, Value::None) || matches!(r, Value::None))
        {
            let same = matches!(l, Value::None) && matches!(r, Value::None);
            return Ok(Value::Bool(if op == BinOp::Eq { same } else { !same }));
        }
        if let (Value::Tensor(_), _) | (_, Value::Tensor(_)) = (&l, &r) {
            return self.tensor_binary(op, l, r, span);
        }
        use Value::*;
        Ok(match (op, &l, &r) {
            (BinOp::Range, Int(a), Int(b)) => {
                let len = (i128::from(*b) - i128::from(*a)).max(0);
                let len = u64::try_from(len).unwrap_or(u64::MAX);
                self.list_len(len, || format!("the range {a}..{b}"), span)?;
                List(Rc::new((*a..*b).map(Int).collect()))
            }
            (BinOp::Eq | BinOp::Ne, _, _) => {
                let eq = scalar_eq(&l, &r, &mut self.fuel).ok_or_else(|| out_of_fuel(span))?;
                Bool(eq == (op == BinOp::Eq))
            }
            (BinOp::And, Bool(a), Bool(b)) => Bool(*a && *b),
            (BinOp::Or, Bool(a), Bool(b)) => Bool(*a || *b),
            (BinOp::Add, Str(_), _) | (BinOp::Add, _, Str(_)) => {
                let too_long = || {
                    Diagnostic::new(
                        format!(
                            "this string would be longer than the limit of {MAX_STR_LEN} bytes"
                        ),
                        span,
                    )
                };
                let a = l.display_capped(MAX_STR_LEN).ok_or_else(too_long)?;
                let b = r
                    .display_capped(MAX_STR_LEN - a.len())
                    .ok_or_else(too_long)?;
                self.burn((a.len() + b.len()) as u64, span)?;
                Str(format!("{a}{b}").into())
            }
            (BinOp::Add, List(a), List(b)) => {
                let len = (a.len() + b.len()) as u64;
                self.list_len(len, || "this concatenation".into(), span)?;
                List(Rc::new(a.iter().chain(b.iter()).cloned().collect()))
            }
            (_, Int(a), Int(b)) => int_op(op, *a, *b).map_err(|m| Diagnostic::new(m, span))?,
            (_, Int(_) | Float(_), Int(_) | Float(_)) => {
                let (a, b) = (as_f64(&l).unwrap_or(0.0), as_f64(&r).unwrap_or(0.0));
                match op {
                    BinOp::Add => Float(a + b),
                    BinOp::Sub => Float(a - b),
                    BinOp::Mul => Float(a * b),
                    BinOp::Div => Float(a / b),
                    BinOp::Pow => Float(a.powf(b)),
                    BinOp::Rem => Float(a % b),
                    BinOp::Lt => Bool(a < b),
                    BinOp::Le => Bool(a <= b),
                    BinOp::Gt => Bool(a > b),
                    BinOp::Ge => Bool(a >= b),
                    _ => {
                        return error(
                            format!("`{}` is not defined on numbers", op_symbol(op)),
                            span,
                        )
                    }
                }
            }
            _ => {
                return error(
                    format!(
                        "`{}` is not defined on {} and {}",
                        op_symbol(op),
                        l.kind(),
                        r.kind()
                    ),
                    span,
                )
                .map_err(|d| {
                    if matches!(l, Dim(_)) || matches!(r, Dim(_)) {
                        d.with_note(
                            "symbolic dimensions (batch, lengths) are known only at run time",
                        )
                    } else {
                        d
                    }
                })
            }
        })
    }

    fn tensor_binary(&mut self, op: BinOp, l: Value, r: Value, span: Span) -> R<Value> {
        let dtype = match (&l, &r) {
            (Value::Tensor(a), _) => self.ty(*a).dtype,
            (_, Value::Tensor(b)) => self.ty(*b).dtype,
            _ => unreachable!("one side is a tensor"),
        };
        let a = self.to_node(&l, dtype, span)?;
        let b = self.to_node(&r, dtype, span)?;
        let (bop, a, b) = match op {
            BinOp::Add => (BinaryOp::Add, a, b),
            BinOp::Sub => (BinaryOp::Sub, a, b),
            BinOp::Mul => (BinaryOp::Mul, a, b),
            BinOp::Div => (BinaryOp::Div, a, b),
            BinOp::Pow => (BinaryOp::Pow, a, b),
            BinOp::Eq => (BinaryOp::Eq, a, b),
            BinOp::Ne => (BinaryOp::Ne, a, b),
            BinOp::Lt => (BinaryOp::Lt, a, b),
            BinOp::Le => (BinaryOp::Le, a, b),
            BinOp::Gt => (BinaryOp::Lt, b, a),
            BinOp::Ge => (BinaryOp::Le, b, a),
            BinOp::And => (BinaryOp::And, a, b),
            BinOp::Or => (BinaryOp::Or, a, b),
            BinOp::MatMul => {
                return Ok(Value::Tensor(self.add(Op::MatMul, &[a, b], None, span)?))
            }
            BinOp::Rem | BinOp::Range => {
                return error(
                    format!("`{}` is not defined on tensors", op_symbol(op)),
                    span,
                )
            }
        };
        Ok(Value::Tensor(self.add(
            Op::Binary(bop),
            &[a, b],
            None,
            span,
        )?))
    }

    // ---------------------------------------------------------------- calls

    pub fn call(&mut self, f: Value, args: Vec<CallArg>, span: Span) -> R<Value> {
        match f {
            Value::Builtin(name) => super::builtins::call(self, name, Args { items: args, span }),
            Value::Fn(def) => {
                let bound = self.bind(&def.params, args, span, "function")?;
                self.run_fn(&def, bound, None)
            }
            Value::Inst(inst) => {
                let def = inst.forward.borrow().clone().ok_or_else(|| {
                    Diagnostic::new(
                        format!(
                            "block `{}` has no `fn` and cannot be called",
                            inst.def.name.node
                        ),
                        span,
                    )
                })?;
                let bound = self.bind(&def.params, args, span, "block")?;
                self.run_fn(&def, bound, Some(inst))
            }
            Value::Block(def) => error(
                format!(
                    "block `{}` can only be instantiated as a member: `name = {}(...)`",
                    def.name.node, def.name.node
                ),
                span,
            ),
            other => error(format!("a {} is not callable", other.kind()), span),
        }
    }

    /// Binds call arguments to declared parameters: positional, then by name, then defaults.
    fn bind(
        &mut self,
        params: &[ParamDecl],
        args: Vec<CallArg>,
        span: Span,
        what: &str,
    ) -> R<Vec<(String, Value)>> {
        let mut slots: Vec<Option<Value>> = vec![None; params.len()];
        let mut positional = 0;
        for a in args {
            let i = match &a.name {
                None => {
                    if positional >= params.len() {
                        return error(
                            format!("too many arguments: this {what} takes {}", params.len()),
                            a.span,
                        );
                    }
                    positional += 1;
                    positional - 1
                }
                Some(n) => params
                    .iter()
                    .position(|p| p.name.node == n.node)
                    .ok_or_else(|| {
                        Diagnostic::new(format!("unknown argument `{}`", n.node), n.span).with_note(
                            format!(
                                "parameters: {}",
                                params
                                    .iter()
                                    .map(|p| p.name.node.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?,
            };
            if slots[i].is_some() {
                return error(
                    format!("argument `{}` given twice", params[i].name.node),
                    a.span,
                );
            }
            if let Some(ty) = &params[i].ty {
                check_type(&a.value, ty, &self.configs, &mut self.fuel).map_err(|m| {
                    Diagnostic::new(format!("argument `{}`: {m}", params[i].name.node), a.span)
                })?;
            }
            slots[i] = Some(a.value);
        }
        let mut out = vec![];
        self.frames.push(self.frame_for(vec![HashMap::new()], None));
        let r = (|| {
            for (p, slot) in params.iter().zip(slots) {
                let v = match (slot, &p.default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => self.eval(d)?,
                    (None, None) => {
                        return error(format!("missing argument `{}`", p.name.node), span).map_err(
                            |d| d.with_label(format!("this call needs `{}`", p.name.node)),
                        )
                    }
                };
                self.define(&p.name.node, v.clone());
                out.push((p.name.node.clone(), v));
            }
            Ok(())
        })();
        self.frames.pop();
        r.map(|_| out)
    }

    fn enter(&mut self, span: Span) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return error("recursion too deep while elaborating", span);
        }
        Ok(())
    }

    fn run_fn(
        &mut self,
        def: &FnDef,
        bound: Vec<(String, Value)>,
        inst: Option<Rc<Instance>>,
    ) -> R<Value> {
        self.enter(def.span)?;
        self.frames
            .push(self.frame_for(vec![bound.into_iter().collect()], inst));
        let r = self.exec_block(&def.body);
        self.frames.pop();
        self.depth -= 1;
        Ok(match r? {
            Flow::Return(v) => v,
            Flow::Normal => Value::None,
        })
    }

    // ---------------------------------------------------------------- statements

    pub fn exec_block(&mut self, stmts: &[Stmt]) -> R<Flow> {
        self.frame().scopes.push(HashMap::new());
        let mut r = Ok(Flow::Normal);
        for s in stmts {
            match self.exec(s) {
                Ok(Flow::Normal) => {}
                other => {
                    r = other;
                    break;
                }
            }
        }
        self.frame().scopes.pop();
        r
    }

    pub fn exec(&mut self, s: &Stmt) -> R<Flow> {
        match s {
            Stmt::Let { name, value } => {
                let v = self.eval(value)?;
                self.name_value(&v, &name.node);
                self.define(&name.node, v);
            }
            Stmt::Assign { name, value } => {
                let v = self.eval(value)?;
                self.name_value(&v, &name.node);
                self.assign(name, v)?;
            }
            Stmt::Assert { cond, message, .. } => {
                if !self.truthy(cond)? {
                    let msg = match message {
                        Some(m) => self.eval(m)?.display(),
                        None => "assertion failed".into(),
                    };
                    return error(msg, cond.span).map_err(|d| d.with_label("assertion failed"));
                }
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                return if self.truthy(cond)? {
                    self.exec_block(then)
                } else {
                    self.exec_block(otherwise)
                };
            }
            Stmt::For { var, iter, body } => {
                for item in self.iterable(iter)? {
                    self.burn(1, iter.span)?;
                    self.frame()
                        .scopes
                        .push(HashMap::from([(var.node.clone(), item)]));
                    let r = self.exec_block(body);
                    self.frame().scopes.pop();
                    if let Flow::Return(v) = r? {
                        return Ok(Flow::Return(v));
                    }
                }
            }
            Stmt::Return(e) => return Ok(Flow::Return(self.eval(e)?)),
            Stmt::Out { name, value } => {
                let n = self.string(name)?;
                let v = self.eval(value)?;
                let Value::Tensor(id) = v else {
                    return error(
                        format!("output `{n}` must be a tensor, found {}", v.kind()),
                        value.span,
                    );
                };
                self.add_output(n, id, name.span)?;
            }
            Stmt::Probe { name, value } => {
                if self.probes {
                    let n = self.string(name)?;
                    let path = self.inst_path();
                    let full = if path.is_empty() {
                        n
                    } else {
                        format!("{path}.{n}")
                    };
                    if let Value::Tensor(id) = self.eval(value)? {
                        self.add_output(full, id, name.span)?;
                    }
                }
            }
        }
        Ok(Flow::Normal)
    }

    fn add_output(&mut self, name: String, id: NodeId, span: Span) -> R<()> {
        if self.graph.outputs.iter().any(|(n, _)| *n == name) {
            return error(format!("output `{name}` is defined twice"), span);
        }
        self.graph.outputs.push((name, id));
        Ok(())
    }

    fn string(&mut self, e: &Expr) -> R<String> {
        match self.eval(e)? {
            Value::Str(s) => Ok(s.to_string()),
            v => error(format!("expected a string, found {}", v.kind()), e.span),
        }
    }

    /// Names a tensor after the `let` that binds it, prefixed by the instance path.
    /// Parameters and inputs keep their own names.
    fn name_value(&mut self, v: &Value, local: &str) {
        if let Value::Tensor(n) = v {
            if matches!(self.graph.node(*n).op, Op::Param { .. } | Op::Input { .. }) {
                return;
            }
            let path = self.inst_path();
            let name = if path.is_empty() {
                local.to_string()
            } else {
                format!("{path}.{local}")
            };
            self.graph.set_name(*n, &name);
        }
    }

    // ---------------------------------------------------------------- blocks

    /// Instantiates `def` at `path` (DSL) / `ckpt` (checkpoint prefix).
    pub fn instantiate(
        &mut self,
        def: Rc<BlockDef>,
        args: Vec<CallArg>,
        path: String,
        ckpt: String,
        span: Span,
    ) -> R<Rc<Instance>> {
        self.enter(span)?;
        let bound = self.bind(&def.params, args, span, "block")?;
        let inst = Rc::new(Instance {
            path,
            ckpt,
            def: def.clone(),
            members: RefCell::new(bound),
            forward: RefCell::new(None),
        });
        self.frames
            .push(self.frame_for(vec![HashMap::new()], Some(inst.clone())));
        let r = self.instantiate_members(&def, &inst);
        self.frames.pop();
        self.depth -= 1;
        r.map(|_| inst)
    }

    fn instantiate_members(&mut self, def: &BlockDef, inst: &Rc<Instance>) -> R<()> {
        let join = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else {
                format!("{a}.{b}")
            }
        };
        for m in &def.members {
            match m {
                Member::Param { name, shape, ckpt } => {
                    let dims = self.eval(shape)?;
                    let dims = shape_dims(&dims).map_err(|msg| Diagnostic::new(msg, shape.span))?;
                    let path = join(&inst.path, &name.node);
                    let ckpt = join(
                        &inst.ckpt,
                        ckpt.as_ref().map(|c| c.node.as_str()).unwrap_or(&name.node),
                    );
                    let node = self.param(path, ckpt, dims, name.span)?;
                    inst.members
                        .borrow_mut()
                        .push((name.node.clone(), Value::Tensor(node)));
                }
                Member::Sub { name, value, ckpt } => {
                    let path = join(&inst.path, &name.node);
                    let ck = join(
                        &inst.ckpt,
                        ckpt.as_ref().map(|c| c.node.as_str()).unwrap_or(&name.node),
                    );
                    let v = match value {
                        SubValue::One(e) => self.eval_sub(e, path, ck)?,
                        SubValue::Repeat { var, range, body } => {
                            let mut items = vec![];
                            for (k, i) in self.iterable(range)?.into_iter().enumerate() {
                                self.frame()
                                    .scopes
                                    .push(HashMap::from([(var.node.clone(), i)]));
                                let r =
                                    self.eval_sub(body, format!("{path}.{k}"), format!("{ck}.{k}"));
                                self.frame().scopes.pop();
                                items.push(r?);
                            }
                            Value::List(Rc::new(items))
                        }
                    };
                    inst.members.borrow_mut().push((name.node.clone(), v));
                }
                Member::Tie {
                    target,
                    source,
                    cond,
                } => {
                    let on = match cond {
                        Some(c) => self.truthy(c)?,
                        None => true,
                    };
                    if on {
                        let t = join(&inst.path, &target.node.join("."));
                        let s = join(&inst.path, &source.node.join("."));
                        if self.params_by_path.contains_key(&t) {
                            return error(format!("`{t}` already exists; a `tie` must come before the parameter it ties"), target.span);
                        }
                        self.ties.insert(t, (s, source.span));
                    }
                }
                Member::Stmt(Stmt::Let { name, value }) => {
                    let v = self.eval(value)?;
                    inst.members.borrow_mut().push((name.node.clone(), v));
                }
                Member::Stmt(s) => {
                    self.exec(s)?;
                }
                Member::Fn(f) => {
                    *inst.forward.borrow_mut() = Some(f.clone());
                }
                Member::Entry(_) => {}
            }
        }
        Ok(())
    }

    /// Evaluates a member's value; a call of a block instantiates it at `path`.
    fn eval_sub(&mut self, e: &Expr, path: String, ckpt: String) -> R<Value> {
        match &e.kind {
            ExprKind::Call { callee, args } => {
                let f = self.eval(callee)?;
                let mut vals = vec![];
                for a in args {
                    vals.push(CallArg {
                        name: a.name.clone(),
                        value: self.eval(&a.value)?,
                        span: a.value.span,
                    });
                }
                match f {
                    Value::Block(def) => Ok(Value::Inst(
                        self.instantiate(def, vals, path, ckpt, e.span)?,
                    )),
                    f => self.call(f, vals, e.span),
                }
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                if self.truthy(cond)? {
                    self.eval_sub(then, path, ckpt)
                } else {
                    self.eval_sub(otherwise, path, ckpt)
                }
            }
            _ => self.eval(e),
        }
    }

    fn param(&mut self, path: String, ckpt: String, dims: Vec<u64>, span: Span) -> R<NodeId> {
        if let Some((src, src_span)) = self.ties.get(&path).cloned() {
            let Some(&node) = self.params_by_path.get(&src) else {
                return error(
                    format!("tie source `{src}` is not a parameter defined before `{path}`"),
                    src_span,
                );
            };
            let ty = self.ty(node);
            if ty.shape != Shape::known(&dims) {
                return error(
                    format!(
                        "cannot tie `{path}` {} to `{src}` {}",
                        Shape::known(&dims),
                        ty.shape
                    ),
                    span,
                );
            }
            self.params_by_path.insert(path, node);
            return Ok(node);
        }
        if self.params_by_path.contains_key(&path) {
            return error(format!("parameter `{path}` defined twice"), span);
        }
        if self.params.len() >= MAX_PARAMS {
            self.over_budget = true;
            return error(
                format!("parameter `{path}` would be parameter number {}, more than the limit of {MAX_PARAMS}", MAX_PARAMS + 1),
                span,
            );
        }
        let elements = numel_u128(dims.iter().copied())
            .filter(|&n| n <= u128::from(MAX_TENSOR_ELEMENTS))
            .ok_or_else(|| {
                Diagnostic::new(
                    format!(
                        "parameter `{path}` of shape {} would have {} elements, more than the limit of {MAX_TENSOR_ELEMENTS} (2^40)",
                        Shape::known(&dims),
                        numel_text(dims.iter().copied())
                    ),
                    span,
                )
            })? as u64;
        self.param_elements = self
            .param_elements
            .checked_add(elements)
            .filter(|&n| n <= MAX_PARAM_ELEMENTS)
            .ok_or_else(|| {
                Diagnostic::new(
                    format!(
                        "parameter `{path}` brings the model past {MAX_PARAM_ELEMENTS} (2^40) parameter elements, the elaboration limit"
                    ),
                    span,
                )
                .with_note(format!("{} elements before it", self.param_elements))
            })?;
        let ty = TensorType {
            dtype: DType::F32,
            shape: Shape::known(&dims),
        };
        let node = self.add(
            Op::Param {
                path: path.clone(),
                ckpt: ckpt.clone(),
            },
            &[],
            Some(ty),
            span,
        )?;
        self.params_by_path.insert(path.clone(), node);
        self.params.push(ParamInfo {
            path,
            ckpt,
            shape: dims,
            node,
        });
        Ok(node)
    }
}

#[derive(Clone, Debug)]
pub struct CallArg {
    pub name: Option<Ident>,
    pub value: Value,
    pub span: Span,
}

/// Call arguments with the call's span, for builtins.
pub struct Args {
    pub items: Vec<CallArg>,
    pub span: Span,
}

pub fn dim_value(d: &Dim) -> Value {
    match d {
        Dim::Known(n) => Value::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
        Dim::Sym(_) => Value::Dim(d.clone()),
    }
}

fn known_dim(v: Value) -> Value {
    match v {
        Value::Dim(Dim::Known(n)) => Value::Int(i64::try_from(n).unwrap_or(i64::MAX)),
        v => v,
    }
}

pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Dim(Dim::Known(n)) => Some(*n as f64),
        _ => None,
    }
}

fn out_of_fuel(span: Span) -> Diagnostic {
    Diagnostic::new(
        format!("elaboration ran out of its budget of {FUEL} evaluation steps"),
        span,
    )
    .with_note("is there a loop, recursion or list that grows without bound?")
}

/// Compile-time equality; each list element compared costs a step, `None` when `fuel` is
/// spent (lists can share structure, so a small program can hold lists too big to walk).
fn scalar_eq(a: &Value, b: &Value, fuel: &mut u64) -> Option<bool> {
    *fuel = fuel.checked_sub(1)?;
    Some(match (a, b) {
        (Value::None, Value::None) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Dim(x), Value::Dim(y)) => x == y,
        (Value::List(x), Value::List(y)) if Rc::ptr_eq(x, y) => true,
        (Value::List(x), Value::List(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (p, q) in x.iter().zip(y.iter()) {
                if !scalar_eq(p, q, fuel)? {
                    return Some(false);
                }
            }
            true
        }
        _ => match (a, b) {
            // Exactly, not through f64 (which rounds above 2^53).
            (Value::Int(x), Value::Int(y)) => x == y,
            _ => match (as_f64(a), as_f64(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        },
    })
}

/// Integer arithmetic, checked: overflow and division by zero are errors, never wrapped
/// or panicked on.
fn int_op(op: BinOp, a: i64, b: i64) -> Result<Value, String> {
    use Value::*;
    let sym = op_symbol(op);
    let overflow = || format!("integer overflow: {a} {sym} {b} does not fit in 64 bits");
    Ok(match op {
        BinOp::Add => Int(a.checked_add(b).ok_or_else(overflow)?),
        BinOp::Sub => Int(a.checked_sub(b).ok_or_else(overflow)?),
        BinOp::Mul => Int(a.checked_mul(b).ok_or_else(overflow)?),
        BinOp::Div | BinOp::Rem if b == 0 => return Err(format!("division by zero: {a} {sym} 0")),
        // Exact integer division stays an int (shapes need ints); otherwise it is a float.
        BinOp::Div => match a.checked_rem(b).ok_or_else(overflow)? {
            0 => Int(a.checked_div(b).ok_or_else(overflow)?),
            _ => Float(a as f64 / b as f64),
        },
        BinOp::Rem => Int(a.checked_rem_euclid(b).ok_or_else(overflow)?),
        BinOp::Pow if b >= 0 => Int(u32::try_from(b)
            .ok()
            .and_then(|e| a.checked_pow(e))
            .ok_or_else(overflow)?),
        BinOp::Pow => Float((a as f64).powf(b as f64)),
        BinOp::Lt => Bool(a < b),
        BinOp::Le => Bool(a <= b),
        BinOp::Gt => Bool(a > b),
        BinOp::Ge => Bool(a >= b),
        _ => return Err(format!("`{sym}` is not defined on ints")),
    })
}

/// Elements of `dims` exactly (None only past u128).
fn numel_u128(dims: impl Iterator<Item = u64>) -> Option<u128> {
    dims.map(u128::from)
        .try_fold(1u128, |n, d| n.checked_mul(d))
}

fn numel_text(dims: impl Iterator<Item = u64>) -> String {
    match numel_u128(dims) {
        Some(n) => n.to_string(),
        None => "more than 2^128".into(),
    }
}

/// Checks that a shape's known part stays within [`MAX_TENSOR_ELEMENTS`] (zeros counted as
/// ones); `what` names the tensor in the message.
fn check_tensor_size(shape: &Shape, what: &str, span: Span) -> R<()> {
    let known = || shape.0.iter().filter_map(|d| d.known()).map(|d| d.max(1));
    if numel_u128(known()).is_some_and(|n| n <= u128::from(MAX_TENSOR_ELEMENTS)) {
        return Ok(());
    }
    let syms: Vec<String> = shape
        .0
        .iter()
        .filter(|d| d.known().is_none())
        .map(|d| d.to_string())
        .collect();
    error(
        format!(
            "{what} of shape {shape} would have {} elements{}, more than the limit of {MAX_TENSOR_ELEMENTS} (2^40)",
            numel_text(known()),
            if syms.is_empty() {
                String::new()
            } else {
                format!(" even with {} = 1", syms.join(" = "))
            }
        ),
        span,
    )
}

pub fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Rem => "%",
        BinOp::MatMul => "@",
        BinOp::Pow => "**",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::And => "and",
        BinOp::Or => "or",
        BinOp::Range => "..",
    }
}

/// A parameter shape: a list of positive ints.
fn shape_dims(v: &Value) -> Result<Vec<u64>, String> {
    let Value::List(items) = v else {
        return Err(format!(
            "a parameter shape is a list of ints, found {}",
            v.kind()
        ));
    };
    items
        .iter()
        .map(|d| match d {
            Value::Int(n) if *n > 0 => Ok(*n as u64),
            Value::Int(n) => Err(format!("parameter dimensions must be positive, found {n}")),
            other => Err(format!(
                "parameter dimensions must be ints, found {}",
                other.kind()
            )),
        })
        .collect()
}

/// Checks a value against a declared type (`int`, `float?`, `[str]`, a config name …).
/// The builtin type names; any other name must be a config.
const TYPE_NAMES: &[&str] = &["int", "float", "bool", "str", "tensor", "any", "config"];

/// Checks that every name in a type exists.
pub fn check_type_names(
    ty: &TypeExpr,
    configs: &HashMap<String, Rc<ConfigDef>>,
) -> Result<(), String> {
    match &ty.kind {
        TypeKind::List(inner) => check_type_names(inner, configs),
        TypeKind::Named(n) if TYPE_NAMES.contains(&n.as_str()) || configs.contains_key(n) => Ok(()),
        TypeKind::Named(n) => Err(format!(
            "unknown type `{n}` (types: {}, [T], T? and config names)",
            TYPE_NAMES.join(", ")
        )),
    }
}

/// Each list element checked costs a step of `fuel`.
pub fn check_type(
    v: &Value,
    ty: &TypeExpr,
    configs: &HashMap<String, Rc<ConfigDef>>,
    fuel: &mut u64,
) -> Result<(), String> {
    check_type_names(ty, configs)?;
    if ty.optional && matches!(v, Value::None) {
        return Ok(());
    }
    let ok = match (&ty.kind, v) {
        (TypeKind::List(inner), Value::List(items)) => {
            for it in items.iter() {
                *fuel = fuel.checked_sub(1).ok_or_else(|| {
                    format!("elaboration ran out of its budget of {FUEL} evaluation steps while checking a value against `{}`", type_text(ty))
                })?;
                check_type(it, inner, configs, fuel)?;
            }
            true
        }
        (TypeKind::Named(n), _) => match (n.as_str(), v) {
            ("int", Value::Int(_))
            | ("float", Value::Int(_) | Value::Float(_))
            | ("bool", Value::Bool(_)) => true,
            ("str", Value::Str(_)) | ("tensor", Value::Tensor(_)) | ("any", _) => true,
            ("int", Value::Dim(_)) => true,
            (name, Value::Record(r)) if configs.contains_key(name) => r.type_name == name,
            ("config", Value::Record(_)) => true,
            _ => false,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {}, found {} `{}`",
            type_text(ty),
            v.kind(),
            v.brief()
        ))
    }
}

pub fn type_text(ty: &TypeExpr) -> String {
    let base = match &ty.kind {
        TypeKind::Named(n) => n.clone(),
        TypeKind::List(i) => format!("[{}]", type_text(i)),
    };
    if ty.optional {
        format!("{base}?")
    } else {
        base
    }
}
