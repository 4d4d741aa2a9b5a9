//! `encdecc report RUN_DIR…`: compares training runs — a markdown table of held-out losses
//! and a plot of the held-out loss of every run by step.

use super::plot::{Chart, Series, Style};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    /// Output directories of `encdecc train` (each with a metrics.jsonl).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write `comparison.svg` and `results.md`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The plot's title.
    #[arg(long, default_value = "held-out loss")]
    pub title: String,
}

/// One training run as its metrics.jsonl tells it.
pub struct Run {
    name: String,
    steps: u64,
    tokens: u64,
    seconds: f64,
    first_eval: Option<f64>,
    eval: Vec<(f64, f64)>,
}

fn read_run(dir: &Path) -> Result<Run, String> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("error: cannot read `{}`: {e}", path.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    parse_run(name, &path, &text)
}

/// A run from the text of its metrics.jsonl (`path` names it in errors). Any text gives a
/// run or an error, never a panic (fuzzed: `fuzz/fuzz_targets/metrics_jsonl.rs`).
pub fn parse_run(name: String, path: &Path, text: &str) -> Result<Run, String> {
    let mut r = Run {
        name,
        steps: 0,
        tokens: 0,
        seconds: 0.0,
        first_eval: None,
        eval: vec![],
    };
    for (i, line) in text.lines().enumerate() {
        let j: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("error: {}:{}: {e}", path.display(), i + 1))?;
        r.steps = j["step"].as_u64().unwrap_or(r.steps);
        let tokens = j["tokens"].as_u64().unwrap_or(0);
        r.tokens += tokens;
        if let Some(tps) = j["tokens_per_s"].as_f64().filter(|&t| t > 0.0) {
            r.seconds += tokens as f64 / tps;
        }
        if let Some(l) = j["eval_loss"].as_f64() {
            r.first_eval.get_or_insert(l);
            r.eval.push((r.steps as f64, l));
        }
    }
    if r.eval.is_empty() {
        return Err(format!(
            "error: `{}` has no held-out loss (did the run finish?)",
            path.display()
        ));
    }
    Ok(r)
}

/// The markdown table of `encdecc report`.
pub fn results_table(runs: &[Run]) -> String {
    let mut md = String::from(
        "| run | steps | tokens | held-out loss (before) | held-out loss (final) | train time (s) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {} | {:.4} | **{:.4}** | {:.0} |\n",
            r.name,
            r.steps,
            r.tokens,
            r.first_eval.unwrap_or(f64::NAN),
            r.eval.last().map(|x| x.1).unwrap_or(f64::NAN),
            r.seconds
        ));
    }
    md
}

/// The plot of `encdecc report`: every run's held-out loss by step.
pub fn comparison_chart(runs: &[Run], title: &str) -> Chart {
    Chart {
        title: title.to_string(),
        x_label: "step".into(),
        y_label: "held-out loss (nats/token)".into(),
        series: runs
            .iter()
            .map(|r| Series {
                name: r.name.clone(),
                points: r.eval.clone(),
                style: if r.eval.len() > 1 {
                    Style::Line
                } else {
                    Style::Points
                },
            })
            .collect(),
    }
}

pub fn report(a: ReportArgs) -> Result<(), String> {
    let runs: Vec<Run> = a
        .runs
        .iter()
        .map(|p| read_run(p))
        .collect::<Result<_, _>>()?;
    let md = results_table(&runs);
    print!("{md}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("error: cannot create `{}`: {e}", out.display()))?;
        let chart = comparison_chart(&runs, &a.title);
        let w = |name: &str, data: &[u8]| {
            encdecc_runtime::weights::write_atomic(&out.join(name), data)
                .map_err(|e| format!("error: {e}"))
        };
        w("comparison.svg", chart.to_svg().as_bytes())?;
        w("results.md", md.as_bytes())?;
    }
    Ok(())
}
