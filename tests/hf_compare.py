"""Calling the transformers reference the way the engine tests compare against it."""

from __future__ import annotations

import numpy as np


def torch_inputs(inputs: dict, *keys: str) -> dict:
    """input_ids, attention_mask, position_ids (counted from each row's first real token, as jaxvlm does) and
    `keys` of `inputs` as torch tensors."""
    import torch

    mask = torch.as_tensor(inputs["attention_mask"])
    return {"input_ids": torch.as_tensor(inputs["input_ids"]), "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), **{k: torch.as_tensor(inputs[k]) for k in keys}}


def hf_greedy(model, kwargs: dict, n: int, eos: int, pad: int) -> np.ndarray:
    """transformers' `generate(do_sample=False)`: (B, n) new tokens, pad id after EOS (jaxvlm's layout)."""
    import torch

    kwargs = {k: v for k, v in kwargs.items() if k != "position_ids"}  # generate derives its own
    with torch.no_grad():
        ref = model.generate(**kwargs, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    ref = ref[:, kwargs["input_ids"].shape[1]:].numpy()
    return np.pad(ref, ((0, 0), (0, n - ref.shape[1])), constant_values=pad)
