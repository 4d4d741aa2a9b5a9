"""The CLI trainer on one backend against another: `encdecc train` of a tiny T5Gemma
(random init, byte tokenizer, PrefixLM on data/shakespeare.txt) for a few steps with
evaluations and a checkpoint midway, once per backend; then the per-step losses and the
final weights are compared.

    python3 scripts/gpu_train_check.py --bin BIN --out DIR [--backend cuda] [--against reference]
        [--steps 12]

On a GPU machine this checks the CUDA trainer, whose weights and AdamW moments stay on the
GPU between steps and come back for evaluations, checkpoints and the final model. Prints one
JSON line (`ok`, the worst loss and weight differences); exit status 1 if a run fails, the
losses differ by more than 1e-4 relative, or a weight tensor by more than 1e-3 of its largest
value (the bound of tests/cuda.rs; AdamW's m/sqrt(v) turns last-bit gradient differences
into visible ones where a gradient is near zero: the CPU backend against the reference
differs by 2.5e-4 after 6 steps, with losses equal to 1e-7).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_file(backend, steps):
    cfg = json.load(open(os.path.join(REPO, "examples/tiny-t5gemma/config.json")))

    def widen(c):
        # The byte tokenizer's ids reach 260 and beyond (sentinels): a 512 vocabulary.
        if isinstance(c, dict):
            for k, v in c.items():
                if k == "vocab_size":
                    c[k] = 512
                else:
                    widen(v)

    widen(cfg)
    every = max(steps // 2, 1)
    return cfg, {
        "model": os.path.join(REPO, "models/t5gemma.edl"),
        "config": "config.json",
        "init": {"kind": "random", "seed": 5, "std": 0.02},
        "tokenizer": {"kind": "byte"},
        "corpus": {"path": os.path.join(REPO, "data/shakespeare.txt"), "heldout_fraction": 0.05},
        "objective": {"objective": "prefix_lm", "batch_size": 4, "seq_len": 64, "seed": 2},
        "steps": steps,
        "optimizer": {"lr": 0.003, "warmup_steps": 2, "decay": "cosine", "min_lr_ratio": 0.1},
        "eval": {
            "every": every,
            "batches": 1,
            "objective": {"objective": "prefix_lm", "batch_size": 4, "seq_len": 64},
        },
        "checkpoint_every": every,
        "backend": backend,
    }


def train(binary, out, backend, steps):
    d = os.path.join(out, backend)
    os.makedirs(d, exist_ok=True)
    cfg, run = run_file(backend, steps)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    json.dump(run, open(os.path.join(d, "run.json"), "w"))
    r = subprocess.run(
        [binary, "train", os.path.join(d, "run.json"), "--out", os.path.join(d, "out"), "--quiet"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{backend}: exit {r.returncode}: {r.stderr.strip()[-600:]}")
    metrics = [json.loads(l) for l in open(os.path.join(d, "out", "metrics.jsonl"))]
    weights = load_file(os.path.join(d, "out", "final", "model.safetensors"))
    return metrics, weights


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--against", default="reference")
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    result = {"check": "train", "backend": a.backend, "against": a.against, "steps": a.steps}
    try:
        (ma, wa), (mb, wb) = (train(a.bin, a.out, b, a.steps) for b in (a.backend, a.against))
    except RuntimeError as e:
        result.update(ok=False, error=str(e))
        print(json.dumps(result))
        sys.exit(1)
    worst_loss, worst_eval, worst_weight = 0.0, 0.0, 0.0
    for x, y in zip(ma, mb):
        if "loss" in x:
            worst_loss = max(worst_loss, abs(x["loss"] - y["loss"]) / max(abs(y["loss"]), 1e-30))
        if "eval_loss" in x:
            worst_eval = max(worst_eval, abs(x["eval_loss"] - y["eval_loss"]) / abs(y["eval_loss"]))
    for k, w in wb.items():
        g = wa.get(k)
        if g is None or g.shape != w.shape:
            worst_weight = float("inf")
            continue
        scale = float(np.max(np.abs(w))) or 1.0
        worst_weight = max(worst_weight, float(np.max(np.abs(g.astype(np.float64) - w))) / scale)
    steps = sum(1 for x in ma if "loss" in x)
    ok = (
        steps == a.steps
        and len(ma) == len(mb)
        and worst_loss <= 1e-4
        and worst_eval <= 1e-4
        and worst_weight <= 1e-3
        and set(wa) == set(wb)
    )
    result.update(
        ok=ok,
        logged_steps=steps,
        worst_loss_rel=worst_loss,
        worst_eval_loss_rel=worst_eval,
        worst_weight_rel=worst_weight,
    )
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
