#!/usr/bin/env bash
# Side by side on this machine: encdecc (cpu backend) against HF transformers (PyTorch,
# float32, eager attention) on the same shapes and thread count, alternating runs so both
# see the same machine load. Prints each run's median and the ratio.
#
#   scripts/bench_compare.sh [ROUNDS]        (needs: pip install torch transformers)
#   MODE=generate scripts/bench_compare.sh   greedy generation: BATCH=1 SRC=256 NEW=64 by default,
#                                            HF `generate` with min_new_tokens = max_new_tokens
#   MODE=train scripts/bench_compare.sh      one training step: forward, backward, clipping, AdamW
#   DTYPE=bf16|int8 PEER_DTYPE=f32|bf16       encdecc's --dtype and PyTorch's (model.to(bfloat16);
#                                            autocast for train), f32 both by default
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${THREADS:-2}
batch=${BATCH:-4} src=${SRC:-256} tgt=${TGT:-256} vocab=${VOCAB:-32000}
dtype=${DTYPE:-f32} peer_dtype=${PEER_DTYPE:-f32}
cargo build --release --quiet
if [ "${MODE:-forward}" = generate ]; then
  batch=${BATCH:-1} new=${NEW:-64}
  for r in $(seq "$rounds"); do
    ours=$(RAYON_NUM_THREADS=$threads target/release/encdecc bench models/t5gemma.edl --preset s-s \
      --set encoder.vocab_size=$vocab --set decoder.vocab_size=$vocab --mode generate \
      --batch "$batch" --src-len "$src" --new-tokens "$new" --dtype "$dtype" --warmup 1 --iters 3 --json | tail -1)
    theirs=$(python3 scripts/bench_pytorch.py --preset s-s --vocab "$vocab" --batch "$batch" \
      --src-len "$src" --mode generate --new-tokens "$new" --threads "$threads" --dtype "$peer_dtype" --warmup 1 --iters 3 | tail -1)
    python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"encdecc {o['median_ms']:8.1f} ms ({o['tokens_per_s']:.1f} tok/s, encode {o['encode_ms']:.1f} ms,"
      f" {o['decode_ms_per_token']:.2f} ms/token = {100*o['share_of_bandwidth_bound']:.0f}% of the"
      f" {o['bandwidth_bound_ms_per_token']:.2f} ms bound at {o['memory_bandwidth_gbs']:.1f} GB/s)"
      f" | transformers {t['median_ms']:8.1f} ms ({t['tokens_per_s']:.1f} tok/s, encode {t['encode_ms']:.1f} ms,"
      f" {t['decode_ms_per_token']:.2f} ms/token) | speed-up {t['median_ms']/o['median_ms']:.2f}x,"
      f" per token {t['decode_ms_per_token']/o['decode_ms_per_token']:.2f}x")
PY
  done
  exit 0
fi
for r in $(seq "$rounds"); do
  ours=$(RAYON_NUM_THREADS=$threads target/release/encdecc bench models/t5gemma.edl --preset s-s \
    --set encoder.vocab_size=$vocab --set decoder.vocab_size=$vocab --mode "${MODE:-forward}" \
    --batch "$batch" --src-len "$src" --tgt-len "$tgt" --dtype "$dtype" --warmup 1 --iters 5 --json | tail -1)
  theirs=$(python3 scripts/bench_pytorch.py --preset s-s --vocab "$vocab" --batch "$batch" \
    --src-len "$src" --tgt-len "$tgt" --threads "$threads" --mode "${MODE:-forward}" --dtype "$peer_dtype" --warmup 1 --iters 5 | tail -1)
  python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"encdecc {o['median_ms']:8.1f} ms ({o['gflops']:.1f} GFLOP/s, {100*o['share_of_gemm_peak']:.0f}% of GEMM peak)"
      f" | transformers {t['median_ms']:8.1f} ms | speed-up {t['median_ms']/o['median_ms']:.2f}x")
PY
done
