"""Synthetic bias benchmark: can debiasing recover the tokens that matter when attention is biased?

Scenes are LLaVA-1.5-style 24x24 patch grids of pad-to-square images of several aspect ratios. Each scene
plants a few rectangular "objects" (the relevant tokens) inside the image content. A scorer turns a scene
into pruning scores; the default one imitates biased attention (METHOD.md section 1):

    score[i] = relevance[i] * content_noise[i] * T(i)      on image patches
    score[i] = sink * content_noise[i] * T(i)              on padding patches (attention sink)

with T a release-like position trend (exponential with T(575)/T(0) = 2x .. 14x, or FastV's cubic).
Each scorer's scores are ranked raw, detrended only, padding-suppressed only, and both, and we report
recall@K of the relevant tokens, |top-K & relevant| / min(K, |relevant|), for K = 64, 128, 192.
"detrend" divides out the true trend; "both+fit" uses a trend fitted (jaxvlm.debias.Trend.fit, exponential, log loss,
padding excluded) on held-out calibration scenes, i.e. what `jaxvlm calibrate` would produce.

Plug a method in: `run(..., scorers={"mine": fn})` with `fn(scenes, trend, rng) -> (S, N) scores`, and
optionally `selectors={"mine": sel}` with `sel(scores (S, N), k) -> (S, k) int indices` (default top-k).

    python -m experiments.bias_benchmark [--scenes 256] [--out bias_benchmark.png] [--json results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Callable

import numpy as np

from jaxvlm import debias

GRID = 24
N = GRID * GRID
KS = (64, 128, 192)
SIZES = ((640, 480), (640, 427), (1920, 1080), (500, 500), (480, 640), (300, 1000))  # (width, height)
VARIANTS = ("raw", "detrend", "padding", "both", "both+fit")


def release_like_trends() -> dict[str, debias.Trend]:
    """Exponential trends spanning the release's strengths (ratio over 576 tokens) and FastV's cubic."""
    trends = {f"exp {r:g}x": debias.Trend("exponential", (1.0, float(np.log(r)) / (N - 1), 0.0)) for r in (2, 4, 8, 14)}
    trends["fastv cubic"] = debias.release_trend("fastv")
    return trends


@dataclasses.dataclass
class Scenes:
    """S synthetic images (numpy). Arrays (S, N) over raster-ordered patches unless noted."""

    sizes: np.ndarray  # (S, 2) original (width, height)
    valid: np.ndarray  # float {0,1}: the release's pad mask at threshold 0.5 (what padding suppression uses)
    content: np.ndarray  # bool: patch fully inside the image (pad mask at threshold 0)
    relevant: np.ndarray  # bool: planted object patches (subset of content)
    relevance: np.ndarray  # float: 1 background, `gain` on objects

    @property
    def positions(self) -> np.ndarray:
        return np.broadcast_to(np.arange(N), self.valid.shape)


def make_scenes(n: int, rng: np.random.Generator, sizes=SIZES, gain: float = 4.0, threshold: float = 0.5) -> Scenes:
    """n scenes cycling through `sizes`; 1-3 rectangular objects of 3-8 patches a side in the content area.
    `threshold`: the pad-mask threshold padding suppression uses (release: 0.5; PyramidDrop 0.01)."""
    sz = np.asarray([sizes[i % len(sizes)] for i in range(n)])
    valid = debias.pad_mask(sz, grid=GRID, threshold=threshold)
    content = debias.pad_mask(sz, grid=GRID, threshold=0.0) > 0
    relevant = np.zeros((n, GRID, GRID), bool)
    for s in range(n):
        rows = np.flatnonzero(content[s].reshape(GRID, GRID).any(1))
        cols = np.flatnonzero(content[s].reshape(GRID, GRID).any(0))
        for _ in range(rng.integers(1, 4)):
            h = min(int(rng.integers(3, 9)), len(rows))
            w = min(int(rng.integers(3, 9)), len(cols))
            r0 = rows[0] + rng.integers(0, len(rows) - h + 1)
            c0 = cols[0] + rng.integers(0, len(cols) - w + 1)
            relevant[s, r0 : r0 + h, c0 : c0 + w] = True
    relevant = relevant.reshape(n, N) & content
    relevance = np.where(relevant, gain, 1.0)
    return Scenes(sz, valid, content, relevant, relevance)


def biased_attention(scenes: Scenes, trend: debias.Trend, rng: np.random.Generator, sink: float = 3.0, noise: float = 0.5):
    """The default scorer: relevance x lognormal content noise x trend, with an attention sink on padding."""
    base = np.where(scenes.content | (scenes.valid > 0), scenes.relevance, sink)
    jitter = np.exp(rng.normal(0.0, noise, base.shape))
    return base * jitter * trend(np.arange(N, dtype=np.float64))[None]


Scorer = Callable[[Scenes, debias.Trend, np.random.Generator], np.ndarray]
Selector = Callable[[np.ndarray, int], np.ndarray]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(S, N) -> (S, k) indices of the k largest scores (stable: ties keep the lower index)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int, select: Selector = top_k) -> float:
    """Mean over scenes of |selected & relevant| / min(k, |relevant|)."""
    idx = select(scores, k)
    hit = np.take_along_axis(relevant, idx, axis=1).sum(1)
    return float(np.mean(hit / np.maximum(np.minimum(k, relevant.sum(1)), 1)))


def debiased(scores: np.ndarray, scenes: Scenes, trend: debias.Trend | None, padding: bool) -> np.ndarray:
    out = scores
    if trend is not None:
        out = debias.detrend(out, scenes.positions, trend)
    if padding:
        out = debias.suppress_padding(out, scenes.valid)
    return out


def fit_trend(scorer: Scorer, trend: debias.Trend, n: int, rng: np.random.Generator,
              threshold: float = 0.5) -> tuple[debias.Trend, int]:
    """Calibrate on held-out scenes: exponential fit of the scores, padding patches excluded."""
    cal = make_scenes(n, rng, threshold=threshold)
    scores = scorer(cal, trend, rng)
    return debias.Trend.fit(cal.positions, scores, weight=cal.valid, family="exponential", loss="log", offset=False), n


def run(
    trends: dict[str, debias.Trend] | None = None,
    scorers: dict[str, Scorer] | None = None,
    selectors: dict[str, Selector] | None = None,
    n_scenes: int = 256,
    n_calib: int = 128,
    ks=KS,
    seed: int = 0,
    threshold: float = 0.5,
) -> list[dict]:
    """One row per (scorer, trend): recall@K for every variant in VARIANTS, plus the fitted trend's ratio."""
    trends = release_like_trends() if trends is None else trends
    scorers = {"attention": biased_attention} if scorers is None else scorers
    selectors = selectors or {}
    rows = []
    for s_i, (sname, scorer) in enumerate(scorers.items()):
        select = selectors.get(sname, top_k)
        for t_i, (tname, trend) in enumerate(trends.items()):
            rng = np.random.default_rng([seed, s_i, t_i])
            scenes = make_scenes(n_scenes, rng, threshold=threshold)
            raw = scorer(scenes, trend, rng)
            fitted, n_fit = fit_trend(scorer, trend, n_calib, np.random.default_rng([seed, s_i, t_i, 1]), threshold)
            variants = {
                "raw": raw,
                "detrend": debiased(raw, scenes, trend, False),
                "padding": debiased(raw, scenes, None, True),
                "both": debiased(raw, scenes, trend, True),
                "both+fit": debiased(raw, scenes, fitted, True),
            }
            row = {"scorer": sname, "trend": tname, "ratio": trend.ratio(N), "fit_ratio": fitted.ratio(N), "calib_scenes": n_fit}
            for vname, sc in variants.items():
                for k in ks:
                    row[f"{vname}@{k}"] = recall_at_k(sc, scenes.relevant, k, select)
                row[f"{vname}@pad_kept{ks[0]}"] = float(np.mean(1 - np.take_along_axis(scenes.valid, select(sc, ks[0]), 1)))
            rows.append(row)
    return rows


def mean_row(rows: list[dict], label: str) -> dict:
    keys = [k for k in rows[0] if "@" in k or k in ("ratio", "fit_ratio")]
    return {"scorer": rows[0]["scorer"], "trend": label, **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def format_table(rows: list[dict], ks=KS) -> str:
    head = f"{'scorer':<10} {'trend':<12} {'ratio':>5} {'fit':>5} | " + " | ".join(
        f"{'R@' + str(k):^34}" for k in ks
    )
    sub = f"{'':<10} {'':<12} {'':>5} {'':>5} | " + " | ".join(" ".join(f"{v:>6}" for v in ("raw", "detr", "pad", "both", "b+fit")) for _ in ks)
    lines = [head, sub, "-" * len(sub)]
    for r in rows:
        cells = " | ".join(" ".join(f"{r[f'{v}@{k}']:6.3f}" for v in VARIANTS) for k in ks)
        lines.append(f"{r['scorer']:<10} {r['trend']:<12} {r['ratio']:5.1f} {r['fit_ratio']:5.1f} | {cells}")
    k0 = ks[0]
    lines.append("")
    lines.append(f"share of the top-{k0} that is padding (raw / detrend / padding / both / both+fit):")
    for r in rows:
        lines.append(f"  {r['scorer']:<10} {r['trend']:<12} " + " ".join(f"{r[f'{v}@pad_kept{k0}']:6.3f}" for v in VARIANTS))
    return "\n".join(lines)


def plot(rows: list[dict], path: str, ks=KS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = sorted({r["scorer"] for r in rows}, key=[r["scorer"] for r in rows].index)
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        per = [r for r in rows if r["trend"] != "mean"]
        labels = [f"{r['trend']}" + (f"\n{r['scorer']}" if len(scorers) > 1 else "") for r in per]
        x = np.arange(len(per))
        width = 0.8 / len(VARIANTS)
        for j, v in enumerate(VARIANTS):
            ax.bar(x + (j - (len(VARIANTS) - 1) / 2) * width, [r[f"{v}@{k}"] for r in per], width, label=v)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_title(f"recall@{k} of planted relevant tokens")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("recall")
    axes[0][0].legend(fontsize=7, loc="upper center", ncol=len(VARIANTS), frameon=False)
    fig.suptitle("Synthetic bias benchmark: relevance x position trend + padding sink (24x24, pad-to-square)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.bias_benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=256, help="evaluation scenes per trend")
    ap.add_argument("--calib", type=int, default=128, help="held-out calibration scenes per trend (both+fit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5, help="pad-mask threshold for padding suppression")
    ap.add_argument("--out", default="bias_benchmark.png", help="PNG plot path")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(n_scenes=args.scenes, n_calib=args.calib, seed=args.seed, threshold=args.threshold)
    by_scorer: dict[str, list[dict]] = {}
    for r in rows:
        by_scorer.setdefault(r["scorer"], []).append(r)
    rows += [mean_row(rs, "mean") for rs in by_scorer.values()]
    print(f"{args.scenes} scenes per trend, pad threshold {args.threshold:g}, sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}; "
          f"both+fit: exponential trend fitted on {args.calib} held-out scenes, padding excluded\n")
    print(format_table(rows))
    plot(rows, args.out)
    print(f"\nplot: {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"rows: {args.json}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
