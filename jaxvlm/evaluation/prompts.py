"""The chat template of an evaluation, picked from the model family (no flag).

- LLaVA-1.5 (`llava`): conv_vicuna_v1 exactly as LLaVA's eval loaders build it: `"<image>\\n" + sample.prompt`
  as the user turn (llava/eval/model_vqa_loader.py), no image token for a text-only sample
  (model_vqa_science.py). LLaVA-1.5 has no video input: a video sample is a UserError.
- Qwen2-VL / Qwen2.5-VL: the tokenizer's chat template with one user turn `[image | video, text]`
  (what `processor.apply_chat_template` renders for the Hub's instruct checkpoints).
"""

from __future__ import annotations

from jaxvlm.errors import UserError
from jaxvlm.evaluation.base import Sample
from jaxvlm.processor import llava_prompt


def media_kind(sample: Sample) -> str | None:
    """"video", "image" or None (text only)."""
    return "video" if sample.video is not None else "image" if sample.image is not None else None


def check_family(family: str, samples: list[Sample], benchmark: str) -> None:
    """Refuse (before the model loads) what the model family cannot take."""
    if family == "llava" and any(s.video is not None for s in samples):
        raise UserError(f"{benchmark}: LLaVA-1.5 takes no video input; evaluate video sets with a Qwen2-VL or "
                        "Qwen2.5-VL checkpoint")


def build_prompt(processor, sample: Sample) -> str:
    """The full prompt text of `sample` for `processor` (a jaxvlm.Processor); media tokens not yet expanded."""
    kind = media_kind(sample)
    if processor.family == "llava":
        if kind == "video":
            raise UserError(f"{sample.source}: LLaVA-1.5 takes no video input")
        token = getattr(processor.hf, "image_token", "<image>") if kind == "image" else None
        return llava_prompt(sample.prompt, image_token=token)
    template = getattr(processor.hf, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise UserError(f"the {processor.family} processor has no chat template (chat_template.jinja / "
                        "tokenizer_config.json's chat_template); pass --processor with the instruct model's files")
    content = ([{"type": kind}] if kind else []) + [{"type": "text", "text": sample.prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                   tokenize=False)
