#!/usr/bin/env bash
# The main job, end to end on data that ships in the repo:
#  1. compile the T5Gemma S-S preset (no weights needed) and print its summary;
#  2. run the bundled tiny T5Gemma (HF weights and inputs in examples/tiny-t5gemma) on the
#     reference backend and print the loss and the argmax token at every decoder position.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/encdecc
echo "== encdecc compile models/t5gemma.edl --preset s-s"
$bin compile models/t5gemma.edl --preset s-s --emit summary
echo
echo "== encdecc run models/t5gemma.edl --hf examples/tiny-t5gemma"
out=$(mktemp -d)/outputs.safetensors
$bin run models/t5gemma.edl --hf examples/tiny-t5gemma --inputs examples/tiny-t5gemma/inputs.safetensors --out "$out"
