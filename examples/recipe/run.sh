#!/usr/bin/env bash
# The T5Gemma recipe (arXiv 2504.06225) in miniature, on the bundled Shakespeare corpus:
#   1. pretrain two tiny decoder-only Gemma 2 models (small and large) from scratch;
#   2. adapt them into encoder-decoders: balanced (small → small-small, cross-attention from
#      self-attention) and unbalanced (large encoder, small decoder, fresh cross-attention);
#   3. train the balanced one with PrefixLM + distillation (teacher: the large Gemma 2) and
#      with UL2; the unbalanced one with PrefixLM + distillation after a cross-attention-only
#      warm-up; continue the small decoder-only model for the same number of tokens;
#   4. compare them on the same held-out task: the second half of a 128-byte window given
#      the first half (decoder-only: the first half in context), in nats per byte.
# Outputs under runs/recipe/: each run's metrics.jsonl, loss.svg, checkpoint/, final/ (HF
# directories), and results.md + comparison.svg.
#
#   examples/recipe/run.sh            # full run, about 15 minutes on 2 cores
#   QUICK=1 examples/recipe/run.sh    # a few steps per stage, for CI (under 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=${QUICK:-0}
R=${RUNS:-runs/recipe}
if [ "$QUICK" = 1 ]; then
  PRE=(--steps 12); POST=(--steps 6); R=${RUNS:-runs/recipe-quick}
else
  PRE=(); POST=()
fi
if [ -z "${ENCDECC:-}" ]; then
  cargo build --release --quiet
fi
E=${ENCDECC:-target/release/encdecc}
rm -rf "$R"
mkdir -p "$R"

train() { # run file, output name, extra flags
  echo "== train $1 -> $R/$2"
  "$E" train "examples/recipe/$1.json" --out "$R/$2" "${@:3}"
}

train pretrain-small g2-small "${PRE[@]}"
train pretrain-large g2-large "${PRE[@]}"
echo "== adapt (balanced): g2-small -> t5g-balanced"
"$E" adapt models/t5gemma_adapt.edl --from "$R/g2-small/final" --out "$R/t5g-balanced"
echo "== adapt (unbalanced): encoder g2-large, decoder g2-small -> t5g-unbalanced"
"$E" adapt models/t5gemma_adapt.edl --from-encoder "$R/g2-large/final" \
  --from-decoder "$R/g2-small/final" --out "$R/t5g-unbalanced"
T=(--teacher-dir "$R/g2-large/final")
train gemma2-continue gemma2-continue --init "$R/g2-small/final" "${POST[@]}"
train t5g-prefixlm-kd t5g-prefixlm-kd --init "$R/t5g-balanced" "${T[@]}" "${POST[@]}"
train t5g-ul2 t5g-ul2 --init "$R/t5g-balanced" "${POST[@]}"
train t5g-unbalanced-prefixlm-kd t5g-unbalanced-prefixlm-kd --init "$R/t5g-unbalanced" "${T[@]}" "${POST[@]}"
echo "== held-out loss (second half of a window given the first; nats/byte)"
"$E" report "$R/gemma2-continue" "$R/t5g-prefixlm-kd" "$R/t5g-ul2" \
  "$R/t5g-unbalanced-prefixlm-kd" --out "$R" --title "held-out loss after adaptation"
echo "plots: $R/comparison.svg, $R/*/loss.svg"
