"""Conversion table of LlavaForConditionalGeneration (format: converters/core.py docstring).

Key layouts (prefixes of the three parts; the rest of each key is the module path inside the part):
    hub               language_model.model.*   language_model.lm_head.*   vision_tower.vision_model.*
                      multi_modal_projector.*                            (llava-hf/* files on the Hub)
    save_pretrained   language_model.model.*   language_model.lm_head.*   vision_tower.*
                      multi_modal_projector.*                            (what transformers 5.24 writes)
    memory            model.language_model.*   lm_head.*                  model.vision_tower.*
                      model.multi_modal_projector.*                      (v5 module names / state_dict())
    memory_hubvision  as memory, vision under model.vision_tower.vision_model.* (other v5 releases)
"""

from __future__ import annotations

from converters.core import Rule, Table
from converters.decoder import LINEAR, prefixed_rule, text_rules, tied_head_ignore
from jaxvlm.models.llava import LlavaConfig

LAYOUTS = ("hub", "save_pretrained", "memory", "memory_hubvision")
PREFIX = {
    "text": ("language_model.model.", "language_model.model.", "model.language_model.", "model.language_model."),
    "lm_head": ("language_model.lm_head.", "language_model.lm_head.", "lm_head.", "lm_head."),
    "vision": ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.", "model.vision_tower.vision_model."),
    "projector": ("multi_modal_projector.", "multi_modal_projector.", "model.multi_modal_projector.",
                  "model.multi_modal_projector."),
}
# Non-persistent buffers some exports still carry.
IGNORE = (r"rotary_emb\.inv_freq$", r"embeddings\.position_ids$")
T = LINEAR


def _rule(path: str, part: str, name: str, hf_shape, perm=None) -> Rule:
    return prefixed_rule(path, PREFIX[part], name, hf_shape, perm)


def table(cfg: LlavaConfig) -> Table:
    tc, vc = cfg.text, cfg.vision
    D = tc.hidden_size
    Dv, Fv, Nv, Hv, p, C = vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.head_dim, vc.patch_size, vc.num_channels
    Dp = Dv * len(cfg.feature_layers)
    lv = "encoder.layers.{i}."
    rules = text_rules(tc, PREFIX["text"], PREFIX["lm_head"]) + [
        _rule("projector/w1", "projector", "linear_1.weight", (D, Dp), T),
        _rule("projector/b1", "projector", "linear_1.bias", (D,)),
        _rule("projector/w2", "projector", "linear_2.weight", (D, D), T),
        _rule("projector/b2", "projector", "linear_2.bias", (D,)),
        _rule("vision/patch_embed", "vision", "embeddings.patch_embedding.weight", (Dv, C, p, p), (1, 2, 3, 0)),
        _rule("vision/class_embed", "vision", "embeddings.class_embedding", (Dv,)),
        _rule("vision/pos_embed", "vision", "embeddings.position_embedding.weight", (vc.num_positions, Dv)),
        _rule("vision/pre_norm_scale", "vision", "pre_layrnorm.weight", (Dv,)),
        _rule("vision/pre_norm_bias", "vision", "pre_layrnorm.bias", (Dv,)),
        _rule("vision/post_norm_scale", "vision", "post_layernorm.weight", (Dv,)),
        _rule("vision/post_norm_bias", "vision", "post_layernorm.bias", (Dv,)),
        _rule("vision/layers/attn_norm_scale", "vision", lv + "layer_norm1.weight", (Dv,)),
        _rule("vision/layers/attn_norm_bias", "vision", lv + "layer_norm1.bias", (Dv,)),
        _rule("vision/layers/mlp_norm_scale", "vision", lv + "layer_norm2.weight", (Dv,)),
        _rule("vision/layers/mlp_norm_bias", "vision", lv + "layer_norm2.bias", (Dv,)),
        _rule("vision/layers/wo", "vision", lv + "self_attn.out_proj.weight", (Dv, Nv * Hv), T),
        _rule("vision/layers/bo", "vision", lv + "self_attn.out_proj.bias", (Dv,)),
        _rule("vision/layers/w_fc1", "vision", lv + "mlp.fc1.weight", (Fv, Dv), T),
        _rule("vision/layers/b_fc1", "vision", lv + "mlp.fc1.bias", (Fv,)),
        _rule("vision/layers/w_fc2", "vision", lv + "mlp.fc2.weight", (Dv, Fv), T),
        _rule("vision/layers/b_fc2", "vision", lv + "mlp.fc2.bias", (Dv,)),
    ]
    for x in "qkv":
        rules.append(_rule(f"vision/layers/w{x}", "vision", lv + f"self_attn.{x}_proj.weight", (Nv * Hv, Dv), T))
        rules.append(_rule(f"vision/layers/b{x}", "vision", lv + f"self_attn.{x}_proj.bias", (Nv * Hv,)))
    return Table(layouts=LAYOUTS, rules=tuple(rules), ignore=IGNORE + tied_head_ignore(tc))
