"""`jaxvlm calibrate`: fit a position trend (recency bias) from a method's own score vectors.

METHOD.md section 2: average the pruning method's score per position over calibration samples and fit a
trend T(x); the debiased score is s * T(0)/T(x). Here the padding positions are excluded from the fit
(they carry the attention sink, technique 2), a random split of the samples is held out and the fit is
judged on it, and the number of samples used is reported.

Input: an .npz with
    scores     (S, N) float   one score vector per sample (same layer / query aggregation the method ranks with)
    pad_mask   (S, N) {0,1}   optional, 1 = valid image patch (e.g. jaxvlm.debias.pad_mask(image_sizes)); or `valid`
    positions  (N,) or (S, N) optional raster index within the visual span (default 0..N-1; < 0 ignored)
Output: a JSON (the trend under "trend", loadable with jaxvlm.debias.load_trend) and a PNG (mean score vs
position with the fitted curve; held-out scores before/after detrending).

    jaxvlm calibrate scores.npz --out trend.json --plot trend.png [--family exponential] [--loss log]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jaxvlm import debias
from jaxvlm.errors import UserError


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation (average ranks for ties)."""

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / den) if den > 0 else 0.0


def mean_profile(scores: np.ndarray, weight: np.ndarray, positions: np.ndarray):
    """Weighted mean score per position: (unique positions, means, sample counts)."""
    x, s, w = (a.reshape(-1) for a in np.broadcast_arrays(positions, scores, weight))
    keep = (w > 0) & (x >= 0) & np.isfinite(s)
    xu, inv = np.unique(x[keep], return_inverse=True)
    wsum = np.bincount(inv, weights=w[keep])
    means = np.bincount(inv, weights=(w * s)[keep]) / wsum
    counts = np.bincount(inv)
    return xu, means, counts


def calibrate(
    scores,
    pad_mask=None,
    positions=None,
    family: str = "exponential",
    loss: str = "log",
    degree: int = 3,
    offset: bool = False,
    holdout: float = 0.25,
    normalize: bool = False,
    seed: int = 0,
) -> tuple[debias.Trend, dict]:
    """Fit a trend on a random (1 - holdout) share of the samples, padding excluded; judge it on the rest.

    scores (S, N); pad_mask (S, N) 1 = valid (None: all valid); positions (N,) or (S, N) (None: 0..N-1).
    loss "log" (default) fits the geometric mean profile: attention scores vary multiplicatively (per-sample
    scale, content), where least squares is dominated by the largest samples (measured on synthetic
    lognormal data: rate within 0.5% with "log", 3% with "lsq", and a flatter held-out profile).
    normalize: divide each sample by its mean valid score first (removes per-sample scale; the release
    averages raw scores, so off by default). Returns (trend, report).
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (samples, N), got {scores.shape}")
    s_count, n = scores.shape
    valid = np.ones_like(scores) if pad_mask is None else np.broadcast_to(np.asarray(pad_mask, np.float64), scores.shape)
    pos = np.arange(n, dtype=np.float64) if positions is None else np.asarray(positions, np.float64)
    pos = np.broadcast_to(pos, scores.shape)
    if normalize:
        m = (scores * valid).sum(1, keepdims=True) / np.maximum(valid.sum(1, keepdims=True), 1)
        scores = scores / np.where(m > 0, m, 1.0)
    perm = np.random.default_rng(seed).permutation(s_count)
    n_hold = int(round(holdout * s_count)) if s_count > 1 else 0
    n_hold = min(n_hold, s_count - 1)
    hold, fit_idx = perm[:n_hold], perm[n_hold:]
    trend = debias.Trend.fit(pos[fit_idx], scores[fit_idx], family=family, loss=loss, weight=valid[fit_idx],
                             degree=degree, offset=offset)
    span = float(pos[valid > 0].max()) + 1 if (valid > 0).any() else float(n)
    report = {
        "trend": trend.to_dict(),
        "family": family,
        "loss": loss,
        "samples": int(s_count),
        "samples_fit": int(len(fit_idx)),
        "samples_holdout": int(n_hold),
        "positions": int(n),
        "padding_excluded": int((valid[fit_idx] <= 0).sum()),
        "normalized": bool(normalize),
        "ratio": trend.ratio(int(span)),
    }
    xf, mf, _ = mean_profile(scores[fit_idx], valid[fit_idx], pos[fit_idx])
    report["fit_rank_corr_position_score"] = rank_correlation(xf, mf)
    if n_hold:
        xh, mh, _ = mean_profile(scores[hold], valid[hold], pos[hold])
        if loss == "log":  # judge in the space the fit minimised: log of the geometric-mean profile
            ok = (valid[hold] > 0) & (scores[hold] > 0)
            xg, lg, _ = mean_profile(np.log(np.where(ok, scores[hold], 1.0)), ok.astype(float), pos[hold])
            obs, pred = lg, np.log(np.maximum(trend(xg), 1e-300))
        else:
            obs, pred = mh, trend(xh)
        ss_res = float(((obs - pred) ** 2).sum())
        ss_tot = float(((obs - obs.mean()) ** 2).sum())
        detr = debias.detrend(scores[hold], pos[hold].astype(np.int64), trend)
        xd, md, _ = mean_profile(detr, valid[hold], pos[hold])
        report["holdout"] = {
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),  # log space for loss="log"
            "rank_corr_position_score": rank_correlation(xh, mh),
            "rank_corr_after_detrend": rank_correlation(xd, md),
            "tail_head_ratio": _tail_head(xh, mh),
            "tail_head_ratio_after_detrend": _tail_head(xd, md),
        }
    return trend, report


def _tail_head(x: np.ndarray, m: np.ndarray, frac: float = 0.1) -> float:
    """Mean score of the last 10% of positions over the first 10%: a model-free bias strength."""
    k = max(1, int(len(x) * frac))
    order = np.argsort(x)
    head, tail = m[order[:k]].mean(), m[order[-k:]].mean()
    return float(tail / head) if head != 0 else float("nan")


def plot_calibration(path, scores, pad_mask, positions, trend: debias.Trend, report: dict, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, np.float64)
    valid = np.ones_like(scores) if pad_mask is None else np.broadcast_to(np.asarray(pad_mask, np.float64), scores.shape)
    pos = np.broadcast_to(np.arange(scores.shape[1]) if positions is None else np.asarray(positions), scores.shape)
    x, m, _ = mean_profile(scores, valid, pos)
    xa, ma, _ = mean_profile(scores, np.ones_like(scores), pos)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    if pad_mask is not None:
        ax.plot(xa, ma, color="0.75", lw=0.8, label="mean score, padding included")
    ax.plot(x, m, lw=0.9, label="mean score (padding excluded)")
    xs = np.linspace(0, x.max(), 400)
    ax.plot(xs, trend(xs), "r-", lw=2, label=f"fitted {trend.family} (T(end)/T(0) = {report['ratio']:.2f})")
    ax.set_xlabel("position in the visual span")
    ax.set_ylabel("score")
    ax.set_title(f"{report['samples_fit']} fit samples, {report['samples_holdout']} held out")
    ax.legend(fontsize=8)
    ax = axes[1]
    detr = debias.detrend(scores, pos.astype(np.int64), trend)
    xd, md, _ = mean_profile(detr, valid, pos)
    ax.plot(x, m / m.mean(), lw=0.9, label="raw (normalised)")
    ax.plot(xd, md / md.mean(), lw=0.9, label="detrended (normalised)")
    ho = report.get("holdout", {})
    if ho:
        ax.set_title(f"held out: rank corr {ho['rank_corr_position_score']:.2f} -> {ho['rank_corr_after_detrend']:.2f}")
    ax.set_xlabel("position in the visual span")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_npz(path: str):
    """(scores (S, N), pad mask (S, N) or None, positions or None) from a calibration .npz; UserError naming
    the file and array when something is missing, misshaped or not finite."""
    try:
        data = np.load(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from None
    if not hasattr(data, "files") or "scores" not in data.files:
        raise UserError(f"{path} has no 'scores' array (has {sorted(getattr(data, 'files', []))})")
    scores = np.asarray(data["scores"], dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2:
        raise UserError(f"{path}: 'scores' must be (samples >= 2, positions), got shape {scores.shape}")
    mask = data["pad_mask"] if "pad_mask" in data.files else (data["valid"] if "valid" in data.files else None)
    if mask is not None and mask.shape != scores.shape:
        raise UserError(f"{path}: pad mask shape {mask.shape} != scores shape {scores.shape}")
    valid = np.ones_like(scores, bool) if mask is None else np.asarray(mask) > 0
    bad = ~np.isfinite(scores) & valid
    if bad.any():
        s, n = np.argwhere(bad)[0]
        raise UserError(f"{path}: scores[{s}, {n}] = {scores[s, n]} is not finite ({int(bad.sum())} such entries)")
    positions = data["positions"] if "positions" in data.files else None
    return scores, mask, positions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jaxvlm calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("npz", help="file with scores (S, N) [+ pad_mask/valid (S, N), positions]")
    ap.add_argument("--family", default="exponential", choices=debias.FAMILIES)
    ap.add_argument("--loss", default="log", choices=("lsq", "log"),
                    help="log (default): fit log T to log scores, right for multiplicative noise and per-sample "
                         "scale; lsq: squared error of the scores")
    ap.add_argument("--degree", type=int, default=3, help="polynomial degree")
    ap.add_argument("--offset", action="store_true", help="exponential: also fit the offset c (release: c = 0)")
    ap.add_argument("--holdout", type=float, default=0.25, help="share of samples held out for evaluation")
    ap.add_argument("--normalize", action="store_true", help="divide each sample by its mean valid score first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="trend.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.holdout < 1.0:
        raise UserError(f"--holdout {args.holdout}: must be in [0, 1)")
    scores, mask, positions = read_npz(args.npz)
    trend, report = calibrate(scores, mask, positions, family=args.family, loss=args.loss, degree=args.degree,
                              offset=args.offset, holdout=args.holdout, normalize=args.normalize, seed=args.seed)
    report["source"] = str(args.npz)
    Path(args.out).write_text(json.dumps(report, indent=1))
    png = args.plot or str(Path(args.out).with_suffix(".png"))
    plot_calibration(png, scores, mask, positions, trend, report, title=f"calibration: {args.npz}")
    print(f"samples: {report['samples']} ({report['samples_fit']} fit, {report['samples_holdout']} held out), "
          f"{report['positions']} positions, {report['padding_excluded']} padding entries excluded")
    print(f"trend: {trend.family} {trend.params}  T(end)/T(0) = {report['ratio']:.3f}")
    if "holdout" in report:
        h = report["holdout"]
        print(f"held out: R^2 {h['r2']:.3f}; rank corr(position, score) {h['rank_corr_position_score']:.3f} -> "
              f"{h['rank_corr_after_detrend']:.3f} after detrending; tail/head {h['tail_head_ratio']:.2f} -> "
              f"{h['tail_head_ratio_after_detrend']:.2f}")
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
