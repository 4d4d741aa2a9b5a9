//! Training checkpoints: a directory HF can load as a model (`config.json`,
//! `model.safetensors` under checkpoint names) plus what exact resume needs
//! (`optimizer.safetensors` with the AdamW moments, `trainer_state.json` with the step and
//! the caller's state such as the data pipeline's). Written to a temporary directory and
//! renamed into place, so a crash never leaves a half-written checkpoint.

use super::TrainState;
use crate::tensor::Tensor;
use crate::weights::{load_params, write_safetensors, TensorFiles};
use encdecc_compiler::elab::ParamInfo;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";

fn moment_name(kind: &str, ckpt: &str) -> String {
    format!("{kind}.{ckpt}")
}

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!(".{name}.{tag}{}", std::process::id()))
}

/// Writes a checkpoint of `state` to `dir`, replacing any previous one there.
pub fn save(
    dir: &Path,
    params: &[ParamInfo],
    state: &TrainState,
    config: Option<&serde_json::Value>,
    extra: &serde_json::Value,
) -> Result<(), String> {
    let tmp = sibling(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create `{}`: {e}", tmp.display()))?;
    let mut model = BTreeMap::new();
    let mut opt = BTreeMap::new();
    for p in params {
        let t = state
            .params
            .get(&p.path)
            .ok_or_else(|| format!("no value for parameter `{}`", p.ckpt))?;
        model.insert(p.ckpt.clone(), t.clone());
        for (kind, map) in [("m", &state.m), ("v", &state.v)] {
            if let Some(t) = map.get(&p.path) {
                opt.insert(moment_name(kind, &p.ckpt), t.clone());
            }
        }
    }
    write_safetensors(&tmp.join("model.safetensors"), &model)?;
    write_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
    if let Some(c) = config {
        let text = serde_json::to_string_pretty(c).expect("json");
        std::fs::write(tmp.join("config.json"), text)
            .map_err(|e| format!("cannot write config.json: {e}"))?;
    }
    let st = serde_json::json!({"step": state.step, "extra": extra});
    std::fs::write(
        tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&st).expect("json"),
    )
    .map_err(|e| format!("cannot write {STATE_FILE}: {e}"))?;
    let old = sibling(dir, "old");
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old)
            .map_err(|e| format!("cannot replace `{}`: {e}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| format!("cannot write `{}`: {e}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Reads a checkpoint written by `save`: the state and the caller's `extra` value.
pub fn load(dir: &Path, params: &[ParamInfo]) -> Result<(TrainState, serde_json::Value), String> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| {
        format!(
            "`{}` is not a training checkpoint (cannot read {STATE_FILE}: {e})",
            dir.display()
        )
    })?;
    let st: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "`{}` is not valid JSON: {e}",
            dir.join(STATE_FILE).display()
        )
    })?;
    let step = st["step"]
        .as_u64()
        .ok_or_else(|| format!("{STATE_FILE} in `{}` has no step", dir.display()))?;
    let model = TensorFiles::open(&dir.join("model.safetensors"))?;
    let (values, _) = load_params(&model, params)?;
    let opt = TensorFiles::open(&dir.join("optimizer.safetensors"))?;
    let mut m: HashMap<String, Tensor> = HashMap::new();
    let mut v: HashMap<String, Tensor> = HashMap::new();
    for p in params {
        for (kind, map) in [("m", &mut m), ("v", &mut v)] {
            if let Some(t) = opt.get(&moment_name(kind, &p.ckpt))? {
                if t.as_f32().is_none() || t.shape.iter().map(|&d| d as u64).ne(p.shape.clone()) {
                    return Err(format!(
                        "optimizer state `{}` has shape {:?} ({}), expected {:?} (f32)",
                        moment_name(kind, &p.ckpt),
                        t.shape,
                        t.dtype_name(),
                        p.shape
                    ));
                }
                map.insert(p.path.clone(), t);
            }
        }
    }
    Ok((
        TrainState {
            step,
            params: values,
            m,
            v,
        },
        st["extra"].clone(),
    ))
}
