"""The Qwen2-VL and Qwen2.5-VL vision transformers and their patch mergers, as pure functions.

Both towers take every image and video frame of a batch as one packed sequence of patch rows (the
processor's `pixel_values`: one row of C * temporal_patch * p * p values per patch, rows merge-block-major,
i.e. every m*m consecutive rows form one spatial merge block). Attention never crosses an image or frame
(or, in windowed blocks, a window): the host lists each segment's patch slots, padded to the longest
segment, as a (segments, slots) gather index; the device gathers q/k/v into (segments, slots) blocks,
attends within each block under a key-validity mask (the block-diagonal mask, never materialised as
(N, N)), and scatters back with the inverse index. Cost is sum(segment^2), not N^2 - for windowed
blocks (4x4 merged tokens = 64 patches per window) this is what makes large images cheap.

Qwen2-VL:   LayerNorm, quick_gelu MLP (fc1/fc2), every block attends over its whole image/frame,
            merger = LayerNorm + MLP (GELU) over the m*m patches of each merge block.
Qwen2.5-VL: RMSNorm, gated SiLU MLP with biases, window attention (windows of `window_size` pixels over the
            merged grid) except in `fullatt_block_indexes`, merger with RMSNorm. Patches are processed in
            window order (merge blocks reordered so each window is contiguous) and the merged tokens are put
            back into raster order at the end. Which mask a block uses is a per-layer flag scanned with the
            stacked layer weights, so every block runs the same traced code.

Host side (`index_arrays`, numpy): rotary (row, col) per patch in processing order, the processing order
itself, segment ids and gather/inverse indices of the full and the windowed attention, and the inverse order
of merged tokens.

Shape buckets (`index_arrays(..., per_octave=BUCKETS_PER_OCTAVE)`, what `qwen_vl.prepare` uses): every
static shape that follows the grids - the packed patch count, the number and width of the attention segments -
is rounded up by `bucket` (BUCKETS_PER_OCTAVE steps per power of two, so at most 25% padding with 4), and one
compiled program serves every batch of grids in the same buckets. Padding patches (zero rows, appended) carry
segment id -1: they are in no attention block, so no real patch attends to them and their attention output
is 0; they merge among themselves into padding merged tokens past the real ones, which the LLM never gathers.
Padding blocks / block slots are all-invalid keys. The real patches' arithmetic is unchanged.

Weights (layers stacked on L, linear weights [in, out]; D width, N heads, H head dim, F MLP width):
    vision:    patch_embed (C*tp*p*p, D)
               layers: attn_norm (L, D) [+ attn_norm_bias], wqkv (L, D, 3, N, H), bqkv (L, 3, N, H),
                       wo (L, N, H, D), bo (L, D), mlp_norm (L, D) [+ mlp_norm_bias],
                       Qwen2-VL: fc1 (L, D, F), fc1_b (L, F), fc2 (L, F, D), fc2_b (L, D)
                       Qwen2.5-VL: w_gate/w_up (L, D, F), b_gate/b_up (L, F), w_down (L, F, D), b_down (L, D)
    projector: norm (D,) [+ norm_bias (D,)], fc1 (m*m*D, m*m*D), fc1_b, fc2 (m*m*D, out), fc2_b (out,)
([+ ..._bias] only for Qwen2-VL's LayerNorms.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.errors import UserError
from jaxvlm.layers import activation, apply_rope, attention, base_inv_freq, full_mask, layer_norm, rms_norm

NORM_EPS = 1e-6  # transformers hard-codes eps=1e-6 for every norm of both towers and mergers
# Shape buckets per power of two for prepare's packed patch axis and attention blocks (see `bucket`). Four
# bounds the padding at 25% (COCO-like batches of 8: +9% patches on average, +17% full-attention block work)
# while an eval's patch counts fall into a handful of buckets; 0 keeps the exact shapes (one program per count).
BUCKETS_PER_OCTAVE = 4


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A Qwen2-VL (`family="qwen2_vl"`) or Qwen2.5-VL (`"qwen2_5_vl"`) vision tower + merger."""

    family: str
    depth: int
    hidden_size: int  # tower width D (Qwen2-VL's `embed_dim`, Qwen2.5-VL's `hidden_size`)
    num_heads: int
    intermediate_size: int  # MLP width F (Qwen2-VL: embed_dim * mlp_ratio)
    hidden_act: str
    out_hidden_size: int  # merger output = LLM width (Qwen2-VL's `hidden_size`, Qwen2.5-VL's `out_hidden_size`)
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    rope_theta: float = 10000.0
    window_size: int = 0  # pixels; 0 = no window attention (Qwen2-VL)
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: float = 1.0  # Qwen2.5-VL video temporal position spacing

    @property
    def windowed(self) -> bool:
        return self.family == "qwen2_5_vl"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    def full_attention_layers(self) -> np.ndarray:
        """(L,) bool: which blocks attend over the whole image/frame (all of them for Qwen2-VL)."""
        if not self.windowed:
            return np.ones(self.depth, bool)
        return np.isin(np.arange(self.depth), np.asarray(self.fullatt_block_indexes, np.int64))


def weight_shapes(cfg: VisionConfig) -> dict:
    """Shapes of the vision tower ("vision") and merger ("projector") weights."""
    L, D, F, N, H = cfg.depth, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
    layers = {
        "attn_norm": (L, D), "wqkv": (L, D, 3, N, H), "bqkv": (L, 3, N, H), "wo": (L, N, H, D), "bo": (L, D),
        "mlp_norm": (L, D),
    }
    if cfg.windowed:
        layers.update({"w_gate": (L, D, F), "b_gate": (L, F), "w_up": (L, D, F), "b_up": (L, F),
                       "w_down": (L, F, D), "b_down": (L, D)})
    else:
        layers.update({"attn_norm_bias": (L, D), "mlp_norm_bias": (L, D),
                       "fc1": (L, D, F), "fc1_b": (L, F), "fc2": (L, F, D), "fc2_b": (L, D)})
    MD = cfg.merge_unit * D
    projector = {"norm": (D,), "fc1": (MD, MD), "fc1_b": (MD,), "fc2": (MD, cfg.out_hidden_size),
                 "fc2_b": (cfg.out_hidden_size,)}
    if not cfg.windowed:
        projector["norm_bias"] = (D,)
    return {"vision": {"patch_embed": (cfg.patch_dim, D), "layers": layers}, "projector": projector}


# ------------------------------------------------------------------------------------------ host side


def check_grids(cfg: VisionConfig, grid_thw: np.ndarray, name: str) -> np.ndarray:
    """Validate a (num_media, 3) grid array (t, h, w in patches); return it as int64."""
    g = np.asarray(grid_thw)
    if g.ndim != 2 or g.shape[1] != 3:
        raise UserError(f"{name} must have shape (num_media, 3), got {g.shape}")
    g = g.astype(np.int64)
    m = cfg.spatial_merge_size
    if (g <= 0).any():
        raise UserError(f"{name} has non-positive entries: {g.tolist()}")
    if (g[:, 1] % m).any() or (g[:, 2] % m).any():
        raise UserError(f"{name}: h and w must be multiples of spatial_merge_size={m}, got {g.tolist()}")
    return g


def bucket(n: int, quantum: int = 1, per_octave: int = BUCKETS_PER_OCTAVE) -> int:
    """`n` rounded up to a bucket: k = ceil(n / quantum) units rounded up to a multiple of 2^e / per_octave where
    2^e < k <= 2^(e+1), i.e. `per_octave` buckets per power of two (4, quantum 4: ..., 1280, 1536, 1792, 2048,
    2560, ... patches; padding < n / per_octave + quantum); n itself when per_octave is 0."""
    n = int(n)
    if per_octave <= 0:
        return n
    k = max(1, -(-n // quantum))
    step = max(1, (1 << ((k - 1).bit_length() - 1)) // per_octave) if k > 1 else 1
    return -(-k // step) * step * quantum


def index_arrays(cfg: VisionConfig, grids: np.ndarray, per_octave: int = 0) -> dict[str, np.ndarray]:
    """Host-side index arrays for the packed patches of media with `grids` (M, 3) (t, h, w in patches).

    Returns (Np = total patches, Nm = Np / m^2 merged tokens; with `per_octave` > 0 Np is bucket(Np, m^2) and
    slots from the real count on are padding patches, see the module docstring):
      order (Np,)       processing order: patch row `order[i]` of the input is processed at slot i
      rope_pos (Np, 2)  (row, col) of each processed patch in its image grid (rotary positions)
      seg_full (Np,)    segment id = global frame id (full attention stays within an image/frame); -1: padding
      seg_window (Np,)  segment id = global window id (== seg_full for Qwen2-VL)
      {full,window}_gather (S, P), {full,window}_inverse (Np,)   `segment_blocks` of the two segmentations
                        (S and P bucketed too)
      unorder (Nm,)     merged token j of the raster output is merged slot unorder[j]
    """
    m = cfg.spatial_merge_size
    mu = m * m
    win = cfg.window_size // m // cfg.patch_size if cfg.windowed else 0
    # Per merged unit (in input order): merged (row, col), the position inside the merge block, frame, window.
    frames, windows, mrows, mcols = [], [], [], []
    frame_base = window_base = 0
    for t, h, w in grids.tolist():
        hm, wm = h // m, w // m
        f, r, c = np.meshgrid(np.arange(t), np.arange(hm), np.arange(wm), indexing="ij")
        f, r, c = f.ravel(), r.ravel(), c.ravel()
        frames.append(frame_base + f)
        if win:
            nwh, nww = -(-hm // win), -(-wm // win)
            windows.append(window_base + (f * nwh + r // win) * nww + c // win)
            window_base += t * nwh * nww
        else:
            windows.append(frame_base + f)
        frame_base += t
        mrows.append(r)
        mcols.append(c)
    frame_u, window_u = np.concatenate(frames), np.concatenate(windows)
    row_u, col_u = np.concatenate(mrows), np.concatenate(mcols)
    nm = frame_u.size
    # Window order of merged units: by window id (ids are frame-major, windows raster), then input order
    # (raster within the frame, hence raster within the window). Qwen2-VL: identity.
    unit_order = np.argsort(window_u, kind="stable") if win else np.arange(nm)
    unorder = np.argsort(unit_order, kind="stable")
    order = (unit_order[:, None] * mu + np.arange(mu)[None, :]).ravel()
    # Rotary (row, col) of each patch: merge block (r, c) holds patches (r*m + i, c*m + j), i, j raster.
    inner_r, inner_c = np.divmod(np.arange(mu), m)
    prow = (row_u[:, None] * m + inner_r[None, :]).ravel()
    pcol = (col_u[:, None] * m + inner_c[None, :]).ravel()
    rope_pos = np.stack([prow, pcol], axis=-1)[order]
    seg_full = np.repeat(frame_u, mu)[order]
    seg_window = np.repeat(window_u, mu)[order]
    n_pad = bucket(order.size, mu, per_octave) - order.size
    if n_pad:  # padding patches: rows past the real ones, processed last, merged among themselves
        order = np.concatenate([order, order.size + np.arange(n_pad)])
        unorder = np.concatenate([unorder, nm + np.arange(n_pad // mu)])
        rope_pos = np.concatenate([rope_pos, np.zeros((n_pad, 2), rope_pos.dtype)])
        seg_full, seg_window = (np.concatenate([s, np.full(n_pad, -1, s.dtype)]) for s in (seg_full, seg_window))
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    out = {"order": i32(order), "rope_pos": i32(rope_pos), "seg_full": i32(seg_full),
           "seg_window": i32(seg_window), "unorder": i32(unorder)}
    # Window counts vary most between batches and an empty window costs little (a 64-patch window's attention
    # is ~2% of its MLP's FLOPs at the real widths): their count goes to a power of two.
    for name, seg, count_octave in (("full", seg_full, per_octave), ("window", seg_window, min(per_octave, 1))):
        gather, inverse = segment_blocks(seg, per_octave, count_octave)
        out[f"{name}_gather"], out[f"{name}_inverse"] = gather, inverse
    return out


def segment_blocks(seg: np.ndarray, per_octave: int = 0, count_octave: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of equal segment ids (>= 0; -1 = in no block): gather (S, P) int32 slot indices of each segment
    in slot order, padded with N (a slot past the end), and inverse (N,) int32: flat index s * P + p where slot
    n sits, S * P (past every block) for the slots of no segment. P is `bucket`ed with `per_octave`, S with
    `count_octave` (default: the same; padding rows hold only N)."""
    n = seg.size
    real = np.flatnonzero(seg >= 0)
    ids, first, counts = np.unique(seg[real], return_index=True, return_counts=True)
    ids = ids[np.argsort(first, kind="stable")]  # segments in order of appearance
    rank = np.zeros(int(seg.max()) + 1 if real.size else 0, np.int64)
    rank[ids] = np.arange(ids.size)
    block = rank[seg[real]]
    by_block = np.argsort(block, kind="stable")
    n_seg = bucket(max(ids.size, 1), 1, per_octave if count_octave is None else count_octave)
    width = bucket(int(counts.max()) if real.size else 1, 1, per_octave)
    start = np.zeros(ids.size + 1, np.int64)
    np.cumsum(np.bincount(block, minlength=ids.size), out=start[1:])
    within = np.arange(real.size) - start[block[by_block]]
    gather = np.full((n_seg, width), n, np.int64)
    gather[block[by_block], within] = real[by_block]
    inverse = np.full(n, n_seg * width, np.int64)
    inverse[real[by_block]] = block[by_block] * width + within
    return gather.astype(np.int32), inverse.astype(np.int32)


# ---------------------------------------------------------------------------------------- device side


def _norm(cfg: VisionConfig, x, scale, bias):
    if cfg.windowed:
        return rms_norm(x, scale, NORM_EPS)
    return layer_norm(x, scale, bias, NORM_EPS)


def rotary(cfg: VisionConfig, rope_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Axial 2-D rotary: cos, sin (1, Np, H/2) float32; the first H/4 frequencies rotate by row, the rest by col."""
    spatial = cfg.head_dim // 2
    inv = base_inv_freq(cfg.rope_theta, spatial)  # (H/4,)
    angles = rope_pos.astype(jnp.float32)[:, :, None] * jnp.asarray(inv)  # (Np, 2, H/4)
    angle = angles.reshape(angles.shape[0], -1)[None]  # (1, Np, H/2): [row freqs, col freqs]
    return jnp.cos(angle), jnp.sin(angle)


def segment_attention(q_tnh, k_tnh, v_tnh, gather_sp: jax.Array, inverse_t: jax.Array) -> jax.Array:
    """Attention within segments: gather (S, P) slot blocks (padding = index T), attend per block, scatter back
    (slots of no segment, inverse S * P, get 0)."""
    t = q_tnh.shape[0]
    valid_sp = gather_sp < t

    def blocks(x):
        x = jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
        return x[gather_sp]  # (S, P, N, H)

    out = attention(blocks(q_tnh), blocks(k_tnh), blocks(v_tnh), full_mask(valid_sp))  # chunked for big blocks
    return jnp.take(out.reshape((-1,) + out.shape[2:]), inverse_t, axis=0, mode="fill", fill_value=0)


def block(cfg: VisionConfig, lw: dict, x_td: jax.Array, cos, sin, attend) -> jax.Array:
    """One vision block over the packed sequence x (T, D); `attend(q, k, v)` is the (segmented) attention."""
    h = _norm(cfg, x_td, lw["attn_norm"], lw.get("attn_norm_bias"))
    qkv = jnp.einsum("TD,DCNH->CTNH", h, lw["wqkv"]) + lw["bqkv"][:, None]
    # Rotary in float32 and back, as transformers' apply_rotary_pos_emb_vision does.
    q = apply_rope(qkv[0][None].astype(jnp.float32), cos, sin)[0].astype(x_td.dtype)
    k = apply_rope(qkv[1][None].astype(jnp.float32), cos, sin)[0].astype(x_td.dtype)
    attn = attend(q, k, qkv[2])
    x_td = x_td + jnp.einsum("TNH,NHD->TD", attn, lw["wo"]) + lw["bo"]
    h = _norm(cfg, x_td, lw["mlp_norm"], lw.get("mlp_norm_bias"))
    if cfg.windowed:
        gate = jnp.einsum("TD,DF->TF", h, lw["w_gate"]) + lw["b_gate"]
        up = jnp.einsum("TD,DF->TF", h, lw["w_up"]) + lw["b_up"]
        y = jnp.einsum("TF,FD->TD", activation(cfg.hidden_act)(gate) * up, lw["w_down"]) + lw["b_down"]
    else:
        mid = activation(cfg.hidden_act)(jnp.einsum("TD,DF->TF", h, lw["fc1"]) + lw["fc1_b"])
        y = jnp.einsum("TF,FD->TD", mid, lw["fc2"]) + lw["fc2_b"]
    return x_td + y


def tower(cfg: VisionConfig, vision_w: dict, patches: jax.Array, idx: dict) -> jax.Array:
    """Patch embedding and all blocks: hidden states (Np, D) in processing order (`idx["order"]`)."""
    w_embed = vision_w["patch_embed"]
    x = patches[idx["order"]].astype(w_embed.dtype) @ w_embed
    cos, sin = rotary(cfg, idx["rope_pos"])
    full_l = jnp.asarray(cfg.full_attention_layers())

    def attend_full(q, k, v):
        return segment_attention(q, k, v, idx["full_gather"], idx["full_inverse"])

    def attend_window(q, k, v):
        return segment_attention(q, k, v, idx["window_gather"], idx["window_inverse"])

    def step(x, per_layer):
        lw, full = per_layer
        if not cfg.windowed:  # Qwen2-VL: every block attends over its whole image / frame
            return block(cfg, lw, x, cos, sin, attend_full), None
        # Qwen2.5-VL: the per-layer flag picks the segmentation; one branch runs, no Python branch per layer
        attend = lambda q, k, v: jax.lax.cond(full, attend_full, attend_window, q, k, v)  # noqa: E731
        return block(cfg, lw, x, cos, sin, attend), None

    x, _ = jax.lax.scan(step, x, (vision_w["layers"], full_l))
    return x


def merge(cfg: VisionConfig, proj_w: dict, hidden_td: jax.Array, unorder: jax.Array) -> jax.Array:
    """Patch merger: norm, concatenate each merge block's m*m patches, MLP; (Nm, out) in raster order."""
    h = _norm(cfg, hidden_td, proj_w["norm"], proj_w.get("norm_bias"))
    h = h.reshape(-1, cfg.merge_unit * cfg.hidden_size)
    h = jax.nn.gelu(h @ proj_w["fc1"] + proj_w["fc1_b"], approximate=False)
    return (h @ proj_w["fc2"] + proj_w["fc2_b"])[unorder]


def encode(cfg: VisionConfig, vision_w: dict, proj_w: dict, patches: jax.Array, idx: dict) -> jax.Array:
    """Packed patch rows (Np, C*tp*p*p) -> merged visual features (Nm, out), media after media, raster order."""
    return merge(cfg, proj_w, tower(cfg, vision_w, patches, idx), idx["unorder"])
