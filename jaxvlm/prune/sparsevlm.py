"""SparseVLM (Gumpest/SparseVLMs): v1.5 with token recycling, and v2.0's RoPE-only "gravity correction".

Raters (from the input embeddings, once): relevance of each text token after the image =
softmax over those text tokens of (visual . text^T), averaged over the visual tokens; raters = text tokens with
relevance above the mean. At layers [2, 6, 15] (the stage prunes the OUTPUT of that layer: score_layer = l,
layer = l + 1): that layer's attention probabilities, head mean, rows = raters, columns = surviving image
tokens, mean over raters; keep the per-layer budget (192 -> [300,200,110], 128 -> [303,110,36],
96 -> [238,48,26], 64 -> [66,30,17]).

Recycling (v1.x): of the pruned tokens take the top 30% by score (`int(0.3 n) + 1`), cluster them by density
peaks with `k = int(m / 10) + 1` centres and add the cluster means as extra tokens. Static shapes: the number of
extra slots is fixed by `n_in` (the visual tokens entering the stage, 576 at the first), so `keep` = budget +
clusters and the next stage's `n_in` = that keep (as upstream's `v_token_num`). Each merged token occupies the
slot (and original position) of its cluster centre; upstream appends the merged tokens after the kept visual
tokens and renumbers positions contiguously (`renumber=True` here too), so the only difference is the merged
tokens' order inside the visual block.

The per-layer budgets are ABSOLUTE token counts (upstream's tables for 576-token LLaVA-1.5 images), not ratios:
only the recycling counts depend on the visual count. With `n_visual=None` (default) each stage's `n_in` is
resolved by the engine at plan time (`SparseVLMStage.resolve`: the batch's smallest visual count at the first
stage, the previous stage's keep after it), which reproduces 576 -> 303 + 9, 312 -> 110 + 7, 117 -> 36 + 3 on
LLaVA. On inputs with fewer visual tokens than a budget (Qwen2-VL small images: 83 tokens) pass `budgets=`
that fit; the engine raises a clear ValueError otherwise.

v2.0 ("SparseVLM+", `version="2.0"`): attention probabilities are divided by a RoPE-only attention map (all-ones
q and k at the same positions: 2/sqrt(H) * sum_f cos(theta_f * (p_q - p_k))), the `heads` (14) heads with the most
corrected text->visual mass are kept, no recycling, original positions, v2 budget table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.prune import common
from jaxvlm.prune.base import Selection, StageContext

SPARSE_LAYERS = (2, 6, 15)
BUDGETS_V15 = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
BUDGETS_V20 = {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)}
RECYCLE_FRACTION = 0.3


def recycle_counts(n_in: int, budget: int) -> tuple[int, int]:
    """(merge candidates m, clusters c) for `n_in` visual tokens and `budget` kept: m = int(0.3 (n_in - budget))
    + 1, c = int(m / 10) + 1 (upstream's formulas); (0, 0) when nothing is pruned."""
    pruned = n_in - budget
    if pruned <= 0:
        return 0, 0
    m = min(int(pruned * RECYCLE_FRACTION) + 1, pruned)
    return m, int(m / 10) + 1


# ------------------------------------------------------------------------------------------ raters


def original_masks(state, t0: int) -> tuple[jax.Array, jax.Array]:
    """(visual, question) bool masks (B, T0) over the ORIGINAL sequence, rebuilt from the current state.

    Text tokens are never pruned, so their `src` marks every original text position; the visual positions are
    the non-text positions strictly between the first and the last text token (padding lies outside them).
    `question`: original positions of the text after the last visual token (upstream's `text_token_start:`).
    """
    b = state.valid.shape[0]
    rows = jnp.arange(b)[:, None]
    text = common.text_mask(state)
    src = jnp.where(text, state.src, t0)
    text_o = jnp.zeros((b, t0), bool).at[rows, src].set(True, mode="drop")
    q_src = jnp.where(common.after_visual_text(state), state.src, t0)
    question = jnp.zeros((b, t0), bool).at[rows, q_src].set(True, mode="drop")
    pos = jnp.arange(t0)[None, :]
    first = jnp.min(jnp.where(text_o, pos, t0), axis=1, keepdims=True)
    last = jnp.max(jnp.where(text_o, pos, -1), axis=1, keepdims=True)
    visual = ~text_o & (pos > first) & (pos < last)
    return visual, question


def rater_relevance(embeds: jax.Array, visual: jax.Array, text_emb: jax.Array, text_ok: jax.Array) -> jax.Array:
    """(B, R) relevance of each text row: softmax over text of (visual . text^T), mean over visual tokens.

    embeds (B, S, D) with `visual` (B, S) marking the visual tokens; text_emb (B, R, D) with `text_ok` (B, R)."""
    m = jnp.einsum("BSD,BRD->BSR", embeds.astype(jnp.float32), text_emb.astype(jnp.float32))
    m = jnp.where(text_ok[:, None, :], m, -jnp.inf)
    p = jax.nn.softmax(m, axis=-1)
    p = jnp.where(text_ok[:, None, :], p, 0.0)
    vis = visual.astype(jnp.float32)
    return jnp.einsum("BSR,BS->BR", p, vis) / jnp.maximum(jnp.sum(vis, axis=1, keepdims=True), 1.0)


def raters_from_relevance(rel: jax.Array, ok: jax.Array) -> jax.Array:
    """(B, R) bool: rows whose relevance is above the mean relevance of the valid rows."""
    okf = ok.astype(jnp.float32)
    mean = jnp.sum(rel * okf, axis=1, keepdims=True) / jnp.maximum(jnp.sum(okf, axis=1, keepdims=True), 1.0)
    return ok & (rel > mean)


def ctx_raters(ctx: StageContext) -> jax.Array:
    """(B, R) rater flags of the context's scoring rows (post-image text rows), from the input embeddings."""
    if ctx.embeds is None:
        raise ValueError("SparseVLM needs StageContext.embeds (the input embeddings) to choose its text raters")
    state = ctx.state
    t0 = ctx.embeds.shape[1]
    visual_o, _ = original_masks(state, t0)
    ok = ctx.row_weight > 0
    src_rows = jnp.take_along_axis(state.src, ctx.row_slots, axis=1)
    text_emb = common.gather_rows(ctx.embeds, jnp.where(ok, src_rows, 0))
    rel = rater_relevance(ctx.embeds, visual_o, text_emb, ok)
    return raters_from_relevance(rel, ok)


def rater_scores(logits: jax.Array, raters: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T): head-mean probabilities, mean over rater rows, zero off candidates (v1.5 score)."""
    s = common.weighted_rows(common.head_mean_probs(logits), raters.astype(jnp.float32), "mean")
    return jnp.where(cand, s, 0.0)


# ------------------------------------------------------------------------------ v2 gravity correction


def rope_only_map(pos_rows: jax.Array, pos_keys: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """(B, R, T) RoPE-only attention logits of all-ones q and k: 2/sqrt(H) * sum_f cos(inv_freq_f (p_r - p_t))."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    delta = (pos_rows[:, :, None] - pos_keys[:, None, :]).astype(jnp.float32)
    ang = delta[..., None] * jnp.asarray(inv, jnp.float32)
    return 2.0 * jnp.sum(jnp.cos(ang), axis=-1) / np.sqrt(head_dim)


def gravity_scores(logits, raters, cand, pos_rows, pos_keys, heads: int, head_dim: int, theta: float):
    """(B, T) SparseVLM v2.0 score: probs / RoPE-only map, top-`heads` heads by rater->visual mass, head mean,
    mean over raters, zero off candidates."""
    p = common.probs(logits)  # (B, N, R, T)
    rope = rope_only_map(pos_rows, pos_keys, head_dim, theta)[:, None]
    corr = jnp.where(p > 0, p / rope, 0.0)
    w = raters.astype(jnp.float32)
    mass = jnp.einsum("BNRT,BR,BT->BN", corr, w, cand.astype(jnp.float32))
    n = logits.shape[1]
    _, top = jax.lax.top_k(mass, min(heads, n))
    sel = jnp.take_along_axis(corr, top[:, :, None, None], axis=1)
    s = common.weighted_rows(jnp.mean(sel, axis=1), w, "mean")
    return jnp.where(cand, s, 0.0)


# ----------------------------------------------------------------------------------------- recycling


def density_peak_merge(x: jax.Array, ok: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Density-peak clustering and merge (upstream's `cluster_and_merge`), batched and masked.

    x (B, M, D), ok (B, M). Distances ||x_i - x_j|| / sqrt(D); density_i = exp(-mean of the squared distances to
    its k nearest (self included)); delta_i = distance to the nearest denser token (ties broken by lower index
    instead of upstream's 1e-6 random noise; the densest gets the largest distance); centres = top-k of
    delta * density; each token joins its nearest centre (centres join themselves); merged = member mean
    (sum / (count + 1e-6)). Returns (centres (B, k) int32 indices into M, -1 if invalid; merged (B, k, D);
    assignment (B, M) int32).
    """
    b, m, d = x.shape
    xf = x.astype(jnp.float32)
    sq = jnp.sum(xf * xf, axis=-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * jnp.einsum("BMD,BND->BMN", xf, xf)
    dist = jnp.sqrt(jnp.maximum(d2, 0.0)) / np.sqrt(d)
    dist = jnp.where(jnp.eye(m, dtype=bool)[None], 0.0, dist)
    pair = ok[:, :, None] & ok[:, None, :]
    kk = min(k, m)
    nearest = -jax.lax.top_k(-jnp.where(pair, dist, jnp.inf), kk)[0]
    nearest = jnp.where(jnp.isfinite(nearest), nearest, 0.0)
    n_ok = jnp.minimum(jnp.sum(ok, axis=1, keepdims=True), kk).astype(jnp.float32)
    density = jnp.exp(-jnp.sum(nearest ** 2, axis=-1) / jnp.maximum(n_ok, 1.0))
    density = jnp.where(ok, density, -1.0)
    idx = jnp.arange(m)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
    denser = denser & ok[:, None, :]
    dist_max = jnp.max(jnp.where(pair, dist, -jnp.inf), axis=(1, 2))[:, None, None]
    delta = jnp.min(jnp.where(denser, dist, dist_max), axis=-1)
    score = jnp.where(ok, delta * density, -jnp.inf)
    _, centres = jax.lax.top_k(score, kk)
    c_ok = jnp.take_along_axis(ok, centres, axis=1)
    cd = jnp.take_along_axis(dist, centres[:, :, None], axis=1)  # (B, k, M)
    cd = jnp.where(c_ok[:, :, None], cd, jnp.inf)
    assign = jnp.argmin(cd, axis=1)  # (B, M)
    own = (centres[:, :, None] == idx[None, None, :]) & c_ok[:, :, None]  # (B, k, M)
    assign = jnp.where(jnp.any(own, axis=1), jnp.argmax(own, axis=1), assign)
    member = (assign[:, None, :] == jnp.arange(kk)[None, :, None]) & ok[:, None, :]  # (B, k, M)
    memf = member.astype(jnp.float32)
    merged = jnp.einsum("BKM,BMD->BKD", memf, xf) / (jnp.sum(memf, axis=-1, keepdims=True) + 1e-6)
    return jnp.where(c_ok, centres, -1).astype(jnp.int32), merged.astype(x.dtype), assign.astype(jnp.int32)


def scatter_rows(x: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
    """x (B, T, D) with rows `slots` (B, K) replaced by values (B, K, D); -1 slots ignored."""
    x = jnp.asarray(x)
    b, t = x.shape[:2]
    safe = jnp.where(slots < 0, t, slots)
    return x.at[jnp.arange(b)[:, None], safe].set(values.astype(x.dtype), mode="drop")


def recycle(x: jax.Array, scores: jax.Array, cand: jax.Array, kept: jax.Array, n_merge: int, n_clusters: int):
    """Upstream's recycling on slots: returns (centre slots (B, c), x with the merged tokens at those slots)."""
    b, t = cand.shape
    kept_mask = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], jnp.where(kept < 0, t, kept)].set(
        True, mode="drop")
    pruned = cand & ~kept_mask
    mslots = common.top_k_slots(scores, pruned, n_merge, sort=False)
    xm = common.gather_rows(x, mslots)
    centres, merged, _ = density_peak_merge(xm, mslots >= 0, n_clusters)
    cslots = jnp.where(centres < 0, -1, jnp.take_along_axis(mslots, jnp.maximum(centres, 0), axis=1))
    return cslots, scatter_rows(x, cslots, merged)


# --------------------------------------------------------------------------------------------- stage


@dataclasses.dataclass(frozen=True)
class SparseVLMStage(common.TopKStage):
    score_layer: int
    budget: int
    n_in: int | None = common.LLAVA_VISUAL_TOKENS  # visual tokens entering this stage (static: recycling
    # counts); None: resolved at plan time (`resolve`)
    recycle: bool = True
    version: str = "1.5"
    max_rows: int = 128
    renumber: bool = True
    heads: int = 14  # v2.0 head selection
    rope_theta: float = 10000.0  # v2.0 RoPE-only map
    head_dim: int | None = None  # v2.0: taken from StageContext.keys when None

    def __post_init__(self):
        common.check_layer("SparseVLM layer", self.score_layer)
        if self.n_in is None:
            common.check_count("SparseVLM budget", self.budget)
        else:
            common.check_count("SparseVLM n_in", self.n_in)
            if isinstance(self.budget, int) and not isinstance(self.budget, bool) and self.budget > self.n_in:
                raise ValueError(f"SparseVLM budget {self.budget} at layer {self.score_layer} exceeds the "
                                 f"{self.n_in} visual tokens entering it (pass smaller budgets=)")
            common.check_count("SparseVLM budget", self.budget, high=self.n_in)
        common.check_count("SparseVLM max_rows", self.max_rows)
        if self.version not in ("1.5", "2.0"):
            raise ValueError(f"SparseVLM version={self.version!r}: expected '1.5' or '2.0'")

    @property
    def layer(self) -> int:
        return self.score_layer + 1

    def resolve(self, n_in: int, n_visual: int) -> "SparseVLMStage":
        """The stage with `n_in` = the visual tokens entering it (fixes the recycling counts); the budget is
        absolute and must fit (ValueError otherwise)."""
        if self.n_in is not None:
            return self
        return dataclasses.replace(self, n_in=n_in)

    @property
    def clusters(self) -> int | None:
        if not self.recycle:
            return 0
        return None if self.n_in is None else recycle_counts(self.n_in, self.budget)[1]

    @property
    def keep(self) -> int | None:
        clusters = self.clusters
        return None if clusters is None else self.budget + clusters

    def query_rows(self, state):
        return common.pick_rows(common.after_visual_text(state), self.max_rows, prefer_last=True)

    def score(self, ctx: StageContext) -> jax.Array:
        raters = ctx_raters(ctx)
        cand = common.candidates(ctx.state)
        if self.version == "1.5":
            return rater_scores(ctx.logits, raters, cand)
        pos = ctx.state.positions[0]
        h = self.head_dim or (ctx.keys.shape[-1] if ctx.keys is not None else None)
        if h is None:
            raise ValueError("SparseVLM v2.0 needs head_dim (or StageContext.keys) for its RoPE-only map")
        pos_rows = jnp.take_along_axis(pos, ctx.row_slots, axis=1)
        return gravity_scores(ctx.logits, raters, cand, pos_rows, pos, self.heads, h, self.rope_theta)

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        cand = common.candidates(ctx.state)
        kept = common.top_k_slots(scores, cand, self.budget)
        if not self.clusters:
            return Selection(slots=kept)
        n_merge, n_clusters = recycle_counts(self.n_in, self.budget)
        cslots, x = recycle(ctx.state.x, scores, cand, kept, n_merge, n_clusters)
        slots = common.sort_slots(jnp.concatenate([kept, cslots], axis=1))
        return Selection(slots=slots, x=common.gather_rows(x, slots))


def sparsevlm(budget: int = 128, version: str = "1.5", recycle: bool | None = None, layers=SPARSE_LAYERS,
              budgets=None, n_visual: int | None = None, max_rows: int = 128,
              renumber: bool | None = None, heads: int = 14, rope_theta: float = 10000.0) -> tuple:
    """SparseVLM schedule. `budget` picks the per-layer table (192/128/96/64) or pass `budgets` explicitly.

    layers are upstream's pruning locations (the attention layer; the drop happens before the next layer).
    recycle / renumber default to True for v1.5 and False for v2.0. Budgets are absolute counts; n_visual=None
    (default) leaves each stage's entering count (recycling slots) to the engine (resolved at plan time from the
    batch's smallest visual count), an int fixes it now (576: 303 + 9, 110 + 7, 36 + 3).
    """
    table = BUDGETS_V15 if version == "1.5" else BUDGETS_V20
    if budgets is None:
        if budget not in table:
            raise ValueError(f"SparseVLM budget={budget!r} has no per-layer table (have {sorted(table)}); "
                             "pass budgets=(...) explicitly")
        budgets = table[budget]
    layers, budgets = tuple(layers), tuple(budgets)
    if len(layers) != len(budgets):
        raise ValueError(f"need one budget per layer: layers={layers} budgets={budgets}")
    recycle = (version == "1.5") if recycle is None else recycle
    renumber = (version == "1.5") if renumber is None else renumber
    if n_visual is None:
        return tuple(SparseVLMStage(score_layer=l, budget=b, n_in=None, recycle=recycle, version=version,
                                    max_rows=max_rows, renumber=renumber, heads=heads, rope_theta=rope_theta)
                     for l, b in zip(layers, budgets))
    stages, n_in = [], common.check_count("n_visual", n_visual)
    for l, b in zip(layers, budgets):
        if b > n_in:
            raise ValueError(f"SparseVLM budget {b} at layer {l} exceeds the {n_in} visual tokens entering it")
        st = SparseVLMStage(score_layer=l, budget=b, n_in=n_in, recycle=recycle, version=version,
                            max_rows=max_rows, renumber=renumber, heads=heads, rope_theta=rope_theta)
        stages.append(st)
        n_in = st.keep
    return tuple(stages)
