"""Conversion table of LlavaNextForConditionalGeneration (format: converters/core.py docstring).

LLaVA-1.5's table (converters/llava.py: the same four key layouts for the text model, the CLIP tower and the
projector) plus the learned row-end embedding, stored at the top level of the checkpoint:
    hub, save_pretrained   image_newline        (llava-hf/llava-v1.6-* files; what transformers 5.24 writes)
    memory, memory_hubvision   model.image_newline   (v5 module names / state_dict())
"""

from __future__ import annotations

from converters import llava
from converters.core import Rule, Table
from converters.decoder import prefixed_rule
from jaxvlm.models.llava_next import LlavaNextConfig

NEWLINE_PREFIXES = ("", "", "model.", "model.")


def table(cfg: LlavaNextConfig) -> Table:
    base = llava.table(cfg)
    newline: Rule = prefixed_rule("image_newline", NEWLINE_PREFIXES, "image_newline", (cfg.text.hidden_size,))
    return Table(layouts=base.layouts, rules=base.rules + (newline,), ignore=base.ignore)
