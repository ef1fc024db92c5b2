"""Every method's schedule runs through the engine (prefill stages + cached decode) on a tiny random decoder, and
the schedules sweep writes its table and Pareto plot. Slow (one compile per schedule): `pytest -m slow`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import schedules as sweep
from jaxvlm.engine import api

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    cfg = sweep.tiny_config(layers=8, hidden=64)
    w = sweep.random_weights(cfg, 0)
    emb, n_text = sweep.make_batch(cfg, w, 2, 6, 0)
    return cfg, w, emb


def test_every_method_through_the_engine(tiny):
    cfg, w, emb = tiny
    nv = 36
    visual = np.asarray(emb.visual) & np.asarray(emb.valid)
    for name, sched in sweep.grid_schedules(cfg.num_layers, nv).items():
        out = api.generate_embedded(w, cfg, emb, prune=sched, max_new_tokens=2, output_logits=True)
        assert np.all(np.isfinite(np.asarray(out.logits))), name
        assert len(out.kept) == len(sched), name
        prev = None
        for st, kept in zip(sched, out.kept):
            kept = np.asarray(kept)
            assert kept.shape == (2, st.keep), name
            for i in range(2):
                got = kept[i][kept[i] >= 0]
                assert len(got) == st.keep, (name, st)
                assert visual[i, got].all(), name  # only visual input indices are reported
                if prev is not None:
                    assert set(got) <= set(prev[i][prev[i] >= 0]), name  # survivors of the previous stage
            prev = kept


def test_schedules_runner_writes_outputs(tmp_path):
    assert sweep.main(["--fast", "--out", str(tmp_path), "--batch", "2", "--new", "2"]) == 0
    data = json.loads((tmp_path / "schedules.json").read_text())
    assert data["rows"][0]["schedule"] == "unpruned" and len(data["rows"]) > 3
    assert all(r["traces"] <= 1 for r in data["rows"])  # each schedule compiled once
    assert (tmp_path / "schedules_pareto.png").stat().st_size > 1000
    assert "unpruned" in data["pareto"]


def test_padding_suppression_end_to_end_on_tiny_llava():
    """Tiny LLaVA (576-token images) with image_sizes: debiased FastV keeps no padding patch and lowers K to the
    valid count (300x1000 -> 192 valid at 0.5); raw FastV keeps padding; debiased TokenCarve keeps K (fill),
    padding only through its undebiased SVD branch, as the release."""
    from llava_reference import IMAGE_TOKEN, build, make_inputs

    import jaxvlm
    from jaxvlm import debias, prune

    _, params, cfg = build(gqa=True, text_layers=4, seed=3)
    inp = make_inputs(cfg, lengths=(640, 610), padding="left", seed=1)
    sizes = np.array([[300, 1000], [640, 480]])
    masks = debias.pad_mask(sizes)

    def kept(sched):
        out = jaxvlm.generate(params, **inp, image_sizes=sizes, prune=sched, max_new_tokens=2)
        res = []
        for i in range(2):
            got = np.asarray(out.kept[0][i])
            got = got[got >= 0]
            span = np.searchsorted(np.flatnonzero(inp["input_ids"][i] == IMAGE_TOKEN), got)
            res.append((len(got), int((masks[i][span] == 0).sum())))
        return res

    assert [int(m.sum()) for m in masks] == [192, 432]
    assert kept(prune.debiased_fastv(keep=256)) == [(192, 0), (256, 0)]  # K lowered to 192 valid tokens
    raw = kept(prune.debiased_fastv("original", keep=256))
    assert [n for n, _ in raw] == [256, 256] and raw[0][1] > 0
    assert [n for n, _ in kept(prune.debiased_tokencarve())] == [64, 64]
