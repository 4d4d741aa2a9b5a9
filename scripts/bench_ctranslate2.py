"""The CTranslate2 side of `encdecc bench --mode generate`: a random-weight HF T5Gemma of the
preset's shape (scripts/bench_pytorch.py's STACKS), converted with CTranslate2's
TransformersConverter, then greedy generation (beam 1) of exactly N new tokens per row with
`compute_type` float32 or int8 on the same threads. Prints one JSON line like
`encdecc bench --json` (median_ms, tokens_per_s, decode_ms_per_token).

    python3 scripts/bench_ctranslate2.py --preset s-s --vocab 32000 --batch 1 --src-len 256 \
        --new-tokens 64 --threads 2 --compute-type int8

CTranslate2 4.8's T5Gemma loader drops the attention and final-logit softcaps, so its outputs
differ from HF's; what this measures is its speed. The vocabulary is a word-level tokenizer
of placeholder tokens (`t0` … `t{V-1}`; pad 0, eos 1, bos 2), as the converter needs one.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import ctranslate2
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaForConditionalGeneration

from bench_pytorch import STACKS


def placeholder_tokenizer(vocab):
    names = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"t{i}" for i in range(4, vocab)]
    tok = Tokenizer(WordLevel({n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    ), names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="s-s", choices=sorted(STACKS))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--src-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--compute-type", default="int8", choices=["float32", "int8", "int8_float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    stack = dict(STACKS[a.preset], vocab_size=a.vocab)
    cfg = T5GemmaConfig(encoder=stack, decoder=dict(stack), vocab_size=a.vocab,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2)
    model = T5GemmaForConditionalGeneration(cfg).eval()
    tok, names = placeholder_tokenizer(a.vocab)
    with tempfile.TemporaryDirectory() as d:
        hf, ct2 = os.path.join(d, "hf"), os.path.join(d, "ct2")
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
        del model
        ctranslate2.converters.TransformersConverter(hf).convert(ct2, quantization=None, force=True)
        tr = ctranslate2.Translator(ct2, device="cpu", compute_type=a.compute_type,
                                    intra_threads=a.threads, inter_threads=1)
        g = torch.Generator().manual_seed(a.seed)
        ids = torch.randint(4, a.vocab, (a.batch, a.src_len), generator=g).tolist()
        src = [[names[i] for i in row] for row in ids]

        def run(n):
            return tr.translate_batch(src, beam_size=1, max_decoding_length=n, min_decoding_length=n,
                                      return_scores=False)

        for _ in range(a.warmup):
            run(a.new_tokens)
        full, one = [], []
        for _ in range(a.iters):
            t = time.perf_counter()
            out = run(a.new_tokens)
            full.append((time.perf_counter() - t) * 1e3)
            # The encoder plus one step: what is left of a generation without the decode.
            t = time.perf_counter()
            run(1)
            one.append((time.perf_counter() - t) * 1e3)
        made = len(out[0].hypotheses[0])
    med, enc = statistics.median(full), statistics.median(one)
    print(json.dumps({
        "peer": f"ctranslate2 {ctranslate2.__version__} compute_type={a.compute_type}",
        "mode": "generate", "batch": a.batch, "src_len": a.src_len, "new_tokens": a.new_tokens,
        "tokens_generated": made, "threads": a.threads, "median_ms": med,
        "tokens_per_s": a.batch * a.new_tokens / (med / 1e3),
        "encode_ms": enc, "decode_ms_per_token": (med - enc) / max(a.new_tokens - 1, 1),
    }))


if __name__ == "__main__":
    main()
