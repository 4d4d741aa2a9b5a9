#!/usr/bin/env bash
# Balanced against unbalanced encoder-decoders (the paper's 9B-2B idea at S-S width):
# a 2x2 grid over encoder and decoder depth, random weights, KV-cached generation.
# Decode latency per token follows the decoder's depth; the encoder's depth moves only
# the one-off encode time. Results, plots and per-variant records land in $OUT
# (default out/sweep-balance); rerunning keeps the finished variants.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=${OUT:-out/sweep-balance}
target/release/encdecc sweep models/t5gemma.edl --preset s-s \
  --set encoder.vocab_size=32000 --set decoder.vocab_size=32000 \
  --grid encoder.num_hidden_layers=2,8 --grid decoder.num_hidden_layers=2,8 \
  --batch 1 --src-len 256 --new-tokens 32 --iters 3 --out "$out"
python3 - "$out/results.json" <<'PY' || true
import json, sys
rows = json.load(open(sys.argv[1]))["variants"]
for r in rows:
    print(f"encoder {r['encoder.num_hidden_layers']} / decoder {r['decoder.num_hidden_layers']} layers: "
          f"{r['parameters']/1e6:6.1f} M params, encode {r['encode_ms']:7.1f} ms, "
          f"decode {r['decode_ms_per_token']:6.2f} ms/token")
PY
echo "plot: $out/latency_vs_parameters.svg"
