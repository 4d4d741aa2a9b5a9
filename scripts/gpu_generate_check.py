"""KV-cached generation on one backend against HF `generate`: `encdecc generate` on every
fixture with recorded generations (tests/fixtures/hf{,-extra}/*/outputs.safetensors, keys
`generate` and `generate_eos` as meta.json describes them; and tests/fixtures/gen, 12 new
tokens, past every decoder window, so that the sliding rings wrap), greedy, compared token
for token with HF's sequences.

    python3 scripts/gpu_generate_check.py --bin BIN --out DIR [--backend cuda]

On a GPU machine this checks the CUDA decode path (the weights, the encoder's keys and
values and the self-attention rings stay on the GPU over a generation; the decode step is
replayed as a CUDA graph from its third token). Prints one JSON line per case and a
summary line (`ok`, cases, passed); exit status 1 on any difference or failed run. The CPU
backend meets the same sequences exactly (tests/generate.rs).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CASES = ("t5gemma-tiny", "t5gemma-unbalanced", "t5g-odd", "t5g-mha")


def eos_list(v):
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", default="cuda")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    # (name, model fixture dir, {key: (max_new_tokens, eos, reference sequences)})
    runs = []
    for case in CASES:
        d = os.path.join(REPO, "tests/fixtures/hf", case)
        if not os.path.isdir(d):
            d = os.path.join(REPO, "tests/fixtures/hf-extra", case)
        meta = json.load(open(os.path.join(d, "meta.json")))
        want_all = load_file(os.path.join(d, "outputs.safetensors"))
        runs.append((case, d, {key: (meta[key]["max_new_tokens"], meta[key]["eos_token_id"],
                                     want_all[f"{key}.sequences"]) for key in ("generate", "generate_eos")}))
    gen = os.path.join(REPO, "tests/fixtures/gen")
    for case, spec in json.load(open(os.path.join(gen, "cases.json"))).items():
        refs = load_file(os.path.join(gen, f"{case}.safetensors"))
        runs.append((f"{case}-past-window", os.path.join(REPO, "tests/fixtures", spec["model"]),
                     {key: (spec["max_new_tokens"], spec[key]["eos_token_id"], refs[f"{key}.sequences"])
                      for key in ("generate", "generate_eos", "generate_stop")}))
    for case, d, keys in runs:
        for key, (new_tokens, eos, want) in keys.items():
            out = os.path.join(a.out, f"{case}-{key}.safetensors")
            cmd = [a.bin, "generate", os.path.join(REPO, "models/t5gemma.edl"), "--hf", d,
                   "--inputs", os.path.join(d, "inputs.safetensors"),
                   "--max-new-tokens", str(new_tokens), "--out", out,
                   "--backend", a.backend]
            for e in eos_list(eos):
                cmd += ["--eos-token-id", str(e)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            row = {"case": case, "key": key}
            if r.returncode != 0:
                row.update(ok=False, error=(r.stderr or r.stdout).strip()[-400:])
            else:
                got = load_file(out)["sequences"]
                same = got.shape == want.shape and bool(np.array_equal(got, want))
                row.update(ok=same)
                if not same:
                    row.update(got=got.tolist(), want=want.tolist())
            print(json.dumps(row), flush=True)
            rows.append(row)
    passed = sum(r["ok"] for r in rows)
    print(json.dumps({"check": "generate", "backend": a.backend, "cases": len(rows),
                      "passed": passed, "ok": passed == len(rows)}))
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
