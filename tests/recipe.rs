//! The README's main job, `examples/recipe/run.sh`, in its quick variant: every stage of the
//! recipe (pretraining, both adaptations, PrefixLM+KD, UL2, the decoder-only baseline, the
//! report) runs and produces its table and plots.

use std::process::Command;

#[test]
fn quick_recipe_runs_end_to_end() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("recipe");
    let o = Command::new("bash")
        .arg(root.join("examples/recipe/run.sh"))
        .env("QUICK", "1")
        .env("RUNS", &runs)
        .env("ENCDECC", env!("CARGO_BIN_EXE_encdecc"))
        .output()
        .expect("run the recipe");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let table = std::fs::read_to_string(runs.join("results.md")).unwrap();
    for run in [
        "gemma2-continue",
        "t5g-prefixlm-kd",
        "t5g-ul2",
        "t5g-unbalanced-prefixlm-kd",
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {run} |")))
            .unwrap_or_else(|| panic!("no row for {run}:\n{table}"));
        let final_loss: f64 = row
            .split('|')
            .nth(5)
            .unwrap()
            .trim()
            .trim_matches('*')
            .parse()
            .unwrap();
        assert!(
            final_loss.is_finite() && final_loss > 0.0 && final_loss < 7.0,
            "{row}"
        );
        assert!(runs.join(run).join("loss.svg").exists());
        assert!(runs.join(run).join("final/model.safetensors").exists());
    }
    assert!(std::fs::read_to_string(runs.join("comparison.svg"))
        .unwrap()
        .contains("<svg"));
    assert!(runs.join("t5g-unbalanced/adapt.json").exists());
}
