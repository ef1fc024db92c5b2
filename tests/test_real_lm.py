"""Real LMs of both families through jaxvlm.gguf (slow): the Paris golden checks, logits parity with
transformers on the dequantised weights, and the VLM shells around them. Skipped, with the reason, only when
a weight package or gguf cannot be had (experiments.real_lm says how to get them)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvlm.errors import UserError

pytestmark = pytest.mark.slow


def lm_or_skip(name: str):
    from experiments import real_lm

    try:
        real_lm.gguf_path(name)
    except UserError as e:
        pytest.skip(str(e))
    return real_lm.load_lm(name)


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5"])
def test_golden_paris(name):
    from experiments import real_lm

    lm_or_skip(name)
    check = real_lm.golden_check(name)
    want = real_lm.CHECKS[name]
    assert tuple(check["ids"]) == want.ids
    assert check["next_token"] == want.next_token and check["next_text"] == want.text


def hf_reference(lm):
    """transformers' LlamaForCausalLM / Qwen2ForCausalLM holding the same dequantised weights (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from jaxvlm import gguf

    d = gguf.hf_text_config(lm.cfg, lm.arch)
    cfg_cls, cls = (LlamaConfig, LlamaForCausalLM) if lm.arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    model = cls(cfg_cls(**d)).float().eval()
    w, cfg = lm.weights, lm.cfg
    sd = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["norm"]}
    if "lm_head" in w:
        sd["lm_head.weight"] = np.asarray(w["lm_head"]).T
    L = w["layers"]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = L["attn_norm"][i]
        sd[p + "post_attention_layernorm.weight"] = L["mlp_norm"][i]
        for proj in "qkv":
            a = np.asarray(L[f"w{proj}"][i])
            sd[p + f"self_attn.{proj}_proj.weight"] = a.reshape(a.shape[0], -1).T
            if f"b{proj}" in L:
                sd[p + f"self_attn.{proj}_proj.bias"] = np.asarray(L[f"b{proj}"][i]).reshape(-1)
        sd[p + "self_attn.o_proj.weight"] = np.asarray(L["wo"][i]).reshape(-1, cfg.hidden_size).T
        for hf, ours in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down")):
            sd[p + f"mlp.{hf}.weight"] = np.asarray(L[ours][i]).T
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied lm_head
    return model


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5"])
def test_parity_with_transformers(name):
    """600-token prompts (RoPE at real distances), last-position logits of the whole vocabulary."""
    import torch

    from experiments import real_lm

    lm = lm_or_skip(name)
    ids = np.random.default_rng(0).integers(200, 20000, (1, 600))
    with torch.no_grad():
        ref = hf_reference(lm)(torch.as_tensor(ids)).logits[:, -1].numpy()
    got = real_lm.causal_logits(lm.weights, lm.cfg, ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())
    assert got.argmax() == ref.argmax()


def test_smollm2_unpermute_matches_transformers_gguf_loader():
    """transformers un-permutes llama q/k by its own code: its SmolLM2 equals ours tensor for tensor."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = lm_or_skip("smollm2")
    pytest.importorskip("accelerate")
    model = AutoModelForCausalLM.from_pretrained(str(lm.path.parent), gguf_file=lm.path.name, dtype=torch.float32)
    sd = model.state_dict()
    h, d = lm.cfg.head_dim, lm.cfg.hidden_size
    for i in (0, 17):
        q = sd[f"model.layers.{i}.self_attn.q_proj.weight"].numpy()
        k = sd[f"model.layers.{i}.self_attn.k_proj.weight"].numpy()
        np.testing.assert_array_equal(np.asarray(lm.weights["layers"]["wq"][i]), q.T.reshape(d, -1, h))
        np.testing.assert_array_equal(np.asarray(lm.weights["layers"]["wk"][i]), k.T.reshape(d, -1, h))


def test_llava_shell_around_smollm2_recency_and_calibrated_trend():
    """LLaVA shell (SmolLM2 LM, random CLIP): FastV's layer-1 score rises steeply with position, the raw
    FastV-64 selection sits in the image's last rows, a trend calibrated on other photos spreads it."""
    from experiments import assets, real_lm, shell_bias

    lm_or_skip("smollm2")
    params, proc = real_lm.shell("smollm2")
    report, _ = shell_bias.measure(params, proc, "test", layers=(1,), keep=64, photos=assets.PHOTOS[:4])
    r = report["layers"]["1"]
    assert r["rank_corr_position_score"] > 0.5 and r["own_trend_ratio_over_span"] > 5
    assert abs(r["rank_corr_after"]["own_calibrated"]) < abs(r["rank_corr_after"]["release_as_shipped"])
    last = {k: np.mean([x["last_third"] for x in v]) for k, v in report["selection"].items()}
    assert last["raw"] > 0.8 and last["own_other_half"] < last["release"] < last["raw"]
    assert all(x["padding"] == 0 for x in report["selection"]["release"])
