"""Bias of a real LM inside a VLM shell (experiments.real_lm; RANDOM vision tower), measured with the
engine's own FastV score, and what each trend does to FastV's selection.

For every measured layer l the probe (experiments.stage_scores) records FastV's score at layer l (a FastV
stage at layer l+1) on real photographs: per-layer rank correlation of position and mean score, the fitted
exponential's ratio over the span, held-out R^2. Then FastV-K is run (experiments.self_trend.selection) raw, with the
preset's per-family default, the release's trend, the trend calibrated here on the other half of the photos
(odd / even) and the row's own trend (`trend="self"`), counting where the kept tokens lie (thirds of the
visual span) and how many are padding patches.

    python -m experiments.shell_bias smollm2 qwen2.5 [--layers 1,2,8] [--keep 64] [--out shell_bias.json]

What a preset's trend means on other token counts (measured here, 6 photos, Dec 2026): the release's trends
are functions of the raster index over LLaVA-1.5's 576 tokens. On the Qwen2-VL shell (Qwen2.5-0.5B, 176-384
visual tokens per photo) FastV's score FALLS with position (rank correlation -0.37 / -0.66 / -0.57 at layers
1 / 2 / 8), so the release's rising LLaVA trend deepens the bias (-0.30 / -0.58 / -0.52 after it as shipped)
and stretching it to each image's span deepens it further (-0.74 / -0.91 / -0.69); a trend calibrated on
the family's own scores leaves 0.02 / 0.12 / 0.04 in token units and 0.06 / 0.19 / -0.01 fitted on relative
position (span stretched to 576). Hence: a trend is a function of the token index within its span, applied
unstretched; a LLaVA trend is not a Qwen trend - the presets use the calibration-free row trend
(`debias.SelfTrend`, 0.10 here) on Qwen models unless given one (`jaxvlm calibrate --model`).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments import assets, real_lm
from experiments.calibrate import calibrate, mean_profile, rank_correlation
from experiments.stage_scores import collect
from jaxvlm import debias

QUESTION = "Describe the image in detail."


def photos_inputs(proc, names=assets.PHOTOS):
    return [proc(text=[real_lm.visual_prompt(proc, QUESTION)], images=[assets.photo(n)]) for n in names]


def self_trends(rec) -> list:
    """Each sample's own robust exponential (`debias.SelfTrend`, the library's calibration-free trend) as a Trend."""
    b = np.asarray(debias.SelfTrend().slopes(rec.scores, rec.positions, rec.valid > 0))
    return [debias.Trend("exponential", (1.0, float(v), 0.0)) for v in b]


def flatness(rec, trend_for) -> float:
    """Rank correlation of position and the per-sample-normalised mean score after dividing out
    trend_for(sample, n_tokens) (0 = no position trend left)."""
    s = rec.scores.copy()
    for j in range(len(s)):
        n = int((rec.positions[j] >= 0).sum())
        ok = rec.positions[j] >= 0
        s[j, ok] = debias.detrend(s[j, ok], rec.positions[j, ok], trend_for(j, n))
        s[j] /= max(s[j, ok & (rec.valid[j] > 0)].mean(), 1e-30)
    x, m, _ = mean_profile(s, rec.valid, rec.positions)
    return rank_correlation(x, m)


def measure(params, proc, label: str, layers=(1, 2), keep: int = 64, photos=assets.PHOTOS) -> tuple[dict, dict]:
    """(report, profiles {layer: (positions, normalised mean score, own trend)}) of `params` on `photos`
    (names of experiments.assets photographs, at least 3: one third is held out of each fit)."""
    from jaxvlm.prune import fastv

    inputs = photos_inputs(proc, photos)
    pad_t = 0.5
    out = {"model": label, "family": params.config.family, "photos": list(photos), "layers": {}}
    profiles = {}
    release = debias.release_trend("fastv")
    for layer in layers:
        stage = fastv(layer=layer + 1, keep=keep)[0]
        rec = collect(params, inputs, stage, pad_t)
        n_vis = [int((p >= 0).sum()) for p in rec.positions]
        trend, rep = calibrate(rec.scores, rec.valid, rec.positions, loss="log", normalize=True, holdout=0.34)
        x, m, _ = mean_profile(rec.scores / np.maximum((rec.scores * rec.valid).sum(1, keepdims=True), 1e-30),
                               rec.valid, rec.positions)
        span = max(n_vis)
        profiles[layer] = (x, m, trend)
        selfs = self_trends(rec)
        rel = np.where(rec.positions >= 0, rec.positions * (575.0 / np.maximum(np.array(n_vis)[:, None] - 1, 1)), -1)
        trend_rel, rep_rel = calibrate(rec.scores, rec.valid, rel, loss="log", normalize=True, holdout=0.34)
        out["layers"][str(layer)] = {
            "visual_tokens": n_vis, "rank_corr_position_score": rank_correlation(x, m),
            "first_token_share": float(rec.first_share.mean()), "span_share": float(rec.span_share.mean()),
            "own_trend": trend.to_dict(), "own_trend_ratio_over_span": trend.ratio(span),
            "holdout_r2": rep.get("holdout", {}).get("r2"),
            "own_trend_relative": trend_rel.to_dict(), "holdout_r2_relative": rep_rel.get("holdout", {}).get("r2"),
            "rank_corr_after": {
                "release_as_shipped": flatness(rec, lambda j, n: release),
                "release_stretched_to_span": flatness(rec, lambda j, n: release.stretch(576, n)),
                "own_calibrated": flatness(rec, lambda j, n: trend),
                "own_calibrated_relative": flatness(rec, lambda j, n: trend_rel.stretch(576, n)),
                "self_trend": flatness(rec, lambda j, n: selfs[j])},
            "release_ratio_used": {"as_shipped": float(release(span - 1) / release(0)),
                                   "stretched": float(release(575) / release(0))},
        }
    # selection at FastV's own layer (score layer 1): raw / default / release / own (other half) / self
    from experiments import self_trend

    rec = collect(params, inputs, fastv(layer=2, keep=keep)[0], pad_t)
    sel = self_trend.selection(params, inputs, rec, self_trend.schedules(*self_trend.own_trends(rec)), keep)
    out["selection_keep"] = keep
    out["selection"] = sel
    return out, profiles


def shell_label(name: str) -> str:
    return f"{name} ({real_lm.load_lm(name).arch} GGUF, dequantised) in a {real_lm.shell_hf_config(name)['model_type']} shell; {real_lm.RANDOM_VISION}"


def table(reports: list[dict]) -> str:
    lines = [f"{'model':<9} {'layer':>5} {'N':>9} {'rank corr':>9} {'own ratio':>9} {'R2':>5} "
             f"{'after: release':>14} {'stretched':>9} {'own':>6} {'own rel':>7} {'self':>5} {'1st tok':>7} {'span':>5}"]
    for r in reports:
        for layer, v in r["layers"].items():
            a = v["rank_corr_after"]
            n = v["visual_tokens"]
            lines.append(f"{r['name']:<9} {layer:>5} {min(n):>4}-{max(n):<4} {v['rank_corr_position_score']:9.2f} "
                         f"{v['own_trend_ratio_over_span']:9.1f} {v['holdout_r2'] or float('nan'):5.2f} "
                         f"{a['release_as_shipped']:14.2f} {a['release_stretched_to_span']:9.2f} {a['own_calibrated']:6.2f} "
                         f"{a['own_calibrated_relative']:7.2f} {a['self_trend']:5.2f} {v['first_token_share']:7.2f} {v['span_share']:5.2f}")
    lines += ["", "FastV selection (layer 2): share of kept tokens in the last third of the image / padding share of kept"]
    for r in reports:
        for key, rows in r["selection"].items():
            lt = np.mean([x["thirds"][2] for x in rows])
            pad = np.mean([x["padding"] for x in rows])
            lines.append(f"{r['name']:<9} keep {r['selection_keep']:<4} {key:<18} last third {lt:5.2f}  padding {pad:5.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.shell_bias", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", choices=real_lm.NAMES)
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--keep", type=int, default=64)
    ap.add_argument("--out", default="shell_bias.json")
    args = ap.parse_args(argv)
    layers = tuple(int(v) for v in args.layers.split(","))
    return report_shells(args.names, lambda name, params, proc: measure(params, proc, shell_label(name), layers,
                                                                        args.keep)[0], args.out, table)


def report_shells(names, measure_one, out: str, table_of) -> int:
    """Measure every real-LM shell in `names` (`measure_one(name, params, proc)` -> report dict), write the
    reports (each with its "name") as JSON to `out` and print `table_of(reports)`."""
    reports = []
    for name in names:
        params, proc = real_lm.shell(name)
        reports.append({**measure_one(name, params, proc), "name": name})
        print(f"{name} done", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(reports, f, indent=1)
    print(table_of(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
