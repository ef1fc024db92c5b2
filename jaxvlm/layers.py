"""Layers shared by every model family: norms, activations, rotary embeddings, attention (jaxvlm.attention).

Einsum axis letters (used in every contraction of the package):
    B batch, T query tokens, S key tokens, N query heads, K kv heads, G query heads per kv head,
    H head dim, D model width, F MLP width, V vocabulary, L layers, P rotary position axes (1, or 3 for M-RoPE).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.attention import MASK_VALUE, TokenMask, attention, causal_mask, full_mask  # noqa: F401 (re-exported)
from jaxvlm.config import RopeConfig


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Llama/Qwen RMSNorm in float32, cast back to x's dtype before the scale (as transformers does)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale * xf.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * scale + bias


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str):
    """The activation function transformers calls `name`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not implemented (have {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """x (..., in) @ w (in, out) [+ b (out,)]."""
    y = x @ w
    return y if b is None else y + b


# --------------------------------------------------------------------------------------------- rotary


def base_inv_freq(theta: float, dim: int) -> np.ndarray:
    """1 / theta ** (arange(0, dim, 2) / dim) as transformers computes it in float32 torch: (dim/2,) float32.

    The power is taken in float64 and rounded to float32 (torch's float32 pow is nearly correctly rounded;
    numpy's float32 pow differs from it by 1 ulp on ~10% of entries, and at position p a 1-ulp error of a
    frequency shifts the rotary angle by p * ulp - 5e-5 at p = 600 for theta 1e6, head_dim 128, enough to
    move float32 logits by 1e-4)."""
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies (head_dim/2,) float32 for transformers' rope types default/linear/llama3."""
    inv = base_inv_freq(rope.theta, head_dim)
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_section_axes(rope: RopeConfig, head_dim: int) -> np.ndarray | None:
    """For M-RoPE: which position axis (0=t, 1=h, 2=w) drives each of the head_dim/2 frequencies."""
    if rope.mrope_section is None:
        return None
    if sum(rope.mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {rope.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return np.concatenate([np.full(s, i % 3) for i, s in enumerate(rope.mrope_section)]).astype(np.int32)


def rope_cos_sin(positions_pbt: jax.Array, rope: RopeConfig, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (B, T, H/2) float32 from positions (P, B, T) (P=1 plain RoPE, P=3 M-RoPE)."""
    inv = jnp.asarray(rope_inv_freq(rope, head_dim))
    angles = positions_pbt.astype(jnp.float32)[..., None] * inv  # (P, B, T, H/2)
    axes = rope_section_axes(rope, head_dim)
    if axes is None:
        angle = angles[0]
    else:
        onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axes].T)  # (3, H/2): axis p drives frequency f
        angle = jnp.einsum("PBTF,PF->BTF", angles, onehot)
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotate-half RoPE (transformers' convention) on (B, T, heads, H); cos/sin (B, T, H/2)."""
    half = x_btnh.shape[-1] // 2
    x1, x2 = x_btnh[..., :half], x_btnh[..., half:]
    cos = cos_bth[:, :, None, :].astype(x_btnh.dtype)
    sin = sin_bth[:, :, None, :].astype(x_btnh.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ------------------------------------------------------------------------------------------ attention


def attention_logits(q_brnh: jax.Array, k_bskh: jax.Array, mask_brs: jax.Array) -> jax.Array:
    """Scaled attention logits of a few query rows: (B, N, R, S) float32, masked entries = MASK_VALUE.

    This is how pruning methods score tokens: R is small (the scoring rows), never the full sequence.
    """
    b, r, n, h = q_brnh.shape
    kh = k_bskh.shape[2]
    q = q_brnh.reshape(b, r, kh, n // kh, h).astype(jnp.float32)
    logits = jnp.einsum("BRKGH,BSKH->BKGRS", q, k_bskh.astype(jnp.float32)) / math.sqrt(h)
    logits = logits.reshape(b, n, r, -1)
    return jnp.where(mask_brs[:, None, :, :], logits, MASK_VALUE)
