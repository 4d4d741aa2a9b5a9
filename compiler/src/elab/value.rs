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

    /// Plain text for messages and `str(x)`.
    pub fn display(&self) -> String {
        match self {
            Value::None => "none".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => crate::ir::print::fmt_f64(*f),
            Value::Str(s) => s.to_string(),
            Value::List(l) => format!(
                "[{}]",
                l.iter().map(|v| v.display()).collect::<Vec<_>>().join(", ")
            ),
            Value::Record(r) => format!(
                "{{{}}}",
                r.fields
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Dim(d) => d.to_string(),
            Value::Inst(i) => format!("<{} at {}>", i.def.name.node, i.path),
            other => format!("<{}>", other.kind()),
        }
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
