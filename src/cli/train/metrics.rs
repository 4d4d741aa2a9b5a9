//! What a run writes besides checkpoints: `metrics.jsonl` (one JSON object per step, the
//! held-out loss on evaluation steps) and `loss.svg` drawn from it. Lines are appended
//! whole and synced before each checkpoint, so what a checkpoint's step logged survives it.

use super::e;
use crate::cli::plot::{Chart, Series, Style};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Outputs {
    pub dir: PathBuf,
    pub metrics: std::fs::File,
}

pub fn open_metrics(dir: &Path, keep_through: Option<u64>) -> Result<std::fs::File, String> {
    let path = dir.join("metrics.jsonl");
    // A rewrite killed half-way left its temporary; this run owns the directory.
    encdecc_runtime::atomic_file::remove_stale_temps(&path);
    // On resume, drop what was logged after the checkpoint: those steps run again. A torn
    // last line (killed mid-write) does not parse and goes too. Rewritten atomically: a
    // crash now leaves either the old log or the kept lines.
    let kept = match keep_through {
        Some(step) => std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|j| j["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        None => String::new(),
    };
    encdecc_runtime::atomic_file::write_atomic(&path, kept.as_bytes()).map_err(e)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|err| e(format!("cannot open `{}`: {err}", path.display())))
}

impl Outputs {
    pub fn log(&mut self, j: serde_json::Value) -> Result<(), String> {
        // One write per line: a kill tears at most the last line, never interleaves.
        self.metrics
            .write_all(format!("{j}\n").as_bytes())
            .map_err(|err| e(format!("cannot write metrics: {err}")))
    }

    /// Makes the lines logged so far durable (before a checkpoint that covers them).
    pub fn sync(&self) -> Result<(), String> {
        self.metrics
            .sync_data()
            .map_err(|err| e(format!("cannot sync metrics: {err}")))
    }

    /// loss.svg from metrics.jsonl: the training loss and the held-out loss by step.
    pub fn plot(&self, title: &str) -> Result<(), String> {
        let text = std::fs::read_to_string(self.dir.join("metrics.jsonl")).unwrap_or_default();
        let (mut train, mut eval) = (vec![], vec![]);
        for l in text.lines() {
            let Ok(j) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let step = j["step"].as_f64().unwrap_or(0.0);
            if let Some(x) = j["loss"].as_f64() {
                train.push((step, x));
            }
            if let Some(x) = j["eval_loss"].as_f64() {
                eval.push((step, x));
            }
        }
        let chart = Chart {
            title: title.into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: train,
                    style: Style::Line,
                },
                Series {
                    name: "held-out".into(),
                    points: eval,
                    style: Style::Line,
                },
            ],
        };
        encdecc_runtime::weights::write_atomic(
            &self.dir.join("loss.svg"),
            chart.to_svg().as_bytes(),
        )
        .map_err(e)
    }
}
