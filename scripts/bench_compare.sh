#!/usr/bin/env bash
# Side by side on this machine: encdecc (cpu backend) against HF transformers (PyTorch,
# float32, eager attention) on the same shapes and thread count, alternating runs so both
# see the same machine load. Prints each run's median and the ratio.
#
#   scripts/bench_compare.sh [ROUNDS]        (needs: pip install torch transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${THREADS:-2}
batch=${BATCH:-4} src=${SRC:-256} tgt=${TGT:-256} vocab=${VOCAB:-32000}
cargo build --release --quiet
for r in $(seq "$rounds"); do
  ours=$(RAYON_NUM_THREADS=$threads target/release/encdecc bench models/t5gemma.edl --preset s-s \
    --set encoder.vocab_size=$vocab --set decoder.vocab_size=$vocab --mode forward \
    --batch "$batch" --src-len "$src" --tgt-len "$tgt" --warmup 1 --iters 5 --json | tail -1)
  theirs=$(python3 scripts/bench_pytorch.py --preset s-s --vocab "$vocab" --batch "$batch" \
    --src-len "$src" --tgt-len "$tgt" --threads "$threads" --warmup 1 --iters 5 | tail -1)
  python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"encdecc {o['median_ms']:8.1f} ms ({o['gflops']:.1f} GFLOP/s, {100*o['share_of_gemm_peak']:.0f}% of GEMM peak)"
      f" | transformers {t['median_ms']:8.1f} ms | speed-up {t['median_ms']/o['median_ms']:.2f}x")
PY
done
