"""The peer side of `encdecc bench`: HF transformers (PyTorch, float32, eager attention) on
the same shapes and threads, random weights. Prints one JSON line like `encdecc bench --json`.

    python3 scripts/bench_pytorch.py --preset s-s --vocab 32000 --batch 4 --src-len 256 --tgt-len 256 --threads 2

`--mode train`: one training step as HF users write it — forward with labels, `loss.backward()`,
`torch.optim.AdamW.step()` and `zero_grad()` — timed whole (`encdecc bench --mode train`).

`--mode generate --new-tokens N`: HF `generate` (greedy, KV cache, min_new_tokens = max_new_tokens
= N so every row does N steps, as `encdecc bench --mode generate`), timed whole; the encoder is
timed alone to split off the per-token decode latency.

On a GPU (`--device cuda`, used by scripts/gpu-check.sh) the model runs there in float32
(TF32 off, as encdecc's cuBLAS calls), timed with synchronisation; `--layers` shortens both
stacks (the 2b-2b shape with fewer layers).

`--dtype bf16`: the peer of `encdecc bench --dtype bf16`. Forward and generate: the model cast
to bfloat16 (what inference users run; on this CPU oneDNN runs its matmuls on AMX). Train: float32 weights and AdamW state with
`torch.autocast(bfloat16)` around forward and loss (mixed precision as HF users train; the
same split as encdecc's f32 master weights with bf16 activations and GEMMs).
"""
import argparse
import contextlib
import json
import statistics
import time

import torch
from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration

STACKS = {
    "s-s": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, head_dim=64, query_pre_attn_scalar=64),
    "b-b": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                num_key_value_heads=12, head_dim=64, query_pre_attn_scalar=64),
    # Gemma 2 2B, as models/t5gemma.edl's `2b-2b` preset.
    "2b-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="s-s", choices=sorted(STACKS))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--src-len", type=int, default=256)
    ap.add_argument("--tgt-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--mode", default="forward", choices=["forward", "generate", "train"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=None, help="layers per stack (default: the preset's)")
    ap.add_argument("--attn", default="eager", help="attn_implementation (eager, sdpa)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    stack = dict(STACKS[a.preset], vocab_size=a.vocab)
    if a.layers:
        stack["num_hidden_layers"] = a.layers
    cfg = T5GemmaConfig(encoder=dict(stack), decoder=dict(stack), vocab_size=a.vocab, attn_implementation=a.attn)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # Built on the device: initialising a 2B model on the host first takes longer than the run.
    with dev:
        model = T5GemmaForConditionalGeneration(cfg).eval()
    if a.dtype == "bf16" and a.mode in ("forward", "generate"):
        model = model.to(torch.bfloat16)
    ids = torch.randint(0, a.vocab, (a.batch, a.src_len), device=dev)
    dec = torch.randint(0, a.vocab, (a.batch, a.tgt_len), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if a.mode == "generate":
        return bench_generate(a, model, sync)
    if a.mode == "train":
        return bench_train(a, model, ids, dec, sync)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            sync()
            t = time.perf_counter()
            model(input_ids=ids, decoder_input_ids=dec, use_cache=False)
            sync()
            if i >= a.warmup:
                times.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(times)
    print(json.dumps({"peer": "transformers", "torch": torch.__version__, "threads": a.threads, "device": a.device,
                      "attn": a.attn, "dtype": a.dtype, "mode": "forward", "median_ms": med,
                      "min_ms": min(times), "tokens_per_s": a.batch * (a.src_len + a.tgt_len) / (med / 1e3)}))


def bench_train(a, model, ids, labels, sync):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    autocast = (torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16) if a.dtype == "bf16"
                else contextlib.nullcontext())
    for i in range(a.warmup + a.iters):
        sync()
        t = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(times)
    print(json.dumps({"peer": "transformers", "torch": torch.__version__, "threads": a.threads, "mode": "train",
                      "device": a.device, "dtype": a.dtype, "attn": a.attn, "median_ms": med, "min_ms": min(times),
                      "tokens_per_s": a.batch * (a.src_len + a.tgt_len) / (med / 1e3)}))


def bench_generate(a, model, sync):
    # Ids above the special tokens (pad 0, eos 1, bos 2): no padding, no early stop.
    dev = next(model.parameters()).device
    ids = torch.randint(3, a.vocab, (a.batch, a.src_len), device=dev)
    mask = torch.ones_like(ids)
    total, encode = [], []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            sync()
            t = time.perf_counter()
            model.get_encoder()(input_ids=ids, attention_mask=mask)
            sync()
            e = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, do_sample=False, num_beams=1,
                                 decoder_start_token_id=2, pad_token_id=0, eos_token_id=1)
            sync()
            g = (time.perf_counter() - t) * 1e3
            assert out.shape == (a.batch, a.new_tokens + 1), out.shape
            if i >= a.warmup:
                total.append(g)
                encode.append(e)
    med, enc = statistics.median(total), statistics.median(encode)
    print(json.dumps({"peer": "transformers", "torch": torch.__version__, "threads": a.threads, "mode": "generate",
                      "dtype": a.dtype,
                      "median_ms": med, "min_ms": min(total), "encode_ms": enc,
                      "decode_ms_per_token": (med - enc) / a.new_tokens,
                      "tokens_per_s": a.batch * a.new_tokens / (med / 1e3)}))


if __name__ == "__main__":
    main()
