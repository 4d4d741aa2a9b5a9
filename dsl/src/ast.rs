//! The syntax tree of an `.edl` file. It mirrors the grammar closely and carries spans;
//! it knows nothing of graphs or tensors.

use crate::source::{Span, Spanned};
use std::rc::Rc;

pub type Ident = Spanned<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub file: u32,
    pub version: Spanned<i64>,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Import(Spanned<String>),
    Config(Rc<ConfigDef>),
    Preset(Rc<PresetDef>),
    Block(Rc<BlockDef>),
    Fn(Rc<FnDef>),
    Let(Stmt),
    Adapt(Rc<AdaptDef>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDef {
    pub name: Ident,
    pub members: Vec<ConfigMember>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConfigMember {
    Field(FieldDef),
    /// `let` (derived value) or `assert`, evaluated after the fields are set.
    Stmt(Stmt),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldDef {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    /// Keys (dotted paths) to read from an HF `config.json`, first match wins.
    /// Empty means the field's own name.
    pub from: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub optional: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    Named(String),
    List(Box<TypeExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PresetDef {
    pub name: Spanned<String>,
    pub assigns: Vec<(Spanned<Vec<String>>, Expr)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Block,
    Model,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub kind: BlockKind,
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    /// `param weight: [out, in] ckpt "..."`
    Param {
        name: Ident,
        shape: Expr,
        ckpt: Option<Spanned<String>>,
    },
    /// `q_proj = Linear(...)` or `layers = repeat i in 0..n { Layer(i) }`
    Sub {
        name: Ident,
        value: SubValue,
        ckpt: Option<Spanned<String>>,
    },
    /// `tie lm_head.weight = decoder.embed_tokens.weight if cond`
    Tie {
        target: Spanned<Vec<String>>,
        source: Spanned<Vec<String>>,
        cond: Option<Expr>,
    },
    Stmt(Stmt),
    Fn(Rc<FnDef>),
    Entry(Rc<EntryDef>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum SubValue {
    One(Expr),
    Repeat { var: Ident, range: Expr, body: Expr },
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    /// `None` for a block's forward function.
    pub name: Option<Ident>,
    pub params: Vec<ParamDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EntryDef {
    pub name: Ident,
    pub inputs: Vec<InputDecl>,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub name: Ident,
    pub dtype: Ident,
    pub dims: Vec<Spanned<DimExpr>>,
    pub optional: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DimExpr {
    Known(i64),
    Sym(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let {
        name: Ident,
        value: Expr,
    },
    Assign {
        name: Ident,
        value: Expr,
    },
    Assert {
        cond: Expr,
        message: Option<Expr>,
        span: Span,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
    },
    For {
        var: Ident,
        iter: Expr,
        body: Vec<Stmt>,
    },
    Return(Expr),
    Out {
        name: Expr,
        value: Expr,
    },
    Probe {
        name: Expr,
        value: Expr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    MatMul,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Range,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    Name(String),
    List(Vec<Expr>),
    Comprehension {
        elem: Box<Expr>,
        var: Ident,
        iter: Box<Expr>,
    },
    Map(Vec<(Ident, Expr)>),
    Unary {
        op: UnOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Field {
        base: Box<Expr>,
        name: Ident,
    },
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// `adapt NAME(source, ...) -> Model { rules phases }`: how the parameters of `Model` come
/// from source checkpoints (named by role) or fresh initialisers, and the training phases.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptDef {
    pub name: Ident,
    /// Source roles (`gemma`; `encoder, decoder`), bound to checkpoints by the caller.
    pub sources: Vec<Ident>,
    /// The model whose parameters are produced.
    pub target: Ident,
    pub rules: Vec<AdaptRule>,
    pub phases: Vec<PhaseDef>,
}

/// `target <- [role:] source` or `target <- init(args)`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptRule {
    pub target: Pattern,
    pub value: RuleValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RuleValue {
    /// A source tensor; the role may be left out when the adapt has one source.
    Copy {
        role: Option<Ident>,
        source: Pattern,
    },
    /// A fresh tensor: `normal(std: 0.02)`, `zeros()`, `ones()`.
    Init {
        name: Ident,
        args: Vec<(Ident, Spanned<f64>)>,
        span: Span,
    },
}

/// A checkpoint-name pattern: `model.layers.{i}.mlp.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    pub segments: Vec<PatternSeg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternSeg {
    /// Exactly this segment.
    Lit(String),
    /// `{i}`: any one segment, the same wherever the name appears in the rule.
    Var(String),
    /// `*`, last only: one or more segments.
    Rest,
}

/// `phase warmup steps 1000 train [patterns]`; no `train` list means every parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseDef {
    pub name: Ident,
    pub steps: Option<Spanned<u64>>,
    pub train: Option<Vec<Pattern>>,
    pub span: Span,
}
