"""Each method's selection equals a small numpy reference written from PRUNING.md on full attention matrices.

The stage runs exactly as the engine runs it (logits of its query rows only, `score` then `select`); the
reference builds the full (B, N, T, T) softmax naively in float64 and applies the method's rule row by row.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxvlm import prune
from jaxvlm.engine import state as ts
from jaxvlm.prune.sparsevlm import ctx_raters

from prune_ref import full_attention, layout, make_ctx, random_qk, run_stage, slots_set, topk_desc

SHAPES = [  # (batch, slots, visual tokens, heads, head dim)
    (1, 24, 12, 2, 8),
    (3, 40, 20, 4, 8),
    (2, 64, 36, 3, 4),
]


def _setup(seed, b, t, nv, n, h, **kw):
    rng = np.random.default_rng(seed)
    lay = layout(rng, b, t, nv, **kw)
    q, k = random_qk(rng, b, n, t, h, scale=1.5)
    attn = full_attention(q, k, np.asarray(lay.state.valid)).mean(1)  # (B, T, T) head mean
    return rng, lay, q, k, attn


def _run(stage, lay, q, k, **kw):
    ctx = make_ctx(stage, lay.state, q, k, **kw)
    return run_stage(stage, ctx), ctx


@pytest.mark.parametrize("shape,keep", list(zip(SHAPES, [1, 5, 11])))
def test_fastv(shape, keep):
    _, lay, q, k, attn = _setup(0, *shape)
    (stage,) = prune.fastv(layer=2, keep=keep)
    assert stage.score_layer == 1
    sel, _ = _run(stage, lay, q, k)
    for i, r in enumerate(lay.rows):
        s = attn[i, r["last"], r["vis"]]
        assert slots_set(sel.slots[i]) == sorted(r["vis"][topk_desc(s, keep)].tolist())


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_pdrop_stage_is_last_token_recomputed(shape):
    _, lay, q, k, attn = _setup(1, *shape)
    sched = prune.pdrop(layers=(2, 10, 20), ratios=(0.32, 0.16, 0.08), n_visual=shape[2])
    st = sched[0]
    assert st.score_layer == st.layer == 2 and st.renumber
    sel, _ = _run(st, lay, q, k)
    for i, r in enumerate(lay.rows):
        s = attn[i, r["last"], r["vis"]]
        assert slots_set(sel.slots[i]) == sorted(r["vis"][topk_desc(s, st.keep)].tolist())


def test_pdrop_keeps_and_errors():
    assert [s.keep for s in prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08), n_visual=576)] == [184, 92, 46]
    assert [s.keep for s in prune.pdrop(n_visual=576)] == [288, 144, 72]
    assert [s.keep for s in prune.pdrop()] == [None] * 3  # resolved by the engine at plan time
    assert [s.layer for s in prune.pdrop()] == [8, 16, 24]
    assert not prune.pdrop(renumber=False)[0].renumber
    with pytest.raises(ValueError, match="non-increasing"):
        prune.pdrop(layers=(2, 4), ratios=(.2, .5))
    with pytest.raises(ValueError, match="one ratio per layer"):
        prune.pdrop(layers=(2, 4), ratios=(.2,))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        prune.pdrop(layers=(2,), ratios=(1.5,))


@pytest.mark.parametrize("shape", SHAPES)
def test_himap_stage1_sums_question_rows(shape):
    _, lay, q, k, attn = _setup(2, *shape)
    st = prune.himap(text_keep=7, image_keep=3)[0]
    sel, _ = _run(st, lay, q, k)
    for i, r in enumerate(lay.rows):
        s = attn[i][np.ix_(r["question"], r["vis"])].sum(0)
        assert slots_set(sel.slots[i]) == sorted(r["vis"][topk_desc(s, 7)].tolist())


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_himap_stage2_image_to_image(shape):
    _, lay, q, k, attn = _setup(3, *shape)
    nv = shape[2]
    st = prune.himap(text_keep=nv, image_keep=5)[1]
    assert st.score_layer == 7 and st.n_rows == nv
    sel, _ = _run(st, lay, q, k)
    for i, r in enumerate(lay.rows):
        s = attn[i][np.ix_(r["vis"], r["vis"])].sum(0)
        assert slots_set(sel.slots[i]) == sorted(r["vis"][topk_desc(s, 5)].tolist())


# ------------------------------------------------------------------------------------------ SparseVLM


def cluster_ref(x, k):
    """Upstream's cluster_and_merge in float64 numpy (ties by lower index instead of random noise)."""
    m, d = x.shape
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) / np.sqrt(d)
    density = np.exp(-(np.sort(dist, axis=1)[:, :k] ** 2).mean(1))
    delta = np.empty(m)
    for i in range(m):
        higher = [j for j in range(m) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta[i] = dist[i, higher].min() if higher else dist.max()
    centres = topk_desc(delta * density, k)
    assign = dist[centres].argmin(0)
    assign[centres] = np.arange(k)
    merged = np.stack([x[assign == c].sum(0) / ((assign == c).sum() + 1e-6) for c in range(k)])
    return centres, merged


def sparsevlm_ref(attn_i, emb_i, x_i, r, budget, n_in, recycle=True):
    vis, qst = r["vis"], r["question"]
    m = emb_i[vis].astype(np.float64) @ emb_i[qst].astype(np.float64).T
    m = np.exp(m - m.max(1, keepdims=True))
    rel = (m / m.sum(1, keepdims=True)).mean(0)
    raters = qst[rel > rel.mean()]
    s = attn_i[np.ix_(raters, vis)].mean(0)
    kept_local = topk_desc(s, budget)
    kept = vis[kept_local]
    out = dict(kept=sorted(kept.tolist()), score=s)
    if recycle:
        n_merge, n_cl = prune.recycle_counts(n_in, budget)
        pruned_local = np.setdiff1d(np.arange(len(vis)), kept_local)
        top = pruned_local[topk_desc(s[pruned_local], n_merge)]
        centres, merged = cluster_ref(x_i[vis[top]].astype(np.float64), n_cl)
        out["centres"] = vis[top[centres]]
        out["merged"] = merged
    return out


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("recycle", [False, True])
def test_sparsevlm_v15(shape, recycle):
    rng, lay, q, k, attn = _setup(4, *shape)
    b, t, nv = shape[:3]
    emb = rng.standard_normal((b, t, 16)).astype(np.float32) * 0.5
    budget = nv // 2
    st = prune.sparsevlm(budgets=(budget,), layers=(2,), n_visual=nv, recycle=recycle)[0]
    assert st.layer == 3 and st.score_layer == 2
    sel, _ = _run(st, lay, q, k, embeds=emb)
    x = np.asarray(lay.state.x)
    for i, r in enumerate(lay.rows):
        ref = sparsevlm_ref(attn[i], emb[i], x[i], r, budget, nv, recycle)
        expect = sorted(ref["kept"] + ([int(c) for c in ref["centres"]] if recycle else []))
        got = np.asarray(sel.slots[i])
        assert slots_set(got) == expect
        if recycle:
            assert st.keep == budget + len(ref["centres"])
            for c, mv in zip(ref["centres"], ref["merged"]):
                j = int(np.nonzero(got == c)[0][0])
                np.testing.assert_allclose(np.asarray(sel.x[i, j]), mv, rtol=1e-4, atol=1e-5)


def test_sparsevlm_tables_and_counts():
    assert [s.budget for s in prune.sparsevlm(128)] == [303, 110, 36]
    assert [s.score_layer for s in prune.sparsevlm(64)] == [2, 6, 15]
    assert [s.budget for s in prune.sparsevlm(192)] == [300, 200, 110]
    assert [s.budget for s in prune.sparsevlm(96)] == [238, 48, 26]
    assert prune.recycle_counts(576, 303) == (82, 9)
    s = prune.sparsevlm(128, n_visual=576)
    assert [x.n_in for x in s] == [576, 312, 117] and [x.keep for x in s] == [312, 117, 39]
    v2 = prune.sparsevlm(128, version="2.0")
    assert [x.keep for x in v2] == [238, 108, 60] and not v2[0].renumber and not v2[0].recycle
    with pytest.raises(ValueError, match="per-layer table"):
        prune.sparsevlm(100)


def test_sparsevlm_v2_gravity_matches_reference():
    rng, lay, q, k, attn_unused = _setup(5, 2, 40, 20, 4, 8)
    emb = rng.standard_normal((2, 40, 16)).astype(np.float32) * 0.5
    st = prune.sparsevlm(budgets=(6,), layers=(2,), n_visual=20, version="2.0", heads=2)[0]
    kb = np.asarray(k).transpose(0, 2, 1, 3)
    sel, _ = _run(st, lay, q, k, embeds=emb, keys=kb)
    p = full_attention(q, k, np.asarray(lay.state.valid))  # (B, N, T, T)
    pos = np.asarray(lay.state.positions[0])
    h = q.shape[-1]
    inv = 1.0 / (10000.0 ** (np.arange(0, h, 2) / h))
    for i, r in enumerate(lay.rows):
        vis, qst = r["vis"], r["question"]
        m = emb[i][vis].astype(np.float64) @ emb[i][qst].astype(np.float64).T
        m = np.exp(m - m.max(1, keepdims=True))
        rel = (m / m.sum(1, keepdims=True)).mean(0)
        raters = qst[rel > rel.mean()]
        # RoPE-only map of all-ones q/k, computed by actually rotating ones vectors
        def rot(pp):
            ang = pp[:, None] * inv[None]
            ones = np.ones(h // 2)
            return np.concatenate([ones * np.cos(ang) - ones * np.sin(ang), ones * np.cos(ang) + ones * np.sin(ang)], 1)
        rope = rot(pos[i][raters].astype(np.float64)) @ rot(pos[i].astype(np.float64)).T / np.sqrt(h)
        corr = p[i][:, raters, :] / rope[None]
        mass = corr[:, :, vis].sum((1, 2))
        heads = topk_desc(mass, 2)
        s = corr[heads].mean(0)[:, vis].mean(0)
        assert slots_set(sel.slots[i]) == sorted(vis[topk_desc(s, 6)].tolist())


# ----------------------------------------------------------------------------------------- TokenCarve


def tokencarve_ref(attn_i, x_i, r, keep):
    vis = r["vis"]
    n = len(vis)
    av = attn_i[r["last"], vis]
    xv = x_i[vis].astype(np.float64)
    u, s, _ = np.linalg.svd(xv, full_matrices=False)
    svc = np.abs(u * s[None]).sum(1)
    pts = np.zeros(n)
    pts[np.argsort(-av, kind="stable")] += np.arange(n, 0, -1) * 0.5
    pts[np.argsort(-svc, kind="stable")] += np.arange(n, 0, -1) * 0.5
    sel = topk_desc(pts, keep + keep // 2)
    na = len(sel) // 2
    a, b = sel[:na], sel[na:]
    xn = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    sim = xn[b] @ xn[a].T
    best, bestv = sim.argmax(1), sim.max(1)
    order = topk_desc(bestv, len(b))
    n_merge = len(sel) - keep
    merged, rest = order[:n_merge], order[n_merge:]
    new = {}
    for j in range(na):
        src = [xv[a[j]]] + [xv[b[m]] for m in merged if best[m] == j]
        new[int(vis[a[j]])] = np.mean(src, axis=0)
    kept = sorted([int(vis[j]) for j in a] + [int(vis[b[m]]) for m in rest])
    return kept, new


@pytest.mark.parametrize("shape,keep", [(SHAPES[1], 8), (SHAPES[2], 4)])
def test_tokencarve(shape, keep):
    _, lay, q, k, attn = _setup(6, *shape)
    (st,) = prune.tokencarve(keep=keep)
    sel, _ = _run(st, lay, q, k)
    x = np.asarray(lay.state.x)
    for i, r in enumerate(lay.rows):
        kept, new = tokencarve_ref(attn[i], x[i], r, keep)
        got = np.asarray(sel.slots[i])
        assert slots_set(got) == kept
        for slot, v in new.items():
            j = int(np.nonzero(got == slot)[0][0])
            np.testing.assert_allclose(np.asarray(sel.x[i, j]), v, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- iLLaVA


@pytest.mark.parametrize("shape", SHAPES)
def test_illava_fold(shape):
    _, lay, q, k, attn = _setup(7, *shape)
    nv = shape[2]
    (st,) = prune.illava(layers=(3,), keep_ratio=0.7, n_visual=nv)
    r_ = st.r
    assert r_ == round(nv * 0.3) and st.keep == nv - r_
    sel, _ = _run(st, lay, q, k)
    x = np.asarray(lay.state.x)
    for i, r in enumerate(lay.rows):
        vis = r["vis"]
        s = attn[i, r["last"], vis]
        order = topk_desc(s, len(vis))
        fold = order[len(vis) - (r_ + 1):]
        w = np.arange(1, r_ + 2, dtype=np.float64)
        merged = w @ x[i][vis[fold]].astype(np.float64) / w.sum()
        got = np.asarray(sel.slots[i])
        assert slots_set(got) == sorted(vis[order[:len(vis) - r_]].tolist())
        j = int(np.nonzero(got == vis[fold[0]])[0][0])
        np.testing.assert_allclose(np.asarray(sel.x[i, j]), merged, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- DART and DivPrune


def test_dart_reference():
    rng, lay, q, k, _ = _setup(8, 2, 48, 30, 2, 4)
    keys = rng.standard_normal((2, 48, 2, 4)).astype(np.float32)
    (st,) = prune.dart(keep=16)
    sel, _ = _run(st, lay, q, k, keys=keys)
    x = np.asarray(lay.state.x).astype(np.float64)
    xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
    for i, r in enumerate(lay.rows):
        norms = np.abs(keys[i]).sum((1, 2))
        piv = list(r["vis"][topk_desc(norms[r["vis"]], 4)]) + list(r["text"][topk_desc(norms[r["text"]], 4)])
        chosen = []
        for p in piv:
            avail = [v for v in r["vis"] if v not in chosen]
            sims = xn[i][avail] @ xn[i][p]
            chosen += [avail[j] for j in topk_desc(-sims, 2)]
        assert slots_set(sel.slots[i]) == sorted(int(c) for c in chosen)


def test_divprune_reference():
    _, lay, q, k, _ = _setup(9, 2, 40, 24, 2, 4)
    (st,) = prune.divprune(keep=6)
    assert st.layer == 0 and st.score_layer is None
    sel, _ = _run(st, lay, q, k)
    x = np.asarray(lay.state.x).astype(np.float64)
    for i, r in enumerate(lay.rows):
        xv = x[i][r["vis"]]
        xv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
        dist = 1 - xv @ xv.T
        off = dist + np.eye(len(xv)) * 1e9
        chosen = [int(np.argmax(off.min(1)))]
        while len(chosen) < 6:
            mind = dist[:, chosen].min(1)
            mind[chosen] = -np.inf
            chosen.append(int(np.argmax(mind)))
        assert slots_set(sel.slots[i]) == sorted(r["vis"][chosen].tolist())


def test_visionzip_pure_function():
    rng = np.random.default_rng(10)
    cls = rng.random((1, 20)).astype(np.float32)
    keys = rng.standard_normal((1, 20, 8)).astype(np.float32)
    cand = np.ones((1, 20), bool)
    slots, merged = prune.visionzip_select(cls, keys, cand, dominant=4, contextual=3)
    dom = sorted(topk_desc(cls[0], 4).tolist())
    rest = [j for j in range(20) if j not in dom]
    targets = [rest[j] for j in range(0, 16, 5)][:3]
    assert slots_set(slots[0]) == sorted(dom + targets)
    with pytest.raises(NotImplementedError, match="CLS"):
        prune.visionzip()[0].score(type("C", (), {})())


# --------------------------------------------------------------------------------------------- errors


def test_budget_errors():
    with pytest.raises(ValueError, match="out of range"):
        prune.fastv(keep=0)
    with pytest.raises(TypeError, match="static token count"):
        prune.fastv(keep=12.5)
    with pytest.raises(ValueError, match="drop_ratio"):
        prune.fastv(drop_ratio=1.0)
    assert prune.fastv(drop_ratio=0.75, n_visual=576)[0].keep == 144
    assert prune.fastv(drop_ratio=0.75)[0].keep is None  # resolved at plan time
    with pytest.raises(ValueError, match="image_keep"):
        prune.himap(text_keep=10, image_keep=20)
    with pytest.raises(ValueError, match="exceeds"):
        prune.sparsevlm(budgets=(700, 10, 5), n_visual=576)
    with pytest.raises(ValueError, match="keep_ratio"):
        prune.illava(keep_ratio=0.0)
    _, lay, q, k, _ = _setup(11, 1, 24, 12, 2, 8)
    st = prune.fastv(keep=30)[0]
    ctx = make_ctx(st, lay.state, q, k)
    with pytest.raises(ValueError, match="exceeds the 24 token slots"):
        st.select(ctx, st.score(ctx))


def test_stages_hashable_and_static():
    from jaxvlm.engine.prefill import resolve_stage

    scheds = [prune.fastv(), prune.pdrop(), prune.sparsevlm(), prune.himap(), prune.tokencarve(), prune.illava(),
              prune.dart(), prune.divprune(), prune.visionzip(), prune.debiased_fastv(), prune.debiased_pdrop(),
              prune.debiased_himap(), prune.debiased_sparsevlm(), prune.debiased_tokencarve(),
              prune.fastv(drop_ratio=0.5), prune.debiased_illava()]
    for s in scheds:
        assert isinstance(s, tuple) and hash(s) == hash(s)
        n = 576
        for st in s:
            st = resolve_stage(st, n, 576)
            assert hash(st) == hash(st)
            assert isinstance(st.layer, int) and isinstance(st.keep, int)
            n = min(n, st.keep)
    assert prune.fastv() == prune.fastv(layer=2, keep=128)


def test_sparsevlm_raters_survive_earlier_pruning():
    """At a later stage (reduced state) the raters are still those of the ORIGINAL sequence's embeddings."""
    rng, lay, q, k, _ = _setup(12, 2, 40, 20, 2, 4)
    emb = rng.standard_normal((2, 40, 16)).astype(np.float32)
    st = prune.sparsevlm(budgets=(6,), layers=(2,), n_visual=20, recycle=False)[0]
    ctx0 = make_ctx(st, lay.state, q, k, embeds=emb)
    full = np.asarray(ctx_raters(ctx0))
    # drop every other visual token (as an earlier stage would) and re-run the rater choice on the survivors
    vis = np.asarray(lay.state.visual)
    keep = np.asarray(lay.state.valid) & ~(vis & (np.cumsum(vis, 1) % 2 == 0))
    order = np.argsort(np.where(keep, np.arange(40)[None], 100 + np.arange(40)[None]), axis=1, kind="stable")
    valid = np.take_along_axis(keep, order, 1)
    small = ts.gather(lay.state, np.asarray(order, np.int32), valid)
    ctx1 = make_ctx(st, small, q[:, :, :1].repeat(40, 2), k[:, :, :1].repeat(40, 2), embeds=emb)
    red = np.asarray(ctx_raters(ctx1))
    src0 = np.take_along_axis(np.asarray(lay.state.src), np.asarray(ctx0.row_slots), 1)
    src1 = np.take_along_axis(np.asarray(small.src), np.asarray(ctx1.row_slots), 1)
    for i in range(2):
        a = {int(s) for s, f, w in zip(src0[i], full[i], np.asarray(ctx0.row_weight)[i]) if f and w}
        b = {int(s) for s, f, w in zip(src1[i], red[i], np.asarray(ctx1.row_weight)[i]) if f and w}
        assert a == b and a


def test_pure_functions_under_vmap_and_jit():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(13)
    logits = jnp.asarray(rng.standard_normal((3, 2, 4, 1, 10)), jnp.float32)  # (G, B, N, R, T)
    w = jnp.ones((3, 2, 1))
    cand = jnp.ones((3, 2, 10), bool)
    v = jax.vmap(prune.fastv_scores)(logits, w, cand)
    np.testing.assert_allclose(v[1], prune.fastv_scores(logits[1], w[1], cand[1]), rtol=1e-6)
    x = jnp.asarray(rng.standard_normal((3, 2, 12, 5)), jnp.float32)
    ok = jnp.ones((3, 2, 12), bool)
    c, m, _ = jax.jit(jax.vmap(lambda a, b: prune.density_peak_merge(a, b, 3)))(x, ok)
    c1, m1, _ = prune.density_peak_merge(x[2], ok[2], 3)
    np.testing.assert_array_equal(c[2], c1)
    np.testing.assert_allclose(m[2], m1, rtol=1e-5, atol=1e-6)
    s = jax.jit(jax.vmap(lambda sc, cd: prune.top_k_slots(sc, cd, 4)))(v, cand)
    assert s.shape == (3, 2, 4)


def test_text_only_row_keeps_nothing_and_stays_finite():
    rng = np.random.default_rng(14)
    lay = layout(rng, 2, 36, 20, n_vis_per_row=[20, 0])
    q, k = random_qk(rng, 2, 2, 36, 4)
    emb = rng.standard_normal((2, 36, 16)).astype(np.float32)
    keys = rng.standard_normal((2, 36, 2, 4)).astype(np.float32)
    stages = [prune.fastv(keep=4)[0], prune.himap(text_keep=6, image_keep=3)[0],
              prune.sparsevlm(budgets=(6,), layers=(2,), n_visual=20)[0], prune.tokencarve(keep=4)[0],
              prune.illava(layers=(3,), keep_ratio=0.5, n_visual=20)[0], prune.dart(keep=8)[0],
              prune.divprune(keep=4)[0]]
    for st in stages:
        sel, _ = _run(st, lay, q, k, embeds=emb, keys=keys)
        assert (np.asarray(sel.slots[1]) == -1).all(), st
        assert (np.asarray(sel.slots[0]) >= 0).sum() == st.keep, st
        if sel.x is not None:
            assert np.isfinite(np.asarray(sel.x)).all(), st
