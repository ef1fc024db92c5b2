"""Parity of jaxvlm's LLaVA-1.5 with transformers, end to end through a real checkpoint directory.

    python -m experiments.parity [--layers 4] [--tokens 700]

Builds a small LLaVA-1.5-shaped model offline (CLIP 336px / patch 14, i.e. the real 576-token image span;
small widths; Llama with GQA; vocab 32064, image token 32000 as llava-1.5-7b-hf), saves it with transformers'
`save_pretrained`, converts the directory with the code behind `python -m converters`, loads the result with
`jaxvlm.load` and prints the max |logit difference| against transformers on a padded batch of 3 prompts of
600+ tokens (one image each), in float32 and bfloat16. Needs torch (test-time dependency). Exit status 0 when
float32 parity is within 2e-5 x the largest |logit|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_TOKEN, PAD_TOKEN, VOCAB = 32000, 32001, 32064
# float32 parity bound, relative to the largest |logit|: both sides compute in float32 and differ only in
# summation order, which grows with width and depth (measured 5e-6 x scale here, 1e-6 x scale on the 64-wide
# test models); real bugs (RoPE, feature layer, image offset) move logits by 10-100% of the scale.
RTOL_OF_SCALE = 2e-5


def small_llava_config(layers: int = 4, vision_layers: int = 3) -> dict:
    """config.json of a small LLaVA-1.5-shaped model; initializer_range 0.1 so positions matter."""
    return {
        "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": IMAGE_TOKEN, "pad_token_id": PAD_TOKEN, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "text_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 688,
                        "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 4,
                        "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "initializer_range": 0.1},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 256,
                          "num_hidden_layers": vision_layers, "num_attention_heads": 4, "image_size": 336,
                          "patch_size": 14, "initializer_range": 0.1},
    }


def torch_llava(config: dict, seed: int = 0):
    """transformers' model for `config`, float32, norm scales 1 + 0.1 N(0,1) and biases 0.1 N(0,1)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name or "layrnorm" in name) and name.endswith(".weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def prompts(lengths=(700, 650, 610), seed: int = 0) -> dict:
    """Left-padded batch: text, 576 image tokens, text; one random 336x336 image per row."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), PAD_TOKEN, np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        start = int(rng.integers(5, n - 576 - 5))
        row = rng.integers(3, IMAGE_TOKEN, size=n)
        row[start:start + 576] = IMAGE_TOKEN
        ids[b, t - n:], mask[b, t - n:] = row, 1
    pixels = rng.standard_normal((len(lengths), 3, 336, 336)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def torch_logits(model, inputs: dict) -> np.ndarray:
    import torch

    mask = torch.as_tensor(inputs["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(inputs["input_ids"]), attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    pixel_values=torch.as_tensor(inputs["pixel_values"]))
    return out.logits.numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.parity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="text decoder layers")
    ap.add_argument("--tokens", type=int, default=700, help="longest prompt (rows: n, n-50, n-90)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("experiments.parity needs torch (pip install torch==2.13.0, CPU wheel)", file=sys.stderr)
        return 2
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import jaxvlm
    from converters.__main__ import convert_checkpoint

    torch.set_num_threads(2)
    config = small_llava_config(args.layers)
    lengths = (args.tokens, args.tokens - 50, args.tokens - 90)
    inputs = prompts(lengths)
    mask = inputs["attention_mask"].astype(bool)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = torch_llava(config)
        model.save_pretrained(Path(tmp) / "hf")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"built LLaVA-shaped model offline: {n_params / 1e6:.1f}M parameters, saved with save_pretrained "
              f"({time.perf_counter() - t0:.1f}s)")
        t0 = time.perf_counter()
        ref = torch_logits(model, inputs)
        print(f"transformers forward, batch {len(lengths)} x {lengths} tokens: {time.perf_counter() - t0:.2f}s")
        t0 = time.perf_counter()
        convert_checkpoint(str(Path(tmp) / "hf"), str(Path(tmp) / "jaxvlm"), progress=False)
        params = jaxvlm.load(str(Path(tmp) / "jaxvlm"))
        print(f"converted (python -m converters) and loaded: {time.perf_counter() - t0:.2f}s")
        t0 = time.perf_counter()
        logits = np.asarray(jaxvlm.forward(params, **inputs).logits)
        print(f"jaxvlm forward (incl. compile): {time.perf_counter() - t0:.2f}s")
        diff = np.abs(logits - ref)
        per_row = [float(diff[b][mask[b]].max()) for b in range(len(lengths))]
        worst, scale = max(per_row), float(np.abs(ref[mask]).max())
        bound = RTOL_OF_SCALE * max(1.0, scale)
        print(f"float32 max |logit diff| vs transformers: {worst:.2e} (per row {', '.join(f'{d:.1e}' for d in per_row)};"
              f" logit scale {scale:.2f}; bound {bound:.1e})")
        p16 = jaxvlm.load(str(Path(tmp) / "hf"), dtype="bfloat16")
        l16 = np.asarray(jaxvlm.forward(p16, **inputs).logits)
        agree = (l16.argmax(-1) == ref.argmax(-1))[mask].mean()
        print(f"bfloat16 max |logit diff| vs transformers float32: {np.abs(l16 - ref)[mask].max():.3f} "
              f"(argmax agreement {agree:.1%})")
    ok = worst < bound
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
