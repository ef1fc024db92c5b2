"""Per-method rows for the synthetic bias benchmark (experiments/bias_benchmark.py, through its `scorers` hook).

Each scorer synthesises the attention LOGITS a method reads (one head; R query rows) and scores them with the
method's own pure function from `jaxvlm.prune`, so the rows differ in how the method aggregates attention:

    logit[r, i] = log(base_i) + log T(i) + content_i + row_noise[r, i]
    base = relevance on image patches, `sink` on padding (bias_benchmark's model); content ~ N(0, 0.5) shared by
    all rows (the token's own salience), row_noise ~ N(0, 0.5) per query row.

- fastv / pdrop / tokencarve-AV: one row (the last prompt token), head-mean softmax (`prune.fastv_scores`);
- himap: the softmax SUMMED over 8 question rows (`prune.summed_scores`), less row noise;
- sparsevlm: the softmax averaged over the rater rows (`prune.rater_scores`; raters = half of 8 rows).
Then bias_benchmark ranks raw / detrended / padding-suppressed / both / both+fit and reports recall@K.

    python -m experiments.bias_methods [--scenes 128] [--calib 64]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp
import numpy as np

from experiments import bias_benchmark as bb
from jaxvlm import prune


def _logits(scenes: bb.Scenes, trend, rng, rows: int, sink: float = 3.0, noise: float = 0.5):
    base = np.where(scenes.content | (scenes.valid > 0), scenes.relevance, sink)
    content = rng.normal(0.0, noise, base.shape)
    row_noise = rng.normal(0.0, noise, (base.shape[0], rows, base.shape[1]))
    lt = np.log(trend(np.arange(bb.N, dtype=np.float64)))
    logit = np.log(base)[:, None] + lt[None, None] + content[:, None] + row_noise
    return jnp.asarray(logit[:, None], jnp.float32)  # (S, 1 head, R, N)


def _cand(scenes):
    return jnp.ones(scenes.valid.shape, bool)


def fastv_scorer(scenes, trend, rng):
    lg = _logits(scenes, trend, rng, 1)
    return np.asarray(prune.fastv_scores(lg, jnp.ones((lg.shape[0], 1)), _cand(scenes)), np.float64)


def himap_scorer(scenes, trend, rng, rows: int = 8):
    lg = _logits(scenes, trend, rng, rows)
    return np.asarray(prune.summed_scores(lg, jnp.ones((lg.shape[0], rows)), _cand(scenes)), np.float64)


def sparsevlm_scorer(scenes, trend, rng, rows: int = 8):
    lg = _logits(scenes, trend, rng, rows)
    raters = jnp.asarray(np.arange(rows)[None].repeat(lg.shape[0], 0) % 2 == 0)
    return np.asarray(prune.rater_scores(lg, raters, _cand(scenes)), np.float64)


SCORERS = {"fastv": fastv_scorer, "himap": himap_scorer, "sparsevlm": sparsevlm_scorer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.bias_methods", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=128)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = bb.run(scorers=SCORERS, n_scenes=a.scenes, n_calib=a.calib, seed=a.seed)
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["scorer"], []).append(r)
    rows += [bb.mean_row(rs, "mean") for rs in by.values()]
    print(f"{a.scenes} scenes per trend; per-method attention aggregation (jaxvlm.prune score functions)\n")
    print(bb.format_table(rows))
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
