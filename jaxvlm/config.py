"""Static model configuration: frozen, hashable dataclasses parsed from Hugging Face config.json dicts.

Every field of a Hugging Face config is either used, accepted as benign (documented in an allow-list),
or refused with an error naming it. Configs are hashable so they can be jit-static.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from jaxvlm.errors import UserError


class UnsupportedConfigError(UserError):
    """A config attribute (or value) the port does not implement."""


# Fields every transformers PretrainedConfig may carry that do not change the computation.
GENERIC_BENIGN_FIELDS = frozenset(
    {
        "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
        "use_cache", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
        "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward",
        "pruned_heads", "id2label", "label2id", "problem_type", "bos_token_id", "eos_token_id",
        "pad_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task",
        "tokenizer_class", "prefix", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
        "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
        "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
        "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
        "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens", "cross_attention_hidden_size", "tf_legacy_loss",
        "use_bfloat16", "ignore_index", "initializer_range", "initializer_factor", "pretraining_tp",
        "max_position_embeddings", "attention_dropout", "dropout", "attention_probs_dropout_prob",
        "hidden_dropout_prob", "embd_pdrop", "resid_pdrop", "mlp_bias", "image_seq_length",
        "multimodal_projector_bias", "_attn_implementation_autoset", "attn_implementation", "gradient_checkpointing",
        "chat_template", "base_config_key", "sub_configs", "projection_dim", "output_router_logits",
    }
)


def check_fields(section: str, fields: Mapping[str, Any], known: Iterable[str], benign: Iterable[str] = ()) -> None:
    """Raise UnsupportedConfigError naming every field of `fields` that is neither used nor benign."""
    allowed = set(known) | set(benign) | GENERIC_BENIGN_FIELDS
    unknown = sorted(k for k in fields if k not in allowed)
    if unknown:
        raise UnsupportedConfigError(
            f"{section}: config attribute(s) {unknown} are not implemented by jaxvlm; refusing to load "
            "a model whose behaviour could silently differ."
        )


def require(section: str, cond: bool, message: str) -> None:
    """Raise UnsupportedConfigError(f"{section}: {message}") unless `cond`."""
    if not cond:
        raise UnsupportedConfigError(f"{section}: {message}")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: `inv_freq` rules of transformers' rope types `default`, `linear`, `llama3`.

    `mrope_section` (Qwen M-RoPE) splits the head_dim/2 frequencies into (t, h, w) chunks.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    mrope_section: tuple[int, ...] | None = None


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
ROPE_KEYS = {
    "rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings", "mrope_section", "partial_rotary_factor",
}


def parse_rope(section: str, d: Mapping[str, Any]) -> RopeConfig:
    """Read RoPE settings from `rope_parameters` (transformers 5) or `rope_scaling`+`rope_theta` (4.x)."""
    params = dict(d.get("rope_parameters") or {})
    legacy = d.get("rope_scaling") or {}
    for k, v in legacy.items():
        params.setdefault(k, v)
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    mrope = params.get("mrope_section")
    if rope_type == "mrope":  # Qwen2-VL 4.x configs name M-RoPE as a rope "type".
        rope_type = "default"
    check_fields(f"{section}.rope_parameters", params, ROPE_KEYS)
    require(section, rope_type in SUPPORTED_ROPE_TYPES, f"rope_type {rope_type!r} is not implemented "
            f"(supported: {SUPPORTED_ROPE_TYPES})")
    require(section, params.get("partial_rotary_factor", 1.0) == 1.0, "partial_rotary_factor != 1 is not implemented")
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
        mrope_section=tuple(int(s) for s in mrope) if mrope else None,
    )


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A Llama / Qwen2 decoder-only language model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    attention_bias: bool  # q/k/v projection biases (Qwen2: True)
    tie_word_embeddings: bool


TEXT_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "rope_scaling", "rope_theta",
    "attention_bias", "tie_word_embeddings", "hidden_act",
}
# Accepted because they do not change the computation for the models we load (checked by value below).
TEXT_BENIGN = {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "image_token_id",
               "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id"}


def parse_text_config(
    d: Mapping[str, Any],
    *,
    section: str = "text_config",
    default_attention_bias: bool = False,
    tie_word_embeddings: bool | None = None,
    extra_benign: Iterable[str] = (),
) -> TextConfig:
    """Parse a Llama/Qwen2 text config dict (defaults follow transformers' LlamaConfig)."""
    check_fields(section, d, TEXT_KEYS, TEXT_BENIGN | set(extra_benign))
    require(section, d.get("hidden_act", "silu") == "silu", f"hidden_act {d.get('hidden_act')!r} != 'silu'")
    require(section, not d.get("use_sliding_window", False), "use_sliding_window=True is not implemented")
    # mlp_bias is in GENERIC_BENIGN_FIELDS (harmless at its default False); True would add biases we do not load.
    require(section, not d.get("mlp_bias", False), "mlp_bias=True is not implemented")
    layer_types = d.get("layer_types")
    require(section, not layer_types or set(layer_types) == {"full_attention"},
            "layer_types other than full_attention are not implemented")
    hidden = int(d.get("hidden_size", 4096))
    heads = int(d.get("num_attention_heads", 32))
    kv_heads = d.get("num_key_value_heads")
    return TextConfig(
        vocab_size=int(d.get("vocab_size", 32000)),
        hidden_size=hidden,
        intermediate_size=int(d.get("intermediate_size", 11008)),
        num_layers=int(d.get("num_hidden_layers", 32)),
        num_heads=heads,
        num_kv_heads=int(kv_heads if kv_heads is not None else heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope=parse_rope(section, d),
        attention_bias=bool(d.get("attention_bias", default_attention_bias)),
        tie_word_embeddings=bool(
            d.get("tie_word_embeddings", False) if tie_word_embeddings is None else tie_word_embeddings
        ),
    )
