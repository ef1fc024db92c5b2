"""jaxvlm.gguf on tiny GGUF files written here with gguf's GGUFWriter (llama and qwen2, float32 tensors):
exact round trip of every weight (q/k un-permuted for llama) and logits equal to transformers' model."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="pip install 'jaxvlm[analysis]' (gguf)")
torch = pytest.importorskip("torch")

from jaxvlm import gguf as jg  # noqa: E402
from jaxvlm.errors import UserError  # noqa: E402

VOCAB, D, F, LAYERS, HEADS, KV = 96, 64, 96, 2, 4, 2


def hf_model(arch: str, seed: int = 0):
    """A tiny float32 LlamaForCausalLM / Qwen2ForCausalLM with every weight (norms, biases) drawn N(0, 0.1)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV, rms_norm_eps=1e-5, max_position_embeddings=1024)
    if arch == "llama":
        cfg = LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e5}, tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)
        model = Qwen2ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
    return model.float().eval()


def write_gguf(path, model, arch: str) -> None:
    """The model as llama.cpp's converter lays it out: blk.* names, llama q/k rows permuted, float32."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(1024)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    perm = jg.permute if arch == "llama" else (lambda a, heads: a)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "self_attn.v_proj.bias": "attn_v.bias"}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for hf, g in names.items():
            if p + hf in sd:
                w.add_tensor(f"blk.{i}.{g}", sd[p + hf])
        for proj, heads in (("q", HEADS), ("k", KV)):
            w.add_tensor(f"blk.{i}.attn_{proj}.weight", perm(sd[f"{p}self_attn.{proj}_proj.weight"], heads))
            if f"{p}self_attn.{proj}_proj.bias" in sd:
                w.add_tensor(f"blk.{i}.attn_{proj}.bias", perm(sd[f"{p}self_attn.{proj}_proj.bias"], heads))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def jax_logits(weights, cfg, ids: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from jaxvlm.layers import causal_mask
    from jaxvlm.models import decoder

    b, t = ids.shape
    cos, sin = decoder.rotary(jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (1, b, t)), cfg)
    x = jnp.asarray(weights["embed"])[ids]
    w = {k: jnp.asarray(v) for k, v in weights.items() if k != "layers"}
    x, _ = decoder.run_layers({k: jnp.asarray(v) for k, v in weights["layers"].items()}, x, cos, sin,
                              causal_mask(jnp.ones((b, t), bool)), cfg)
    return np.asarray(decoder.final_logits(w, x, cfg))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_round_trip_and_logits(tmp_path, arch):
    model = hf_model(arch)
    path = tmp_path / f"tiny-{arch}.gguf"
    write_gguf(path, model, arch)
    weights, cfg, got_arch = jg.load_text(path)
    assert got_arch == arch and jg.architecture(path) == arch
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (LAYERS, D, HEADS, KV, D // HEADS)
    assert cfg.attention_bias == (arch == "qwen2") and cfg.tie_word_embeddings == (arch == "llama")
    assert cfg.rope.theta == model.config.rope_parameters["rope_theta"]
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    h = D // HEADS
    # exact round trip (f32 tensors): q rows back in Hugging Face order, layout (D, N, H)
    np.testing.assert_array_equal(weights["layers"]["wq"][1], sd["model.layers.1.self_attn.q_proj.weight"].T.reshape(D, HEADS, h))
    np.testing.assert_array_equal(weights["layers"]["wk"][0], sd["model.layers.0.self_attn.k_proj.weight"].T.reshape(D, KV, h))
    np.testing.assert_array_equal(weights["layers"]["w_down"][1], sd["model.layers.1.mlp.down_proj.weight"].T)
    if arch == "qwen2":
        np.testing.assert_array_equal(weights["layers"]["bk"][1], sd["model.layers.1.self_attn.k_proj.bias"].reshape(KV, h))
        np.testing.assert_array_equal(weights["lm_head"], sd["lm_head.weight"].T)
    else:
        assert "lm_head" not in weights and "bq" not in weights["layers"]
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 300))
    with torch.no_grad():
        ref = model(torch.as_tensor(ids)).logits.numpy()
    got = jax_logits(weights, cfg, ids)
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_gguf_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"none\.gguf does not exist"):
        jg.load_text(tmp_path / "none.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match=r"bad\.gguf: not a readable GGUF"):
        jg.load_text(bad)
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match=r"architecture 'gpt2' is not supported"):
        jg.load_text(tmp_path / "gpt2.gguf")


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_permute_inverts(heads):
    w = np.random.default_rng(heads).standard_normal((heads * 8, 5))
    np.testing.assert_array_equal(jg.unpermute(jg.permute(w, heads), heads), w)
    assert not np.array_equal(jg.permute(w, heads), w)
