"""Tiny LlavaNextForConditionalGeneration references built offline, plus the same weights as a jaxvlm VLM.

    model, params, config = build()            # float32, seeded, initializer_range 0.1, re-drawn norms
    inputs = make_inputs(params)               # four aspect ratios, one padded batch (image_sizes (h, w))
    masked_hf_logits(model, kwargs, drop, layer)   # transformers with pruned tokens masked (engine tests)

The real LLaVA-NeXT geometry (336px tiles, patch 14, the Hub's pinpoints: images of 1,176-2,928 tokens) or the
same shapes at 112px tiles (136-336 tokens, for the fast tests), with tiny widths (text 64, vision 32). After
construction every norm scale is re-drawn as 1 + 0.1 N(0,1) and every bias as 0.1 N(0,1) (transformers
initialises them to 1 / 0, which would hide a missing norm or bias); image_newline keeps its N(0, 1/D) draw.
"""

from __future__ import annotations

import numpy as np

from llava_reference import IMAGE_TOKEN, PAD_TOKEN, VOCAB

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # the Hub's, for 336px tiles
# (height, width) at 336px tiles: square (a pinpoint tie, broken by list order; columns cut), wide (rows cut),
# tall (3 tiles), one filling its pinpoint exactly. 1,176 / 1,890 / 2,376 / 2,928 tokens.
SIZES = ((300, 300), (200, 800), (1000, 330), (672, 672))
# The same shapes for 112px tiles (SMALL: 8 x 8 patches per tile): 136 / 214 / 280 / 336 tokens.
SMALL = 112
SMALL_SIZES = ((100, 100), (60, 240), (330, 110), (224, 224))


def hf_config_dict(*, image_size: int = SMALL, text_layers: int = 2, vision_layers: int = 3, feature_layer=-2,
                   text_model: str = "llama", gqa: bool = True) -> dict:
    """A config.json-style dict of a tiny LLaVA-NeXT: image_size-px tiles, patch 14, the Hub's pinpoints scaled
    to the tile size."""
    text = dict(model_type=text_model, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2 if gqa else 4,
                rms_norm_eps=1e-5, initializer_range=0.1, max_position_embeddings=8192)
    if text_model == "mistral":
        text.update(sliding_window=None, rope_theta=1e6)
    if text_model == "qwen2":
        text.update(use_sliding_window=False, rope_theta=1e6)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size, patch_size=14,
                  initializer_range=0.1, projection_dim=16)
    return dict(model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"], text_config=text,
                vision_config=vision, image_token_index=IMAGE_TOKEN, pad_token_id=PAD_TOKEN,
                projector_hidden_act="gelu", vision_feature_layer=feature_layer,
                vision_feature_select_strategy="default",
                image_grid_pinpoints=[[h * image_size // 336, w * image_size // 336] for h, w in PINPOINTS],
                use_image_newline_parameter=True, tie_word_embeddings=False, initializer_range=0.1,
                image_seq_length=576)


def redraw_norms_and_biases(model, seed: int):
    """Norm scales 1 + 0.1 N(0,1), biases 0.1 N(0,1); eager attention everywhere (in place, returns model)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if ("norm" in name or "layrnorm" in name) and leaf == "weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    for m in model.modules():
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation"):
            m.config._attn_implementation = "eager"
    return model


def hf_reference(config: dict, config_class: str, model_class: str, seed: int = 0):
    """transformers' `model_class` built offline from `config` (float32, eval, norms and biases re-drawn)."""
    import torch
    import transformers

    cfg = getattr(transformers, config_class)(**{k: v for k, v in config.items()
                                                   if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    return redraw_norms_and_biases(getattr(transformers, model_class)(cfg).float().eval(), seed)


def jax_copy(model, config: dict, family: str):
    """The torch model's weights as a jaxvlm VLM of `family`, through that family's conversion table."""
    import importlib

    import jax.numpy as jnp

    from converters.core import DictReader, convert
    from jaxvlm.model import VLM, family_module

    fam = family_module(family)
    cfg = fam.parse_config(config)
    table = importlib.import_module(f"converters.{family}").table
    weights = convert(table(cfg), fam.weight_shapes(cfg), DictReader(model.state_dict()), place=jnp.asarray)
    return VLM(weights=weights, config=cfg)


def torch_model(config: dict, seed: int = 0):
    return hf_reference(config, "LlavaNextConfig", "LlavaNextForConditionalGeneration", seed)


def to_jax(model, config: dict):
    return jax_copy(model, config, "llava_next")


def build(seed: int = 0, **kw):
    """(torch model, jaxvlm VLM, config dict) with identical weights."""
    config = hf_config_dict(**kw)
    model = torch_model(config, seed)
    return model, to_jax(model, config), config


def make_inputs(params, sizes=SMALL_SIZES, images_per_row=None, text=(40, 25, 60, 30), padding="left", seed=0):
    """A padded batch: row b is `text[b]` random ids with its images' token runs inserted (one image per row
    by default). pixel_values (I, max_tiles, 3, S, S) with zero tiles past each image's own, as the
    processor pads them; image_sizes (I, 2) (height, width) int64. text[b] must exceed 2."""
    from jaxvlm.models import llava_next

    rng = np.random.default_rng(seed)
    cfg = params.config
    layouts = [llava_next.grid_layout(s, cfg) for s in sizes]
    images_per_row = images_per_row or [1] * len(sizes)
    rows, k = [], 0
    for b, n_img in enumerate(images_per_row):
        ids = list(rng.integers(0, IMAGE_TOKEN, size=text[b]))
        at = int(rng.integers(1, text[b] // 2))
        for _ in range(n_img):
            ids[at:at] = [IMAGE_TOKEN] * layouts[k].tokens
            at += layouts[k].tokens + int(rng.integers(1, 4))
            k += 1
        rows.append(ids)
    t = max(map(len, rows))
    input_ids = np.full((len(rows), t), PAD_TOKEN, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for b, ids in enumerate(rows):
        sl = slice(t - len(ids), t) if padding == "left" else slice(0, len(ids))
        input_ids[b, sl], mask[b, sl] = ids, 1
    tiles = max(lay.tiles for lay in layouts)
    s = cfg.vision.image_size
    pixels = np.zeros((len(sizes), tiles, 3, s, s), np.float32)
    for i, lay in enumerate(layouts):
        pixels[i, : lay.tiles] = rng.standard_normal((lay.tiles, 3, s, s))
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels,
            "image_sizes": np.asarray(sizes, np.int64)}


def torch_logits(model, inputs: dict) -> np.ndarray:
    """transformers' logits with position_ids = cumsum(mask) - 1."""
    import torch

    mask = torch.as_tensor(inputs["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(inputs["input_ids"]), attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    pixel_values=torch.as_tensor(inputs["pixel_values"]),
                    image_sizes=torch.as_tensor(inputs["image_sizes"]))
    return out.logits.float().numpy()


def masked_hf_logits(model, hf_kwargs: dict, drop: np.ndarray, from_layer: int) -> np.ndarray:
    """transformers' logits of `model(**hf_kwargs)` (torch tensors) with the keys `drop` (B, S) bool masked out
    of every attention of a Llama layer >= from_layer (the engine's pruning, as an attention mask)."""
    import torch
    from transformers.models.llama import modeling_llama

    original = modeling_llama.eager_attention_forward
    drop_t = torch.as_tensor(drop)

    def patched(module, query, key, value, attention_mask, *args, **kwargs):
        if getattr(module, "layer_idx", -1) >= from_layer and attention_mask is not None:
            d = drop_t[:, None, None, : attention_mask.shape[-1]]
            attention_mask = (attention_mask & ~d if attention_mask.dtype == torch.bool
                              else attention_mask.masked_fill(d, torch.finfo(attention_mask.dtype).min))
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    modeling_llama.eager_attention_forward = patched
    try:
        with torch.no_grad():
            return model(**hf_kwargs).logits.float().numpy()
    finally:
        modeling_llama.eager_attention_forward = original
