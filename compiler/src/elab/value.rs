//! Values of the elaboration-time language: compile-time scalars, lists and records, and
//! tensors (graph nodes), block instances and functions.

use crate::ir::{Dim, NodeId};
use encdecc_dsl::ast::{BlockDef, FnDef};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    List(Rc<Vec<Value>>),
    /// Configs and `{k: v}` literals: fields in declaration order.
    Record(Rc<Record>),
    Tensor(NodeId),
    /// A symbolic dimension (`x.shape[0]` when it is the batch).
    Dim(Dim),
    /// `_` in a reshape: keep this axis.
    Keep,
    Inst(Rc<Instance>),
    Fn(Rc<FnDef>),
    Block(Rc<BlockDef>),
    Builtin(&'static str),
}

#[derive(Debug, Default)]
pub struct Record {
    /// The config type's name, empty for a literal.
    pub type_name: String,
    pub fields: Vec<(String, Value)>,
}

impl Record {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// An instantiated block: its path in the model, its checkpoint prefix, and its members
/// (arguments, derived values, parameters, sub-blocks).
#[derive(Debug)]
pub struct Instance {
    pub path: String,
    pub ckpt: String,
    pub def: Rc<BlockDef>,
    pub members: RefCell<Vec<(String, Value)>>,
    pub forward: RefCell<Option<Rc<FnDef>>>,
}

impl Instance {
    pub fn get(&self, name: &str) -> Option<Value> {
        self.members
            .borrow()
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Record(_) => "record",
            Value::Tensor(_) => "tensor",
            Value::Dim(_) => "dimension",
            Value::Keep => "`_`",
            Value::Inst(_) => "block instance",
            Value::Fn(_) => "function",
            Value::Block(_) => "block",
            Value::Builtin(_) => "builtin function",
        }
    }

    /// Plain text for messages and `str(x)`, cut (with `…`) past `MAX_STR_LEN` bytes.
    pub fn display(&self) -> String {
        self.display_cut(super::eval::MAX_STR_LEN)
    }

    /// A short form for error messages: at most about 200 bytes.
    pub fn brief(&self) -> String {
        self.display_cut(200)
    }

    fn display_cut(&self, limit: usize) -> String {
        let mut out = String::new();
        if self.write_display(&mut out, limit).is_none() {
            let mut cut = limit.min(out.len());
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
        }
        out
    }

    /// The display text if it is at most `limit` bytes long. Lists may share structure, so
    /// a small program can hold a value whose text would not fit in memory: the walk stops
    /// as soon as the limit is passed.
    pub fn display_capped(&self, limit: usize) -> Option<String> {
        let mut out = String::new();
        self.write_display(&mut out, limit)?;
        Some(out)
    }

    /// Appends the display text to `out`; `None` once `out` is longer than `limit`.
    fn write_display(&self, out: &mut String, limit: usize) -> Option<()> {
        let push = |out: &mut String, s: &str| {
            out.push_str(s);
            (out.len() <= limit).then_some(())
        };
        match self {
            Value::None => push(out, "none"),
            Value::Bool(b) => push(out, &b.to_string()),
            Value::Int(i) => push(out, &i.to_string()),
            Value::Float(f) => push(out, &crate::ir::print::fmt_f64(*f)),
            Value::Str(s) => {
                // Only what fits, so a long string is never copied whole.
                let room = (limit + 1).saturating_sub(out.len()).min(s.len());
                let mut cut = room;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push_str(&s[..cut]);
                (cut == s.len() && out.len() <= limit).then_some(())
            }
            Value::List(l) => {
                push(out, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        push(out, ", ")?;
                    }
                    v.write_display(out, limit)?;
                }
                push(out, "]")
            }
            Value::Record(r) => {
                push(out, "{")?;
                for (i, (k, v)) in r.fields.iter().enumerate() {
                    if i > 0 {
                        push(out, ", ")?;
                    }
                    push(out, k)?;
                    push(out, ": ")?;
                    v.write_display(out, limit)?;
                }
                push(out, "}")
            }
            Value::Dim(d) => push(out, &d.to_string()),
            Value::Inst(i) => push(out, &format!("<{} at {}>", i.def.name.node, i.path)),
            other => push(out, &format!("<{}>", other.kind())),
        }
    }

    /// Values in `self` (itself, list elements and record fields, through nesting), or
    /// `None` past `limit`; the walk stops there, so shared structure cannot make it long.
    pub fn size_within(&self, limit: u64) -> Option<u64> {
        fn walk(v: &Value, count: &mut u64, limit: u64) -> Option<()> {
            *count += 1;
            if *count > limit {
                return None;
            }
            match v {
                Value::List(l) => l.iter().try_for_each(|x| walk(x, count, limit)),
                Value::Record(r) => r.fields.iter().try_for_each(|(_, x)| walk(x, count, limit)),
                _ => Some(()),
            }
        }
        let mut count = 0;
        walk(self, &mut count, limit)?;
        Some(count)
    }

    /// JSON for `--emit summary` and config dumps; tensors and functions have none.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.to_string()),
            Value::List(l) => J::Array(l.iter().map(|v| v.to_json()).collect()),
            Value::Record(r) => J::Object(
                r.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Value::Dim(Dim::Known(n)) => J::from(*n),
            other => J::String(other.display()),
        }
    }

    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::None,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Str(s.as_str().into()),
            J::Array(a) => Value::List(Rc::new(a.iter().map(Value::from_json).collect())),
            J::Object(o) => Value::Record(Rc::new(Record {
                type_name: String::new(),
                fields: o
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            })),
        }
    }
}
