"""How far HF transformers itself lands from its float32 logits when the same model runs in
bfloat16 (eager attention, CPU), for every fixture case: the scale against which the CUDA
backend's `--dtype bf16` parity (scripts/gpu_parity.py) is read. Writes
tests/fixtures/hf_bf16_error.json; needs torch and transformers (not the tests).

    python3 scripts/hf_bf16_error.py
"""
import glob
import json
import os

import torch
from safetensors.torch import load_file
from transformers import Gemma2Config, Gemma2ForCausalLM, T5GemmaConfig, T5GemmaForConditionalGeneration

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def logits(d, cfg, dtype):
    inputs = load_file(os.path.join(d, "inputs.safetensors"))
    if cfg.get("model_type") == "gemma2":
        c = Gemma2Config.from_dict(cfg)
        c._attn_implementation = "eager"
        model, keys = Gemma2ForCausalLM(c), ("input_ids", "attention_mask")
    else:
        c = T5GemmaConfig.from_dict(cfg)
        c._attn_implementation = "eager"
        model = T5GemmaForConditionalGeneration(c)
        keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    model.load_state_dict(load_file(os.path.join(d, "model.safetensors")), strict=False)
    model = model.eval().to(dtype)
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k in keys}).logits.double()


def main():
    out = {}
    for d in sorted(glob.glob(os.path.join(REPO, "tests/fixtures/hf*/*/"))):
        if not os.path.exists(os.path.join(d, "outputs.safetensors")):
            continue
        cfg = json.load(open(os.path.join(d, "config.json")))
        ref = load_file(os.path.join(d, "outputs.safetensors"))["logits"].double()
        f32 = (logits(d, cfg, torch.float32) - ref).abs().max().item()
        bf16 = (logits(d, cfg, torch.bfloat16) - ref).abs().max().item()
        out[os.path.basename(d.rstrip("/"))] = {
            "logits_max_abs": ref.abs().max().item(),
            "hf_f32_max_abs_err": f32,
            "hf_bf16_max_abs_err": bf16,
        }
    out["_about"] = (
        "HF transformers (torch " + torch.__version__ + ") run in float32 and in bfloat16 on each "
        "fixture case, max |logits - fixture logits|; scripts/hf_bf16_error.py"
    )
    path = os.path.join(REPO, "tests/fixtures/hf_bf16_error.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
