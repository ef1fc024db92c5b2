"""`jaxvlm.Processor` offline: a byte-level BPE tokenizer trained here, real photographs from skimage.data,
transformers' PIL image processors; Qwen end to end through a tiny model against transformers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from skimage import data

import jaxvlm
import qwen_reference as R
from jaxvlm.processor import Processor, hf_processor_class

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<image>"]
CORPUS = ["Describe the picture of a cat, a coffee cup and a rocket in detail, please.",
          "USER: What is shown here? ASSISTANT: An astronaut in a white suit."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _qwen_dir(tmp_path, tokenizer, family, layout):
    from transformers import Qwen2VLImageProcessorPil

    # small pixel budget so the real photographs give ~40-100 tokens each
    ip = Qwen2VLImageProcessorPil(min_pixels=16 * 28 * 28, max_pixels=100 * 28 * 28)
    path = str(tmp_path / f"{family}-{layout}")
    if layout == "processor_config":  # what save_pretrained of the processor writes
        hf_processor_class(family)(image_processor=ip, tokenizer=tokenizer).save_pretrained(path)
    else:  # Hub layout: preprocessor_config.json + tokenizer files + the model's config.json
        tokenizer.save_pretrained(path)
        ip.save_pretrained(path)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"model_type": family}, f)
    return path


@pytest.mark.parametrize("family,layout", [("qwen2_vl", "processor_config"), ("qwen2_5_vl", "hub")])
def test_qwen_processor_end_to_end(tmp_path, tokenizer, family, layout):
    proc = Processor.from_pretrained(_qwen_dir(tmp_path, tokenizer, family, layout))
    assert proc.family == family
    images = [data.astronaut(), data.coffee(), data.hubble_deep_field()]
    span = "<|vision_start|><|image_pad|><|vision_end|>"
    text = [f"Describe {span} and {span} please.", f"What is shown here? {span}"]
    out = proc(text=text, images=images)
    assert set(out) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    ids, grid = out["input_ids"], out["image_grid_thw"]
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ids.dtype == np.int32 and out["pixel_values"].dtype == np.float32
    assert (ids == image_id).sum() == (grid.prod(-1) // 4).sum()
    assert len({tuple(g) for g in grid.tolist()}) >= 2  # smart_resize keeps aspect ratios apart
    np.testing.assert_array_equal(out["mm_token_type_ids"], (ids == image_id).astype(np.int32))
    # the arrays drive a tiny model whose special ids are the tokenizer's, and match transformers
    token_ids = {"image_token_id": image_id,
                 "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                 "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
                 "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>")}
    model, d = R.build(family, text={"vocab_size": 512}, token_ids=token_ids)
    model.save_pretrained(tmp_path / "model")
    params = jaxvlm.load(str(tmp_path / "model"))
    ref = R.torch_logits(model, **out)
    got = np.asarray(jaxvlm.forward(params, **out).logits)
    mask = out["attention_mask"].astype(bool)
    diff = float(np.abs(got - ref)[mask].max())
    print(f"\n[max |diff|] {family} processor end to end, T={ids.shape[1]}: {diff:.3g}")
    assert diff < 1e-4


def test_llava_processor(tmp_path, tokenizer):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    path = str(tmp_path / "llava")
    LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>").save_pretrained(path)
    cfg_file = os.path.join(path, "processor_config.json")
    with open(cfg_file) as f:
        stored = json.load(f)
    stored.pop("num_additional_image_tokens", None)  # older Hub revisions do not carry it
    with open(cfg_file, "w") as f:
        json.dump(stored, f)
    proc = Processor.from_pretrained(path)
    assert proc.family == "llava"
    images = [data.chelsea(), data.rocket()]
    out = proc(text=["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nAnd this one, please? ASSISTANT:"],
               images=images)
    assert set(out) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    np.testing.assert_array_equal((out["input_ids"] == image_id).sum(1), [576, 576])
    assert out["pixel_values"].shape == (2, 3, 336, 336)
    np.testing.assert_array_equal(out["image_sizes"], [[451, 300], [640, 427]])  # (width, height)
