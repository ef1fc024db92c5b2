"""A small benchmark module honouring the harness contract (jaxvlm.evaluation.base), for runner and store
tests that must not depend on any one real benchmark: `make(root, n)` writes a LLaVA-style folder
(questions.jsonl + images/, real skimage photos, repeated question ids, one text-only line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxvlm.evaluation.base import DataError, Sample, ScoreResult, check_media, read_jsonl, require_fields

NAME = "fakeqa"
MAX_NEW_TOKENS = 4
QUESTIONS = "questions.jsonl"


def make(root, n: int = 7, text_only: int | None = 3) -> Path:
    from PIL import Image

    from experiments import assets

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = assets.PHOTOS[i % len(assets.PHOTOS)]
        image = f"{name}.png"
        if not (root / "images" / image).exists():
            Image.fromarray(assets.photo(name)).save(root / "images" / image)
        # question ids repeat (as TextVQA's image ids do); text lengths vary (one length bucket) so batches sort
        rec = {"question_id": f"img{i // 2}", "text": f"Is there a {name}?" + " Yes" * (i % 3)}
        if i != text_only:
            rec["image"] = image
        lines.append(rec)
    (root / QUESTIONS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    path = Path(data_dir) / QUESTIONS
    images = Path(image_folder) if image_folder else Path(data_dir) / "images"
    out = []
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        require_fields(rec, ("question_id", "text"), where)
        image = check_media(images / rec["image"], where) if "image" in rec else None
        out.append(Sample(line=len(out), question_id=rec["question_id"], prompt=rec["text"], image=image,
                          source=where))
    return out


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    samples = read(data_dir)
    if len(answers) != len(samples):
        raise DataError(f"answers file has {len(answers)} lines but {len(samples)} questions")
    per = [float(bool(a["text"])) for a in answers]
    return ScoreResult({"nonempty": 100.0 * sum(per) / len(per)}, per)


# ------------------------------------------------------------------------------------- tiny models on disk

LLAVA_SIDE, LLAVA_TOKENS = 112, 64  # 8 x 8 image tokens: short prompts, one length bucket
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat template reduced to what an evaluation renders: default system turn, one user turn of
# [image | video, text], the assistant header.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llava(path, hf_layout: bool = False) -> Path:
    """A LLaVA-1.5-shaped checkpoint (jaxvlm format, or with `hf_layout` a Hugging Face safetensors directory
    in the Hub's key layout) with random weights and its processor files beside it."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    import jaxvlm
    from experiments import assets
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    path = Path(path)
    tok = assets.train_tokenizer()
    hf = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=64, layers=3, heads=2, vision_hidden=32, vision_layers=1)
    hf["vision_config"]["image_size"] = LLAVA_SIDE
    params = random_params(llava.parse_config(hf), seed=1, std=0.08)
    if hf_layout:
        from safetensors.numpy import save_file

        from converters import table_for
        from converters.core import export

        path.mkdir(parents=True)
        save_file({k: np.ascontiguousarray(v) for k, v in export(table_for(params.config), params.weights, "hub")},
                  str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(hf))
    else:
        jaxvlm.save(params, path, hf_config=hf)
    ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": LLAVA_SIDE},
                                crop_size={"height": LLAVA_SIDE, "width": LLAVA_SIDE})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token=assets.IMAGE_TOKEN).save_pretrained(path)
    return path


def tiny_qwen2_vl(path) -> Path:
    """A Qwen2-VL checkpoint (jaxvlm format, random weights) with an offline processor: trained BPE tokenizer
    with Qwen's special tokens and chat template, small image / video pixel budgets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

    import jaxvlm
    import qwen_reference as R
    from jaxvlm.model import random_params
    from jaxvlm.models import qwen_vl
    from jaxvlm.processor import hf_processor_class

    path = Path(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(["You are a helpful assistant. What is in the video? who what color cup"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    d = R.hf_config_dict("qwen2_vl", text={"vocab_size": 512}, token_ids=ids)
    jaxvlm.save(random_params(qwen_vl.parse_config(d), seed=2, std=0.08), path, hf_config=d)
    ip = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    hf_processor_class("qwen2_vl")(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE).save_pretrained(path)
    (path / "video_preprocessor_config.json").write_text(json.dumps({"min_pixels": 2 * 28 * 28,
                                                                      "max_pixels": 4 * 28 * 28}))
    return path
