"""Conversion table of Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration
(format: converters/core.py docstring).

Key layouts (prefixes of the three parts; the rest of each key is the module path inside the part):
    hub      model.*                  visual.*          lm_head.*   (Qwen/* files on the Hub; also what
                                                                     transformers 5.24 save_pretrained writes)
    memory   model.language_model.*   model.visual.*    lm_head.*   (v5 module names / state_dict(); also what
                                                                     some 4.5x releases' save_pretrained wrote)
The merger (`visual.merger.*`) becomes the "projector" part of the jax weights.
"""

from __future__ import annotations

from converters.core import Rule, Table
from jaxvlm.models.qwen_vl import QwenVLConfig

LAYOUTS = ("hub", "memory")
PREFIX = {
    "text": ("model.", "model.language_model."),
    "lm_head": ("lm_head.", "lm_head."),
    "vision": ("visual.", "model.visual."),
}
IGNORE = (r"rotary_emb\.inv_freq$", r"rotary_pos_emb\.inv_freq$")
T = (1, 0)  # HF Linear [out, in] -> [in, out]


def _rule(path: str, part: str, name: str, hf_shape, perm=None) -> Rule:
    return Rule(path=path, keys=tuple(p + name for p in PREFIX[part]), hf_shape=tuple(hf_shape), perm=perm)


def table(cfg: QwenVLConfig) -> Table:
    tc, vc = cfg.text, cfg.vision
    D, F, V, N, K, H = tc.hidden_size, tc.intermediate_size, tc.vocab_size, tc.num_heads, tc.num_kv_heads, tc.head_dim
    Dv, Fv, Nv, Hv = vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.head_dim
    C, tp, p, out = vc.in_channels, vc.temporal_patch_size, vc.patch_size, vc.out_hidden_size
    MD = vc.merge_unit * Dv
    lt, lv = "layers.{i}.", "blocks.{i}."
    rules = [
        _rule("text/embed", "text", "embed_tokens.weight", (V, D)),
        _rule("text/norm", "text", "norm.weight", (D,)),
        _rule("text/layers/attn_norm", "text", lt + "input_layernorm.weight", (D,)),
        _rule("text/layers/wq", "text", lt + "self_attn.q_proj.weight", (N * H, D), T),
        _rule("text/layers/wk", "text", lt + "self_attn.k_proj.weight", (K * H, D), T),
        _rule("text/layers/wv", "text", lt + "self_attn.v_proj.weight", (K * H, D), T),
        _rule("text/layers/bq", "text", lt + "self_attn.q_proj.bias", (N * H,)),
        _rule("text/layers/bk", "text", lt + "self_attn.k_proj.bias", (K * H,)),
        _rule("text/layers/bv", "text", lt + "self_attn.v_proj.bias", (K * H,)),
        _rule("text/layers/wo", "text", lt + "self_attn.o_proj.weight", (D, N * H), T),
        _rule("text/layers/mlp_norm", "text", lt + "post_attention_layernorm.weight", (D,)),
        _rule("text/layers/w_gate", "text", lt + "mlp.gate_proj.weight", (F, D), T),
        _rule("text/layers/w_up", "text", lt + "mlp.up_proj.weight", (F, D), T),
        _rule("text/layers/w_down", "text", lt + "mlp.down_proj.weight", (D, F), T),
        # Conv3d (D, C, tp, p, p) over rows that are (C, tp, p, p) flattened: a (C*tp*p*p, D) matmul.
        _rule("vision/patch_embed", "vision", "patch_embed.proj.weight", (Dv, C, tp, p, p), (1, 2, 3, 4, 0)),
        _rule("vision/layers/attn_norm", "vision", lv + "norm1.weight", (Dv,)),
        _rule("vision/layers/mlp_norm", "vision", lv + "norm2.weight", (Dv,)),
        # qkv Linear (3*Nv*Hv, Dv): output rows are (3, N, H) -> (Dv, 3, N, H)
        _rule("vision/layers/wqkv", "vision", lv + "attn.qkv.weight", (3 * Nv * Hv, Dv), T),
        _rule("vision/layers/bqkv", "vision", lv + "attn.qkv.bias", (3 * Nv * Hv,)),
        _rule("vision/layers/wo", "vision", lv + "attn.proj.weight", (Dv, Nv * Hv), T),
        _rule("vision/layers/bo", "vision", lv + "attn.proj.bias", (Dv,)),
        _rule("projector/norm", "vision", "merger.ln_q.weight", (Dv,)),
        _rule("projector/fc1", "vision", "merger.mlp.0.weight", (MD, MD), T),
        _rule("projector/fc1_b", "vision", "merger.mlp.0.bias", (MD,)),
        _rule("projector/fc2", "vision", "merger.mlp.2.weight", (out, MD), T),
        _rule("projector/fc2_b", "vision", "merger.mlp.2.bias", (out,)),
    ]
    if vc.windowed:  # Qwen2.5-VL: RMSNorms, gated MLP with biases
        for name, (o, i) in (("gate", (Fv, Dv)), ("up", (Fv, Dv)), ("down", (Dv, Fv))):
            rules.append(_rule(f"vision/layers/w_{name}", "vision", lv + f"mlp.{name}_proj.weight", (o, i), T))
            rules.append(_rule(f"vision/layers/b_{name}", "vision", lv + f"mlp.{name}_proj.bias", (o,)))
    else:  # Qwen2-VL: LayerNorms, fc1/fc2 MLP
        rules += [
            _rule("vision/layers/attn_norm_bias", "vision", lv + "norm1.bias", (Dv,)),
            _rule("vision/layers/mlp_norm_bias", "vision", lv + "norm2.bias", (Dv,)),
            _rule("vision/layers/fc1", "vision", lv + "mlp.fc1.weight", (Fv, Dv), T),
            _rule("vision/layers/fc1_b", "vision", lv + "mlp.fc1.bias", (Fv,)),
            _rule("vision/layers/fc2", "vision", lv + "mlp.fc2.weight", (Dv, Fv), T),
            _rule("vision/layers/fc2_b", "vision", lv + "mlp.fc2.bias", (Dv,)),
            _rule("projector/norm_bias", "vision", "merger.ln_q.bias", (Dv,)),
        ]
    ignore = IGNORE
    if tc.tie_word_embeddings:  # a tied head may or may not be written; it is the embedding either way
        ignore = ignore + (r"(^|\.)lm_head\.weight$",)
    else:
        rules.append(_rule("text/lm_head", "lm_head", "weight", (V, D), T))
    return Table(layouts=LAYOUTS, rules=tuple(rules), ignore=ignore)
