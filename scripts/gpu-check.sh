#!/usr/bin/env bash
# One command for a GPU machine (H100/H200, CUDA 13 driver, PyTorch installed, no Rust):
# fixture parity of the CUDA backend against HF (forward f32 and bf16, gradients f32 with the
# attention backward decomposed and fused), the CLI trainer against the reference, then
# bf16 benchmarks against PyTorch eager on the same card (forward and AdamW train step, S-S
# and a shortened 2B-2B; the train steps also with the fused attention backward; greedy
# generation and the S-S train step with and without CUDA graphs), a forward past the fixtures'
# lengths against the reference, and a per-step profile of the 2B-2B train step. Prints a table with
# model-FLOP utilisation; writes the table, results.json, per-step JSON, the profile and logs
# into RESULTS_DIR.
#
#   scripts/gpu-check.sh [RESULTS_DIR] [ENCDECC_BINARY]
#
# The binary defaults to $ENCDECC_BIN, else target/release/encdecc; build it on a machine
# with Rust as `cargo build --release --no-default-features --features cuda` (no libLLVM).
#
# Budget: 8 minutes. Every step has its own timeout, clipped to what is left of
# GPU_CHECK_BUDGET_S (default 460 s), so the whole script ends in time even when steps hang.
# Every failed check is printed as `FAIL <check>: <why>` (stderr and log.txt) and listed
# at the end; the exit status is 0 only when every check passed and every benchmark ran.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-gpu-results}
bin=${2:-${ENCDECC_BIN:-target/release/encdecc}}
mkdir -p "$results"
results=$(cd "$results" && pwd)
budget=${GPU_CHECK_BUDGET_S:-460}
start=$SECONDS
failures=()
log() { echo "[gpu-check $(date +%H:%M:%S) +$((SECONDS - start))s] $*" | tee -a "$results/log.txt"; }
fail() {
  echo "FAIL $1: $2" | tee -a "$results/log.txt" >&2
  failures+=("$1")
}
# The timeout of a step: what it asks for, clipped to the budget left (less 15 s for the
# table); 0 when nothing is left.
step_timeout() {
  local want=$1 left=$((budget - (SECONDS - start) - 15))
  ((left < want)) && want=$left
  ((want < 5)) && want=0
  echo "$want"
}

if [ ! -x "$bin" ]; then
  echo "gpu-check: no encdecc binary at $bin (pass it as the second argument or ENCDECC_BIN)" >&2
  exit 2
fi
if ! nvidia-smi > "$results/nvidia-smi.txt" 2>&1; then
  echo "gpu-check: nvidia-smi fails: no NVIDIA GPU/driver here (see $results/nvidia-smi.txt)" >&2
  exit 2
fi
# NVRTC and cuBLAS may come with PyTorch's pip wheels rather than the system.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' || ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
  extra=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "**", "lib"), recursive=True)
    dirs += glob.glob(os.path.join(sp, "torch", "lib"))
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
)
  [ -n "$extra" ] && export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export ENCDECC_CACHE_DIR="$results/kernel-cache"
# Tests run from here fail, rather than skip, where the GPU, g++ or NVRTC is missing.
export ENCDECC_REQUIRE_GPU=1

log "binary $bin"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$results/gpu.txt" 2>&1
log "gpu: $(cat "$results/gpu.txt")"
ldd "$bin" > "$results/ldd.txt" 2>&1
if grep -qi llvm "$results/ldd.txt"; then log "WARNING: the binary links libLLVM"; fi

# 1. What the compiler emits (for the record).
timeout 30 "$bin" compile models/t5gemma.edl --hf-config tests/fixtures/hf/t5gemma-tiny/config.json \
  --emit cuda -o "$results/cuda-src" > /dev/null 2>> "$results/log.txt" \
  || fail emit "encdecc compile --emit cuda failed (log.txt)"

# 2. Fixture parity: forward f32 (HF tolerances), forward bf16 (2e-2 of each tensor's
#    scale), gradients f32 (1e-4 of each gradient's scale, as tests/grad_parity.rs).
parity() { # name, timeout, gpu_parity.py arguments...
  local name=$1 t; t=$(step_timeout "$2"); shift 2
  log "parity $name (timeout ${t}s)"
  if ((t == 0)); then fail "parity-$name" "no time left in the budget"; return; fi
  timeout "$t" python3 scripts/gpu_parity.py --bin "$bin" --out "$results/parity" --tag "$name" "$@" \
    > "$results/parity-$name.jsonl" 2>> "$results/log.txt"
  local rc=$?
  log "parity $name: $(tail -1 "$results/parity-$name.jsonl")"
  if ((rc == 124)); then
    fail "parity-$name" "timed out after ${t}s"
  elif ((rc != 0)); then
    fail "parity-$name" "$(python3 - "$results/parity-$name.jsonl" <<'PY'
import json, sys
bad = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "case" in r and not r["ok"]:
        why = r.get("error") or "; ".join(f"{f['tensor']} off by {f['diff']:.3g} (tol {f['tol']:.3g})" for f in r["failures"][:3])
        if "hf_bf16_logits_err" in r:
            why += f" [HF itself in bf16: logits off by {r['hf_bf16_logits_err']:.3g}]"
        bad.append(f"{r['case']}: {why}")
print(" | ".join(bad)[:1500] or "the parity script failed (log.txt)")
PY
)"
  fi
}
parity f32 60
parity bf16 45 --dtype bf16 --rel 2e-2
parity grad-f32 45 --mode grad
# The fixtures' attention gradients through the fused backward kernels (their small shapes
# otherwise run decomposed: cuda::AttentionGrad::Auto).
ENCDECC_CUDA_ATTENTION_GRAD=fused parity grad-f32-fused 45 --mode grad

# 2b. The CLI trainer (`encdecc train`, weights and moments kept on the GPU between steps,
#     fetched for evaluations, checkpoints and the final model) against the reference
#     backend: 12 steps of a tiny T5Gemma.
t=$(step_timeout 60)
log "train check (timeout ${t}s)"
if ((t == 0)); then
  fail train "no time left in the budget"
elif ! timeout "$t" python3 scripts/gpu_train_check.py --bin "$bin" --out "$results/train" \
    > "$results/train-check.jsonl" 2>> "$results/log.txt"; then
  fail train "$(tail -1 "$results/train-check.jsonl" | cut -c1-600)"
fi
log "train check: $(tail -1 "$results/train-check.jsonl")"

# 2c. KV-cached generation (`encdecc generate --backend cuda`: rings kept on the GPU, the
#     decode step replayed as a CUDA graph) against HF `generate`: greedy sequences of
#     every fixture that has them, 12 tokens past the decoder windows included, token for
#     token.
#     A failure is run again with ENCDECC_CUDA_GRAPHS=off (`generate-eager`), which tells
#     the graphs from the rest of the decode path.
generate_check() { # name, output file
  local name=$1 out=$2 t; t=$(step_timeout 60)
  log "$name check (timeout ${t}s)"
  if ((t == 0)); then
    fail "$name" "no time left in the budget"
    return 1
  elif ! timeout "$t" python3 scripts/gpu_generate_check.py --bin "$bin" --out "$results/$name" \
      > "$results/$out" 2>> "$results/log.txt"; then
    fail "$name" "$(grep '"ok": false' "$results/$out" | head -2 | cut -c1-300 | tr '\n' ' ')$(tail -1 "$results/$out" | cut -c1-200)"
    log "$name check: $(tail -1 "$results/$out")"
    return 1
  fi
  log "$name check: $(tail -1 "$results/$out")"
}
generate_check generate generate-check.jsonl \
  || ENCDECC_CUDA_GRAPHS=off generate_check generate-eager generate-eager-check.jsonl

# 2d. The forward at lengths past the fixtures' (100 source, 40 target tokens), where the
#     attention runs the key-split kernel of decode steps: CUDA f32 and bf16 against the
#     reference backend (scripts/gpu_long_check.py).
t=$(step_timeout 40)
log "long check (timeout ${t}s)"
if ((t == 0)); then
  fail long "no time left in the budget"
elif ! timeout "$t" python3 scripts/gpu_long_check.py --bin "$bin" --out "$results/long" \
    > "$results/long-check.jsonl" 2>> "$results/log.txt"; then
  fail long "$(grep '"ok": false' "$results/long-check.jsonl" | head -2 | cut -c1-400 | tr '\n' ' ')"
fi
log "long check: $(tail -1 "$results/long-check.jsonl")"

# 3. Benchmarks in bf16: encdecc (cuda, --dtype bf16) and PyTorch eager (bf16 forward,
#    autocast bf16 training with f32 AdamW) on this card, same shapes and random weights.
bench_ours() { # name, timeout, encdecc bench arguments...
  local name=$1 t; t=$(step_timeout "$2"); shift 2
  log "bench encdecc $name (timeout ${t}s)"
  if ((t == 0)); then fail "bench-$name-encdecc" "no time left in the budget"; return; fi
  timeout "$t" "$bin" bench "$@" --backend cuda --dtype "${DTYPE:-bf16}" --json \
    2>> "$results/log.txt" | tail -1 > "$results/bench-$name-encdecc.json"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)) || ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))["median_ms"]' \
      "$results/bench-$name-encdecc.json" 2> /dev/null; then
    fail "bench-$name-encdecc" "exit $rc$( ((rc == 124)) && echo " (timed out after ${t}s)"): $(tail -2 "$results/log.txt" | tr '\n' ' ' | cut -c1-400)"
    : > "$results/bench-$name-encdecc.json"
  fi
}
bench_torch() { # name, timeout, bench_pytorch.py arguments...
  local name=$1 t; t=$(step_timeout "$2"); shift 2
  log "bench pytorch $name (timeout ${t}s)"
  if ((t == 0)); then fail "bench-$name-pytorch" "no time left in the budget"; return; fi
  timeout "$t" python3 scripts/bench_pytorch.py --device cuda --dtype "${DTYPE:-bf16}" --threads "$(nproc)" "$@" \
    2>> "$results/log.txt" | tail -1 > "$results/bench-$name-pytorch.json"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    fail "bench-$name-pytorch" "exit $rc$( ((rc == 124)) && echo " (timed out after ${t}s)"): $(tail -2 "$results/log.txt" | tr '\n' ' ' | cut -c1-400)"
    : > "$results/bench-$name-pytorch.json"
  fi
}
ss=(--batch 4 --src-len 256 --tgt-len 256)
ss_model=(models/t5gemma.edl --preset s-s --set encoder.vocab_size=32000 --set decoder.vocab_size=32000)
# 2B-2B: Gemma 2 2B stacks (vocab 256000) with 2 layers per stack, so that weights, AdamW
# state and activations fit one card and the step runs in the budget.
big=(--batch 2 --src-len 256 --tgt-len 256)
big_model=(models/t5gemma.edl --preset 2b-2b --set encoder.num_hidden_layers=2 --set decoder.num_hidden_layers=2)
bench_ours s-s-forward 25 "${ss_model[@]}" "${ss[@]}" --mode forward --warmup 2 --iters 10
bench_torch s-s-forward 25 --preset s-s --vocab 32000 "${ss[@]}" --mode forward --warmup 2 --iters 10
bench_ours s-s-train 40 "${ss_model[@]}" "${ss[@]}" --mode train --warmup 2 --iters 5
bench_torch s-s-train 35 --preset s-s --vocab 32000 "${ss[@]}" --mode train --warmup 2 --iters 5
bench_ours 2b-2b-forward 40 "${big_model[@]}" "${big[@]}" --mode forward --warmup 1 --iters 5
bench_torch 2b-2b-forward 35 --preset 2b-2b --vocab 256000 --layers 2 "${big[@]}" --mode forward --warmup 1 --iters 5
bench_ours 2b-2b-train 60 "${big_model[@]}" "${big[@]}" --mode train --warmup 2 --iters 3
bench_torch 2b-2b-train 50 --preset 2b-2b --vocab 256000 --layers 2 "${big[@]}" --mode train --warmup 2 --iters 3
# The train steps again with the fused attention backward, to compare with the above.
ENCDECC_CUDA_ATTENTION_GRAD=fused bench_ours s-s-train-fused 40 "${ss_model[@]}" "${ss[@]}" --mode train --warmup 2 --iters 5
ENCDECC_CUDA_ATTENTION_GRAD=fused bench_ours 2b-2b-train-fused 60 "${big_model[@]}" "${big[@]}" --mode train --warmup 2 --iters 3
# Greedy generation in f32 (encdecc generates in f32 only): batch 1, 256 source tokens, 64
# new ones, HF `generate` with its KV cache as the peer.
gen=(--batch 1 --src-len 256 --new-tokens 64 --mode generate --warmup 1 --iters 3)
DTYPE=f32 bench_ours s-s-generate-f32 40 "${ss_model[@]}" "${gen[@]}"
DTYPE=f32 bench_torch s-s-generate-f32 40 --preset s-s --vocab 32000 "${gen[@]}"
# Runs replay CUDA graphs by default (ENCDECC_CUDA_GRAPHS=auto): the same generation and S-S
# train step with their steps launched one by one, to compare with the runs above.
ENCDECC_CUDA_GRAPHS=off DTYPE=f32 bench_ours s-s-generate-f32-eager 40 "${ss_model[@]}" "${gen[@]}"
ENCDECC_CUDA_GRAPHS=off bench_ours s-s-train-eager 40 "${ss_model[@]}" "${ss[@]}" --mode train --warmup 2 --iters 5

# 4. For the record, not a check: where one 2B-2B train step spends its time (ENCDECC_PROFILE
#    synchronises after every step: time per op kind, the slowest steps, the run's phases).
t=$(step_timeout 45)
if ((t > 0)); then
  log "profile 2b-2b-train (timeout ${t}s)"
  ENCDECC_PROFILE=1 timeout "$t" "$bin" bench "${big_model[@]}" "${big[@]}" --mode train --warmup 1 \
    --iters 1 --backend cuda --dtype bf16 > "$results/profile-2b-2b-train.txt" 2>&1 \
    || log "profile 2b-2b-train: exit $? (see profile-2b-2b-train.txt)"
fi

# 5. Table and JSON.
printf '%s\n' "${failures[@]+"${failures[@]}"}" > "$results/failures.txt"
python3 scripts/gpu_parity.py --report "$results" | tee "$results/table.txt"
report=${PIPESTATUS[0]}
((report != 0)) && fail report "scripts/gpu_parity.py --report failed"
log "done in $((SECONDS - start))s: $results/results.json, $results/table.txt"
if ((${#failures[@]} > 0)); then
  echo "gpu-check: ${#failures[@]} check(s) FAILED: ${failures[*]}" >&2
  exit 1
fi
echo "gpu-check: every check passed"
