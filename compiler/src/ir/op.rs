//! The closed set of operations. Primitives are tinygrad-sized; composites (attention,
//! cross-entropy) carry attributes and a decomposition into primitives (`decompose.rs`).

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Tanh,
    Sqrt,
    Rsqrt,
    Sin,
    Cos,
    Abs,
    Not,
}

/// Elementwise functions of two operands, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Eq,
    Ne,
    Lt,
    Le,
    And,
    Or,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le
        )
    }
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttnMode {
    /// Query i sees every key (padding aside).
    Bidirectional,
    /// Query i sees keys j <= i.
    Causal,
}

/// How a bidirectional sliding window counts: `|i-j| <= W` (transformers >= 5.4) or
/// `|i-j| < W` (transformers <= 5.3, Google's reference). Causal windows are always
/// `i-W < j <= i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowRule {
    Inclusive,
    Exclusive,
}

/// f64 with bitwise equality and hashing, so ops stay `Eq + Hash` for CSE.
#[derive(Clone, Copy, Debug)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &F64) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttentionAttrs {
    pub mode: AttnMode,
    pub window: Option<u64>,
    pub window_rule: WindowRule,
    /// `s = tanh(s / cap) * cap` on the scaled scores, before the mask.
    pub softcap: Option<F64>,
    /// Multiplies `q kᵀ` (after the matmul, as HF does).
    pub scale: F64,
}

/// The attention operand a gradient is taken with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttnOperand {
    Q,
    K,
    V,
}

impl AttnOperand {
    pub const ALL: [AttnOperand; 3] = [AttnOperand::Q, AttnOperand::K, AttnOperand::V];

    /// Its operand position in `attention` and `attention_grad`.
    pub fn position(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            AttnOperand::Q => "q",
            AttnOperand::K => "k",
            AttnOperand::V => "v",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A model parameter: DSL path and checkpoint key.
    Param {
        path: String,
        ckpt: String,
    },
    /// A run-time input of an entry point.
    Input {
        name: String,
    },
    /// A scalar constant; its type says the dtype (and shape `[]`).
    Const {
        value: F64,
    },
    /// `0, 1, 2, …` along `axis` of the result shape.
    Iota {
        axis: usize,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `where(cond, a, b)`, broadcasting.
    Where,
    /// Converts to the result dtype.
    Cast,
    Reduce {
        op: ReduceOp,
        axis: usize,
    },
    /// Same elements, the result shape.
    Reshape,
    Permute {
        perm: Vec<usize>,
    },
    /// Broadcast to the result shape.
    Expand,
    Slice {
        axis: usize,
        start: u64,
        end: u64,
    },
    Concat {
        axis: usize,
    },
    /// Rows of operand 0 (`[N, …]`) picked by the integer operand 1: `idx.shape ++ table.shape[1..]`.
    Gather,
    /// The inverse movement of `gather`: rows of operand 1 (`idx.shape ++ row`) summed into a
    /// table of the result type (`[N, ..row]`) at the rows the i64 operand 0 names. The
    /// table starts as zeros, or as the optional operand 2 (of the result type): a tied
    /// embedding's gradient scatters its input rows onto the output projection's gradient
    /// instead of adding two table-sized tensors. The gradient of a gather (an
    /// embedding's), without a one-hot product.
    ScatterAdd,
    /// `out[.., t, ..] = in[.., t + offset, ..]`, or `fill` where that is out of range.
    Shift {
        axis: usize,
        offset: i64,
        fill: F64,
    },
    /// `[.., M, K] × [.., K, N]`, batch dimensions broadcast.
    MatMul,
    /// Weight-only int8: `q [.., N, K]` (i8) times its per-row scale `[.., N, 1]` (f32),
    /// the f32 weight `q · scale`. Backends read it in place where matmuls and gathers use
    /// it (`encdecc_compiler::precision`).
    Dequant,
    /// Composite: operands `q [B, Hq, Tq, D]`, `k, v [B, Hkv, Tk, D]`, optional key mask `[B, Tk]` (bool).
    Attention(AttentionAttrs),
    /// Composite: the vector-Jacobian product of `attention` with respect to operand `wrt`.
    /// Operands `q, k, v, dout`, then the optional key mask; `dout` is the gradient arriving
    /// at the attention's result. Typed as the `wrt` operand. The three gradients of one
    /// attention share their operands, so a backend computes them in one pass.
    AttentionGrad {
        attrs: AttentionAttrs,
        wrt: AttnOperand,
    },
    /// Composite: mean token cross-entropy of `logits [.., V]` against `labels [..]`, ignoring
    /// `ignore_index`; result `[1]`.
    CrossEntropy {
        ignore_index: i64,
    },
    /// Composite: the vector-Jacobian product of `cross_entropy` with respect to its logits.
    /// Operands `logits [.., V]`, `labels [..]`, `dloss [1]`; typed as the logits.
    CrossEntropyGrad {
        ignore_index: i64,
    },
}

impl Op {
    /// The op's mnemonic in printed IR.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Param { .. } => "param",
            Op::Input { .. } => "input",
            Op::Const { .. } => "const",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
                UnaryOp::Abs => "abs",
                UnaryOp::Not => "not",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Pow => "pow",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Eq => "eq",
                BinaryOp::Ne => "ne",
                BinaryOp::Lt => "lt",
                BinaryOp::Le => "le",
                BinaryOp::And => "and",
                BinaryOp::Or => "or",
            },
            Op::Where => "where",
            Op::Cast => "cast",
            Op::Reduce {
                op: ReduceOp::Sum, ..
            } => "reduce_sum",
            Op::Reduce {
                op: ReduceOp::Max, ..
            } => "reduce_max",
            Op::Reshape => "reshape",
            Op::Permute { .. } => "permute",
            Op::Expand => "expand",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::ScatterAdd => "scatter_add",
            Op::Shift { .. } => "shift",
            Op::MatMul => "matmul",
            Op::Dequant => "dequant",
            Op::Attention(_) => "attention",
            Op::AttentionGrad { .. } => "attention_grad",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::CrossEntropyGrad { .. } => "cross_entropy_grad",
        }
    }

    pub fn is_composite(&self) -> bool {
        matches!(
            self,
            Op::Attention(_)
                | Op::AttentionGrad { .. }
                | Op::CrossEntropy { .. }
                | Op::CrossEntropyGrad { .. }
        )
    }

    /// Every mnemonic that parses back into a unary or binary op.
    pub fn elementwise_from_mnemonic(m: &str) -> Option<Op> {
        use BinaryOp as B;
        use UnaryOp as U;
        Some(match m {
            "neg" => Op::Unary(U::Neg),
            "exp" => Op::Unary(U::Exp),
            "log" => Op::Unary(U::Log),
            "tanh" => Op::Unary(U::Tanh),
            "sqrt" => Op::Unary(U::Sqrt),
            "rsqrt" => Op::Unary(U::Rsqrt),
            "sin" => Op::Unary(U::Sin),
            "cos" => Op::Unary(U::Cos),
            "abs" => Op::Unary(U::Abs),
            "not" => Op::Unary(U::Not),
            "add" => Op::Binary(B::Add),
            "sub" => Op::Binary(B::Sub),
            "mul" => Op::Binary(B::Mul),
            "div" => Op::Binary(B::Div),
            "pow" => Op::Binary(B::Pow),
            "max" => Op::Binary(B::Max),
            "min" => Op::Binary(B::Min),
            "eq" => Op::Binary(B::Eq),
            "ne" => Op::Binary(B::Ne),
            "lt" => Op::Binary(B::Lt),
            "le" => Op::Binary(B::Le),
            "and" => Op::Binary(B::And),
            "or" => Op::Binary(B::Or),
            _ => return None,
        })
    }
}
