"""The model value every entry point takes, the embedded-inputs record, and the family registry.

    params = jaxvlm.load(path)           # -> VLM(weights=<pytree of jax.Array>, config=<static, hashable>)
    emb = family(params).embed(params, **inputs)   # -> Embedded: token embeddings + per-token metadata

A family module (jaxvlm/models/<family>.py, one per FAMILY_MODULES entry) provides, as module-level functions:
    parse_config(hf_config: dict) -> config      (frozen dataclass with .family, .text: TextConfig, ...)
    weight_shapes(config) -> pytree of shape tuples
    embed(params: VLM, **inputs) -> Embedded
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class VLM:
    """A vision-language model: weights (a pytree of jax.Array) plus its static config."""

    weights: dict
    config: Any = struct.field(pytree_node=False)


@struct.dataclass
class Embedded:
    """Token embeddings of a batch with everything the LLM and the pruning stages need per token.

    All arrays are (B, T) unless noted; "visual" tokens are image patches or video frame patches after the
    vision tower (one LLM token per merged patch).
    """

    embeds: jax.Array  # (B, T, D) input embeddings, visual features scattered in
    positions: jax.Array  # (P, B, T) int32 rotary positions (P=1 for Llama, 3 for M-RoPE)
    valid: jax.Array  # bool: real token (False on padding)
    visual: jax.Array  # bool: token is a visual token
    media: jax.Array  # int32: index of its image (or video) in the batch's media list; -1 for text
    frame: jax.Array  # int32: temporal index within a video (0 for images); -1 for text
    row: jax.Array  # int32: row of the token in its (merged) patch grid; -1 for text
    col: jax.Array  # int32: column of the token in its (merged) patch grid; -1 for text
    span_index: jax.Array  # int32: raster index within its image / frame (row * grid_w + col); -1 for text
    # Optional, only when a stage asks for them (VisionZip; LLaVA's embed(..., vision_cls=True)):
    vision_cls: jax.Array | None = None  # float32: vision tower [CLS] attention to the token, head sum; 0 text
    vision_keys: jax.Array | None = None  # (B, T, Dk) float32: its vision-tower keys (head mean); 0 text

    TOKEN_FIELDS = ("positions", "valid", "visual", "media", "frame", "row", "col", "span_index")

    @classmethod
    def from_batch(cls, embeds: jax.Array, batch, **extra) -> "Embedded":
        """`embeds` (B, T, D) with the per-token arrays a family's `prepare` put in `batch` (TOKEN_FIELDS)."""
        return cls(embeds=embeds, **{k: jnp.asarray(batch[k]) for k in cls.TOKEN_FIELDS}, **extra)


FAMILY_MODULES = {
    "llava": "jaxvlm.models.llava",
    "llava_next": "jaxvlm.models.llava_next",
    "video_llava": "jaxvlm.models.video_llava",
    "qwen2_vl": "jaxvlm.models.qwen_vl",
    "qwen2_5_vl": "jaxvlm.models.qwen_vl",
}


def family_module(family: str):
    """The module implementing model family `family` (see module docstring)."""
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {family!r}; supported: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[family])


def family(params: VLM):
    return family_module(params.config.family)


def random_params(config, seed: int = 0, std: float = 0.02, dtype=None) -> VLM:
    """A VLM with random weights for `config` (norm scales 1, biases 0, matrices N(0, std)): for demos,
    benchmarks and shape checks, never for claims about model quality."""
    import jax.numpy as jnp
    import numpy as np

    shapes = family_module(config.family).weight_shapes(config)
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))
    rng = np.random.default_rng(seed)
    dtype = dtype or jnp.float32
    leaves = []
    for path, shape in flat:
        name = str(path[-1].key)
        if "norm" in name:
            value = np.zeros(shape) if name.endswith("bias") else np.ones(shape)
        elif name.startswith("b"):
            value = np.zeros(shape)
        else:
            value = rng.standard_normal(shape) * std
        leaves.append(jnp.asarray(value, dtype))
    return VLM(weights=jax.tree_util.tree_unflatten(tree, leaves), config=config)
