"""`jaxvlm calibrate`: fit a position trend (recency bias) from a method's own score vectors.

METHOD.md section 2: average the pruning method's score per position over calibration samples and fit a
trend T(x); the debiased score is s * T(0)/T(x). Here the padding positions are excluded from the fit
(they carry the attention sink, technique 2), a random split of the samples is held out and the fit is
judged on it, and the number of samples used is reported.

Two sources of score vectors:
  model mode  `jaxvlm calibrate --model CKPT --data DIR --prune METHOD [--benchmark NAME | --prompt TEXT]`
              runs the model on the calibration samples (a benchmark folder read by the eval harness, or a
              plain folder of images asked `--prompt`) and records, through a probe around the METHOD's first
              attention-based stage, exactly the score that stage ranks with (its layer, query rows and head
              aggregation; for a debiased preset the score BEFORE debiasing) at every valid visual token,
              with the token's position within its span (`span_index`: raster index within the image or
              frame) and the engine's padding flags (excluded). Candidate families are fitted on the fit
              split and the one with the smallest held-out error (log space) is written.
  npz mode    `jaxvlm calibrate scores.npz` with
                scores     (S, N) float   one score vector per sample
                pad_mask   (S, N) {0,1}   optional, 1 = valid image patch; or `valid`
                positions  (N,) or (S, N) optional raster index within the visual span (default 0..N-1; < 0 ignored)
Output: a JSON (the trend under "trend": `--prune METHOD:trend=FILE`, `prune.debiased(trend=FILE)`,
`jaxvlm.debias.load_trend`), a release-format .npy (w[i] = T(0)/T(i) over the calibrated span) and a PNG
(mean score vs position with the fitted curve; held-out scores before/after detrending).

    jaxvlm calibrate --model CKPT --data DIR --prune debiased_fastv [--samples 64] --out trend.json
    jaxvlm calibrate scores.npz --out trend.json [--family exponential] [--loss log]
"""

from __future__ import annotations

import argparse
import dataclasses
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
        "padding_excluded": int(((valid[fit_idx] <= 0) & (pos[fit_idx] >= 0)).sum()),
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


# ---------------------------------------------------------------------------------------- model mode

CANDIDATES = {"exponential": {"family": "exponential"}, "polynomial": {"family": "polynomial", "degree": 3}}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def choose_family(scores, valid, positions, names=("exponential", "polynomial"), holdout: float = 0.25,
                  seed: int = 0) -> tuple[debias.Trend, dict]:
    """Fit each candidate family (log loss, per-sample normalised, same split) and keep the one with the
    smallest held-out squared error of log T against the log geometric-mean profile; a candidate that is
    not positive over the whole span (a polynomial may dip) is refused. Returns (trend, its report) with
    every candidate's held-out R^2 under report["candidates"]."""
    span = int(np.max(np.where(np.asarray(valid) > 0, positions, -1))) + 1
    x = np.arange(span, dtype=np.float64)
    fits, table = {}, {}
    for name in names:
        trend, rep = calibrate(scores, valid, positions, loss="log", holdout=holdout, normalize=True, seed=seed,
                               **CANDIDATES[name])
        r2 = rep.get("holdout", {}).get("r2", float("nan"))
        positive = bool(np.all(trend(x) > 0))
        table[name] = {"holdout_r2": r2, "positive_over_span": positive, "trend": trend.to_dict()}
        if positive:
            fits[name] = (trend, rep)
    if not fits:
        raise UserError(f"no candidate trend family ({', '.join(names)}) stays positive over the {span} positions")
    best = max(fits, key=lambda k: -np.inf if np.isnan(table[k]["holdout_r2"]) else table[k]["holdout_r2"])
    trend, rep = fits[best]
    rep["candidates"] = table
    rep["chosen_by"] = "held-out R^2 in log space (loss=log)"
    rep["span"] = span
    return trend, rep


def release_weights(trend: debias.Trend, span: int) -> np.ndarray:
    """The release's .npy format: w[i] = T(0)/T(i) for i = 0..span-1, float64."""
    return np.asarray(trend.weights(np.arange(span, dtype=np.float64)), np.float64)


def calibration_samples(data: str, benchmark: str | None, prompt: str | None, n: int, seed: int):
    """Samples to calibrate on: a benchmark folder through its harness reader (image and video lines; text-only
    lines skipped) or a plain image folder asked `prompt`; a seeded random subset of `n` (all when fewer)."""
    from jaxvlm.evaluation.base import Sample

    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {data}: not a directory")
    if benchmark:
        from jaxvlm import evaluation

        samples = [s for s in evaluation.benchmark(benchmark).read(root, benchmark=benchmark)
                   if s.image is not None or s.video is not None]
    else:
        if not prompt:
            raise UserError("--data without --benchmark is a folder of images: give the question with --prompt")
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        samples = [Sample(line=i, question_id=f.name, prompt=prompt, image=str(f), source=str(f))
                   for i, f in enumerate(files)]
    if len(samples) < 2:
        raise UserError(f"--data {data}: {len(samples)} image / video sample(s); calibration needs at least 2")
    if n < len(samples):
        idx = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
        samples = [samples[i] for i in idx]
    return samples


def encoder(processor, processor_dir: str, benchmark: str | None, samples):
    """The eval harness's encoder (jaxvlm.evaluation.feed.Encoder: the family's prompt, the image or the
    video's frames decoded as `jaxvlm eval` does); called as encoder(sample, line).arrays."""
    from jaxvlm import evaluation, video_inputs
    from jaxvlm.evaluation import feed

    bench = evaluation.benchmark(benchmark) if benchmark else None
    video_cfg = None
    if processor.family.startswith("qwen") and any(s.video is not None for s in samples):
        video_cfg = video_inputs.VideoConfig.from_dir(processor_dir, processor.hf.image_processor)
    return feed.Encoder(processor, bench, video_cfg)


# What a trend's positions are per family (`--per`): the model's span_layout that gives them (None: the
# family's only layout). The first entry is the family's default (docs/METHOD.md, "Trends on other token counts").
PER_LAYOUTS = {
    "llava": {"span": None},
    "llava_next": {"tile": "tile", "span": "sequence"},
    "video_llava": {"frame": "frame", "span": "sequence"},
    "qwen2_vl": {"frame": None},  # Qwen's span_index is the raster index within its image / video frame
    "qwen2_5_vl": {"frame": None},
}


def probe_stage(params, method: str, model: str = "the model"):
    """(stage, pad threshold, pad variant) of the --prune spec's first attention-based stage
    (stage_scores.probe_target); UserError when there is none or it lies beyond the model's layers."""
    from experiments.stage_scores import probe_target
    from jaxvlm.prune import parse_schedule

    schedule = parse_schedule(method)
    if not schedule:
        raise UserError(f"--prune {method!r}: no pruning stage to calibrate")
    stage, threshold, variant = probe_target(schedule)
    if stage.layer >= params.config.text.num_layers:
        raise UserError(f"--prune {method!r}: its stage prunes before layer {stage.layer}, but {model} has "
                        f"{params.config.text.num_layers} decoder layers")
    return stage, threshold, variant


def with_positions(params, per: str | None):
    """(params whose span_index is `per`'s positions, the `per` used): --per tile | frame | span, None for the
    family's default; a `per` the family does not have is a UserError naming the ones it has."""
    family = params.config.family
    layouts = PER_LAYOUTS.get(family, {"span": None})
    per = per or next(iter(layouts))
    if per not in layouts:
        raise UserError(f"--per {per}: a {family} model's positions are per {' | '.join(layouts)}")
    layout = layouts[per]
    if layout is None or params.config.span_layout == layout:
        return params, per
    return params.replace(config=dataclasses.replace(params.config, span_layout=layout)), per


def calibrate_batches(params, batches: list, method: str, per: str | None = None, holdout: float = 0.25,
                      families=("exponential", "polynomial"), seed: int = 0, progress=None):
    """Record the stage's own scores (stage_scores.Probe) over `batches` (model inputs, one sample per row)
    with positions grouped `per` frame / tile / span (`with_positions`) and fit. Returns (trend, report,
    recorded); report names the stage (type, layer, score layer, keep), `per` and the span layout."""
    from experiments.stage_scores import collect

    stage, threshold, variant = probe_stage(params, method)
    params, per = with_positions(params, per)
    rec = collect(params, batches, stage, threshold, variant, progress=progress)
    trend, report = choose_family(rec.scores, rec.valid, rec.positions, families, holdout, seed)
    report.update(prune=method, per=per, span_layout=getattr(params.config, "span_layout", None),
                  stage={"type": type(stage).__name__, "layer": stage.layer, "score_layer": stage.score_layer,
                         "keep": stage.keep, "pad_threshold": threshold, "pad_variant": variant},
                  visual_tokens_per_sample=[int((p >= 0).sum()) for p in rec.positions])
    return trend, report, rec


def calibrate_model(model: str, data: str, method: str, samples: int = 64, benchmark: str | None = None,
                    prompt: str | None = None, processor: str | None = None, holdout: float = 0.25,
                    families=("exponential", "polynomial"), seed: int = 0, params=None, per: str | None = None):
    """Run the model over calibration samples (images or videos, encoded by the eval harness) and fit
    (`calibrate_batches`). Returns (trend, report, recorded); report also names the samples (source of each)."""
    import jaxvlm

    chosen = calibration_samples(data, benchmark, prompt, samples, seed)
    params = params or jaxvlm.load(model)
    probe_stage(params, method, model)  # refused before the processor loads and anything runs
    with_positions(params, per)
    proc = jaxvlm.Processor.from_pretrained(processor or model)
    enc = encoder(proc, processor or model, benchmark, chosen)
    batches = [enc(s, i).arrays for i, s in enumerate(chosen)]
    progress = lambda i, n: print(f"\rcalibration forward {i}/{n}", end="" if i < n else "\n", file=sys.stderr)  # noqa: E731
    trend, report, rec = calibrate_batches(params, batches, method, per, holdout, families, seed, progress)
    report.update(model=str(model), data=str(data), benchmark=benchmark, sample_sources=[s.source for s in chosen])
    return trend, report, rec


def write_outputs(out: str, plot: str | None, trend, report: dict, scores, valid, positions, title: str) -> tuple:
    """trend JSON (+ release .npy beside it, w over the calibrated span) and the PNG; returns their paths."""
    span = int(report.get("span") or (np.max(np.where(np.asarray(valid) > 0, positions, -1)) + 1
                                      if positions is not None else np.asarray(scores).shape[1]))
    npy = str(Path(out).with_suffix(".npy"))
    report["release_weights"] = {"file": npy, "positions": span}
    Path(out).write_text(json.dumps(report, indent=1))
    np.save(npy, release_weights(trend, span))
    png = plot or str(Path(out).with_suffix(".png"))
    plot_calibration(png, scores, valid, positions, trend, report, title=title)
    return npy, png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jaxvlm calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("npz", nargs="?", help="npz mode: scores (S, N) [+ pad_mask/valid (S, N), positions]")
    ap.add_argument("--model", help="model mode: checkpoint directory (HF or jaxvlm)")
    ap.add_argument("--data", help="model mode: benchmark folder (with --benchmark) or a folder of images")
    ap.add_argument("--benchmark", help="model mode: harness reader for --data (gqa, pope, ...)")
    ap.add_argument("--prompt", help="model mode, image folder: the question asked about every image")
    ap.add_argument("--processor", help="model mode: processor directory (default: --model)")
    ap.add_argument("--prune", default="debiased_fastv",
                    help="model mode: the method whose first attention-based stage is calibrated (a --prune spec)")
    ap.add_argument("--samples", type=int, default=64, help="model mode: calibration samples (seeded subset)")
    ap.add_argument("--per", choices=("frame", "tile", "span"), default=None,
                    help="model mode: positions the trend is a function of - within each video frame (Video-LLaVA, "
                         "Qwen), each tile (LLaVA-NeXT) or the whole visual span; default by family: tile for "
                         "LLaVA-NeXT, frame for Video-LLaVA and Qwen, span for LLaVA-1.5")
    ap.add_argument("--families", default="exponential,polynomial",
                    help="model mode: candidate families, chosen by held-out error")
    ap.add_argument("--family", default="exponential", choices=debias.FAMILIES, help="npz mode: trend family")
    ap.add_argument("--loss", default="log", choices=("lsq", "log"),
                    help="npz mode. log (default): fit log T to log scores, right for multiplicative noise and "
                         "per-sample scale; lsq: squared error of the scores")
    ap.add_argument("--degree", type=int, default=3, help="npz mode: polynomial degree")
    ap.add_argument("--offset", action="store_true", help="npz mode, exponential: also fit the offset c (release: c = 0)")
    ap.add_argument("--holdout", type=float, default=0.25, help="share of samples held out for evaluation")
    ap.add_argument("--normalize", action="store_true",
                    help="npz mode: divide each sample by its mean valid score first (model mode always does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="trend.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.holdout < 1.0:
        raise UserError(f"--holdout {args.holdout}: must be in [0, 1)")
    if (args.npz is None) == (args.model is None):
        raise UserError("give either an .npz of score vectors or --model CKPT --data DIR (model mode)")
    if args.model is not None:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        unknown = sorted(set(families) - set(CANDIDATES))
        if unknown or not families:
            raise UserError(f"--families {args.families!r}: unknown {unknown} (have {', '.join(CANDIDATES)})")
        if args.data is None:
            raise UserError("--model needs --data DIR (a benchmark folder with --benchmark, or images + --prompt)")
        if args.samples < 2:
            raise UserError(f"--samples {args.samples}: need at least 2 (some are held out)")
        trend, report, rec = calibrate_model(args.model, args.data, args.prune, args.samples, args.benchmark,
                                             args.prompt, args.processor, args.holdout, families, args.seed,
                                             per=args.per)
        scores, mask, positions = rec.scores, rec.valid, rec.positions
        title = f"calibration: {args.prune} on {args.model}"
        print(f"stage: {report['stage']}; positions per {report['per']}; candidates (held-out R^2): "
              + ", ".join(f"{k} {v['holdout_r2']:.3f}" for k, v in report["candidates"].items())
              + f"; chosen {trend.family}")
    else:
        scores, mask, positions = read_npz(args.npz)
        trend, report = calibrate(scores, mask, positions, family=args.family, loss=args.loss, degree=args.degree,
                                  offset=args.offset, holdout=args.holdout, normalize=args.normalize,
                                  seed=args.seed)
        report["source"] = str(args.npz)
        title = f"calibration: {args.npz}"
    npy, png = write_outputs(args.out, args.plot, trend, report, scores, mask, positions, title)
    print(f"samples: {report['samples']} ({report['samples_fit']} fit, {report['samples_holdout']} held out), "
          f"{report['positions']} positions, {report['padding_excluded']} padding entries excluded")
    print(f"trend: {trend.family} {trend.params}  T(end)/T(0) = {report['ratio']:.3f}")
    if "holdout" in report:
        h = report["holdout"]
        print(f"held out: R^2 {h['r2']:.3f}; rank corr(position, score) {h['rank_corr_position_score']:.3f} -> "
              f"{h['rank_corr_after_detrend']:.3f} after detrending; tail/head {h['tail_head_ratio']:.2f} -> "
              f"{h['tail_head_ratio_after_detrend']:.2f}")
    spec = args.prune if args.model else "METHOD"
    print(f"wrote {args.out}, {npy} and {png}; use it with --prune {spec}{',' if ':' in spec else ':'}trend={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
