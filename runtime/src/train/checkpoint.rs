//! Training checkpoints: a directory HF can load as a model (`config.json`,
//! `model.safetensors` under checkpoint names) plus what exact resume needs
//! (`optimizer.safetensors` with the AdamW moments, `trainer_state.json` with the step and
//! the caller's state such as the data pipeline's).
//!
//! Crash safety: at every instant, a complete checkpoint is at `dir` or at its sibling
//! `<dir>.prev` (the previous one, kept), and `load` looks in that order. `save` writes the
//! new checkpoint into a fresh temporary directory beside `dir` (every file fsynced, then
//! the directory), then swaps it in by renames only (`swap_plan`), each followed by an
//! fsync of the parent. Temporaries of a killed writer (`.<dir>.tmp…`) are removed by the
//! next `save`. One writer per `dir` at a time (a training run owns its output directory).

use super::TrainState;
use crate::atomic_file::{parent, remove_stale_temps, sync_dir, temp_path, write_atomic};
use crate::tensor::Tensor;
use crate::weights::{load_params, write_safetensors, TensorFiles};
use encdecc_compiler::elab::ParamInfo;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";

fn moment_name(kind: &str, ckpt: &str) -> String {
    format!("{kind}.{ckpt}")
}

/// Where the previous complete checkpoint of `dir` is kept: `<dir>.prev`.
pub fn previous(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!("{name}.prev"))
}

/// Whether `dir` holds a checkpoint `save` finished: its state file is written last and
/// the directory only gets its name once everything in it is synced.
fn is_complete(dir: &Path) -> bool {
    ["model.safetensors", "optimizer.safetensors"]
        .iter()
        .all(|f| dir.join(f).is_file())
        && std::fs::read_to_string(dir.join(STATE_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|j| j["step"].is_u64())
}

/// One file-system operation of the swap.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A rename, then an fsync of the parent directory.
    Rename(PathBuf, PathBuf),
    /// A directory that no name `load` reads refers to any more.
    RemoveAll(PathBuf),
}

/// The operations that put the complete checkpoint at `tmp` in place of `dir`. After
/// each of them a complete checkpoint is at `dir` or at `previous(dir)`:
/// 1. the previous-but-one goes under a temporary name, then away (`dir` is complete);
/// 2. `dir` becomes `previous(dir)` (now only that one; `load` falls back to it);
/// 3. `tmp` becomes `dir`.
///
/// An incomplete `dir` (a foreign or damaged one) is discarded instead of kept.
fn swap_plan(dir: &Path, tmp: &Path) -> Result<Vec<Step>, String> {
    let prev = previous(dir);
    let mut plan = vec![];
    let mut discard = |p: &Path| -> Result<(), String> {
        let trash = temp_path(dir)?;
        plan.push(Step::Rename(p.to_path_buf(), trash.clone()));
        plan.push(Step::RemoveAll(trash));
        Ok(())
    };
    if is_complete(dir) {
        if prev.exists() {
            discard(&prev)?;
        }
        plan.push(Step::Rename(dir.to_path_buf(), prev));
    } else if dir.exists() {
        discard(dir)?;
    }
    plan.push(Step::Rename(tmp.to_path_buf(), dir.to_path_buf()));
    Ok(plan)
}

fn run_step(step: &Step) -> Result<(), String> {
    match step {
        Step::Rename(from, to) => {
            std::fs::rename(from, to).map_err(|e| {
                format!(
                    "cannot rename `{}` to `{}`: {e}",
                    from.display(),
                    to.display()
                )
            })?;
            sync_dir(parent(to))
        }
        Step::RemoveAll(p) => {
            std::fs::remove_dir_all(p).map_err(|e| format!("cannot remove `{}`: {e}", p.display()))
        }
    }
}

/// A temporary checkpoint directory, removed unless it was renamed into place.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a complete checkpoint of `state` into a fresh temporary directory beside `dir`.
fn write_temp(
    dir: &Path,
    params: &[ParamInfo],
    state: &TrainState,
    config: Option<&serde_json::Value>,
    extra: &serde_json::Value,
) -> Result<TempDir, String> {
    let tmp = TempDir(temp_path(dir)?);
    std::fs::create_dir(&tmp.0).map_err(|e| format!("cannot create `{}`: {e}", tmp.0.display()))?;
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
    // Each write fsyncs its file and the directory; the state file goes last.
    write_safetensors(&tmp.0.join("model.safetensors"), &model)?;
    write_safetensors(&tmp.0.join("optimizer.safetensors"), &opt)?;
    if let Some(c) = config {
        let text = serde_json::to_string_pretty(c).expect("json");
        write_atomic(&tmp.0.join("config.json"), text.as_bytes())?;
    }
    let st = serde_json::json!({"step": state.step, "extra": extra});
    let text = serde_json::to_string_pretty(&st).expect("json");
    write_atomic(&tmp.0.join(STATE_FILE), text.as_bytes())?;
    Ok(tmp)
}

/// Writes a checkpoint of `state` to `dir`, keeping the one there as `previous(dir)`.
pub fn save(
    dir: &Path,
    params: &[ParamInfo],
    state: &TrainState,
    config: Option<&serde_json::Value>,
    extra: &serde_json::Value,
) -> Result<(), String> {
    // What killed writers of `dir` left: temporary checkpoints and discarded ones.
    remove_stale_temps(dir);
    let tmp = write_temp(dir, params, state, config, extra)?;
    for step in swap_plan(dir, &tmp.0)? {
        run_step(&step)?;
    }
    Ok(())
}

/// Reads the checkpoint at `dir`, or when that is missing or incomplete (a crash while it
/// was replaced) the previous one, saying so on stderr: the state and the caller's `extra`.
/// Weights holding NaN or ±Inf are an error unless `allow_non_finite`.
pub fn load(
    dir: &Path,
    params: &[ParamInfo],
    allow_non_finite: bool,
) -> Result<(TrainState, serde_json::Value), String> {
    let load_from = |dir: &Path| load_from(dir, params, allow_non_finite);
    match load_from(dir) {
        Ok(x) => Ok(x),
        Err(first) => {
            let prev = previous(dir);
            if !prev.exists() {
                return Err(first);
            }
            let x = load_from(&prev)
                .map_err(|e| format!("{first}; the previous checkpoint fails too: {e}"))?;
            eprintln!(
                "warning: {first}; resuming from the previous checkpoint `{}` (step {})",
                prev.display(),
                x.0.step
            );
            Ok(x)
        }
    }
}

/// Reads one checkpoint directory.
fn load_from(
    dir: &Path,
    params: &[ParamInfo],
    allow_non_finite: bool,
) -> Result<(TrainState, serde_json::Value), String> {
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
    let model =
        TensorFiles::open(&dir.join("model.safetensors"))?.allow_non_finite(allow_non_finite);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<ParamInfo> {
        vec![ParamInfo {
            path: "w".into(),
            ckpt: "model.w".into(),
            shape: vec![2],
            node: Default::default(),
        }]
    }

    fn state(step: u64) -> TrainState {
        let t = |x: f32| Tensor::f32(vec![2], vec![x, -x]);
        TrainState {
            step,
            params: HashMap::from([("w".into(), t(step as f32))]),
            m: HashMap::from([("w".into(), t(0.5))]),
            v: HashMap::from([("w".into(), t(0.25))]),
        }
    }

    fn save_step(dir: &Path, step: u64) {
        let extra = serde_json::json!({"at": step});
        save(dir, &params(), &state(step), None, &extra).unwrap();
    }

    fn loaded_step(dir: &Path) -> u64 {
        let (s, extra) = load(dir, &params(), false).unwrap();
        assert_eq!(s.params["w"], state(s.step).params["w"]);
        assert_eq!(s.m["w"], state(s.step).m["w"]);
        assert_eq!(extra["at"], s.step);
        s.step
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// `earlier` saves into `root/ckpt`, then a checkpoint of step 9 written beside it and
    /// the plan that would swap it in.
    fn prepared(root: &Path, earlier: u64) -> (PathBuf, TempDir, Vec<Step>) {
        let dir = root.join("ckpt");
        for s in 1..=earlier {
            save_step(&dir, s);
        }
        let tmp = write_temp(
            &dir,
            &params(),
            &state(9),
            None,
            &serde_json::json!({"at": 9}),
        )
        .unwrap();
        let plan = swap_plan(&dir, &tmp.0).unwrap();
        (dir, tmp, plan)
    }

    /// After `earlier` saves, a crash after the first `crash_after` of the `steps` steps of
    /// the next one's swap: `load` finds the old checkpoint until the last rename, the new
    /// one after it; the next save cleans up what the crash left.
    fn check(earlier: u64, crash_after: usize, steps: usize) {
        let root = tempfile::tempdir().unwrap();
        let (dir, tmp, plan) = prepared(root.path(), earlier);
        assert_eq!(plan.len(), steps);
        for step in &plan[..crash_after] {
            run_step(step).unwrap();
        }
        std::mem::forget(tmp); // killed: nothing cleans up
        let want = if crash_after == steps { 9 } else { earlier };
        if want == 0 {
            assert!(load(&dir, &params(), false).is_err());
        } else {
            assert_eq!(
                loaded_step(&dir),
                want,
                "{earlier} saves, crash after {crash_after}"
            );
        }
        save_step(&dir, 10);
        assert_eq!(loaded_step(&dir), 10);
        let mut expect = vec!["ckpt".to_string()];
        if want > 0 {
            expect.push("ckpt.prev".into());
            assert_eq!(loaded_step(&previous(&dir)), want);
        }
        assert_eq!(entries(root.path()), expect, "stale temporaries removed");
    }

    /// A crash after every prefix of the swap, for a first, second and third save.
    #[test]
    fn every_prefix_of_the_swap_leaves_a_complete_checkpoint() {
        for earlier in 0..3u64 {
            let steps = prepared(tempfile::tempdir().unwrap().path(), earlier)
                .2
                .len();
            for crash_after in 0..=steps {
                check(earlier, crash_after, steps);
            }
        }
    }

    #[test]
    fn load_falls_back_to_the_previous_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save_step(&dir, 1);
        save_step(&dir, 2);
        assert_eq!(loaded_step(&dir), 2);
        assert_eq!(loaded_step(&previous(&dir)), 1);
        // Incomplete (no state file): the previous one.
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        assert_eq!(loaded_step(&dir), 1);
        // Missing: the previous one.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded_step(&dir), 1);
        // The next save keeps the only complete one as the previous.
        save_step(&dir, 3);
        assert_eq!(loaded_step(&dir), 3);
        assert_eq!(loaded_step(&previous(&dir)), 1);
        // Neither: an error naming the directory.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(previous(&dir)).unwrap();
        let e = load(&dir, &params(), false).unwrap_err();
        assert!(e.contains("is not a training checkpoint"), "{e}");
    }

    #[test]
    fn an_incomplete_directory_is_discarded_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        save_step(&dir, 1);
        save_step(&dir, 2);
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        save_step(&dir, 3);
        assert_eq!(loaded_step(&previous(&dir)), 1);
        assert_eq!(entries(root.path()), ["ckpt", "ckpt.prev"]);
    }
}
