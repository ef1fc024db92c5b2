"""Calibration-free debiasing (`debias.SelfTrend`, `trend="self"`) against calibrated trends on the same data.

    python -m experiments.self_trend smollm2 qwen2.5 [--keep 64] [--layer 2] [--out self_trend.json]

For each real LM inside its VLM shell (experiments.real_lm; the vision towers are RANDOM) on the photographs,
FastV's own score at layer K-1 (the stage prunes before layer K = --layer, 2 by default) is recorded through the engine
(experiments.stage_scores), and every trend is judged twice:
  flatness   rank correlation of position and the per-sample-normalised mean score after the trend is divided
             out (0: no position trend left; experiments.shell_bias.flatness);
  selection  FastV-K run through the engine with that trend: the share of the kept tokens in the first, middle
             and last third of each image's visual span, and the share on padding patches.
Trends: raw FastV (none), the preset's default (`debiased_fastv()`, per family: docs/METHOD.md), the release's
LLaVA-1.5 trend (`trend="release"`), the trend calibrated on the other half of the photos (`own`, odd / even)
and the row's own (`trend="self"`). The library function is the one measured: nothing is re-implemented here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxvlm import debias

QUESTION = "Describe the image in detail."


def thirds(positions: np.ndarray, n: int) -> list[float]:
    """Shares of `positions` (indices into a span of n visual tokens) in its first, middle and last third."""
    third = np.minimum((3 * np.asarray(positions)) // max(n, 1), 2)
    return [float(np.mean(third == k)) if len(third) else 0.0 for k in range(3)]


def own_trends(rec) -> tuple[np.ndarray, dict]:
    """(parity (S,), {parity: trend}): the trend calibrated on the samples of the other parity (odd / even),
    so that no sample is detrended with a fit that saw it."""
    from experiments.calibrate import calibrate

    half = np.arange(len(rec.scores)) % 2
    own = {h: calibrate(rec.scores[half != h], rec.valid[half != h], rec.positions[half != h], loss="log",
                        normalize=True, holdout=0.0)[0] for h in (0, 1)}
    return half, own


def schedules(half: np.ndarray, own: dict, layer: int = 2) -> dict:
    """Schedule builders (sample j, keep k) -> schedule, by trend name (`own_trends` gives half, own), FastV
    pruning before `layer` (its score: layer - 1)."""
    from jaxvlm.prune import debiased_fastv, fastv

    return {
        "raw": lambda j, k: fastv(layer=layer, keep=k),
        "default": lambda j, k: debiased_fastv(layer=layer, keep=k),
        "release": lambda j, k: debiased_fastv(layer=layer, keep=k, trend="release"),
        "own_other_half": lambda j, k: debiased_fastv(layer=layer, keep=k, trend=own[half[j]]),
        "self": lambda j, k: debiased_fastv(layer=layer, keep=k, trend="self"),
    }


def selection(params, inputs: list, rec, builders: dict, keep: int) -> dict:
    """Per trend name, per sample: kept count, shares per third of the span, padding share of the kept tokens.
    inputs: one-row model inputs per sample (the samples `rec` was recorded on)."""
    import jaxvlm

    out = {name: [] for name in builders}
    media = [params.config.image_token_id]
    for j, inp in enumerate(inputs):
        vis = np.flatnonzero(np.isin(inp["input_ids"][0], media))
        n = len(vis)
        valid = rec.valid[j, :n] > 0
        for name, build in builders.items():
            kept = np.asarray(jaxvlm.forward(params, prune=build(j, min(keep, n)), **inp).kept[0][0])
            pos = np.searchsorted(vis, kept[kept >= 0])
            out[name].append({"kept": int(len(pos)), "thirds": thirds(pos, n), "padding": float(np.mean(~valid[pos])),
                              "visual_tokens": n, "padding_share_of_image": float(np.mean(~valid))})
    return out


def compare(params, proc, photos, keep: int = 64, layer: int = 2) -> dict:
    """Flatness and selection of every trend on `photos` (experiments.assets names), FastV before `layer`."""
    from experiments.shell_bias import flatness, photos_inputs, self_trends
    from experiments.stage_scores import collect
    from jaxvlm.prune import debiased_fastv, fastv

    inputs = photos_inputs(proc, photos)
    rec = collect(params, inputs, fastv(layer=layer, keep=keep)[0], 0.5)
    half, own = own_trends(rec)
    release = debias.release_trend("fastv")
    default = debiased_fastv()[0].for_model(params.config.text).trend
    selfs = self_trends(rec)
    per_sample = {"raw": lambda j, n: debias.Trend("polynomial", (1.0,)),
                  "default": (lambda j, n: selfs[j]) if isinstance(default, debias.SelfTrend) else (lambda j, n: default),
                  "release": lambda j, n: release,
                  "own_other_half": lambda j, n: own[half[j]],
                  "self": lambda j, n: selfs[j]}
    return {"family": params.config.family, "photos": list(photos), "keep": keep, "layer": layer,
            "default_trend": type(default).__name__,
            "rank_corr_after": {name: flatness(rec, fn) for name, fn in per_sample.items()},
            "selection": selection(params, inputs, rec, schedules(half, own, layer), keep)}


def table(reports: list[dict]) -> str:
    lines = [f"{'model':<9} {'trend':<15} {'rank corr':>9} {'kept 1st/2nd/3rd third':>23} {'padding':>7}"]
    for r in reports:
        for name, rows in r["selection"].items():
            t = np.mean([x["thirds"] for x in rows], axis=0)
            pad = np.mean([x["padding"] for x in rows])
            lines.append(f"{r['name']:<9} {name:<15} {r['rank_corr_after'][name]:9.2f} "
                         f"{t[0]:9.2f} {t[1]:6.2f} {t[2]:6.2f} {pad:7.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from experiments import assets, real_lm
    from experiments.shell_bias import report_shells

    ap = argparse.ArgumentParser(prog="python -m experiments.self_trend", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", choices=real_lm.NAMES)
    ap.add_argument("--keep", type=int, default=64)
    ap.add_argument("--layer", type=int, default=2, help="FastV prunes before this layer (score: layer - 1)")
    ap.add_argument("--out", default="self_trend.json")
    args = ap.parse_args(argv)
    return report_shells(args.names, lambda name, params, proc: compare(params, proc, assets.PHOTOS, args.keep,
                                                                        args.layer), args.out, table)


if __name__ == "__main__":
    sys.exit(main())
