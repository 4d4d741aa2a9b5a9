#!/usr/bin/env bash
# Reduced precision side by side on this machine, alternating the runs of each round so that
# all of them see the same load: the T5Gemma S-S forward (batch 4, 256 + 256) and greedy
# generation (batch 1, 256 source → 64 new tokens), vocab 32000, random weights, 2 threads.
#   encdecc    --dtype f32 | bf16 | int8
#   PyTorch    float32 and model.to(torch.bfloat16) (HF transformers, eager attention)
#   CTranslate2 4.8 compute_type float32 and int8 (generation; its T5Gemma loader drops the
#              softcaps, so only its speed counts)
#
#   scripts/bench_precision.sh [ROUNDS]    (needs: pip install torch transformers ctranslate2)
# Prints one markdown row per measurement: round, what, median ms, and tokens/s or ms/token.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
threads=${THREADS:-2}
cargo build --release --quiet
V=(--preset s-s --set encoder.vocab_size=32000 --set decoder.vocab_size=32000)
ours() { RAYON_NUM_THREADS=$threads target/release/encdecc bench models/t5gemma.edl "${V[@]}" "$@" --json | tail -1; }
row() {
  python3 - "$@" <<'PY'
import json, sys
r, what, o = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if o.get("mode") == "generate":
    extra = "%.1f tok/s, %.2f ms/token" % (o["tokens_per_s"], o["decode_ms_per_token"])
    if "share_of_read_bound" in o:
        extra += " (%.0f%% of the %.2f ms read bound)" % (100 * o["share_of_read_bound"], o["read_bound_ms_per_token"])
else:
    extra = "%.1f GFLOP/s" % o["gflops"] if "gflops" in o else ""
print("| %s | %s | %.1f | %s |" % (r, what, o["median_ms"], extra))
PY
}
echo "| round | run | median ms | |"
echo "|---|---|---:|---|"
for r in $(seq "$rounds"); do
  for d in f32 bf16 int8; do
    row "$r" "encdecc forward $d" "$(ours --mode forward --batch 4 --src-len 256 --tgt-len 256 --dtype $d --warmup 1 --iters 3)"
  done
  for d in f32 bf16; do
    row "$r" "PyTorch forward $d" "$(python3 scripts/bench_pytorch.py --preset s-s --vocab 32000 --batch 4 \
      --src-len 256 --tgt-len 256 --threads "$threads" --dtype $d --warmup 1 --iters 3 | tail -1)"
  done
  for d in f32 bf16 int8; do
    row "$r" "encdecc generate $d" "$(ours --mode generate --batch 1 --src-len 256 --new-tokens 64 --dtype $d --warmup 1 --iters 3)"
  done
  for d in f32 bf16; do
    row "$r" "HF generate $d" "$(python3 scripts/bench_pytorch.py --preset s-s --vocab 32000 --batch 1 \
      --src-len 256 --mode generate --new-tokens 64 --threads "$threads" --dtype $d --warmup 1 --iters 3 | tail -1)"
  done
  for c in float32 int8; do
    row "$r" "CTranslate2 generate $c" "$(cd scripts && python3 bench_ctranslate2.py --preset s-s --vocab 32000 \
      --batch 1 --src-len 256 --new-tokens 64 --threads "$threads" --compute-type $c --warmup 1 --iters 3 2>/dev/null | tail -1)"
  done
done
