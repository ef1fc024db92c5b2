"""LLaVA-1.5 (transformers' LlavaForConditionalGeneration): CLIP tower -> projector -> Llama decoder.

Family contract (jaxvlm/model.py): parse_config, weight_shapes, prepare (host numpy), embed (jittable).

Weights: {"vision": clip.weight_shapes, "projector": {w1 (Dv*nL, D), b1 (D,), w2 (D, D), b2 (D,)},
"text": decoder.weight_shapes}; projector biases are absent when `multimodal_projector_bias` is False.

Image features replace the image tokens of `input_ids` in order (row-major over (B, T)), exactly like
transformers' `masked_scatter`: image k fills the k-th run of `tokens_per_image` image tokens.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import input_checks as checks
from jaxvlm.config import TextConfig, UnsupportedConfigError, check_fields, parse_text_config, require
from jaxvlm.errors import UserError
from jaxvlm.layers import activation
from jaxvlm.model import VLM, Embedded
from jaxvlm.models import clip, decoder

SECTION = "llava"
VISION_CLS = True  # embed(..., vision_cls=True) provides Embedded.vision_cls / vision_keys (VisionZip)


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    text: TextConfig
    vision: clip.ClipVisionConfig
    image_token_id: int
    projector_act: str = "gelu"
    projector_bias: bool = True
    feature_layers: tuple[int, ...] = (-2,)  # transformers' hidden_states indices, concatenated on D
    feature_strategy: str = "default"  # "default": drop the CLS token; "full": keep it
    pad_token_id: int | None = None
    family: str = "llava"
    # The config.json dict this was parsed from, as JSON (for jaxvlm.save); not part of equality or hash.
    hf_json: str = dataclasses.field(default="", compare=False, repr=False)

    @property
    def grid(self) -> int:
        return self.vision.grid

    @property
    def tokens_per_image(self) -> int:
        """LLM tokens one image becomes (576 for 336px / patch 14 with the CLS token dropped)."""
        return self.vision.grid**2 + (1 if self.feature_strategy == "full" else 0)


TOP_KEYS = {
    "text_config", "vision_config", "image_token_index", "image_token_id", "projector_hidden_act",
    "vision_feature_layer", "vision_feature_select_strategy", "multimodal_projector_bias", "tie_word_embeddings",
    "image_seq_length", "pad_token_id",
}
# The 4.x Hub config repeats the text vocabulary at the top level; `text_config.vocab_size` is what is used.
TOP_BENIGN = {"vocab_size"}


def parse_config(d: Mapping[str, Any]) -> LlavaConfig:
    """Parse a LlavaForConditionalGeneration config.json dict; refuses attributes it does not implement."""
    check_fields(SECTION, d, TOP_KEYS, TOP_BENIGN)
    require(SECTION, d.get("model_type", "llava") == "llava", f"model_type {d.get('model_type')!r} is not 'llava'")
    text_d = dict(d.get("text_config") or {})
    require(SECTION, text_d.get("model_type", "llama") == "llama",
            f"text_config.model_type {text_d.get('model_type')!r} is not implemented (only llama)")
    # transformers' LlavaConfig: the top-level flag wins, the text config's flag is forwarded when set.
    tie = bool(d.get("tie_word_embeddings", False) or text_d.get("tie_word_embeddings", False))
    text = parse_text_config(text_d, section=f"{SECTION}.text_config", tie_word_embeddings=tie)
    vision_d = d.get("vision_config")
    if vision_d is None:  # LlavaConfig's defaults for a missing vision config (CLIP ViT-L/14-336)
        vision_d = {"intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
                    "num_hidden_layers": 24, "num_attention_heads": 16}
    vision = clip.parse_vision_config(vision_d, section=f"{SECTION}.vision_config")
    layer = d.get("vision_feature_layer", -2)
    layers = (int(layer),) if isinstance(layer, (int, np.integer)) else tuple(int(i) for i in layer)
    require(SECTION, len(layers) > 0, "vision_feature_layer is an empty list")
    try:
        clip.resolve_layers(layers, vision.num_layers)
    except ValueError as e:
        raise UnsupportedConfigError(f"{SECTION}: vision_feature_layer {layer!r}: {e}") from None
    strategy = d.get("vision_feature_select_strategy", "default")
    require(SECTION, strategy in ("default", "full"),
            f"vision_feature_select_strategy {strategy!r} is not implemented (default, full)")
    act = d.get("projector_hidden_act", "gelu")
    activation(act)
    image_token = d.get("image_token_id", d.get("image_token_index", 32000))
    cfg = LlavaConfig(
        text=text, vision=vision, image_token_id=int(image_token), projector_act=str(act),
        projector_bias=bool(d.get("multimodal_projector_bias", True)), feature_layers=layers,
        feature_strategy=strategy, pad_token_id=d.get("pad_token_id"),
        hf_json=json.dumps(dict(d), sort_keys=True, default=str),
    )
    # `image_seq_length` is not checked: transformers' model never reads it (it is a processor setting, often
    # left at 576 under strategy "full"); `prepare` checks the image tokens actually in input_ids instead.
    return cfg


def weight_shapes(cfg: LlavaConfig) -> dict:
    dv = cfg.vision.hidden_size * len(cfg.feature_layers)
    d = cfg.text.hidden_size
    projector = {"w1": (dv, d), "w2": (d, d)}
    if cfg.projector_bias:
        projector.update({"b1": (d,), "b2": (d,)})
    return {"vision": clip.weight_shapes(cfg.vision), "projector": projector, "text": decoder.weight_shapes(cfg.text)}


# ----------------------------------------------------------------------------------------------- host


def prepare(cfg: LlavaConfig, input_ids, attention_mask=None, pixel_values=None, image_sizes=None) -> dict:
    """Validate transformers-style inputs and derive everything `embed` needs (numpy, host side).

    Bad inputs raise UserError naming the tensor (out-of-vocabulary ids, non-finite pixels, shapes, counts).

    Returns input_ids (B,T) int32, valid (B,T) bool, positions (1,B,T) int32 (cumsum(mask) - 1, i.e. counted
    from each row's first real token, 0 on left padding), pixel_values (I,C,S,S) float32, feature_index (B,T)
    int32 (row of the flattened (I * tokens_per_image) features each image token takes; -1 for text) and the
    per-token metadata of `Embedded` (visual, media, frame, row, col, span_index); image_sizes (I,2) int32
    when given.
    """
    ids, mask = checks.token_inputs(input_ids, attention_mask, cfg.text.vocab_size)
    vc = cfg.vision
    if pixel_values is None:
        pixels = np.zeros((0, vc.num_channels, vc.image_size, vc.image_size), np.float32)
    else:
        pixels = np.asarray(pixel_values, dtype=np.float32)
        want = (vc.num_channels, vc.image_size, vc.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != want:
            raise UserError(f"pixel_values must be (num_images, {', '.join(map(str, want))}); got {pixels.shape}")
        checks.check_finite(pixels, "pixel_values")
    n_images, per_image = pixels.shape[0], cfg.tokens_per_image
    is_image = ids == cfg.image_token_id
    n_tokens = int(is_image.sum())
    if n_tokens != n_images * per_image:
        per_row = is_image.sum(axis=1).tolist()
        raise UserError(
            f"image tokens and image features do not match: input_ids hold {n_tokens} image tokens "
            f"(id {cfg.image_token_id}; per row {per_row}) but {n_images} image(s) x {per_image} tokens per "
            f"image = {n_images * per_image} features. Each image needs exactly {per_image} consecutive image "
            "tokens (the processor expands one <image> placeholder into them)."
        )
    feature_index = np.full(ids.shape, -1, np.int32)
    feature_index[is_image] = np.arange(n_tokens, dtype=np.int32)  # row-major order = masked_scatter's order
    within = np.where(is_image, feature_index % per_image, -1)
    span = within - 1 if cfg.feature_strategy == "full" else within  # "full": the CLS token gets span -1
    grid = vc.grid
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)[None]
    batch = {
        "input_ids": ids,
        "valid": mask,
        "positions": positions,
        "pixel_values": pixels,
        "feature_index": feature_index,
        "visual": is_image,
        "media": np.where(is_image, feature_index // per_image, -1).astype(np.int32),
        "frame": np.where(is_image, 0, -1).astype(np.int32),
        "row": np.where(span >= 0, span // grid, -1).astype(np.int32),
        "col": np.where(span >= 0, span % grid, -1).astype(np.int32),
        "span_index": np.where(span >= 0, span, -1).astype(np.int32),
    }
    if image_sizes is not None:
        sizes = checks.int_array("image_sizes", image_sizes)
        if sizes.shape != (n_images, 2):
            raise UserError(f"image_sizes must be (num_images={n_images}, 2) (width, height); got {sizes.shape}")
        if sizes.size and sizes.min() < 1:
            i = int(np.argmax(sizes.min(axis=1) < 1))
            raise UserError(f"image_sizes[{i}] = {sizes[i].tolist()}: (width, height) of an image must be >= 1")
        batch["image_sizes"] = sizes.astype(np.int32)
    return batch


# ------------------------------------------------------------------------------------------ jittable


def image_features(params: VLM, pixels_bchw: jax.Array, states=None) -> jax.Array:
    """Vision tower at the feature layer(s) (CLS dropped for "default"), concatenated on D: (I, P, Dv*nL).

    states: the tower's hidden states at `config.feature_layers` when already computed."""
    cfg = params.config
    if states is None:
        states = clip.hidden_states(params.weights["vision"], pixels_bchw, cfg.vision, cfg.feature_layers)
    if cfg.feature_strategy == "default":
        states = [s[:, 1:] for s in states]
    return jnp.concatenate(states, axis=-1) if len(states) > 1 else states[0]


def vision_cls_stats(params: VLM, pixels_bchw: jax.Array, with_features: bool = False):
    """VisionZip's per-patch inputs (clip.cls_attention) at the projector's feature layer: (I, P), (I, P, H);
    with_features: (features (image_features), cls, keys) from one pass of the tower.

    Layer choice: the feature layer is transformers' `hidden_states[j]` (j resolved, -2 -> num_layers - 1), the
    output of encoder layer j - 1 (0-based); the attention used is the one INSIDE that layer, transformers'
    `attentions[j - 1]` (for -2: `attentions[-2]`, exactly what VisionZip's clip_encoder reads next to
    `hidden_states[-2]`). With several feature layers the deepest one is used. Patches only: for
    `feature_strategy == "full"` the [CLS] token's own LLM slot gets 0.
    """
    cfg = params.config
    j = max(clip.resolve_layers(cfg.feature_layers, cfg.vision.num_layers))
    if j == 0:
        raise ValueError("VisionZip needs an encoder layer's attention; vision_feature_layer 0 is the embeddings")
    w = params.weights["vision"]
    states = clip.hidden_states(w, pixels_bchw, cfg.vision, (j - 1,) + tuple(cfg.feature_layers))
    cls, keys = clip.cls_attention(jax.tree.map(lambda a: a[j - 1], w["layers"]), states[0], cfg.vision)
    if cfg.feature_strategy == "full":
        cls = jnp.pad(cls, ((0, 0), (1, 0)))
        keys = jnp.pad(keys, ((0, 0), (1, 0), (0, 0)))
    if with_features:
        return image_features(params, pixels_bchw, states=states[1:]), cls, keys
    return cls, keys


def project(params: VLM, feats: jax.Array) -> jax.Array:
    """The multimodal projector: linear -> act -> linear, (..., Dv*nL) -> (..., D)."""
    w = params.weights["projector"]
    h = jnp.einsum("...E,ED->...D", feats, w["w1"])
    if "b1" in w:
        h = h + w["b1"]
    h = activation(params.config.projector_act)(h)
    h = jnp.einsum("...E,ED->...D", h, w["w2"])
    return h + w["b2"] if "b2" in w else h


def embed(params: VLM, batch: dict, vision_cls: bool = False) -> Embedded:
    """Token embeddings with the projected image features at the image-token positions.

    vision_cls: also fill `Embedded.vision_cls` / `vision_keys` (VisionZip; `vision_cls_stats`), 0 on text."""
    text_w = params.weights["text"]
    ids = jnp.asarray(batch["input_ids"])
    x = jnp.take(text_w["embed"], ids, axis=0)
    pixels = jnp.asarray(batch["pixel_values"])
    stats = None
    if pixels.shape[0] > 0:
        if vision_cls:  # one pass of the tower for the features and VisionZip's inputs
            raw, *stats = vision_cls_stats(params, pixels, with_features=True)
        else:
            raw = image_features(params, pixels)
        feats = project(params, raw).astype(x.dtype)
        flat = feats.reshape(-1, feats.shape[-1])
        idx = jnp.asarray(batch["feature_index"])
        x = jnp.where((idx >= 0)[..., None], jnp.take(flat, jnp.maximum(idx, 0), axis=0), x)
    extra = {}
    if vision_cls:
        idx = jnp.asarray(batch["feature_index"])
        if stats is not None:
            cls, keys = stats
            at = lambda a: jnp.take(a.reshape(-1, *a.shape[2:]), jnp.maximum(idx, 0), axis=0)  # noqa: E731
            extra["vision_cls"] = jnp.where(idx >= 0, at(cls), 0.0)
            extra["vision_keys"] = jnp.where((idx >= 0)[..., None], at(keys), 0.0)
        else:
            extra["vision_cls"] = jnp.zeros(idx.shape, jnp.float32)
            extra["vision_keys"] = jnp.zeros(idx.shape + (params.config.vision.head_dim,), jnp.float32)
    return Embedded.from_batch(x, batch, **extra)
