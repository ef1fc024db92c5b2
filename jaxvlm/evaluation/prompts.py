"""The chat template of an evaluation, picked from the model family (no flag).

- LLaVA-1.5 (`llava`): conv_vicuna_v1 exactly as LLaVA's eval loaders build it: `"<image>\\n" + sample.prompt`
  as the user turn (llava/eval/model_vqa_loader.py), no image token for a text-only sample
  (model_vqa_science.py). LLaVA-1.5 has no video input: a video sample is a UserError.
- LLaVA-NeXT (`llava_next`): vicuna checkpoints get conv_vicuna_v1 as LLaVA-1.5 does (LLaVA-NeXT's own eval
  uses it for llava-v1.6-vicuna); a checkpoint whose chat template renders another turn format (Mistral's
  `[INST] ... [/INST]`, Yi's ChatML) gets that template with one user turn `[image, text]`. Vicuna = no chat
  template, or one that renders the vicuna `USER: ... ASSISTANT:` turns (the llava-hf vicuna repos ship one).
- Video-LLaVA (`video_llava`): a video sample gets conv_llava_v1 (Video-LLaVA's run_inference_video_qa.py:
  8 image tokens + "\n" + the question; transformers' port writes one `<video>` for the 8, expanded by the
  processor); an image sample conv_vicuna_v1 with `<image>\n` (its image eval scripts' --conv-mode).
- Qwen2-VL / Qwen2.5-VL: the tokenizer's chat template with one user turn `[image | video, text]`
  (what `processor.apply_chat_template` renders for the Hub's instruct checkpoints).
"""

from __future__ import annotations

from jaxvlm.errors import UserError
from jaxvlm.evaluation.base import Sample
from jaxvlm.processor import llava_prompt

# conv_llava_v1's system message (LLaVA / Video-LLaVA llava/conversation.py): "human", where vicuna_v1 says "user".
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def media_kind(sample: Sample) -> str | None:
    """"video", "image" or None (text only)."""
    return "video" if sample.video is not None else "image" if sample.image is not None else None


NO_VIDEO = {"llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT"}


def check_family(family: str, samples: list[Sample], benchmark: str) -> None:
    """Refuse (before the model loads) what the model family cannot take."""
    if family in NO_VIDEO and any(s.video is not None for s in samples):
        raise UserError(f"{benchmark}: {NO_VIDEO[family]} takes no video input; evaluate video sets with a "
                        "Video-LLaVA, Qwen2-VL or Qwen2.5-VL checkpoint")


def _template(processor) -> str | None:
    return getattr(processor.hf, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)


def _chat(processor, template: str, kind: str | None, text: str) -> str:
    """One user turn [kind, text] rendered by `template`, with the generation prompt."""
    content = ([{"type": kind}] if kind else []) + [{"type": "text", "text": text}]
    return processor.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                                   add_generation_prompt=True, tokenize=False)


def is_vicuna(processor) -> bool:
    """A LLaVA-NeXT processor of a vicuna checkpoint: no chat template, or one rendering USER: / ASSISTANT:."""
    template = _template(processor)
    if not template:
        return True
    rendered = _chat(processor, template, None, "q")
    return "USER:" in rendered and "ASSISTANT:" in rendered


def build_prompt(processor, sample: Sample) -> str:
    """The full prompt text of `sample` for `processor` (a jaxvlm.Processor); media tokens not yet expanded."""
    kind = media_kind(sample)
    family = processor.family
    image_token = getattr(processor.hf, "image_token", "<image>")
    if family in NO_VIDEO and kind == "video":
        raise UserError(f"{sample.source}: {NO_VIDEO[family]} takes no video input")
    if family == "video_llava" and kind == "video":
        video_token = getattr(processor.hf, "video_token", "<video>")
        return llava_prompt(sample.prompt, image_token=video_token, system=LLAVA_V1_SYSTEM)
    if family in ("llava", "video_llava") or (family == "llava_next" and is_vicuna(processor)):
        return llava_prompt(sample.prompt, image_token=image_token if kind == "image" else None)
    template = _template(processor)
    if not template:
        raise UserError(f"the {family} processor has no chat template (chat_template.jinja / "
                        "tokenizer_config.json's chat_template); pass --processor with the instruct model's files")
    return _chat(processor, template, kind, sample.prompt)
