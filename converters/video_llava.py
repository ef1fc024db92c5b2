"""Conversion table of VideoLlavaForConditionalGeneration (format: converters/core.py docstring).

LLaVA-1.5's table (converters/llava.py: four key layouts) with its vision tower renamed twice: the image tower
(jax "vision/...") under `image_tower.` and the video tower (jax "video_tower/...") under `video_tower.`, in
every layout: hub `image_tower.vision_model.*` (LanguageBind/Video-LLaVA-7B-hf), save_pretrained
`image_tower.*` (transformers 5.24), memory `model.image_tower.*` (and `model.image_tower.vision_model.*`).
"""

from __future__ import annotations

import dataclasses

from converters import llava
from converters.core import Rule, Table
from jaxvlm.models.video_llava import VideoLlavaConfig


def _tower(rule: Rule, path_root: str, key_root: str) -> Rule:
    return dataclasses.replace(rule, path=path_root + rule.path[len("vision"):],
                               keys=tuple(k.replace("vision_tower.", key_root + ".", 1) for k in rule.keys))


def table(cfg: VideoLlavaConfig) -> Table:
    base = llava.table(cfg)
    rules = []
    for rule in base.rules:
        if rule.path.startswith("vision/"):
            rules += [_tower(rule, "vision", "image_tower"), _tower(rule, "video_tower", "video_tower")]
        else:
            rules.append(rule)
    return Table(layouts=base.layouts, rules=tuple(rules), ignore=base.ignore)
