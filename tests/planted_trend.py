"""Weights that plant an exact exponential position trend in a tiny VLM's FastV score (layer-1 attention of the
last token over the visual tokens), for the calibration tests.

The tower's position embedding puts v_i = (t_i, -t_i, f_i, -f_i, 0, ...) on patch i (t_i = 2 i / (n - 1);
zero mean, unit variance, so the pre-LayerNorm keeps it) plus a little content from the patch conv; the
projector passes it through; decoder layers 0-1 add nothing (zero output projections); layer 1 reads t_i into
the keys and a constant into the last token's query on the slowest rotary pair (the caller sets rope theta
1e9: no rotation). Every text embedding has rms 0.625, so the normed query coordinate is 6.4 and the logit
over patch i is slope * i + const with slope = ln(ratio) / (n - 1) exactly.
"""

from __future__ import annotations

import numpy as np


def plant(tower: dict, text: dict, vocab: int, n: int, ratio: float, rng, tower_width: int = 32,
          hidden: int = 64) -> tuple[dict, dict, dict, float]:
    """(tower, projector, text, slope): copies of the tower / text weights edited as the module docstring says,
    for `n` patches per image or frame and a planted T(n-1)/T(0) = `ratio`."""
    dv, d = tower_width, hidden
    t = 2.0 * np.arange(n) / (n - 1)
    pos = np.zeros((n + 1, dv))
    pos[1:, 0], pos[1:, 1], pos[1:, 2], pos[1:, 3] = t, -t, np.sqrt(dv / 2 - t**2), -np.sqrt(dv / 2 - t**2)
    tower = dict(tower, pos_embed=pos, patch_embed=0.002 * rng.standard_normal((3, 14, 14, dv)))
    w1 = np.zeros((dv, d))
    w1[np.arange(dv), np.arange(dv)] = 1.0
    projector = {"w1": w1, "b1": np.full(d, 10.0), "w2": np.eye(d), "b2": np.full(d, -10.0)}
    emb = np.zeros((vocab, d))
    r = rng.standard_normal((vocab, 31))
    emb[:, 32:63] = 3.0 * r / np.linalg.norm(r, axis=1, keepdims=True)
    emb[:, 63] = 4.0
    layers = {k: np.array(v) for k, v in text["layers"].items()}
    for i in (0, 1):
        layers["wo"][i] = 0.0
        layers["w_down"][i] = 0.0
    layers["wq"][1] = 0.0
    layers["wk"][1] = 0.0
    slope = np.log(ratio) / (n - 1)  # logit slope = 6.4 * g * sqrt(2) * (2 / (n - 1)) / sqrt(head_dim 16)
    layers["wq"][1][63, :, 7] = 1.0
    layers["wk"][1][0, :, 7] = slope / (6.4 * np.sqrt(2) * (2.0 / (n - 1)) / 4.0)
    return tower, projector, dict(text, embed=emb, layers=layers), float(slope)
