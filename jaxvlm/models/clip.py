"""The CLIP vision tower (transformers' CLIPVisionModel), as pure functions over a weights dict.

Pre-LN ViT: patch conv (no bias) + class embedding + learned position embeddings, `pre_layrnorm`, then
`num_layers` encoder layers (LayerNorm -> MHA with biases -> residual, LayerNorm -> fc1 -> act -> fc2 ->
residual). `post_layernorm` only feeds CLIP's pooled output, which LLaVA never uses; its weights are kept so
checkpoints round-trip and parameter counts match transformers.

Weights (layers stacked on a leading L axis, run with `lax.scan`):
    patch_embed (C, p, p, D); class_embed (D,); pos_embed (1 + G*G, D)
    pre_norm_scale/pre_norm_bias (D,); post_norm_scale/post_norm_bias (D,)
    layers: attn_norm_scale/attn_norm_bias (L, D), wq/wk/wv (L, D, N, H), bq/bk/bv (L, N, H),
            wo (L, N, H, D), bo (L, D), mlp_norm_scale/mlp_norm_bias (L, D),
            w_fc1 (L, D, F), b_fc1 (L, F), w_fc2 (L, F, D), b_fc2 (L, D)

Hidden states are numbered as transformers numbers them: index 0 is the output of `pre_layrnorm` (the
encoder input), index i the output of encoder layer i; negative indices count from num_layers + 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxvlm.config import check_fields, require
from jaxvlm.layers import activation, layer_norm

LAYER_KEYS = (
    "attn_norm_scale", "attn_norm_bias", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
    "mlp_norm_scale", "mlp_norm_bias", "w_fc1", "b_fc1", "w_fc2", "b_fc2",
)


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Sequence length of the tower: class token + grid * grid patches."""
        return 1 + self.grid * self.grid


VISION_KEYS = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels", "image_size",
    "patch_size", "layer_norm_eps", "hidden_act",
}
# projection_dim: CLIP's contrastive head (not part of CLIPVisionModel); vocab_size: carried by the
# llava-1.5 Hub config, unused by a vision tower.
VISION_BENIGN = {"projection_dim", "vocab_size"}


def parse_vision_config(d: Mapping[str, Any], section: str = "vision_config") -> ClipVisionConfig:
    """Parse a CLIPVisionConfig dict (defaults follow transformers' CLIPVisionConfig)."""
    check_fields(section, d, VISION_KEYS, VISION_BENIGN)
    require(section, d.get("model_type", "clip_vision_model") == "clip_vision_model",
            f"vision model_type {d.get('model_type')!r} is not implemented (only clip_vision_model)")
    cfg = ClipVisionConfig(
        hidden_size=int(d.get("hidden_size", 768)),
        intermediate_size=int(d.get("intermediate_size", 3072)),
        num_layers=int(d.get("num_hidden_layers", 12)),
        num_heads=int(d.get("num_attention_heads", 12)),
        num_channels=int(d.get("num_channels", 3)),
        image_size=int(d.get("image_size", 224)),
        patch_size=int(d.get("patch_size", 32)),
        layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)),
        hidden_act=str(d.get("hidden_act", "quick_gelu")),
    )
    activation(cfg.hidden_act)  # raises for an activation we do not implement
    require(section, cfg.hidden_size % cfg.num_heads == 0, "hidden_size must be a multiple of num_attention_heads")
    require(section, cfg.image_size % cfg.patch_size == 0, "image_size must be a multiple of patch_size")
    return cfg


def weight_shapes(cfg: ClipVisionConfig) -> dict:
    """Shapes of every vision-tower weight (a pytree of tuples, same structure as the weights)."""
    L, D, F, N, H = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
    p, C = cfg.patch_size, cfg.num_channels
    layers = {
        "attn_norm_scale": (L, D), "attn_norm_bias": (L, D),
        "wq": (L, D, N, H), "bq": (L, N, H), "wk": (L, D, N, H), "bk": (L, N, H), "wv": (L, D, N, H), "bv": (L, N, H),
        "wo": (L, N, H, D), "bo": (L, D),
        "mlp_norm_scale": (L, D), "mlp_norm_bias": (L, D),
        "w_fc1": (L, D, F), "b_fc1": (L, F), "w_fc2": (L, F, D), "b_fc2": (L, D),
    }
    return {
        "patch_embed": (C, p, p, D), "class_embed": (D,), "pos_embed": (cfg.num_positions, D),
        "pre_norm_scale": (D,), "pre_norm_bias": (D,), "post_norm_scale": (D,), "post_norm_bias": (D,),
        "layers": layers,
    }


def resolve_layers(feature_layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Hidden-state indices (0..num_layers) of transformers' `hidden_states[i]` for possibly negative i."""
    out = []
    for i in feature_layers:
        j = i + num_layers + 1 if i < 0 else i
        if not 0 <= j <= num_layers:
            raise ValueError(f"vision feature layer {i} is out of range for a tower of {num_layers} layers")
        out.append(j)
    return tuple(out)


def embed_patches(w: dict, pixels_bchw: jax.Array, cfg: ClipVisionConfig) -> jax.Array:
    """Patch conv + class token + position embeddings + pre-LN: (B, 1 + G*G, D)."""
    b, c, h, wd = pixels_bchw.shape
    if (h, wd) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"pixel_values are {h}x{wd}; this vision tower takes {cfg.image_size}x{cfg.image_size}")
    g, p = cfg.grid, cfg.patch_size
    x = pixels_bchw.astype(w["patch_embed"].dtype).reshape(b, c, g, p, g, p)
    patches = jnp.einsum("BCYpXq,CpqD->BYXD", x, w["patch_embed"]).reshape(b, g * g, -1)
    cls = jnp.broadcast_to(w["class_embed"], (b, 1, cfg.hidden_size)).astype(patches.dtype)
    x = jnp.concatenate([cls, patches], axis=1) + w["pos_embed"]
    return layer_norm(x, w["pre_norm_scale"], w["pre_norm_bias"], cfg.layer_norm_eps)


def layer(lw: dict, x_btd: jax.Array, cfg: ClipVisionConfig) -> jax.Array:
    """One pre-LN encoder layer with full (unmasked) attention."""
    h = layer_norm(x_btd, lw["attn_norm_scale"], lw["attn_norm_bias"], cfg.layer_norm_eps)
    q = jnp.einsum("BTD,DNH->BTNH", h, lw["wq"]) + lw["bq"]
    k = jnp.einsum("BTD,DNH->BTNH", h, lw["wk"]) + lw["bk"]
    v = jnp.einsum("BTD,DNH->BTNH", h, lw["wv"]) + lw["bv"]
    attn = jax.nn.dot_product_attention(q, k, v)
    x_btd = x_btd + jnp.einsum("BTNH,NHD->BTD", attn, lw["wo"]) + lw["bo"]
    h = layer_norm(x_btd, lw["mlp_norm_scale"], lw["mlp_norm_bias"], cfg.layer_norm_eps)
    h = activation(cfg.hidden_act)(jnp.einsum("BTD,DF->BTF", h, lw["w_fc1"]) + lw["b_fc1"])
    return x_btd + jnp.einsum("BTF,FD->BTD", h, lw["w_fc2"]) + lw["b_fc2"]


def cls_attention(lw: dict, x_btd: jax.Array, cfg: ClipVisionConfig) -> tuple[jax.Array, jax.Array]:
    """VisionZip's inputs from the attention INSIDE one encoder layer whose input is `x_btd` (B, 1 + P, D).

    Returns (cls (B, P) float32: the [CLS] query's softmax attention probabilities over the patch keys, summed
    over heads, i.e. transformers' `attentions[i][:, :, 0, 1:].sum(1)` with `attentions[i]` that layer's;
    keys (B, P, H) float32: the patch keys (k projection with its bias, unscaled) averaged over heads,
    VisionZip's `raw_key_states.mean(1)`). Only the [CLS] row of the logits is formed (no N x N matrix).
    """
    h = layer_norm(x_btd, lw["attn_norm_scale"], lw["attn_norm_bias"], cfg.layer_norm_eps).astype(jnp.float32)
    q = jnp.einsum("BD,DNH->BNH", h[:, 0], lw["wq"].astype(jnp.float32)) + lw["bq"].astype(jnp.float32)
    k = jnp.einsum("BTD,DNH->BTNH", h, lw["wk"].astype(jnp.float32)) + lw["bk"].astype(jnp.float32)
    logits = jnp.einsum("BNH,BTNH->BNT", q, k) / jnp.sqrt(jnp.float32(cfg.head_dim))
    probs = jax.nn.softmax(logits, axis=-1)  # over all 1 + P keys, CLS included, as transformers does
    return jnp.sum(probs, axis=1)[:, 1:], jnp.mean(k, axis=2)[:, 1:]


def run_layers(layers: dict, x_btd: jax.Array, cfg: ClipVisionConfig, start: int = 0, stop: int | None = None):
    """Encoder layers [start, stop) of the stacked weights (leading axis L) under `lax.scan` over the layer
    index, each layer read from the full stack in place (no copy of a slice of the stack)."""
    stop = jax.tree.leaves(layers)[0].shape[0] if stop is None else stop

    def step(x, i):
        lw = jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, i, 0, keepdims=False), layers)
        return layer(lw, x, cfg), None

    return jax.lax.scan(step, x_btd, jnp.arange(start, stop, dtype=jnp.int32))[0]


def hidden_states(w: dict, pixels_bchw: jax.Array, cfg: ClipVisionConfig, indices: Sequence[int]) -> list[jax.Array]:
    """transformers' `hidden_states[i]` (B, 1 + G*G, D) for each i of `indices` (negative allowed).

    Only the layers up to the deepest requested index run (LLaVA's -2 skips the last layer).
    """
    wanted = resolve_layers(indices, cfg.num_layers)
    x = embed_patches(w, pixels_bchw, cfg)
    states, done = {0: x}, 0
    for j in sorted(set(wanted)):
        if j > done:
            x = run_layers(w["layers"], x, cfg, done, j)
            states[j], done = x, j
    return [states[j] for j in wanted]
