//! Training objectives built on a model's outputs. Knowledge distillation adds the
//! soft-target cross-entropy against a teacher's distribution, `−Σ_v p_T(v) · log
//! softmax(z/τ)(v)` (the Gemma 2 recipe's loss; it differs from KL(p_T ‖ p_S) by the
//! teacher's entropy, a constant, so the gradients are the same), averaged over the
//! positions whose label is not ignored, mixed with the label cross-entropy.

use crate::ir::*;

type Res<T> = Result<T, String>;

/// The input holding the teacher's probabilities `[B, T, V]` (zeros outside its top-k).
pub const TEACHER_PROBS: &str = "teacher_probs";
/// The output the trainer minimises when distilling.
pub const KD_LOSS: &str = "kd_loss";
/// The mixed objective: `(1 − α)·loss + α·τ²·kd_loss`.
pub const TRAIN_LOSS: &str = "train_loss";

#[derive(Clone, Debug, PartialEq)]
pub struct Distillation {
    /// Softmax temperature τ of the student (the teacher's is applied when its
    /// probabilities are made).
    pub temperature: f64,
    /// Weight α of the distillation term; 1 = distillation only.
    pub alpha: f64,
}

impl Default for Distillation {
    fn default() -> Distillation {
        Distillation {
            temperature: 1.0,
            alpha: 1.0,
        }
    }
}

/// Adds the distillation loss to a forward graph with outputs `logits` `[B, T, V]` and
/// `loss`, and an input `labels` `[B, T]`: a `teacher_probs` input and the outputs
/// `kd_loss` and `train_loss`.
pub fn add_distillation(g: &mut Graph, kd: &Distillation, ignore_index: i64) -> Res<()> {
    let logits = g
        .output("logits")
        .ok_or("distillation needs a model with a `logits` output")?;
    let ce = g
        .output("loss")
        .ok_or("distillation needs the label loss (`labels` as an input)")?;
    let labels = g
        .inputs()
        .into_iter()
        .find(|&n| matches!(&g.node(n).op, Op::Input { name } if name == "labels"))
        .ok_or("distillation needs `labels`")?;
    let lt = g.node(logits).ty.clone();
    if lt.shape.rank() != 3 || g.node(labels).ty.shape.rank() != 2 {
        return Err(format!(
            "distillation wants logits [B, T, V] and labels [B, T], got {lt} and {}",
            g.node(labels).ty
        ));
    }
    let f32c = |g: &mut Graph, v: f64| -> Res<NodeId> {
        g.add(
            Op::Const { value: F64(v) },
            &[],
            Some(TensorType {
                dtype: DType::F32,
                shape: Shape::scalar(),
            }),
        )
    };
    let bin = |g: &mut Graph, op, a, b| g.add(Op::Binary(op), &[a, b], None);
    let sum = |g: &mut Graph, x, axis| {
        g.add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axis,
            },
            &[x],
            None,
        )
    };
    let probs = g.add(
        Op::Input {
            name: TEACHER_PROBS.into(),
        },
        &[],
        Some(lt.clone()),
    )?;
    // log softmax(z / τ) over the vocabulary.
    let inv_t = f32c(g, 1.0 / kd.temperature)?;
    let z = bin(g, BinaryOp::Mul, logits, inv_t)?;
    let m = g.add(
        Op::Reduce {
            op: ReduceOp::Max,
            axis: 2,
        },
        &[z],
        None,
    )?;
    let d = bin(g, BinaryOp::Sub, z, m)?;
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d], None)?;
    let s = sum(g, e, 2)?;
    let ls = g.add(Op::Unary(UnaryOp::Log), &[s], None)?;
    let logp = bin(g, BinaryOp::Sub, d, ls)?;
    let pl = bin(g, BinaryOp::Mul, probs, logp)?;
    let row = sum(g, pl, 2)?; // [B, T, 1]
    let row = g.add(Op::Unary(UnaryOp::Neg), &[row], None)?;
    let row = g.add(
        Op::Reshape,
        &[row],
        Some(TensorType {
            dtype: DType::F32,
            shape: g.node(labels).ty.shape.clone(),
        }),
    )?;
    let ig = g.add(
        Op::Const {
            value: F64(ignore_index as f64),
        },
        &[],
        Some(TensorType {
            dtype: DType::I64,
            shape: Shape::scalar(),
        }),
    )?;
    let valid = bin(g, BinaryOp::Ne, labels, ig)?;
    let zero = f32c(g, 0.0)?;
    let mut total = g.add(Op::Where, &[valid, row, zero], None)?;
    let vshape = g.node(valid).ty.shape.clone();
    let mut count = g.add(
        Op::Cast,
        &[valid],
        Some(TensorType {
            dtype: DType::F32,
            shape: vshape,
        }),
    )?;
    for axis in 0..2 {
        total = sum(g, total, axis)?;
        count = sum(g, count, axis)?;
    }
    let kd_loss = bin(g, BinaryOp::Div, total, count)?;
    let kd_loss = g.add(
        Op::Reshape,
        &[kd_loss],
        Some(TensorType {
            dtype: DType::F32,
            shape: Shape::known(&[1]),
        }),
    )?;
    g.set_name(kd_loss, KD_LOSS);
    g.outputs.push((KD_LOSS.into(), kd_loss));
    let a = f32c(g, kd.alpha * kd.temperature * kd.temperature)?;
    let b = f32c(g, 1.0 - kd.alpha)?;
    let x = bin(g, BinaryOp::Mul, kd_loss, a)?;
    let y = bin(g, BinaryOp::Mul, ce, b)?;
    let train = bin(g, BinaryOp::Add, x, y)?;
    g.set_name(train, TRAIN_LOSS);
    g.outputs.push((TRAIN_LOSS.into(), train));
    crate::ir::verify::debug_verify(g, "distillation");
    Ok(())
}
