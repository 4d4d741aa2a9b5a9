//! SIGKILL at any moment, checkpoint writes included, then `--resume`: the losses and the
//! final weights are bit-identical to an uninterrupted run. The kills are placed by
//! watching the output directory (never by timing asserts): after a seeded, pseudo-random
//! number of logged steps plus a seeded delay, and as soon as a temporary checkpoint
//! directory appears (a kill that a temporary outlives landed inside a checkpoint write).

use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 16;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny Gemma 2 that checkpoints every step.
fn run_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/shakespeare.txt")).unwrap();
    let cut = text.char_indices().nth(60_000).unwrap().0;
    std::fs::write(dir.join("corpus.txt"), &text[..cut]).unwrap();
    let run = json!({
        "model": root().join("models/gemma2.edl"),
        "config": root().join("examples/recipe/gemma2-small.json"),
        "set": ["num_hidden_layers=2", "layer_types=[\"sliding_attention\",\"full_attention\"]"],
        "init": {"kind": "random", "seed": 5},
        "corpus": {"path": dir.join("corpus.txt"), "heldout_fraction": 0.1},
        "objective": {"objective": "causal_lm", "batch_size": 2, "seq_len": 32},
        "steps": STEPS,
        "checkpoint_every": 1,
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 4, "batches": 1},
    });
    let p = dir.join("run.json");
    std::fs::write(&p, serde_json::to_string_pretty(&run).unwrap()).unwrap();
    p
}

fn train(run: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_encdecc"));
    c.arg("train").arg(run).arg("--out").arg(out).arg("--quiet");
    if resume {
        c.arg("--resume");
    }
    c
}

/// Whether a run can resume: a checkpoint under one of the names `load` reads.
fn has_checkpoint(out: &Path) -> bool {
    out.join("checkpoint").exists() || out.join("checkpoint.prev").exists()
}

fn logged_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The temporary checkpoint directories (being written, or discarded by the swap).
fn checkpoint_temps(out: &Path) -> BTreeSet<String> {
    std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".checkpoint.tmp"))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Once this many lines are logged, after this delay.
    AfterLines(usize, Duration),
    /// As soon as a temporary checkpoint directory of this run exists (those a killed run
    /// left are there until the first save removes them).
    InCheckpointWrite,
    /// As soon as `checkpoint` is gone and only `checkpoint.prev` is there (between the two
    /// renames of the swap).
    MidSwap,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Whether a temporary of this run outlived it: the kill landed inside a save.
    /// Whether only the previous checkpoint was left: the kill landed inside the swap.
    Killed {
        temp_left: bool,
        mid_swap: bool,
    },
    Finished,
}

fn mid_swap(out: &Path) -> bool {
    !out.join("checkpoint").exists() && out.join("checkpoint.prev").exists()
}

fn run_and_kill(mut child: Child, out: &Path, kill: Kill) -> Outcome {
    let stale = checkpoint_temps(out);
    let own_temp = |out: &Path| !checkpoint_temps(out).is_subset(&stale);
    let fired = |out: &Path| match kill {
        Kill::AfterLines(n, _) => logged_lines(out) >= n,
        Kill::InCheckpointWrite => own_temp(out),
        Kill::MidSwap => mid_swap(out),
    };
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "encdecc train failed: {status}");
            return Outcome::Finished;
        }
        if fired(out) {
            if let Kill::AfterLines(_, d) = kill {
                std::thread::sleep(d);
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return Outcome::Killed {
                temp_left: own_temp(out),
                mid_swap: mid_swap(out),
            };
        }
        match kill {
            Kill::AfterLines(..) => std::thread::sleep(Duration::from_micros(300)),
            Kill::InCheckpointWrite | Kill::MidSwap => std::thread::yield_now(),
        }
    }
}

/// xorshift64*: the kill plan is the same on every run of the test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sigkill_anywhere_then_resume_is_bit_identical() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_file(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let o = train(&run, &a, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Kills after pseudo-random step counts spread over the run, each followed by one
    // aimed at the next checkpoint write.
    let mut rng = Rng(0x0005_eed1_9000);
    let mut plan = vec![];
    for i in 0..4u64 {
        let span = (STEPS as u64 - 2) / 4;
        let lines = 2 + i * span + rng.below(span);
        let delay = Duration::from_millis(rng.below(25));
        plan.push(Kill::AfterLines(lines as usize, delay));
        plan.push(Kill::InCheckpointWrite);
    }
    plan.insert(5, Kill::MidSwap);
    let (mut kills, mut spread_kills, mut in_writes, mut extra_tries) = (0, 0, 0, 0);
    let (mut fallbacks, mut mid_swaps, mut after_mid_swap) = (0, 0, false);
    let mut i = 0;
    while i < plan.len() {
        // A kill after logged lines waits for at least one step of this run (the lines a
        // killed run logged after its checkpoint are there until the resume drops them).
        let kill = match plan[i] {
            Kill::AfterLines(n, d) => Kill::AfterLines(n.max(logged_lines(&b) + 1), d),
            k => k,
        };
        let child = train(&run, &b, has_checkpoint(&b))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let outcome = run_and_kill(child, &b, kill);
        let err = std::fs::read_to_string(tmp.path().join("stderr")).unwrap();
        let fell_back = err.contains("resuming from the previous checkpoint");
        fallbacks += fell_back as usize;
        // Killed between the renames: the next resume finds the previous checkpoint.
        assert!(
            fell_back || !after_mid_swap,
            "no fallback after a mid-swap kill: {err}"
        );
        eprintln!("{kill:?}: {outcome:?} with {} lines", logged_lines(&b));
        match outcome {
            Outcome::Killed {
                temp_left,
                mid_swap,
            } => {
                after_mid_swap = mid_swap;
                mid_swaps += mid_swap as usize;
                kills += 1;
                spread_kills += matches!(kill, Kill::AfterLines(..)) as usize;
                in_writes += temp_left as usize;
                // Aim again until one kill lands inside a checkpoint write (asserted) and one
                // inside the swap (not asserted: its window is one rename and one sync).
                let retry = match plan[i] {
                    Kill::InCheckpointWrite => in_writes == 0,
                    Kill::MidSwap => mid_swaps == 0,
                    Kill::AfterLines(..) => false,
                } && extra_tries < 8;
                if retry {
                    extra_tries += 1;
                } else {
                    i += 1;
                }
            }
            // Only when the last kill came too late: the run is complete.
            Outcome::Finished => break,
        }
    }
    assert!(
        spread_kills >= 4,
        "{spread_kills} kills after a number of steps"
    );
    assert!(in_writes >= 1, "no kill landed inside a checkpoint write");
    let o = train(&run, &b, true).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!after_mid_swap || err.contains("resuming from the previous checkpoint"));

    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), STEPS + 1);
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "loss", "grad_norm", "lr", "eval_loss"] {
            assert_eq!(x[k], y[k], "`{k}` at step {}", x["step"]);
        }
    }
    for f in [
        "final/model.safetensors",
        "checkpoint/optimizer.safetensors",
    ] {
        let (wa, wb) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(wa == wb, "{f} differs after {kills} kills");
    }
    // The last save and the last metrics rewrite cleaned up after the killed writers.
    let mut left: Vec<String> = std::fs::read_dir(&b)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "checkpoint",
            "checkpoint.prev",
            "final",
            "loss.svg",
            "metrics.jsonl"
        ]
    );
    eprintln!(
        "{kills} kills ({in_writes} inside a checkpoint write, {mid_swaps} inside the swap), \
         {fallbacks} resumes from the previous checkpoint, in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
