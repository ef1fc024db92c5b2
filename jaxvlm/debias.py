"""Attention debiasing for visual-token pruning (docs/METHOD.md): padding masks, padding
suppression, position detrending and the position trends they divide out.

Axis letters: N images (media), G = grid*grid patches of one image, B batch, T tokens/slots, S samples.

Every array function here is pure and works on two kinds of input:
  * numpy arrays / Python numbers: computed on the host in float64, with the same IEEE operations in the
    same order as the official release (github.com/intcomp/attention-bias), so results are bit-for-bit
    the release's (its float64 quirks included, e.g. `int(47 * (24 / 94)) == 11`);
  * jax arrays (also tracers): jit/vmap-safe, computed in the default float width (float32, or float64
    under `jax.enable_x64`). In float32 a patch whose padding ratio lies within ~1e-6 of the threshold
    may flip; the host path is the exact one and the one `prepare` (numpy, host side) should use.

Surface:
  pad_mask / pad_mask_sparsevlm / unpad_mask / make_pad_mask   per-image (..., grid*grid) {0,1} masks
  valid_mask, token_pad_flags                                  all-valid masks (Qwen), per-token flags
  suppress_padding(scores, pad_mask), detrend(scores, positions, trend)
  Trend (exponential | polynomial | table; fit, from_weights; clamped beyond its span), Trend2D (row x col),
  SelfTrend (each row's own robust exponential, calibration-free), load_trend, as_trend
  release_trend(method, benchmark), release_weights_path, release_benchmarks   the release's 41 files

Orientation: a *pad mask* is 1 (True) where a patch is VALID image content and 0 where it is padding, as in
the release (`scores * mask`). The engine's `StageContext.pad` is the opposite flag (True = padding):
`token_pad_flags` builds it from per-media pad masks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DATA_DIR = Path(__file__).parent / "data"
WEIGHTS_DIR = DATA_DIR / "attention_bias_weights"
TRENDS_JSON = DATA_DIR / "trends.json"


def _xp(*arrays: Any):
    """numpy for host inputs (exact float64 path), jax.numpy as soon as one input is a jax array/tracer."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _float(xp):
    return np.float64 if xp is np else jnp.result_type(float)


def _on_host(fn, image_sizes, cols: int, **kwargs):
    """Run the exact numpy (float64) mask function from inside jit/vmap through `jax.pure_callback`."""
    sizes = jnp.asarray(image_sizes)
    out = jax.ShapeDtypeStruct(sizes.shape[:-1] + (cols,), jnp.float32)
    host = lambda s: np.asarray(fn(np.asarray(s), **kwargs), np.float32)  # noqa: E731
    return jax.pure_callback(host, out, sizes, vmap_method="expand_dims")


# ----------------------------------------------------------------------------------------------------------
# Padding masks
# ----------------------------------------------------------------------------------------------------------


def pad_mask(image_sizes, grid: int = 24, image_size: int = 336, threshold: float = 0.5, exact: bool = False):
    """The release's pad-to-square patch mask (`generate_pad_mask`), vectorised.

    image_sizes: (..., 2) original (width, height) per image (API.md order). Returns (..., grid*grid)
    float32 in {0, 1}, raster order (row-major), 1 = valid patch.

    LLaVA-1.5's `expand2square` pastes the image centred on a square; resized to image_size, the padding is
    `pad = (H-W)/(2H)*image_size` left and right when W < H, the same top and bottom when H < W. Patch
    (i, j) covers [j*p, (j+1)*p) x [i*p, (i+1)*p) with p = image_size // grid; its padding ratio is
    `1 - area(patch & valid rect)/p^2` and it is masked (0) iff that ratio > threshold.
    Thresholds in the release: 0.5 (FastV, HiMAP, TokenCarve), 0.01 (PyramidDrop).
    exact=True with jax input computes on the host in float64 (jax.pure_callback; threshold must be a Python
    float): bit-for-bit the release inside jit too. Without it the float32 path differs only where a ratio
    ties the threshold exactly (measured: 0 of the 1,002,001 sizes 200..1200 x 200..1200 at threshold 0.5,
    28 at 0.01, e.g. 400x233).
    """
    if exact and _xp(image_sizes, threshold) is jnp:
        return _on_host(pad_mask, image_sizes, grid * grid, grid=grid, image_size=image_size, threshold=float(threshold))
    xp = _xp(image_sizes, threshold)
    ft = _float(xp)
    sizes = xp.asarray(image_sizes)
    w = sizes[..., 0].astype(ft)
    h = sizes[..., 1].astype(ft)
    img = float(image_size)
    p = image_size // grid
    zero = xp.zeros_like(w)
    pad_lr = xp.where(w < h, (h - w) / (2 * h) * img, zero)  # same operation order as the release
    pad_tb = xp.where(h < w, (w - h) / (2 * w) * img, zero)
    x0 = (np.arange(grid) * p).astype(np.float64)
    x1 = x0 + p
    x0, x1 = xp.asarray(x0, dtype=ft), xp.asarray(x1, dtype=ft)

    def overlap(lo, hi):  # (..., grid): length of [x0, x1) & [lo, hi)
        return xp.maximum(0.0, xp.minimum(x1, hi[..., None]) - xp.maximum(x0, lo[..., None]))

    inter_w = overlap(pad_lr, img - pad_lr)  # columns
    inter_h = overlap(pad_tb, img - pad_tb)  # rows
    area = inter_w[..., None, :] * inter_h[..., :, None]  # (..., grid rows, grid cols); release: w * h
    pad_ratio = 1 - area / float(p * p)
    valid = ~(pad_ratio > xp.asarray(threshold, dtype=ft)[..., None, None])
    return valid.reshape(*sizes.shape[:-1], grid * grid).astype(xp.float32)


def unpad_mask(image_sizes, grid: int = 24, exact: bool = False):
    """The release's integer "unpad" variant (FastV's padding-only ablation; LLaVA-NeXT `unpad_image` style).

    image_sizes (..., 2) (width, height) -> (..., grid*grid) float32 {0,1}. If W/H > 1: new_h = int(H*(grid/W))
    valid rows [pad, grid - pad) with pad = (grid - new_h)//2 (all columns); else the same on columns.
    exact=True with jax input: computed on the host in float64 (keeps the release's float64 quirks in jit).
    """
    if exact and _xp(image_sizes) is jnp:
        return _on_host(unpad_mask, image_sizes, grid * grid, grid=grid)
    xp = _xp(image_sizes)
    ft = _float(xp)
    sizes = xp.asarray(image_sizes)
    w = sizes[..., 0].astype(ft)
    h = sizes[..., 1].astype(ft)
    wide = (w / h) > 1.0
    new = xp.floor(xp.where(wide, h * (grid / w), w * (grid / h))).astype(xp.int32)
    pad = (grid - new) // 2
    idx = xp.arange(grid)
    inside = (idx >= pad[..., None]) & (idx < grid - pad[..., None])  # (..., grid)
    full = xp.ones_like(inside)
    rows = xp.where(wide[..., None], inside, full)
    cols = xp.where(wide[..., None], full, inside)
    valid = rows[..., :, None] & cols[..., None, :]
    return valid.reshape(*sizes.shape[:-1], grid * grid).astype(xp.float32)


def _pil_bilinear_keep(xp, side, lo, hi, out: int, kmax: int):
    """Pillow's 8-bit BILINEAR resize of 1-D {0,1} masks to `out` samples, kept where the uint8 result >= 1.

    side, lo, hi: (N,) int input length and valid range [lo, hi). Follows Pillow's resampling exactly:
    triangle filter widened by the downscale factor, coefficients normalised (sequential sum) and rounded
    to 22-bit fixed point, output rounded to uint8. kmax: static window bound (>= 2*ceil(side/out) + 1).
    Returns (N, out) bool.
    """
    ft = _float(xp)
    scale = side.astype(ft) / out
    filterscale = xp.maximum(scale, 1.0)
    support = filterscale  # bilinear filter support 1.0, widened
    ss = 1.0 / filterscale
    center = (xp.arange(out, dtype=ft) + 0.5) * scale[:, None]  # (N, out)
    xmin = xp.maximum(xp.trunc(center - support[:, None] + 0.5), 0.0)
    xmax = xp.minimum(xp.trunc(center + support[:, None] + 0.5), side[:, None].astype(ft))
    k = xp.arange(kmax, dtype=ft)
    x = xmin[..., None] + k  # (N, out, kmax) pixel index
    dist = xp.abs((x - center[..., None] + 0.5) * ss[:, None, None])
    tri = xp.where((k < (xmax - xmin)[..., None]) & (dist < 1.0), 1.0 - dist, 0.0)
    ww = xp.cumsum(tri, axis=-1)[..., -1:]  # sequential, as the C loop
    coef = xp.where(ww != 0.0, tri / xp.where(ww != 0.0, ww, 1.0), tri)
    fixed = xp.floor(coef * float(1 << 22) + 0.5).astype(xp.int32)
    inside = (x >= lo[:, None, None].astype(ft)) & (x < hi[:, None, None].astype(ft))
    acc = (1 << 21) + xp.sum(xp.where(inside, fixed, 0), axis=-1)
    return (acc >> 22) >= 1


def pad_mask_sparsevlm(image_sizes, grid: int = 24, max_side: int = 8192, exact: bool = False):
    """SparseVLM's variant: a {0,1} pixel mask of the expand2square canvas (side max(W, H), image pasted at
    the integer offset (max-min)//2) resized with Pillow BILINEAR to grid x grid, kept where >= 0.5.

    image_sizes (..., 2) (width, height) -> (..., grid*grid) float32 {0,1}; nearly equal to
    `pad_mask(..., threshold=0.5)`. Equal to Pillow itself on the host path (tests compare). max_side: static
    bound on max(W, H) for the jax path's filter window (the host path sizes it from the data).
    exact=True with jax input: computed on the host (float64) through jax.pure_callback.
    """
    if exact and _xp(image_sizes) is jnp:
        return _on_host(pad_mask_sparsevlm, image_sizes, grid * grid, grid=grid)
    xp = _xp(image_sizes)
    sizes = xp.asarray(image_sizes)
    flat = sizes.reshape(-1, 2).astype(xp.int32)
    w, h = flat[:, 0], flat[:, 1]
    side = xp.maximum(w, h)
    short = xp.minimum(w, h)
    off = (side - short) // 2
    if xp is np:
        max_side = int(side.max()) if side.size else 1
    kmax = 2 * -(-max(max_side, grid) // grid) + 3
    keep = _pil_bilinear_keep(xp, side, off, off + short, grid, kmax)  # (N, grid) along the padded axis
    keep = keep | (w == h)[:, None]
    full = xp.ones_like(keep)
    rows = xp.where((w > h)[:, None], keep, full)
    cols = xp.where((w < h)[:, None], keep, full)
    valid = rows[:, :, None] & cols[:, None, :]
    return valid.reshape(*sizes.shape[:-1], grid * grid).astype(xp.float32)


PAD_VARIANTS = ("release", "sparsevlm", "unpad")


def make_pad_mask(image_sizes, variant: str = "release", threshold: float = 0.5, grid: int = 24, image_size: int = 336,
                  exact: bool = False):
    """One entry point for the three padding-mask variants: "release" (`pad_mask`, with `threshold`),
    "sparsevlm" (`pad_mask_sparsevlm`), "unpad" (`unpad_mask`). (..., 2) -> (..., grid*grid) {0,1}.
    exact: see `pad_mask` (host float64 inside jit, bit-for-bit the release)."""
    if variant == "release":
        return pad_mask(image_sizes, grid=grid, image_size=image_size, threshold=threshold, exact=exact)
    if variant == "sparsevlm":
        return pad_mask_sparsevlm(image_sizes, grid=grid, exact=exact)
    if variant == "unpad":
        return unpad_mask(image_sizes, grid=grid, exact=exact)
    raise ValueError(f"unknown pad mask variant {variant!r} (have {PAD_VARIANTS})")


def valid_mask(num_media: int, grid_h: int, grid_w: int | None = None):
    """All-valid masks (num_media, grid_h*grid_w) for inputs without pad-to-square (Qwen-VL: its only
    padding is the batch/grid padding the engine introduces, which `TokenState.valid` already masks)."""
    return np.ones((num_media, grid_h * (grid_h if grid_w is None else grid_w)), np.float32)


def token_pad_flags(media, row, col, masks, grid_w: int | None = None):
    """Per-token padding flags from token metadata: True where a visual token lies on a padding patch.

    media, row, col: (B, T) int32 (TokenState fields; -1 for text). masks: (M, gh, gw) or (M, gh*gw) with
    `grid_w` given, {0,1} per-media pad masks (1 = valid), e.g. `pad_mask(image_sizes).reshape(M, 24, 24)`.
    Video frames share their media's mask. Returns (B, T) bool. jit-safe (jax inputs) or numpy.
    """
    xp = _xp(media, row, col, masks)
    masks = xp.asarray(masks)
    if masks.ndim == 2:
        if grid_w is None:
            side = math.isqrt(masks.shape[1])
            if side * side != masks.shape[1]:
                raise ValueError("flat masks of a non-square grid need grid_w")
            grid_w = side
        masks = masks.reshape(masks.shape[0], -1, grid_w)
    media, row, col = xp.asarray(media), xp.asarray(row), xp.asarray(col)
    m = xp.clip(media, 0, masks.shape[0] - 1)
    r = xp.clip(row, 0, masks.shape[1] - 1)
    c = xp.clip(col, 0, masks.shape[2] - 1)
    visual = (media >= 0) & (row >= 0) & (col >= 0)
    return visual & (masks[m, r, c] <= 0)


def suppress_padding(scores, pad_mask, fill: float = 0.0):
    """Padding suppression: scores (..., T), pad_mask broadcastable to scores, 1/True = valid.

    Returns scores where valid, `fill` on padding. fill=0.0 is the release's `scores * mask` (attention
    scores are >= 0, so zeroed padding ranks last); use fill=-inf for scores that can be negative.
    """
    xp = _xp(scores, pad_mask)
    scores = xp.asarray(scores)
    valid = xp.asarray(pad_mask) > 0
    return xp.where(valid, scores, xp.asarray(fill, dtype=scores.dtype))


# ----------------------------------------------------------------------------------------------------------
# Trends
# ----------------------------------------------------------------------------------------------------------

FAMILIES = ("exponential", "polynomial", "table")


@dataclasses.dataclass(frozen=True)
class Trend:
    """A mean-score-vs-position curve T(x), static and hashable (usable as a jit static argument).

    family "exponential": params (a, b, c), T(x) = a*exp(b*x) + c.
    family "polynomial":  params (c0, c1, ..., cd), T(x) = sum_k c_k x^k.
    family "table":       params (v0, ..., v_{n-1}) = T at x = 0..n-1, linear in between, clamped outside.
    x_scale: T is evaluated at x * x_scale (`stretch` maps a trend fitted on n tokens onto m tokens).
    span: the positions 0..span-1 the trend was fitted over (None: unknown). Beyond them T is CLAMPED: held at
    T(span-1) (the last fitted value; a fitted cubic or exponential is never extrapolated), so the release's
    576-position LLaVA trends can never grow or bend past 575 on a longer span (Qwen images, a video run);
    `Trend.fit` sets it to the largest fitted position + 1, `release_trend` to 576.
    Positions x are raster indices within a visual span (image, tile or video frame).
    """

    family: str
    params: tuple[float, ...]
    x_scale: float = 1.0
    span: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown trend family {self.family!r} (have {FAMILIES})")
        params = tuple(float(p) for p in np.asarray(self.params, dtype=np.float64).reshape(-1))
        if self.family == "exponential" and len(params) != 3:
            raise ValueError("exponential trend needs params (a, b, c)")
        if not params:
            raise ValueError("trend needs parameters")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "x_scale", float(self.x_scale))
        if self.span is not None:
            if int(self.span) < 1:
                raise ValueError(f"trend span={self.span!r} must be a positive token count")
            object.__setattr__(self, "span", int(self.span))

    # -- evaluation ---------------------------------------------------------------------------------------
    def __call__(self, positions):
        """T(x) for positions (...,) -> (...,) float (float64 on numpy input, default float on jax input)."""
        xp = _xp(positions)
        ft = _float(xp)
        x = xp.asarray(positions).astype(ft)
        if self.x_scale != 1.0:
            x = x * self.x_scale
        if self.span is not None:
            x = xp.minimum(x, float(self.span - 1))
        if self.family == "exponential":
            a, b, c = self.params
            return a * xp.exp(b * x) + c
        if self.family == "polynomial":
            out = xp.full_like(x, self.params[-1])
            for coef in self.params[-2::-1]:  # Horner
                out = out * x + coef
            return out
        values = xp.asarray(np.asarray(self.params), dtype=ft)
        return xp.interp(x, xp.arange(len(self.params), dtype=ft), values)

    def weights(self, positions):
        """w(x) = T(0)/T(x) (the release's weight vector for x = 0..575); T(x) is floored at 1e-6*T(0) so a
        badly fitted curve cannot flip the sign of a score."""
        xp = _xp(positions)
        t0 = float(self(np.zeros((), np.float64)))
        t = self(positions)
        return t0 / xp.maximum(t, 1e-6 * t0) if t0 > 0 else t0 / t

    def ratio(self, n: int) -> float:
        """T(n-1)/T(0): the trend's strength over an n-token span (release: 1.9x - 14.4x for n = 576)."""
        return float(self(np.float64(n - 1)) / self(np.float64(0.0)))

    def stretch(self, n_from: int, n_to: int) -> Trend:
        """The same curve over n_to tokens instead of n_from (relative position kept)."""
        scale = (n_from - 1) / max(n_to - 1, 1)
        return dataclasses.replace(self, x_scale=self.x_scale * scale)

    # -- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"family": self.family, "params": list(self.params)}
        if self.x_scale != 1.0:
            d["x_scale"] = self.x_scale
        if self.span is not None:
            d["span"] = self.span
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trend:
        return cls(d["family"], tuple(d["params"]), d.get("x_scale", 1.0), d.get("span"))

    # -- construction from the release's weight files ------------------------------------------------------
    @classmethod
    def from_weights(cls, path_or_array, tol: float = 1e-12) -> Trend:
        """Recover the exact trend behind a release weight vector w (w[i] = T(0)/T(i), float64).

        Tried in order, the first that reproduces every w[i] to `tol` wins:
          exponential  w = exp(-b i): b from the log-ratio (least squares of log w on i through 0);
          polynomial   1/w = 1 + c1 i + c2 i^2 + c3 i^3 (FastV), least squares in float64, degree 1..5;
          otherwise    a table of 1/w (always exact).
        """
        w = np.asarray(np.load(path_or_array) if isinstance(path_or_array, (str, Path)) else path_or_array)
        w = w.astype(np.float64).reshape(-1)
        if w.size < 2 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError("weight vector must be finite, positive, length >= 2")
        w = w / w[0]
        i = np.arange(w.size, dtype=np.float64)
        b = -float(np.dot(i, np.log(w)) / np.dot(i, i))
        cand = cls("exponential", (1.0, b, 0.0))
        if np.max(np.abs(cand.weights(i) - w)) <= tol:
            return cand
        u = i / i[-1]  # well-conditioned columns, converted back exactly below
        for degree in range(1, 6):
            basis = np.stack([u**k for k in range(1, degree + 1)], axis=1)
            coef, *_ = np.linalg.lstsq(basis, 1.0 / w - 1.0, rcond=None)
            params = (1.0,) + tuple(coef[k - 1] / i[-1] ** k for k in range(1, degree + 1))
            cand = cls("polynomial", params)
            if np.max(np.abs(cand.weights(i) - w)) <= tol:
                return cand
        return cls("table", tuple(1.0 / w))

    # -- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        positions,
        scores,
        family: str = "exponential",
        loss: str = "lsq",
        weight=None,
        degree: int = 3,
        offset: bool = True,
        max_steps: int = 500,
    ) -> Trend:
        """Fit T(x) to scores observed at positions (host side; optax L-BFGS in float64; deterministic).

        positions, scores, weight: broadcastable arrays (e.g. positions (N,), scores (S, N), weight (S, N));
        samples with weight 0, negative position (text) or non-finite score are ignored (pass the pad masks
        as `weight` to exclude padding). loss "lsq": squared error of T vs score; "log": squared error of
        log T vs log score (scores <= 0 ignored). Exponential: `offset` fits c (else c = 0); polynomial:
        `degree`; table: per-position weighted mean, gaps interpolated (no optimiser needed).
        """
        if family not in FAMILIES:
            raise ValueError(f"unknown trend family {family!r}")
        if loss not in ("lsq", "log"):
            raise ValueError(f"unknown loss {loss!r} (lsq | log)")
        x, y, wt = np.broadcast_arrays(
            np.asarray(positions, np.float64),
            np.asarray(scores, np.float64),
            np.asarray(1.0 if weight is None else weight, np.float64),
        )
        x, y, wt = x.reshape(-1), y.reshape(-1), wt.reshape(-1)
        ok = (wt > 0) & (x >= 0) & np.isfinite(y)
        if loss == "log":
            ok &= y > 0
        x, y, wt = x[ok], y[ok], wt[ok]
        if x.size == 0:
            raise ValueError("no samples left to fit (all masked)")
        # Aggregate per unique position: the weighted loss differs from the per-sample one by a constant.
        xu, inv = np.unique(x, return_inverse=True)
        wu = np.bincount(inv, weights=wt)
        target = np.log(y) if loss == "log" else y
        yu = np.bincount(inv, weights=wt * target) / wu
        span = int(np.floor(xu.max())) + 1
        if family == "table":
            return dataclasses.replace(cls._fit_table(xu, yu if loss == "lsq" else np.exp(yu)), span=span)
        xs = max(float(xu.max()), 1.0)
        fitted = _fit_optax(family, loss, xu / xs, yu, wu / wu.sum(), xs, degree, offset, max_steps)
        return dataclasses.replace(fitted, span=span)

    @classmethod
    def _fit_table(cls, xu, yu) -> Trend:
        n = int(np.floor(xu.max())) + 1
        grid = np.arange(n, dtype=np.float64)
        return cls("table", tuple(np.interp(grid, xu, yu)))


def _lbfgs(fun, theta0, max_steps):
    """Minimise fun from theta0 with optax L-BFGS (zoom line search) until |grad| <= 1e-13 or max_steps."""
    import optax

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        theta, state, _ = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(theta, updates), state, optax.tree.norm(grad)

    def cont(carry):
        _, state, gnorm = carry
        count = optax.tree.get(state, "count")
        return (count == 0) | ((count < max_steps) & (gnorm > 1e-13))

    theta, _, _ = jax.lax.while_loop(cont, step, (theta0, opt.init(theta0), jnp.asarray(jnp.inf, theta0.dtype)))
    return theta


def _exp_basis(beta, u, offset):
    cols = [jnp.exp(beta * u)] + ([jnp.ones_like(u)] if offset else [])
    return jnp.stack(cols, axis=1)


def _weighted_lstsq(basis, t, wu):
    """Weighted linear least squares through tiny (ridge-stabilised) normal equations."""
    a = basis.T @ (wu[:, None] * basis)
    rhs = basis.T @ (wu * t)
    return jnp.linalg.solve(a + 1e-14 * jnp.trace(a) * jnp.eye(a.shape[0], dtype=a.dtype), rhs)


def _safe_log(v):
    return jnp.log(jnp.maximum(v, 1e-30))


@functools.partial(jax.jit, static_argnames=("offset", "log", "max_steps"))
def _fit_exponential(u, tgt, wu, beta0, *, offset, log, max_steps):
    """(a, beta, c) of a*exp(beta*u) + c.

    lsq: variable projection - for a fixed rate the amplitude and offset solve a linear least-squares
    problem, so L-BFGS searches only the rate (no (a, c) valley).
    log: parameters (log a, beta, c) from the closed-form log-linear fit (exact optimum when c = 0, then
    L-BFGS has nothing left to do); with an offset L-BFGS refines all three.
    """
    if log:
        la, b0 = _weighted_lstsq(jnp.stack([jnp.ones_like(u), u], axis=1), tgt, wu)

        def log_loss(th):
            c = th[2] if offset else 0.0
            return jnp.sum(wu * (_safe_log(jnp.exp(th[0] + th[1] * u) + c) - tgt) ** 2)

        th = _lbfgs(log_loss, jnp.stack([la, b0, jnp.zeros((), u.dtype)]), max_steps)
        return jnp.stack([jnp.exp(th[0]), th[1], th[2] if offset else jnp.zeros((), u.dtype)])

    def vp_loss(beta_vec):
        basis = _exp_basis(beta_vec[0], u, offset)
        return jnp.sum(wu * (basis @ _weighted_lstsq(basis, tgt, wu) - tgt) ** 2)

    beta = _lbfgs(vp_loss, beta0[None], max_steps)[0]
    coef = _weighted_lstsq(_exp_basis(beta, u, offset), tgt, wu)
    return jnp.stack([coef[0], beta, coef[1] if offset else jnp.zeros((), u.dtype)])


@functools.partial(jax.jit, static_argnames=("degree", "log", "max_steps"))
def _fit_polynomial(u, tgt, wu, *, degree, log, max_steps):
    """Coefficients in u (lowest first): L-BFGS on the (convex) least squares from (1, 0, ...), then the log
    loss refined from there."""
    lin = jnp.exp(tgt) if log else tgt

    def poly(th):
        return jnp.polyval(th[::-1], u)

    theta = jnp.zeros(degree + 1, u.dtype).at[0].set(1.0)
    theta = _lbfgs(lambda th: jnp.sum(wu * (poly(th) - lin) ** 2), theta, max_steps)
    if log:
        theta = _lbfgs(lambda th: jnp.sum(wu * (_safe_log(poly(th)) - tgt) ** 2), theta, max_steps)
    return theta


def _fit_optax(family, loss, u, yu, wu, xs, degree, offset, max_steps) -> Trend:
    """Fit on positions u = x/xs in [0, 1] with targets normalised to mean 1, in float64, then map back."""
    log = loss == "log"
    mean = float(np.dot(wu, yu))
    scale = math.exp(mean) if log else (mean or 1.0)
    tgt = yu - mean if log else yu / scale
    with jax.enable_x64(True):
        u64, t64, w64 = (jnp.asarray(a, jnp.float64) for a in (u, tgt, wu))
        if family == "exponential":
            # start: slope of the weighted log-linear fit (exact when c = 0)
            ly = tgt if log else np.log(np.maximum(tgt, 1e-12))
            um = np.dot(wu, u)
            beta0 = np.dot(wu, (u - um) * (ly - np.dot(wu, ly))) / max(np.dot(wu, (u - um) ** 2), 1e-30)
            theta = _fit_exponential(u64, t64, w64, jnp.asarray(beta0, jnp.float64), offset=offset, log=log, max_steps=max_steps)
            a, beta, c = (float(v) for v in theta)
            return Trend("exponential", (a * scale, beta / xs, c * scale if offset else 0.0))
        theta = _fit_polynomial(u64, t64, w64, degree=degree, log=log, max_steps=max_steps)
        return Trend("polynomial", tuple(float(theta[k]) * scale / xs**k for k in range(degree + 1)))


@dataclasses.dataclass(frozen=True)
class Trend2D:
    """Separable 2-D trend over (row, col) within a patch grid: T(r, c) = row(r) * col(c)."""

    row: Trend
    col: Trend

    def __call__(self, rows, cols):
        return self.row(rows) * self.col(cols)

    def weights(self, rows, cols):
        return self.row.weights(rows) * self.col.weights(cols)

    @classmethod
    def fit(cls, rows, cols, scores, weight=None, iters: int = 3, **kwargs) -> Trend2D:
        """Alternating fits: the row trend on scores / col(c), then the col trend on scores / row(r)."""
        rows, cols, scores = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (rows, cols, scores)))
        col = Trend("polynomial", (1.0,))
        row = col
        for _ in range(iters):
            row = Trend.fit(rows, scores / col(np.maximum(cols, 0)), weight=weight, **kwargs)
            col = Trend.fit(cols, scores / row(np.maximum(rows, 0)), weight=weight, **kwargs)
        return cls(row, col)


@dataclasses.dataclass(frozen=True)
class SelfTrend:
    """Calibration-free trend: each row's own exponential T(x) = exp(a + b*x), estimated from the very scores
    being ranked (no calibration set; follows every image's span length, Qwen's dynamic resolution included).

    Per row (the last axis), over the tokens `weight` marks (valid, non-padding visual tokens with a position)
    whose score is > 0: least squares of log s on x, then `passes` trimming passes that drop the tokens whose
    residual exceeds `clip` robust standard deviations (1.4826 * median absolute deviation) and refit, so the
    few content-salient tokens a pruning method is meant to keep do not tilt the trend. Exactly invariant to
    the row's score scale (log(c*s) moves a only). It also removes any genuine correlation of content with
    position inside the image. Frozen and hashable (a static part of a schedule): `trend="self"` in
    `prune.debiased` and the presets, `--prune debiased_fastv:trend=self`. Pure and jittable (jax float32).
    """

    clip: float = 2.0
    passes: int = 2

    def __post_init__(self):
        if not float(self.clip) > 0 or int(self.passes) < 0:
            raise ValueError(f"SelfTrend(clip={self.clip!r}, passes={self.passes!r}): need clip > 0, passes >= 0")

    def slopes(self, scores, positions, weight) -> jax.Array:
        """(...,) robust slope b of log(scores) on positions per row; scores, positions, weight (..., T),
        weight {0,1} / bool (tokens outside it never enter the estimate). 0 for rows with < 2 tokens."""
        y = jnp.log(jnp.maximum(jnp.asarray(scores, jnp.float32), 1e-30))
        x = jnp.asarray(positions, jnp.float32)
        w = (jnp.asarray(weight) > 0) & (jnp.asarray(scores) > 0) & (x >= 0)
        w = w.astype(jnp.float32)

        def fit(keep):
            n = jnp.maximum(keep.sum(-1, keepdims=True), 1.0)
            xm, ym = (keep * x).sum(-1, keepdims=True) / n, (keep * y).sum(-1, keepdims=True) / n
            b = (keep * (x - xm) * (y - ym)).sum(-1) / jnp.maximum((keep * (x - xm) ** 2).sum(-1), 1e-12)
            return b, ym[..., 0] - b * xm[..., 0]

        keep = w
        for _ in range(int(self.passes)):
            b, a = fit(keep)
            r = jnp.abs(y - a[..., None] - b[..., None] * x)
            mad = jnp.nanmedian(jnp.where(keep > 0, r, jnp.nan), axis=-1, keepdims=True)
            keep = w * (r <= self.clip * 1.4826 * jnp.nan_to_num(mad, nan=jnp.inf))
        return fit(keep)[0]

    def weights(self, scores, positions, weight) -> jax.Array:
        """(..., T) float32 T(0)/T(x) = exp(-b*x) of each row's own trend (exponent clipped to +-60 so a steep
        trend over thousands of tokens stays finite), 1 where positions < 0."""
        b = self.slopes(scores, positions, weight)
        x = jnp.maximum(jnp.asarray(positions, jnp.float32), 0.0)
        return jnp.exp(jnp.clip(-b[..., None] * x, -60.0, 60.0))


def detrend(scores, positions, trend, weight=None):
    """Recency detrending: s'[i] = s[i] * T(0)/T(x_i) (METHOD.md technique 1).

    scores (..., T); positions (..., T) raster index within the visual span (per frame for video: the
    engine's `span_index`), negative for text tokens, which are returned untouched. For a `Trend2D` pass
    positions as a (rows, cols) tuple of (..., T) arrays (`TokenState.row`, `.col`). Scores keep their dtype.
    A `SelfTrend` is estimated per row over `weight` (..., T) (the tokens allowed into the estimate, e.g.
    valid non-padding visual tokens; default: every token with a position); it always returns jax arrays.
    """
    if isinstance(trend, SelfTrend):
        if isinstance(positions, tuple):
            raise TypeError("a SelfTrend needs 1-D positions (span_index), not (rows, cols)")
        scores, positions = jnp.asarray(scores), jnp.asarray(positions)
        weight = positions >= 0 if weight is None else weight
        w = trend.weights(scores, positions, weight)
        return jnp.where(positions >= 0, scores * w.astype(scores.dtype), scores)
    xp = _xp(scores, *(positions if isinstance(positions, tuple) else (positions,)))
    scores = xp.asarray(scores)
    if isinstance(positions, tuple):
        if not isinstance(trend, Trend2D):
            raise TypeError("(rows, cols) positions need a Trend2D")
        rows, cols = (xp.asarray(p) for p in positions)
        visual = (rows >= 0) & (cols >= 0)
        w = trend.weights(xp.maximum(rows, 0), xp.maximum(cols, 0))
    else:
        if isinstance(trend, Trend2D):
            raise TypeError("a Trend2D needs (rows, cols) positions")
        positions = xp.asarray(positions)
        visual = positions >= 0
        w = trend.weights(xp.maximum(positions, 0))
    return xp.where(visual, scores * w.astype(scores.dtype), scores)


# ----------------------------------------------------------------------------------------------------------
# The release's trends (jaxvlm/data: 41 weight files + the parameters recovered from them)
# ----------------------------------------------------------------------------------------------------------

RELEASE_SPAN = 576  # the release's trends are fitted over LLaVA-1.5's 24 x 24 raster (positions 0..575)
METHODS = {  # our names and the release's folder names -> release folder
    "fastv": "FastV",
    "himap": "HiMAP",
    "pdrop": "PyramidDrop",
    "pyramiddrop": "PyramidDrop",
    "sparsevlm": "SparseVLMs",
    "sparsevlms": "SparseVLMs",
    "tokencarve": "TokenCarve",
}


def _norm(name: str) -> str:
    """Benchmark-name key that merges the release's spellings (mmvet / mm-vet, MME / mme, mmbench_cn)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _method_folder(method: str) -> str:
    key = _norm(method)
    if key not in METHODS:
        raise ValueError(f"no release trend for method {method!r} (have {sorted(set(METHODS.values()))})")
    return METHODS[key]


@functools.lru_cache(maxsize=1)
def _trends_table() -> dict:
    return json.loads(TRENDS_JSON.read_text())


def release_benchmarks(method: str) -> tuple[str, ...]:
    """Benchmark keys (normalised) with a release trend for `method` ("*" for FastV's single file)."""
    return tuple(sorted(_trends_table()["trends"][_method_folder(method)]))


def release_weights_path(method: str, benchmark: str | None = None) -> Path:
    """Path of the release's .npy for (method, benchmark) inside the package (name mismatches resolved)."""
    folder = _method_folder(method)
    entry = _release_entry(folder, benchmark)
    return WEIGHTS_DIR / entry["file"]


def _release_entry(folder: str, benchmark: str | None) -> dict:
    table = _trends_table()["trends"][folder]
    if "*" in table:
        return table["*"]
    if benchmark is None:
        raise ValueError(f"{folder} has one trend per benchmark: pass benchmark= (have {sorted(table)})")
    key = _norm(benchmark)
    if key not in table:
        raise ValueError(f"no {folder} trend for benchmark {benchmark!r} (have {sorted(table)})")
    return table[key]


def release_trend(method: str, benchmark: str | None = None) -> Trend:
    """The trend the release ships for (method, benchmark), from jaxvlm/data/trends.json.

    method: fastv | himap | pdrop | sparsevlm | tokencarve (or the release's folder names); benchmark: gqa,
    mmbench, mmbench_cn, mme, mmvet/mm-vet, pope, scienceqa, textvqa, vizwiz, vqav2 (ignored for FastV,
    whose one cubic serves all). Note: the release's TokenCarve vqav2 file is a copy of its mmvet file.
    The trend's `span` is RELEASE_SPAN (576, LLaVA-1.5's 24x24 raster): beyond position 575 it is clamped.
    """
    return dataclasses.replace(Trend.from_dict(_release_entry(_method_folder(method), benchmark)), span=RELEASE_SPAN)


def load_trend(path_or_dict) -> Trend | Trend2D:
    """A trend from a JSON file or dict: `jaxvlm calibrate`'s output ({"trend": {...}}), a bare
    {"family", "params"} dict, or {"row": {...}, "col": {...}} for a Trend2D. A bad file raises UserError
    naming it."""
    from jaxvlm.errors import UserError

    where = os.fspath(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else "trend dict"
    try:
        if isinstance(path_or_dict, (str, os.PathLike)):
            d = json.loads(Path(path_or_dict).read_text())
        else:
            d = dict(path_or_dict)
        d = d.get("trend", d)
        if "row" in d and "col" in d:
            return Trend2D(Trend.from_dict(d["row"]), Trend.from_dict(d["col"]))
        return Trend.from_dict(d)
    except FileNotFoundError:
        raise UserError(f"trend file {where} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: not a trend (expected {{'family', 'params'}}, a calibrate output with "
                        f"'trend', or {{'row', 'col'}}): {e!r}") from None


def as_trend(trend) -> Trend | Trend2D | SelfTrend | None:
    """`trend` as a Trend / Trend2D / SelfTrend: passes those (and None) through, "self" is `SelfTrend()`, a
    JSON file path or a dict loads (`load_trend`)."""
    if trend is None or isinstance(trend, (Trend, Trend2D, SelfTrend)):
        return trend
    if isinstance(trend, str) and trend == "self":
        return SelfTrend()
    if isinstance(trend, (str, os.PathLike, dict)):
        return load_trend(trend)
    from jaxvlm.errors import UserError

    raise UserError(f"trend={trend!r}: expected a debias.Trend / Trend2D / SelfTrend, 'self', a trend JSON file "
                    "or a dict")


def build_trends_json(weights_dir: Path = WEIGHTS_DIR) -> dict:
    """Recover every release file's parameters (Trend.from_weights) into the trends.json table."""
    trends: dict[str, dict] = {}
    for path in sorted(Path(weights_dir).glob("*/*.npy")):
        folder = path.parent.name
        key = "*" if folder == "FastV" else _norm(path.stem)
        trend = Trend.from_weights(path)
        trends.setdefault(folder, {})[key] = {**trend.to_dict(), "file": f"{folder}/{path.name}"}
    return {
        "source": "github.com/intcomp/attention-bias (Apache-2.0), playground/data/weight; w[i] = T(0)/T(i)",
        "positions": "raster index 0..575 within LLaVA-1.5's 24x24 image span",
        "trends": trends,
    }
