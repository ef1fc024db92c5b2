"""`prune.debiased` and the release presets: reference equality, settings, and hypothesis properties
(exact static count kept, no padding kept when enough valid tokens exist, per-method budget semantics)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvlm import debias, prune
from prune_ref import full_attention, layout, make_ctx, random_qk, run_stage, slots_set, topk_desc

CUBIC = debias.release_trend("fastv")
STEEP = debias.Trend("exponential", (1.0, 0.08, 0.0))  # strong trend so detrending changes the selection


def _setup(seed, b=2, t=40, nv=20, n=3, h=8, pad_frac=0.3):
    rng = np.random.default_rng(seed)
    lay = layout(rng, b, t, nv, pad_frac=pad_frac)
    q, k = random_qk(rng, b, n, t, h, scale=1.5)
    attn = full_attention(q, k, np.asarray(lay.state.valid)).mean(1)
    return lay, q, k, attn


def _sel(stage, lay, q, k, **kw):
    ctx = make_ctx(stage, lay.state, q, k, pad=lay.pad, **kw)
    return run_stage(stage, ctx)


def _ref_debiased(s, span, pad, keep, trend, recency, padding, budget):
    """The release's rule on one row: s * w(span) * mask, then top-K (FastV lowers K to the valid count)."""
    s = np.asarray(s, np.float64)
    if recency:
        s = s * trend.weights(span.astype(np.float64))
    cand = np.arange(len(s))
    if padding:
        s = s * (~pad)
        if budget == "lower":
            cand = cand[~pad]
    return cand[topk_desc(s[cand], min(keep, len(cand)))]


@pytest.mark.parametrize("setting", ["original", "padding", "recency", "both"])
@pytest.mark.parametrize("budget", ["lower", "fill"])
def test_debiased_fastv_matches_release_rule(setting, budget):
    lay, q, k, attn = _setup(0)
    recency, padding = prune.SETTINGS[setting]
    sched = prune.debiased(prune.fastv(keep=9), trend=STEEP, recency=recency, padding=padding, budget=budget)
    sel = _sel(sched[0], lay, q, k)
    for i, r in enumerate(lay.rows):
        vis = r["vis"]
        loc = _ref_debiased(attn[i, r["last"], vis], np.arange(len(vis)), lay.pad[i][vis], 9, STEEP, recency,
                            padding, budget)
        assert slots_set(sel.slots[i]) == sorted(vis[loc].tolist()), (setting, budget, i)


def test_debiasing_changes_selection_toward_early_tokens():
    lay, q, k, _ = _setup(1, pad_frac=0.0)
    raw = _sel(prune.fastv(keep=6)[0], lay, q, k)
    deb = _sel(prune.debiased(prune.fastv(keep=6), trend=STEEP, padding=False)[0], lay, q, k)
    span = np.asarray(lay.state.span_index)

    def mean_span(sel):
        return np.mean([span[i, s] for i in range(2) for s in np.asarray(sel.slots[i]) if s >= 0])

    assert mean_span(deb) < mean_span(raw)


def test_presets_and_settings():
    f = prune.debiased_fastv()
    assert f[0].keep == 128 and f[0].layer == 2 and f[0].trend == CUBIC and f[0].pad_threshold == 0.5
    assert f[0].budget_mode == "lower"
    assert prune.debiased_fastv("original") == prune.fastv(layer=2, keep=128)
    assert prune.debiased_fastv("paper") == prune.fastv(layer=2, keep=128)
    p = prune.debiased_fastv("padding")[0]
    assert not p.recency and p.padding and p.pad_variant == "unpad"
    r = prune.debiased_fastv("recency")[0]
    assert r.recency and not r.padding
    h = prune.debiased_himap()
    assert [s.keep for s in h] == [115, 90] and isinstance(h[0], prune.Debiased)
    assert not isinstance(h[1], prune.Debiased)  # stage 2 left undebiased, as the release
    assert h[0].trend == debias.release_trend("himap", "gqa")
    d = prune.debiased_pdrop(n_visual=576)
    assert [s.keep for s in d] == [184, 92, 46] and d[0].pad_threshold == 0.01 and d[0].renumber
    assert all(not isinstance(s, prune.Debiased) for s in d[1:])
    s = prune.debiased_sparsevlm()
    assert [x.budget for x in s] == [303, 110, 36] and s[0].pad_variant == "sparsevlm"
    assert s[0].budget_mode == "fill"
    t = prune.debiased_tokencarve()
    assert t[0].keep == 64 and t[0].n_select == 96 and t[0].pad_threshold == 0.5
    assert prune.debiased_tokencarve(benchmark="mmvet")[0].trend == debias.release_trend("tokencarve", "mm-vet")
    a = prune.debiased(prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08)), trend=STEEP, stages="all")
    assert all(isinstance(x, prune.Debiased) for x in a)
    with pytest.raises(ValueError, match="setting"):
        prune.debiased_fastv("sometimes")


def test_debiased_errors():
    with pytest.raises(ValueError, match="trend"):
        prune.debiased(prune.fastv())
    with pytest.raises(ValueError, match="not attention-scored|no attention-scored"):
        prune.debiased(prune.dart(), trend=CUBIC)
    with pytest.raises(ValueError, match="pad_threshold"):
        prune.debiased(prune.fastv(), trend=CUBIC, pad_threshold=1.5)
    with pytest.raises(ValueError, match="budget"):
        prune.debiased(prune.fastv(), trend=CUBIC, budget="some")
    with pytest.raises(ValueError, match="already debiased"):
        prune.debiased(prune.debiased_fastv(), trend=CUBIC)
    with pytest.raises(ValueError, match="stages"):
        prune.debiased(prune.fastv(), trend=CUBIC, stages="last")
    assert prune.debiased(prune.fastv(), recency=False, padding=False) == prune.fastv()


def test_later_stage_uses_original_span_positions():
    """stages='all': a later stage sees survivors with gaps in span_index; the trend is read there."""
    lay, q, k, attn = _setup(2, pad_frac=0.0)
    st0 = lay.state
    span = np.asarray(st0.span_index).copy()
    span = np.where(span >= 0, span * 3 + 1, -1)  # survivors of an earlier stage: original positions with gaps
    lay.state = st0.replace(span_index=np.asarray(span, np.int32))
    sched = prune.debiased(prune.himap(text_keep=20, image_keep=5), trend=STEEP, padding=False, stages="all")
    sel = _sel(sched[1], lay, q, k)
    for i, r in enumerate(lay.rows):
        vis = r["vis"]
        s = attn[i][np.ix_(vis, vis)].sum(0) * STEEP.weights(span[i][vis].astype(np.float64))
        assert slots_set(sel.slots[i]) == sorted(vis[topk_desc(s, 5)].tolist())


@pytest.mark.parametrize("budget", ["lower", "fill"])
def test_release_shift_reproduces_the_release_window(budget):
    """The release's FastV: window [36, 36+576) while the image starts at 35: window position j is the token one
    slot after image token j, scored with w[j] and mask[j]; image token 0 always kept; the first text token
    after the image competes for a budget slot."""
    lay, q, k, attn = _setup(3, pad_frac=0.3)
    st = prune.debiased(prune.fastv(keep=7), trend=STEEP, release_shift=True, budget=budget)[0]
    assert st.keep == 8
    sel = _sel(st, lay, q, k)
    for i, r in enumerate(lay.rows):
        vis = r["vis"]
        s0, n = int(vis[0]), len(vis)
        window = np.arange(s0 + 1, s0 + n + 1)
        pad = lay.pad[i][vis]
        s = attn[i, r["last"], window] * STEEP.weights(np.arange(n, dtype=np.float64)) * (~pad)
        cand = np.arange(n)[~pad] if budget == "lower" else np.arange(n)
        top = window[cand[topk_desc(s[cand], min(7, len(cand)))]]
        expect = sorted({s0} | {int(j) for j in top if j < s0 + n})
        assert slots_set(np.where(np.isin(sel.slots[i], vis), sel.slots[i], -1)) == expect


def test_padding_only_for_attention_free_methods():
    lay, q, k, _ = _setup(4, pad_frac=0.4)
    (st,) = prune.debiased(prune.divprune(keep=5), recency=False)
    sel = _sel(st, lay, q, k)
    for i in range(2):
        got = [s for s in np.asarray(sel.slots[i]) if s >= 0]
        assert len(got) == min(5, int((~lay.pad[i][lay.rows[i]["vis"]]).sum()))
        assert not any(lay.pad[i][s] for s in got)


# ------------------------------------------------------------------------------------------- properties

KEEPS = (1, 4, 9)
METHODS = {
    "fastv": lambda kp: prune.fastv(keep=kp),
    "pdrop": lambda kp: (prune.pdrop(layers=(2,), ratios=(kp / 20,), n_visual=20)[0],),
    "himap": lambda kp: (prune.himap(text_keep=kp, image_keep=1)[0],),
    "tokencarve": lambda kp: prune.tokencarve(keep=max(kp, 2)),
    "illava": lambda kp: prune.illava(layers=(3,), keep_ratio=kp / 20, n_visual=20),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), method=st.sampled_from(sorted(METHODS)), keep=st.sampled_from(KEEPS),
       pad_frac=st.sampled_from((0.0, 0.3, 0.9)), mode=st.sampled_from(("raw", "lower", "fill")))
def test_property_static_count_and_padding(seed, method, keep, pad_frac, mode):
    rng = np.random.default_rng(seed)
    nv_rows = [20, int(rng.integers(8, 21))]  # second row may carry fewer visual tokens
    lay = layout(rng, 2, 36, 20, pad_frac=pad_frac, n_vis_per_row=nv_rows)
    q, k = random_qk(rng, 2, 2, 36, 4, scale=1.5)
    sched = METHODS[method](keep)
    if mode != "raw":
        sched = prune.debiased(sched, trend=CUBIC, budget=mode)
    stage = sched[0]
    sel = _sel(stage, lay, q, k)
    slots = np.asarray(sel.slots)
    assert slots.shape == (2, stage.keep)  # the static count
    for i, r in enumerate(lay.rows):
        got = [int(s) for s in slots[i] if s >= 0]
        assert len(set(got)) == len(got) and set(got) <= set(r["vis"].tolist())
        n_cand = len(r["vis"])
        n_valid = int((~lay.pad[i][r["vis"]]).sum())
        # lower: FastV's rule, K lowered to the valid count (all-padding row: its padding stays, never zero)
        n = n_valid if mode == "lower" and n_valid else n_cand
        if method == "illava":  # iLLaVA drops a fixed r (folds r+1 into one) of whatever the row has
            assert len(got) == max(n - stage.r, 1)
        else:
            assert len(got) == min(stage.keep, n)  # fill: always K when enough candidates
        if mode != "raw" and n_valid >= stage.keep and method != "tokencarve":
            assert not any(lay.pad[i][s] for s in got)  # no padding kept when enough valid tokens
        if mode == "fill" and n_valid < stage.keep <= n_cand and method != "tokencarve":
            # every valid token kept (as many as fit: iLLaVA keeps a fixed n - r), padding fills the rest
            assert sum(not lay.pad[i][s] for s in got) == min(n_valid, len(got))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_property_tokencarve_padding_attention_branch(seed):
    """TokenCarve: only the AV branch is suppressed, so padding may still enter through the SVD branch; with
    'lower' padding is removed from the candidates and never kept."""
    rng = np.random.default_rng(seed)
    lay = layout(rng, 2, 36, 20, pad_frac=0.3)
    q, k = random_qk(rng, 2, 2, 36, 4)
    (stage,) = prune.debiased(prune.tokencarve(keep=4), trend=CUBIC, budget="lower")
    sel = _sel(stage, lay, q, k)
    for i in range(2):
        assert not any(lay.pad[i][s] for s in np.asarray(sel.slots[i]) if s >= 0)


def test_trend2d_uses_row_and_col():
    lay, q, k, attn = _setup(5, pad_frac=0.0)
    t2 = debias.Trend2D(debias.Trend("exponential", (1.0, 0.5, 0.0)), debias.Trend("exponential", (1.0, -0.2, 0.0)))
    st = prune.debiased(prune.fastv(keep=6), trend=t2, padding=False)[0]
    sel = _sel(st, lay, q, k)
    row, col = np.asarray(lay.state.row), np.asarray(lay.state.col)
    for i, r in enumerate(lay.rows):
        vis = r["vis"]
        s = attn[i, r["last"], vis] * t2.weights(row[i][vis].astype(np.float64), col[i][vis].astype(np.float64))
        assert slots_set(sel.slots[i]) == sorted(vis[topk_desc(s, 6)].tolist())
