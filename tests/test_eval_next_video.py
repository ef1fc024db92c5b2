"""The evaluation harness on LLaVA-NeXT and Video-LLaVA: chat templates per family, and `jaxvlm eval` / `jaxvlm
score` end to end on tiny random checkpoints (POPE on LLaVA-NeXT, MSVD-QA on Video-LLaVA; answers are noise,
the plumbing real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evalfix import choice_judge, classic
from experiments import assets
from jaxvlm import cli as jaxvlm_cli
from jaxvlm import evaluation
from jaxvlm.evaluation import base, prompts
from jaxvlm.evaluation.base import Sample
from jaxvlm.errors import UserError
from jaxvlm.processor import LLAVA_SYSTEM, Processor

SIDE = 112  # 8 x 8 patches per tile / frame: short prompts
PINS = [[SIDE, 2 * SIDE], [2 * SIDE, SIDE], [2 * SIDE, 2 * SIDE]]
MISTRAL_TEMPLATE = ("{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}")
VICUNA_TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                   "{% else %}{{ c['text'] }}{% endif %}{% endfor %} ASSISTANT:{% endfor %}")


def _tokenizer(video: bool = False):
    tok = assets.train_tokenizer()
    if video:
        tok.add_tokens(["<video>"], special_tokens=True)
    return tok


def _text_config(tok) -> dict:
    return assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                  hidden=64, layers=3, heads=2, vision_hidden=32, vision_layers=1)


def tiny_llava_next(path: Path, chat_template: str | None = None) -> Path:
    """A LLaVA-NeXT checkpoint (jaxvlm format, random weights) with its LlavaNextProcessor: 112 px tiles."""
    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import llava_next

    tok = _tokenizer()
    d = _text_config(tok)
    d["vision_config"]["image_size"] = SIDE
    pins = PINS
    d.update(model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"], image_grid_pinpoints=pins)
    jaxvlm.save(random_params(llava_next.parse_config(d), seed=3, std=0.08), path, hf_config=d)
    return next_processor(path, tok, pins, chat_template)


def next_processor(path: Path, tok, pins, chat_template: str | None = None) -> Path:
    """LlavaNextProcessor files (112 px tiles, `pins`) written to `path`."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    ip = LlavaNextImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                    image_grid_pinpoints=pins)
    LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1, chat_template=chat_template).save_pretrained(path)
    return path


def tiny_video_llava(path: Path) -> Path:
    """A Video-LLaVA checkpoint (jaxvlm format, random weights) with its processor: 112 px images / frames."""
    from transformers import VideoLlavaImageProcessor

    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import video_llava
    from jaxvlm.processor import hf_processor_class

    tok = _tokenizer(video=True)
    d = _text_config(tok)
    d["vision_config"]["image_size"] = SIDE
    d.update(model_type="video_llava", architectures=["VideoLlavaForConditionalGeneration"],
             video_token_index=tok.convert_tokens_to_ids("<video>"))
    jaxvlm.save(random_params(video_llava.parse_config(d), seed=4, std=0.08), path, hf_config=d)
    ip = VideoLlavaImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    hf_processor_class("video_llava")(image_processor=ip, tokenizer=tok, patch_size=14).save_pretrained(path)
    return path


def _sample(image=None, video=None) -> Sample:
    return Sample(line=0, question_id="q1", prompt="Is there a cat?", image=image, video=video, source="set.jsonl:1")


def test_prompts_per_family(tmp_path):
    """LLaVA-NeXT: vicuna_v1 without a template or with a vicuna-turn one, else the template (Mistral's);
    Video-LLaVA: llava_v1 with <video>\\n for videos, vicuna_v1 with <image>\\n for images."""
    vicuna = f"{LLAVA_SYSTEM} USER: <image>\nIs there a cat? ASSISTANT:"
    tok = _tokenizer()
    for i, template in enumerate((None, VICUNA_TEMPLATE)):
        proc = Processor.from_pretrained(next_processor(tmp_path / f"next{i}", tok, PINS, template))
        assert prompts.is_vicuna(proc)
        assert prompts.build_prompt(proc, _sample(image="x.jpg")) == vicuna
    mistral = Processor.from_pretrained(next_processor(tmp_path / "mistral", tok, PINS, MISTRAL_TEMPLATE))
    assert not prompts.is_vicuna(mistral)
    assert prompts.build_prompt(mistral, _sample(image="x.jpg")) == "[INST] <image>\nIs there a cat? [/INST]"
    video = Processor.from_pretrained(tiny_video_llava(tmp_path / "video"))
    assert prompts.build_prompt(video, _sample(video="v.mp4")) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <video>\nIs there a cat? ASSISTANT:")
    assert prompts.build_prompt(video, _sample(image="x.jpg")) == vicuna
    with pytest.raises(UserError, match="LLaVA-NeXT takes no video input"):
        prompts.build_prompt(mistral, _sample(video="v.mp4"))


def test_collate_pads_tiles_of_llava_next_rows():
    from jaxvlm.evaluation import feed

    rows = [feed.Encoded(k, {"input_ids": np.ones((1, t), np.int32), "attention_mask": np.ones((1, t), np.int32),
                             "pixel_values": np.full((1, n, 3, 4, 4), k + 1, np.float32)}, length=t)
            for k, (t, n) in enumerate(((5, 3), (7, 5)))]
    out = feed.collate(rows, 3, pad_id=0)
    assert out["input_ids"].shape == (3, 7) and out["pixel_values"].shape == (3, 5, 3, 4, 4)
    assert (out["pixel_values"][0, :3] == 1).all() and (out["pixel_values"][0, 3:] == 0).all()
    assert (out["pixel_values"][1:] == 2).all()  # row 2 copies the last row


def _eval_and_score(bench, data, model, out, capsys) -> list:
    rc = jaxvlm_cli.main(["eval", bench, "--data", str(data), "--model", str(model), "--out", str(out),
                          "--batch-size", "2", "--max-new-tokens", "3", "--dtype", "float32", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    answers_file = Path(out) / bench / "none" / "answers.jsonl"
    answers = base.read_answers(answers_file)
    samples = evaluation.benchmark(bench).read(data, benchmark=bench)
    assert [a["question_id"] for a in answers] == [s.question_id for s in samples]
    capsys.readouterr()
    rc = jaxvlm_cli.main(["score", bench, "--data", str(data), "--answers", str(answers_file)])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["benchmark"] == bench and len(printed["per_question"]) == len(answers)
    return answers


def test_pope_end_to_end_on_llava_next(tmp_path, capsys):
    model = tiny_llava_next(tmp_path / "model")
    answers = _eval_and_score("pope", classic.make_pope(tmp_path / "eval"), model, tmp_path / "out", capsys)
    assert len(answers) == 6 and all(isinstance(a["text"], str) for a in answers)


def test_video_end_to_end_on_video_llava(tmp_path, capsys):
    model = tiny_video_llava(tmp_path / "model")
    data = choice_judge.make_video(tmp_path / "eval", "msvd_qa")
    answers = _eval_and_score("msvd_qa", data, model, tmp_path / "out", capsys)
    assert len(answers) == len(choice_judge.VIDEO_QA)
