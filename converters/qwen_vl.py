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
from converters.decoder import LINEAR, prefixed_rule, text_rules, tied_head_ignore
from jaxvlm.models.qwen_vl import QwenVLConfig

LAYOUTS = ("hub", "memory")
PREFIX = {
    "text": ("model.", "model.language_model."),
    "lm_head": ("lm_head.", "lm_head."),
    "vision": ("visual.", "model.visual."),
}
IGNORE = (r"rotary_emb\.inv_freq$", r"rotary_pos_emb\.inv_freq$")
T = LINEAR


def _rule(path: str, part: str, name: str, hf_shape, perm=None) -> Rule:
    return prefixed_rule(path, PREFIX[part], name, hf_shape, perm)


def table(cfg: QwenVLConfig) -> Table:
    tc, vc = cfg.text, cfg.vision
    Dv, Fv, Nv, Hv = vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.head_dim
    C, tp, p, out = vc.in_channels, vc.temporal_patch_size, vc.patch_size, vc.out_hidden_size
    MD = vc.merge_unit * Dv
    lv = "blocks.{i}."
    rules = text_rules(tc, PREFIX["text"], PREFIX["lm_head"]) + [
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
    return Table(layouts=LAYOUTS, rules=tuple(rules), ignore=IGNORE + tied_head_ignore(tc))
