"""Conversion rules shared by every family: the rule helper and the Llama / Qwen2 text decoder's rules."""

from __future__ import annotations

from converters.core import Rule
from jaxvlm.config import TextConfig

LINEAR = (1, 0)  # HF Linear [out, in] -> [in, out]


def prefixed_rule(path: str, prefixes, name: str, hf_shape, perm=None) -> Rule:
    """A Rule whose HF key in each layout is that layout's prefix + `name`."""
    return Rule(path=path, keys=tuple(p + name for p in prefixes), hf_shape=tuple(hf_shape), perm=perm)


def text_rules(tc: TextConfig, prefixes, head_prefixes) -> list[Rule]:
    """Rules of decoder.weight_shapes(tc): `prefixes` lead to the decoder (`...layers.{i}...`), `head_prefixes`
    to the untied lm_head. Bias rules are harmless for bias-free configs (rules without a target are unused)."""
    D, F, V, N, K, H = tc.hidden_size, tc.intermediate_size, tc.vocab_size, tc.num_heads, tc.num_kv_heads, tc.head_dim
    lt = "layers.{i}."

    def rule(path, name, hf_shape, perm=None):
        return prefixed_rule(f"text/{path}", prefixes, name, hf_shape, perm)

    rules = [
        rule("embed", "embed_tokens.weight", (V, D)),
        rule("norm", "norm.weight", (D,)),
        rule("layers/attn_norm", lt + "input_layernorm.weight", (D,)),
        rule("layers/wo", lt + "self_attn.o_proj.weight", (D, N * H), LINEAR),
        rule("layers/mlp_norm", lt + "post_attention_layernorm.weight", (D,)),
        rule("layers/w_gate", lt + "mlp.gate_proj.weight", (F, D), LINEAR),
        rule("layers/w_up", lt + "mlp.up_proj.weight", (F, D), LINEAR),
        rule("layers/w_down", lt + "mlp.down_proj.weight", (D, F), LINEAR),
    ]
    for x, heads in (("q", N), ("k", K), ("v", K)):
        rules.append(rule(f"layers/w{x}", lt + f"self_attn.{x}_proj.weight", (heads * H, D), LINEAR))
        rules.append(rule(f"layers/b{x}", lt + f"self_attn.{x}_proj.bias", (heads * H,)))
    if not tc.tie_word_embeddings:
        rules.append(prefixed_rule("text/lm_head", head_prefixes, "weight", (V, D), LINEAR))
    return rules


def tied_head_ignore(tc: TextConfig) -> tuple[str, ...]:
    """A tied head may or may not be written; it is the embedding either way."""
    return (r"(^|\.)lm_head\.weight$",) if tc.tie_word_embeddings else ()
