"""Checkpoint conversion as data: Hugging Face safetensors checkpoints <-> jaxvlm weight pytrees.

One module per family holds its conversion table (`table(config) -> core.Table`); `core` interprets tables
generically (format documented in converters/core.py). To add a family: write `converters/<family>.py`
with `table(config)` and register its module here.

    python -m converters SRC DST [--dtype bfloat16]     # HF dir -> jaxvlm dir (also `jaxvlm convert`)
"""

from __future__ import annotations

import importlib

from converters.core import ConversionError, DictReader, Rule, SafetensorsReader, Table, convert, export, plan

# config.family -> module providing `table(config)`.
TABLE_MODULES = {
    "llava": "converters.llava",
    "llava_next": "converters.llava_next",
    "video_llava": "converters.video_llava",
    "qwen2_vl": "converters.qwen_vl",
    "qwen2_5_vl": "converters.qwen_vl",
}


def table_for(config) -> Table:
    """The conversion table of a parsed family config."""
    if config.family not in TABLE_MODULES:
        raise ValueError(f"no conversion table for family {config.family!r}; have {sorted(TABLE_MODULES)}")
    return importlib.import_module(TABLE_MODULES[config.family]).table(config)


__all__ = ["ConversionError", "DictReader", "Rule", "SafetensorsReader", "Table", "convert", "export", "plan",
           "table_for", "TABLE_MODULES"]
