"""LLaVA-NeXT (transformers' LlavaNextForConditionalGeneration): any-resolution tiling on the LLaVA-1.5 stack.

Family contract (jaxvlm/model.py): parse_config, weight_shapes, prepare (host numpy), embed (jittable). The
vision tower, feature selection and projector are LLaVA-1.5's (jaxvlm/models/llava.py, clip.py); the text model
is Llama, Mistral or Qwen2 (one decoder, jaxvlm/models/decoder.py; no sliding window).

Weights: llava.weight_shapes + "image_newline" (D,), the learned embedding ending each row of the tile grid.

Any-resolution layout of one image of original size (height, width) (`image_sizes`, exactly transformers'):
  1. `select_best_resolution` picks the pinpoint (bh, bw) of `image_grid_pinpoints`; the processor resizes the
     image into it (aspect kept, centred padding) and cuts it into (bh/S) x (bw/S) tiles of S = image_size px,
     after one base tile (the whole image squashed to S x S). pixel_values: (I, max_tiles, C, S, S), tiles
     beyond an image's 1 + nph*npw zero (or the tiles concatenated, (sum of tiles, C, S, S)).
  2. Every tile goes through the tower and projector: G x G features (G = S / patch).
  3. The tile features are arranged into one (nph*G) x (npw*G) grid, the rows (or columns) of the processor's
     padding are cut off (`unpad`, transformers' rounding), each remaining row gets `image_newline` appended,
     and the base tile's G*G features come first. Tokens per image: G*G + rows * (cols + 1).
Features fill the image tokens in order (row-major over (B, T)), like transformers' masked_scatter.

Token metadata (decisions and reasons: docs/PORTING.md, "LLaVA-NeXT and Video-LLaVA token layouts"): every
image token is visual, newlines included (prunable); media = image index; frame 0; `span_layout` chooses the
detrending positions: "tile" (default) = raster index within its S-px tile, the base tile and every grid tile
alike (row/col within the tile, -1 for newlines; a newline's span_index is the one of the patch it follows, so
it is detrended like its neighbour instead of left raw among down-weighted patches), so a trend fitted over
LLaVA-1.5's G*G = 576 positions applies to every tile within its range (docs/METHOD.md, "Trends on other
token counts");
"sequence" = index within the image's token run (row/col = position in its section grid, base G x G or
unpadded rows x (cols + 1), newline col = cols). No pad-to-square mask is built (the base tile is squashed,
not padded; the grid's padding is cut), so `prepare` returns no `image_sizes`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import input_checks as checks
from jaxvlm.config import UnsupportedConfigError, check_fields, require
from jaxvlm.errors import UserError
from jaxvlm.model import VLM, Embedded
from jaxvlm.models import llava

SECTION = "llava_next"
VISION_CLS = True  # embed(..., vision_cls=True) provides Embedded.vision_cls / vision_keys (VisionZip)
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
SPAN_LAYOUTS = ("sequence", "tile")
# transformers' MistralConfig / Qwen2Config defaults where they differ from LlamaConfig's (parse_text_config's).
MISTRAL_DEFAULTS = {"intermediate_size": 14336, "num_key_value_heads": 8, "sliding_window": 4096}
QWEN2_DEFAULTS = {"vocab_size": 151936, "intermediate_size": 22016}


@dataclasses.dataclass(frozen=True)
class LlavaNextConfig(llava.LlavaConfig):
    """LlavaConfig (tower, feature layers, projector, text) plus the any-resolution grid."""

    image_grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS  # (height, width) each
    span_layout: str = "tile"  # detrending positions, see module docstring
    family: str = "llava_next"


NEXT_KEYS = {"image_grid_pinpoints", "use_image_newline_parameter"}


def _text_dict(d: Mapping[str, Any]) -> dict:
    """The text config as a Llama config dict: Mistral's / Qwen2's defaults filled in, sliding windows refused,
    Qwen2's q/k/v biases (always present in its attention) as attention_bias."""
    text = dict(d.get("text_config") or {})
    kind = text.get("model_type", "llama")
    require(SECTION, kind in ("llama", "mistral", "qwen2"),
            f"text_config.model_type {kind!r} is not implemented (llama, mistral, qwen2)")
    if kind == "mistral":
        text = {**MISTRAL_DEFAULTS, **text}
        require(SECTION, text.pop("sliding_window") is None,
                "text_config.sliding_window is set: Mistral's sliding-window attention is not implemented "
                "(llava-v1.6-mistral uses sliding_window null)")
    elif kind == "qwen2":
        require(SECTION, "attention_bias" not in text, "text_config.attention_bias is not a Qwen2 attribute")
        text = {**QWEN2_DEFAULTS, **text, "attention_bias": True}
    text["model_type"] = "llama"
    return text


def parse_config(d: Mapping[str, Any]) -> LlavaNextConfig:
    """Parse a LlavaNextForConditionalGeneration config.json dict; refuses attributes it does not implement."""
    check_fields(SECTION, d, llava.TOP_KEYS | NEXT_KEYS, llava.TOP_BENIGN)
    require(SECTION, d.get("model_type", SECTION) == SECTION, f"model_type {d.get('model_type')!r} is not {SECTION!r}")
    require(SECTION, d.get("use_image_newline_parameter", True) is True,
            "use_image_newline_parameter False is not implemented (transformers always appends image_newline)")
    require(SECTION, d.get("vision_feature_select_strategy", "default") == "default",
            f"vision_feature_select_strategy {d.get('vision_feature_select_strategy')!r} is not implemented: "
            "transformers' pack_image_features reshapes every tile to G x G tokens, which 'full' (CLS kept) is not")
    vision = d.get("vision_config")
    base = {k: v for k, v in d.items() if k not in NEXT_KEYS}
    base.update(model_type="llava", text_config=_text_dict(d))
    if vision is None:  # LlavaNextConfig's default tower (llava.parse_config's default too)
        base.pop("vision_config", None)
    try:
        cfg = llava.parse_config(base)
    except UnsupportedConfigError as e:
        raise UnsupportedConfigError(str(e).replace("llava", SECTION, 1)) from None
    pins = d.get("image_grid_pinpoints")
    pins = DEFAULT_PINPOINTS if pins is None else pins
    try:
        pins = tuple((int(h), int(w)) for h, w in pins)
    except (TypeError, ValueError):
        raise UnsupportedConfigError(f"{SECTION}: image_grid_pinpoints {pins!r} is not a list of [height, width]"
                                     ) from None
    s = cfg.vision.image_size
    require(SECTION, len(pins) > 0 and all(h > 0 and w > 0 and h % s == 0 and w % s == 0 for h, w in pins),
            f"image_grid_pinpoints {[list(p) for p in pins]} must be non-empty multiples of image_size {s}")
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(llava.LlavaConfig) if f.name != "family"}
    fields["hf_json"] = json.dumps(dict(d), sort_keys=True, default=str)
    return LlavaNextConfig(**fields, image_grid_pinpoints=pins)


def weight_shapes(cfg: LlavaNextConfig) -> dict:
    return {**llava.weight_shapes(cfg), "image_newline": (cfg.text.hidden_size,)}


# ----------------------------------------------------------------------------------------------- host


def select_best_resolution(size_hw, pinpoints) -> tuple[int, int]:
    """transformers' select_best_resolution: the (height, width) pinpoint keeping the most of the image's
    pixels when it is scaled into it (aspect kept), ties broken by the least wasted area, then list order."""
    h, w = (int(x) for x in size_hw)
    best, best_effective, best_wasted = None, 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        wasted = pw * ph - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ph, pw), effective, wasted
    return best


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Where one image's grid tokens come from: tiles nph x npw of G x G features, kept rows [r0, r1) and
    columns [c0, c1) of the (nph*G) x (npw*G) feature grid (transformers' unpad_image)."""

    nph: int
    npw: int
    grid: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def tiles(self) -> int:
        """Tiles of this image, the base tile included."""
        return 1 + self.nph * self.npw

    @property
    def tokens(self) -> int:
        """LLM tokens of this image: base G*G, then each kept row with its newline."""
        return self.grid**2 + (self.r1 - self.r0) * (self.c1 - self.c0 + 1)


def grid_layout(size_hw, cfg: LlavaNextConfig) -> GridLayout:
    """The any-resolution layout of an image of original size (height, width)."""
    h, w = (int(x) for x in size_hw)
    s, g = cfg.vision.image_size, cfg.vision.grid
    bh, bw = select_best_resolution((h, w), cfg.image_grid_pinpoints)
    nph, npw = bh // s, bw // s
    rows, cols = nph * g, npw * g
    r0, r1, c0, c1 = 0, rows, 0, cols
    if w / h > cols / rows:  # wider than the grid: padding rows above and below
        pad = (rows - int(round(h * (cols / w), 7))) // 2
        r0, r1 = pad, rows - pad
    else:
        pad = (cols - int(round(w * (rows / h), 7))) // 2
        c0, c1 = pad, cols - pad
    return GridLayout(nph=nph, npw=npw, grid=g, r0=r0, r1=r1, c0=c0, c1=c1)


def image_tokens(layout: GridLayout, first_tile: int, newline_row: int, span_layout: str = "sequence") -> dict:
    """Per-token arrays (n = layout.tokens) of one image whose base tile is tile `first_tile` of the flat tile
    list: source (row of the flat feature table: tile * G*G + patch; `newline_row` for newlines), newline (bool),
    and the metadata row, col, span_index of `span_layout` (module docstring)."""
    g = layout.grid
    base = np.arange(g * g)
    rr, cc = np.meshgrid(np.arange(layout.r0, layout.r1), np.arange(layout.c0, layout.c1 + 1), indexing="ij")
    rr, cc = rr.reshape(-1), cc.reshape(-1)  # full-grid coordinates, row-major, newline at column c1
    newline = np.concatenate([np.zeros(g * g, bool), cc == layout.c1])
    c_in = np.minimum(cc, layout.c1 - 1)
    tile = 1 + (rr // g) * layout.npw + c_in // g
    patch = (rr % g) * g + c_in % g
    source = np.concatenate([first_tile * g * g + base, (first_tile + tile) * g * g + patch])
    source = np.where(newline, newline_row, source)
    if span_layout == "sequence":
        row = np.concatenate([base // g, rr - layout.r0])
        col = np.concatenate([base % g, cc - layout.c0])
        span = np.arange(layout.tokens)
    elif span_layout == "tile":
        row = np.where(newline, -1, np.concatenate([base // g, rr % g]))
        col = np.where(newline, -1, np.concatenate([base % g, c_in % g]))
        span = np.concatenate([base, (rr % g) * g + c_in % g])  # a newline: the position of the patch it follows
    else:
        raise ValueError(f"span_layout {span_layout!r} is not one of {SPAN_LAYOUTS}")
    return {"source": source, "newline": newline, "row": row, "col": col, "span_index": span}


def _tiles(cfg: LlavaNextConfig, pixel_values, layouts) -> np.ndarray:
    """The images' real tiles concatenated, (sum of tiles, C, S, S) float32, from 5-D or 4-D pixel_values."""
    vc = cfg.vision
    want = (vc.num_channels, vc.image_size, vc.image_size)
    n = [lay.tiles for lay in layouts]
    if pixel_values is None:
        if layouts:
            raise UserError(f"image_sizes gives {len(layouts)} image(s) but pixel_values is missing")
        return np.zeros((0, *want), np.float32)
    pixels = np.asarray(pixel_values, dtype=np.float32)
    checks.check_finite(pixels, "pixel_values")  # indices of the array as given (padding tiles included)
    if pixels.ndim == 5 and pixels.shape[2:] == want:
        if pixels.shape[0] != len(layouts) or pixels.shape[1] < max(n, default=0):
            raise UserError(f"pixel_values {pixels.shape} (images, tiles, ...) do not fit image_sizes: "
                            f"{len(layouts)} image(s) of {n} tiles")
        pixels = np.concatenate([p[:k] for p, k in zip(pixels, n)]) if n else pixels.reshape(0, *want)
    elif not (pixels.ndim == 4 and pixels.shape[1:] == want and pixels.shape[0] == sum(n)):
        raise UserError(f"pixel_values must be (images, tiles, {', '.join(map(str, want))}) or the tiles "
                        f"concatenated ({sum(n)}, ...) for image_sizes' tiles {n}; got {pixels.shape}")
    return pixels


def prepare(cfg: LlavaNextConfig, input_ids, attention_mask=None, pixel_values=None, image_sizes=None) -> dict:
    """Validate transformers-style inputs and derive everything `embed` needs (numpy, host side).

    image_sizes (I, 2): each image's original (height, width), as transformers' processor returns it; needed
    with pixel_values. Returns input_ids (B,T) int32, valid (B,T) bool, positions (1,B,T) int32 (cumsum(mask) - 1),
    pixel_values (tiles, C, S, S) float32, feature_index (B,T) int32 (row of the flat feature table, tiles *
    G*G projected features then image_newline, each image token takes; -1 for text) and the per-token
    metadata of `Embedded` (visual, media, frame, row, col, span_index).
    """
    ids, mask = checks.token_inputs(input_ids, attention_mask, cfg.text.vocab_size)
    if image_sizes is None:
        if pixel_values is not None:
            raise UserError("LLaVA-NeXT needs image_sizes (original (height, width) per image) with pixel_values")
        sizes = np.zeros((0, 2), np.int64)
    else:
        sizes = checks.int_array("image_sizes", image_sizes)
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            raise UserError(f"image_sizes must be (images, 2) (height, width); got shape {sizes.shape}")
        if sizes.size and sizes.min() < 1:
            i = int(np.argmax(sizes.min(axis=1) < 1))
            raise UserError(f"image_sizes[{i}] = {sizes[i].tolist()}: (height, width) of an image must be >= 1")
    layouts = [grid_layout(hw, cfg) for hw in sizes]
    pixels = _tiles(cfg, pixel_values, layouts)
    newline_row = pixels.shape[0] * cfg.vision.grid**2
    first = np.cumsum([0] + [lay.tiles for lay in layouts])
    per_image = [image_tokens(lay, int(f), newline_row, cfg.span_layout) for lay, f in zip(layouts, first)]
    counts = [lay.tokens for lay in layouts]
    is_image = ids == cfg.image_token_id
    n_tokens = int(is_image.sum())
    if n_tokens != sum(counts):
        raise UserError(
            f"image tokens and image features do not match: input_ids hold {n_tokens} image tokens (id "
            f"{cfg.image_token_id}; per row {is_image.sum(axis=1).tolist()}) but image_sizes "
            f"{sizes.tolist()} give {counts} features. Each image needs its own count of image tokens (the "
            "processor expands one <image> placeholder into them; image_sizes are (height, width))."
        )

    def scatter(key, fill):
        out = np.full(ids.shape, fill, np.int32)
        if per_image:
            out[is_image] = np.concatenate([t[key] for t in per_image])
        return out

    media = np.full(ids.shape, -1, np.int32)
    media[is_image] = np.repeat(np.arange(len(counts)), counts)
    return {
        "input_ids": ids,
        "valid": mask,
        "positions": np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)[None],
        "pixel_values": pixels,
        "feature_index": scatter("source", -1),
        "visual": is_image,
        "media": media,
        "frame": np.where(is_image, 0, -1).astype(np.int32),
        "row": scatter("row", -1),
        "col": scatter("col", -1),
        "span_index": scatter("span_index", -1),
    }


def kept_maps(cfg: LlavaNextConfig, image_sizes, batch: dict, kept) -> list[dict]:
    """Which tokens of each image survived pruning, for views over the tiles (host side, numpy).

    image_sizes (I, 2) (height, width), `batch` = prepare's output for them, kept (B, K) input indices of
    the surviving tokens (`out.kept[i]`; -1 ignored). Per image: {"base": (G, G) bool over the base tile,
    "grid": (nph*G, npw*G) bool over the whole tile grid (the rows / columns unpad cut are always False),
    "newlines": (kept rows,) bool, "layout": GridLayout}.
    """
    g = cfg.vision.grid
    layouts = [grid_layout(hw, cfg) for hw in np.asarray(image_sizes)]
    first = np.cumsum([0] + [lay.tiles for lay in layouts])
    newline_row = int(first[-1]) * g * g
    maps = [{"base": np.zeros((g, g), bool), "grid": np.zeros((lay.nph * g, lay.npw * g), bool),
             "newlines": np.zeros(lay.r1 - lay.r0, bool), "layout": lay} for lay in layouts]
    kept = np.asarray(kept)
    for b, k in zip(*np.nonzero(kept >= 0)):
        t = int(kept[b, k])
        i, src = int(batch["media"][b, t]), int(batch["feature_index"][b, t])
        if i < 0:
            continue
        m, lay = maps[i], layouts[i]
        if src == newline_row:
            before = batch["visual"][b, :t] & (batch["media"][b, :t] == i) & (batch["feature_index"][b, :t] == src)
            m["newlines"][int(before.sum())] = True
            continue
        tile, (py, px) = src // (g * g) - first[i], divmod(src % (g * g), g)
        if tile == 0:
            m["base"][py, px] = True
        else:
            tr, tc = divmod(int(tile) - 1, lay.npw)
            m["grid"][tr * g + py, tc * g + px] = True
    return maps


# ------------------------------------------------------------------------------------------ jittable


def feature_table(params: VLM, tiles_bchw: jax.Array, vision_cls: bool = False) -> dict:
    """The rows `feature_index` reads: every tile's G*G entries, then the newline's. {"features": projected
    features (tiles * G*G + 1, D), the last row image_newline}; with vision_cls also "vision_cls" (.., ) and
    "vision_keys" (.., H): each tile's own [CLS] attention and keys (llava.vision_cls_stats), 0 for newlines."""
    if vision_cls:
        raw, cls, keys = llava.vision_cls_stats(params, tiles_bchw, with_features=True)
    else:
        raw = llava.image_features(params, tiles_bchw)
    feats = llava.project(params, raw)
    flat = feats.reshape(-1, feats.shape[-1])
    tables = {"features": jnp.concatenate([flat, params.weights["image_newline"][None].astype(flat.dtype)])}
    if vision_cls:
        tables["vision_cls"] = jnp.concatenate([cls.reshape(-1), jnp.zeros((1,), cls.dtype)])
        tables["vision_keys"] = jnp.concatenate([keys.reshape(-1, keys.shape[-1]), jnp.zeros((1, keys.shape[-1]),
                                                                                          keys.dtype)])
    return tables


def gather_rows(table: jax.Array, idx: jax.Array) -> jax.Array:
    """table (R, ...) at feature_index idx (B, T) -> (B, T, ...), 0 where idx < 0 (text tokens)."""
    got = jnp.take(table, jnp.maximum(idx, 0), axis=0)
    return jnp.where((idx >= 0).reshape(idx.shape + (1,) * (got.ndim - 2)), got, jnp.zeros((), got.dtype))


def scatter_embedded(params: VLM, batch: dict, tables: dict | None, vision_cls: bool = False) -> Embedded:
    """Embedded of a batch whose media tokens take rows of `tables` (feature_table's dict; None without media)
    at `batch["feature_index"]`; vision_cls: also Embedded.vision_cls / vision_keys (0 on text)."""
    text_w = params.weights["text"]
    x = jnp.take(text_w["embed"], jnp.asarray(batch["input_ids"]), axis=0)
    idx = jnp.asarray(batch["feature_index"])
    extra = {}
    if tables is not None:
        x = jnp.where((idx >= 0)[..., None], gather_rows(tables["features"].astype(x.dtype), idx), x)
        extra = {k: gather_rows(v.astype(jnp.float32), idx) for k, v in tables.items() if k != "features"}
    elif vision_cls:
        extra = {"vision_cls": jnp.zeros(idx.shape, jnp.float32),
                 "vision_keys": jnp.zeros(idx.shape + (params.config.vision.head_dim,), jnp.float32)}
    return Embedded.from_batch(x, batch, **extra)


def embed(params: VLM, batch: dict, vision_cls: bool = False) -> Embedded:
    """Token embeddings with the packed image features at the image-token positions (vision_cls: VisionZip's
    per-token inputs too, each tile's own [CLS] attention)."""
    tiles = jnp.asarray(batch["pixel_values"])
    tables = feature_table(params, tiles, vision_cls) if tiles.shape[0] > 0 else None
    return scatter_embedded(params, batch, tables, vision_cls)
