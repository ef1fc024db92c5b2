"""GGUF language models -> jaxvlm decoder weights (`jaxvlm.models.decoder` layout) and a `TextConfig`.

    weights, cfg, arch = jaxvlm.gguf.load_text("SmolLM2-135M-Instruct.Q4_1.gguf")   # arch "llama" | "qwen2"

Every tensor is dequantised to float32 numpy with the `gguf` package (optional extra "analysis"). GGUF stores
matrices as numpy (out, in) like Hugging Face's Linear weights; the llama converter interleaves the q and k
rows of each head for its rotary kernel, so they are un-permuted back to Hugging Face order (`unpermute`);
Qwen2 files are written without that permutation and carry q/k/v biases and (0.5B aside) an untied lm_head.
Metadata keys are `<arch>.<key>` (llama.cpp's names); a file of another architecture or with RoPE scaling is
refused with a UserError naming the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxvlm.config import RopeConfig, TextConfig
from jaxvlm.errors import UserError, require_module

ARCHS = ("llama", "qwen2")
PERMUTED_QK = {"llama": True, "qwen2": False}  # llama.cpp's converter interleaves q/k rows for llama only


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """GGUF llama q/k rows (out, in) -> Hugging Face row order (inverse of llama.cpp's `permute`)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face q/k rows -> GGUF llama order (what llama.cpp's converter writes; used to write test files)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reader(path):
    gguf = require_module("gguf", "analysis", "reading GGUF weights")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader, name: str, default=None):
    """A scalar or string metadata value; `default` when absent (None: required)."""
    f = reader.fields.get(name)
    if f is None:
        if default is None:
            raise UserError(f"{reader.path}: GGUF metadata lacks {name!r}")
        return default
    import gguf

    part = f.parts[f.data[0]]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    value = part[0]
    return value.item() if hasattr(value, "item") else value


def architecture(path) -> str:
    return str(_field(_reader(path), "general.architecture"))


def text_config(reader, arch: str, vocab_size: int, tied: bool) -> TextConfig:
    """The decoder's config from `<arch>.*` metadata; head_dim from `attention.key_length` when present."""
    key = lambda k: f"{arch}.{k}"  # noqa: E731
    scaling = _field(reader, key("rope.scaling.type"), "none")
    if scaling not in ("none", ""):
        raise UserError(f"{reader.path}: {key('rope.scaling.type')} = {scaling!r} is not implemented")
    d = int(_field(reader, key("embedding_length")))
    n = int(_field(reader, key("attention.head_count")))
    return TextConfig(
        vocab_size=int(vocab_size),
        hidden_size=d,
        intermediate_size=int(_field(reader, key("feed_forward_length"))),
        num_layers=int(_field(reader, key("block_count"))),
        num_heads=n,
        num_kv_heads=int(_field(reader, key("attention.head_count_kv"), n)),
        head_dim=int(_field(reader, key("attention.key_length"), d // n)),
        rms_norm_eps=float(_field(reader, key("attention.layer_norm_rms_epsilon"))),
        rope=RopeConfig(theta=float(_field(reader, key("rope.freq_base"), 10000.0))),
        attention_bias=arch == "qwen2",
        tie_word_embeddings=tied,
    )


def load_text(path) -> tuple[dict, TextConfig, str]:
    """(weights as numpy float32 in the decoder layout, TextConfig, architecture) of a Llama / Qwen2 GGUF.

    weights: embed (V, D), norm (D,), [lm_head (D, V) when untied], layers {attn_norm (L, D), wq (L, D, N, H),
    wk/wv (L, D, K, H), [bq (L, N, H), bk/bv (L, K, H)], wo (L, N, H, D), mlp_norm (L, D), w_gate/w_up (L, D, F),
    w_down (L, F, D)}.
    """
    import gguf

    reader = _reader(path)
    arch = str(_field(reader, "general.architecture"))
    if arch not in ARCHS:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported (have {ARCHS})")
    raw = {t.name: t for t in reader.tensors}

    def tensor(name: str) -> np.ndarray:
        if name not in raw:
            raise UserError(f"{path}: GGUF tensor {name!r} is missing")
        t = raw[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)

    embed = tensor("token_embd.weight")
    tied = "output.weight" not in raw
    cfg = text_config(reader, arch, embed.shape[0], tied)
    d, n, kh, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qk = unpermute if PERMUTED_QK[arch] else (lambda w, heads: w)
    layers: dict[str, list] = {}

    def put(k, v):
        layers.setdefault(k, []).append(v)

    for i in range(cfg.num_layers):
        t = lambda name: tensor(f"blk.{i}.{name}")  # noqa: E731
        put("attn_norm", t("attn_norm.weight"))
        put("wq", qk(t("attn_q.weight"), n).T.reshape(d, n, h))
        put("wk", qk(t("attn_k.weight"), kh).T.reshape(d, kh, h))
        put("wv", t("attn_v.weight").T.reshape(d, kh, h))
        put("wo", t("attn_output.weight").T.reshape(n, h, d))
        put("mlp_norm", t("ffn_norm.weight"))
        put("w_gate", t("ffn_gate.weight").T)
        put("w_up", t("ffn_up.weight").T)
        put("w_down", t("ffn_down.weight").T)
        if cfg.attention_bias:
            put("bq", qk(t("attn_q.bias"), n).reshape(n, h))
            put("bk", qk(t("attn_k.bias"), kh).reshape(kh, h))
            put("bv", t("attn_v.bias").reshape(kh, h))
    weights = {"embed": embed, "norm": tensor("output_norm.weight"),
               "layers": {k: np.stack(v) for k, v in layers.items()}}
    if not tied:
        weights["lm_head"] = tensor("output.weight").T
    return weights, cfg, arch


def hf_text_config(cfg: TextConfig, arch: str) -> dict:
    """The Hugging Face text-config dict (LlamaConfig / Qwen2Config fields) describing `cfg`."""
    d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.num_kv_heads, "rms_norm_eps": cfg.rms_norm_eps,
         "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope.theta},
         "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": "silu"}
    if arch == "llama":
        d.update(head_dim=cfg.head_dim, attention_bias=cfg.attention_bias)
    return d


def tokenizer(path):
    """The GGUF's own tokenizer through transformers (`from_pretrained(dir, gguf_file=name)`)."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
