"""Fixture parity of `encdecc run --backend cuda` against the HF reference outputs.

    python3 scripts/gpu_parity.py --bin target/release/encdecc --out RESULTS_DIR [--repo .]

For every fixture case (tests/fixtures/hf*/<case>/ with model.safetensors and
outputs.safetensors) runs the binary and compares with the HF tolerances of
tests/fixtures/hf/README.md: logits max abs diff <= 1e-4, loss abs diff <= 1e-4, hidden
states max abs diff <= 1e-4 x max abs of the reference. Prints one JSON object per case and
a summary line; exit status 1 if any case fails.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

HIDDEN = ("embed_scaled", "last_hidden_state", ".output")


def model_for(case_dir):
    cfg = json.load(open(os.path.join(case_dir, "config.json")))
    return "models/gemma2.edl" if cfg.get("model_type") == "gemma2" else "models/t5gemma.edl"


def compare(got, want, rel_logits=None):
    """(ok, worst) over the keys both have; `rel_logits` switches logits to a relative bound."""
    rows, ok = [], True
    for k, w in sorted(want.items()):
        if k not in got or k.startswith(("masks.", "generate")):
            continue
        g = got[k].astype(np.float64)
        w = w.astype(np.float64)
        if g.shape != w.shape:
            rows.append((k, float("inf"), 0.0, False))
            ok = False
            continue
        d = float(np.max(np.abs(g - w))) if w.size else 0.0
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        if k == "logits":
            tol = rel_logits * max(scale, 1e-30) if rel_logits else 1e-4
        elif k == "loss":
            tol = rel_logits * max(scale, 1e-30) if rel_logits else 1e-4
        elif any(h in k for h in HIDDEN):
            tol = (rel_logits or 1e-4) * max(scale, 1e-30)
        else:
            continue
        good = d <= tol
        ok &= good
        rows.append((k, d, tol, good))
    return ok, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("ENCDECC_BIN", "target/release/encdecc"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--repo", default=".")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--set", action="append", default=[], help="extra --set for every run (e.g. a dtype)")
    ap.add_argument("--rel", type=float, default=None, help="relative bound on logits/loss/states instead of HF's")
    ap.add_argument("--tag", default="f32")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cases = []
    for base in ("tests/fixtures/hf", "tests/fixtures/hf-extra"):
        root = os.path.join(a.repo, base)
        if not os.path.isdir(root):
            continue
        for c in sorted(os.listdir(root)):
            d = os.path.join(root, c)
            if os.path.exists(os.path.join(d, "model.safetensors")) and os.path.exists(os.path.join(d, "outputs.safetensors")):
                cases.append((c, d, "outputs.safetensors", []))
                if os.path.exists(os.path.join(d, "outputs_window_exclusive.safetensors")):
                    cases.append((c + "+exclusive", d, "outputs_window_exclusive.safetensors",
                                  ["--set", "encoder_window_rule=exclusive"]))
    results, all_ok = [], True
    for name, d, ref, extra in cases:
        out = os.path.join(a.out, f"{a.tag}-{name}.safetensors")
        cmd = [a.bin, "run", os.path.join(a.repo, model_for(d)), "--hf", d, "--inputs",
               os.path.join(d, "inputs.safetensors"), "--out", out, "--backend", a.backend, "--json"] + extra
        for s in a.set:
            cmd += ["--set", s]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        r = {"case": name, "dtype": a.tag, "seconds": round(time.time() - t, 2)}
        if p.returncode != 0:
            r.update(ok=False, error=p.stderr.strip()[-2000:])
        else:
            ok, rows = compare(load_file(out), load_file(os.path.join(d, ref)), a.rel)
            worst = max(rows, key=lambda x: x[1] / max(x[2], 1e-30)) if rows else None
            r.update(ok=ok, compared=len(rows),
                     worst=None if worst is None else {"tensor": worst[0], "diff": worst[1], "tol": worst[2]},
                     failures=[{"tensor": k, "diff": dd, "tol": tt} for k, dd, tt, g in rows if not g])
        all_ok &= r["ok"]
        results.append(r)
        print(json.dumps(r), flush=True)
    summary = {"parity": a.tag, "cases": len(results), "passed": sum(r["ok"] for r in results), "ok": all_ok}
    print(json.dumps(summary))
    with open(os.path.join(a.out, f"parity-{a.tag}.json"), "w") as f:
        json.dump({"summary": summary, "cases": results}, f, indent=1)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
