//! The teacher of a distillation run: a compiled decoder-only model scoring the batch's
//! teacher inputs, turned into the probabilities the student's loss reads.

use super::e;
use super::runfile::Teacher;
use crate::cli::common::{build, ModelArgs};
use encdecc_runtime::cpu::CpuModel;
use encdecc_runtime::data::Batch;
use encdecc_runtime::train::distill::{teacher_probs, TeacherConfig};
use encdecc_runtime::weights::{load_params, TensorFiles};
use encdecc_runtime::Tensor;
use std::collections::HashMap;

pub struct TeacherModel {
    model: CpuModel,
    params: HashMap<String, Tensor>,
    cfg: TeacherConfig,
}

impl TeacherModel {
    pub fn probs(&self, batch: &Batch) -> Result<Tensor, String> {
        let inputs = HashMap::from([
            ("input_ids".to_string(), batch["teacher_input_ids"].clone()),
            (
                "attention_mask".to_string(),
                batch["teacher_attention_mask"].clone(),
            ),
        ]);
        let out = self.model.run(&self.params, &inputs)?;
        teacher_probs(&out["logits"], &batch["teacher_label_positions"], &self.cfg)
    }
}

/// The teacher of `t`; weights holding NaN or ±Inf are an error unless `allow_non_finite`.
pub fn load_teacher(
    t: &Teacher,
    student_vocab: usize,
    allow_non_finite: bool,
) -> Result<TeacherModel, String> {
    let args = ModelArgs {
        model: t.model.clone(),
        preset: None,
        sets: vec![],
        hf_config: None,
        hf: Some(t.dir.clone()),
        model_name: None,
        entry: "forward".into(),
        allow_non_finite,
    };
    let inputs = vec!["input_ids".to_string(), "attention_mask".to_string()];
    let m = build(&args, None, Some(inputs), false)?;
    let vocab = m
        .graph
        .output("logits")
        .and_then(|n| m.graph.node(n).ty.shape.0.last().and_then(|d| d.known()))
        .ok_or_else(|| e("the teacher has no `logits` output"))? as usize;
    if vocab != student_vocab {
        return Err(e(format!(
            "the teacher's vocabulary ({vocab}) differs from the student's ({student_vocab})"
        )));
    }
    let files = TensorFiles::open_dir(&t.dir)
        .map_err(e)?
        .allow_non_finite(allow_non_finite);
    let (params, _) = load_params(&files, &m.params).map_err(e)?;
    Ok(TeacherModel {
        model: encdecc_runtime::cpu::prepare(&m.graph).map_err(e)?,
        params,
        cfg: TeacherConfig {
            temperature: t.temperature,
            top_k: t.top_k,
        },
    })
}
