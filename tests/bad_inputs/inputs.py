"""Catalogue: model inputs through the API (generate / forward / Processor): ids, pixels, shapes, images of
every mode, pruning budgets on small and thin images. Models: tests/tiny_vlm.py (LLaVA 112 px = 64 image
tokens, Qwen2-VL); "before" was measured on the code before the fix (commit 956e507)."""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

import tiny_vlm as T
from bad_inputs import Case, expect_user_error


def _generate(params, inputs, **kw):
    import jaxvlm

    return jaxvlm.generate(params, **inputs, max_new_tokens=2, **kw)


def _forward(params, inputs, **kw):
    import jaxvlm

    return jaxvlm.forward(params, **inputs, **kw)


def _with(inputs: dict, **changes) -> dict:
    return {**inputs, **changes}


def _nan_pixel():
    x = T.llava_inputs()
    x["pixel_values"][0, 0, 3, 3] = np.nan
    return x


def _inf_patch():
    x = T.qwen_inputs()
    x["pixel_values"][3, 3] = np.inf
    return x


def _id(inputs, b, t, value):
    ids = inputs["input_ids"].copy()
    ids[b, t] = value
    return _with(inputs, input_ids=ids)


def _refused(call, pattern):
    return lambda tmp: expect_user_error(call, pattern)


# ------------------------------------------------------------------------------------------ pruning


def _qwen_small_debiased_fastv(tmp):
    from jaxvlm import prune

    out = _forward(T.qwen(), T.qwen_inputs(), prune=prune.debiased_fastv())
    assert T.kept_counts(out) == [[16]]  # K = 128 lowered to the image's 16 visual tokens


def _qwen_mixed_fastv(tmp):
    from jaxvlm import prune

    out = _forward(T.qwen(), T.qwen_inputs(grids=((1, 8, 8), (1, 12, 12))), prune=prune.fastv())
    assert T.kept_counts(out) == [[16, 36]]  # each row min(K, its count)


def _thin(size, schedule, kept):
    """forward on an image of `size` with `schedule(prune)`: a warning naming it; exactly the `kept` patches
    the image touches are kept (image tokens start at slot 5)."""
    def run(tmp):
        from jaxvlm import debias, prune

        with pytest.warns(UserWarning, match=rf"image 0 \({size[0]}x{size[1]} pixels.*keeping the {kept} patches"):
            out = _forward(T.llava(), T.llava_inputs(image_sizes=[size]), prune=schedule(prune))
        touched = debias.pad_mask(np.array(size), grid=8, image_size=112, threshold=float(np.nextafter(1.0, 0.0)))
        got = np.asarray(out.kept[0])[0]
        assert sorted((got[got >= 0] - 5).tolist()) == np.flatnonzero(np.asarray(touched)).tolist()
        assert len(got[got >= 0]) == kept
    return run


def _zero_image_size():
    from jaxvlm import prune

    return _generate(T.llava(), T.llava_inputs(image_sizes=[[0, 10]]), prune=prune.debiased_fastv(keep=32))


def _square_debiased_fastv_unchanged(tmp):
    from jaxvlm import debias, prune

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _forward(T.llava(), T.llava_inputs(image_sizes=[[300, 100]]), prune=prune.debiased_fastv(keep=8))
    kept = np.asarray(out.kept[0])[0]
    assert (kept >= 0).sum() == 8
    pad = np.asarray(debias.pad_mask(np.array([300, 100]), grid=8, image_size=112)) == 0  # 16 real patches
    assert not pad[kept - 5].any()  # image tokens start at slot 5; none of the 8 is padding


# ------------------------------------------------------------------------------------------ processor


@functools.cache
def _processor():
    import jaxvlm
    from experiments import assets

    return jaxvlm.Processor.from_pretrained(assets.llava_processor_dir(Path(tempfile.mkdtemp(prefix="cat-proc-"))))


@functools.cache
def _qwen_processor():
    """A Qwen2-VL processor: small pixel budget, a byte-level BPE tokenizer with Qwen's special tokens."""
    import jaxvlm
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

    from jaxvlm.processor import hf_processor_class

    specials = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["What is shown in this image?"] * 8, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    path = Path(tempfile.mkdtemp(prefix="cat-qwen-proc-"))
    image_processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    hf_processor_class("qwen2_vl")(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return jaxvlm.Processor.from_pretrained(path)


PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"
QWEN_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>What is this?"


def _photo():
    from skimage import data

    return data.chelsea()  # (300, 451, 3)


def _same_pixels(image, reference):
    def run(tmp):
        proc = _processor()
        got, want = proc(text=PROMPT, images=[image()]), proc(text=PROMPT, images=[reference()])
        np.testing.assert_allclose(got["pixel_values"], want["pixel_values"], atol=1e-6)
        np.testing.assert_array_equal(got["image_sizes"], want["image_sizes"])
    return run


def _grey():
    from PIL import Image

    return np.asarray(Image.fromarray(_photo()).convert("L"))


def _png16():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_grey().astype(np.uint16) * 257).save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def _grey_rgb():
    return np.repeat(_grey()[..., None], 3, axis=2)


def _rgba_array():
    alpha = np.full(_photo().shape[:2], 128, np.uint8)
    return np.dstack([_photo(), alpha])


def _rgba_on_white():
    return np.round(_photo() * (128 / 255) + 255 * (1 - 128 / 255)).astype(np.uint8)


def _alpha_like_transformers(tmp):
    """to_rgb of every transparency mode == transformers' convert_to_rgb (what its processors feed the model)."""
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    from jaxvlm.images import to_rgb

    alpha = np.tile(np.linspace(0, 255, _photo().shape[1]).astype(np.uint8), (_photo().shape[0], 1))
    rgba = Image.fromarray(np.dstack([_photo(), alpha]))
    keyed = Image.fromarray(_photo()).convert("P")
    keyed.info["transparency"] = 0
    for image in (rgba, rgba.convert("LA"), rgba.convert("PA"), keyed):
        np.testing.assert_array_equal(to_rgb(image), convert_to_rgb(image, return_numpy=True), err_msg=image.mode)


def _cmyk():
    from PIL import Image

    return Image.fromarray(_photo()).convert("CMYK")


CASES = [
    # --- defect 1: non-finite pixels, out-of-vocabulary ids -----------------------------------------
    Case("nan-pixel-llava", "generate(LLaVA) with one NaN in pixel_values",
         "exit 0, answer = pad ids [[0, 0]] (empty), no warning",
         "UserError: pixel_values[0, 0, 3, 3] = nan: pixel values must be finite",
         _refused(lambda: _generate(T.llava(), _nan_pixel()), r"pixel_values\[0, 0, 3, 3\] = nan")),
    Case("inf-patch-qwen", "generate(Qwen2-VL) with one inf in the pixel_values patches",
         "exit 0, answer = pad ids (empty), no warning",
         "UserError: pixel_values[3, 3] = inf: pixel values must be finite",
         _refused(lambda: _generate(T.qwen(), _inf_patch()), r"pixel_values\[3, 3\] = inf")),
    Case("oov-id-llava", "generate(LLaVA) with input_ids[0, 90] = 70000 (vocabulary 256)",
         "exit 0, answer = pad ids (empty), no warning",
         "UserError: input_ids[0, 90] = 70000 is outside the vocabulary (size 256)",
         _refused(lambda: _generate(T.llava(), _id(T.llava_inputs(), 0, 90, 70000)),
                  r"input_ids\[0, 90\] = 70000 is outside the vocabulary \(size 256\)")),
    Case("negative-id-forward", "forward(LLaVA) with input_ids[0, 90] = -5",
         "runs, logits as if another token (the lookup wraps), no warning",
         "UserError: input_ids[0, 90] = -5 is outside the vocabulary (size 256)",
         _refused(lambda: _forward(T.llava(), _id(T.llava_inputs(), 0, 90, -5)), r"input_ids\[0, 90\] = -5")),
    Case("oov-id-qwen", "generate(Qwen2-VL) with input_ids[0, 2] = 9999 (vocabulary 256)",
         "exit 0, answer = pad ids (empty), no warning",
         "UserError: input_ids[0, 2] = 9999 is outside the vocabulary (size 256)",
         _refused(lambda: _generate(T.qwen(), _id(T.qwen_inputs(), 0, 2, 9999)), r"input_ids\[0, 2\] = 9999")),
    Case("float-ids-qwen", "generate(Qwen2-VL) with float64 input_ids (ids + 0.7)",
         "runs: ids truncated to integers silently",
         "UserError: input_ids must hold integers; got dtype float64",
         _refused(lambda: _generate(T.qwen(), _with(T.qwen_inputs(), input_ids=T.qwen_inputs()["input_ids"] + .7)),
                  "input_ids must hold integers; got dtype float64")),
    # --- defect 3: FastV-style budgets lower K on small images -----------------------------------------
    Case("qwen-small-debiased-fastv", "forward(Qwen2-VL, one image of 16 visual tokens, prune.debiased_fastv())",
         "ValueError: budget keep=128 exceeds the 16 visual tokens available",
         "runs; K lowered to 16, all 16 kept (FastV's 'lower' rule)", _qwen_small_debiased_fastv),
    Case("qwen-mixed-fastv", "forward(Qwen2-VL, rows of 16 and 36 visual tokens, prune.fastv()) (K=128)",
         "ValueError: budget keep=128 exceeds the 36 visual tokens available",
         "runs; each row keeps min(128, its count): 16 and 36", _qwen_mixed_fastv),
    # --- defect 4: thin images leave no non-padding patch ---------------------------------------------
    Case("thin-2000x3-debiased-fastv", "forward(LLaVA, image_sizes 2000x3, prune.debiased_fastv(keep=32))",
         "runs; 0 visual tokens kept, silently (every patch is padding by the 0.5 threshold)",
         "UserWarning naming image 0 (2000x3); keeps the 16 patches the strip touches (2 patch rows)",
         _thin([2000, 3], lambda prune: prune.debiased_fastv(keep=32), 16)),
    Case("thin-3x2000-debiased-pdrop", "forward(LLaVA, image_sizes 3x2000, debiased_pdrop(layers=(1,), ratios=(.25,)))",
         "runs; keeps patches 0-15 (the top 2 rows by index: the all-zero mask ties every score), silently",
         "UserWarning naming image 0 (3x2000); keeps the 16 patches of the 2 columns the strip touches",
         _thin([3, 2000], lambda prune: prune.debiased_pdrop(layers=(1,), ratios=(0.25,)), 16)),
    Case("wide-300x100-debiased-fastv", "forward(LLaVA, image_sizes 300x100, prune.debiased_fastv(keep=8))",
         "runs; 8 kept, none on padding", "unchanged: 8 kept, none on padding, no warning",
         _square_debiased_fastv_unchanged, ok=True),
    # --- defect 2: images of every mode through jaxvlm.Processor ---------------------------------------
    Case("png16-processor", "Processor(images=[16-bit greyscale PNG, mode I;16])",
         "a white image (PIL's convert clips 16-bit values at 255), silently",
         "the photo: pixel_values equal those of its 8-bit grey version",
         _same_pixels(_png16, _grey_rgb)),
    Case("grey-array-processor", "Processor(images=[(H, W) uint8 greyscale array])",
         "ValueError: Could not make a flat list of images from [array(...)] (transformers)",
         "works: equal to the grey image replicated on 3 channels", _same_pixels(_grey, _grey_rgb)),
    Case("rgba-array-processor", "Processor(images=[(H, W, 4) uint8 RGBA array, alpha 128])",
         "ValueError: Unable to infer channel dimension format (transformers)",
         "works: composited onto white, as transformers does for RGBA PIL images",
         _same_pixels(_rgba_array, _rgba_on_white)),
    Case("float01-array-processor", "Processor(images=[float array in [0, 1]])",
         "ValueError: ... contains values outside the range [0, 1], got [0.0, 122.0] (padding colour added "
         "in 0..255)", "works: scaled by 255, equal to the uint8 photo",
         _same_pixels(lambda: _photo() / 255.0, _photo)),
    Case("alpha-modes", "RGBA / LA / PA / palette-with-transparency PIL images",
         "composited onto white by transformers' convert_to_rgb inside the processors",
         "unchanged: jaxvlm.images.to_rgb gives exactly transformers' result", _alpha_like_transformers, ok=True),
    Case("cmyk-processor", "Processor(images=[CMYK PIL image])", "works (PIL's conversion)", "unchanged",
         _same_pixels(_cmyk, lambda: np.asarray(_cmyk().convert("RGB"))), ok=True),
    Case("empty-image-processor", "Processor(images=[(0, 10, 3) array])",
         "runs silently: a padded square of nothing, image_sizes [[10, 0]]",
         "UserError: images[0] is empty (10x0 pixels, width x height)",
         _refused(lambda: _processor()(text=PROMPT, images=[np.zeros((0, 10, 3), np.uint8)]),
                  r"images\[0\] is empty \(10x0 pixels")),
    Case("nan-image-processor", "Processor(images=[float array full of NaN])",
         "ValueError: ... values outside the range [0, 1], got [nan, nan] (transformers)",
         "UserError: images[0]: sample (0, 0, 0) is nan (images must be finite)",
         _refused(lambda: _processor()(text=PROMPT, images=[np.full((8, 8, 3), np.nan)]),
                  r"images\[0\]: sample \(0, 0, 0\) is nan")),
    Case("qwen-extreme-aspect", "Processor(Qwen2-VL, images=[2000x3 image])",
         "ValueError traceback from transformers' smart_resize (absolute aspect ratio must be smaller than 200)",
         "UserError: Qwen2VLProcessor: absolute aspect ratio must be smaller than 200, got 666.67 (one line)",
         _refused(lambda: _qwen_processor()(text=QWEN_PROMPT, images=[np.zeros((3, 2000, 3), np.uint8)]),
                  r"^Qwen2VLProcessor: absolute aspect ratio must be smaller than 200")),
    Case("image-count-processor", "Processor(LLaVA, one <image> in the prompt, two images)",
         "ValueError traceback from transformers (total number of <image> tokens ... 1 ... 2 images)",
         "UserError: LlavaProcessor: The total number of <image> tokens ... Found total 1 <image> tokens and 2 "
         "images.", _refused(lambda: _processor()(text=PROMPT, images=[_photo(), _photo()]),
                             r"^LlavaProcessor: .*Found total 1 <image> tokens and 2 images")),
    # --- defect 5: shapes, batch sizes, names --------------------------------------------------------
    Case("empty-prompt", "generate(LLaVA) with input_ids of shape (1, 0) and no image",
         "runs: 2 tokens generated from nothing", "UserError: input_ids has shape (1, 0): need at least one row and "
         "one token", _refused(lambda: _generate(T.llava(), {"input_ids": np.zeros((1, 0), np.int64)}),
                               r"input_ids has shape \(1, 0\)")),
    Case("all-padding-row", "generate(LLaVA, 2 rows) with attention_mask row 1 all 0",
         "runs: row 1 answers from nothing", "UserError: row 1 of attention_mask is all 0",
         _refused(lambda: _generate(T.llava(), _all_padding_row()), "row 1 of attention_mask is all 0")),
    Case("ids-1d", "generate(LLaVA) with 1-D input_ids (T,)", "IndexError: tuple index out of range (traceback)",
         "UserError: input_ids must be (batch, tokens); got shape (100,)",
         _refused(lambda: _generate(T.llava(), _one_d()), r"must be \(batch, tokens\); got shape \(100,\)")),
    Case("mask-batch-mismatch", "generate(LLaVA) with attention_mask (2, 100) for input_ids (1, 100)",
         "ValueError: attention_mask shape (2, 100) != input_ids shape (1, 100)", "the same message, a UserError",
         _refused(lambda: _generate(T.llava(), _with(T.llava_inputs(), attention_mask=np.ones((2, 100), int))),
                  r"attention_mask shape \(2, 100\) != input_ids shape \(1, 100\)"), ok=True),
    Case("images-vs-image-tokens", "generate(LLaVA) with 2 images for one run of 64 image tokens",
         "ValueError: image tokens and image features do not match: ... 64 image tokens ... 2 image(s)",
         "the same message, a UserError",
         _refused(lambda: _generate(T.llava(), _with(T.llava_inputs(), pixel_values=np.zeros((2, 3, 112, 112)))),
                  "input_ids hold 64 image tokens .* but 2 image"), ok=True),
    Case("pixels-nhwc", "generate(LLaVA) with pixel_values (1, 112, 112, 3) (channels last)",
         "ValueError: pixel_values must be (num_images, 3, 112, 112)", "the same message, a UserError",
         _refused(lambda: _generate(T.llava(), _with(T.llava_inputs(), pixel_values=np.zeros((1, 112, 112, 3)))),
                  r"pixel_values must be \(num_images, 3, 112, 112\); got \(1, 112, 112, 3\)"), ok=True),
    Case("zero-image-size", "generate(LLaVA, image_sizes [[0, 10]], debiased_fastv(keep=32))",
         "runs: RuntimeWarning divide by zero, 0 visual tokens kept", "UserError: image_sizes[0] = [0, 10]: "
         "(width, height) of an image must be >= 1",
         _refused(_zero_image_size, r"image_sizes\[0\] = \[0, 10\]")),
    # --- LLaVA-NeXT / Video-LLaVA through the shared host checks (jaxvlm/input_checks.py) ----------------
    Case("nan-tile-llava-next", "forward(LLaVA-NeXT) with one NaN in tile 2 of pixel_values (I, tiles, C, S, S)",
         "UserError: pixel_values hold 1 NaN / Inf value(s) (no index)",
         "UserError naming pixel_values[0, 2, 1, 5, 5] = nan",
         _refused(lambda: _forward(_next_model(), _next_nan_tile()), r"pixel_values\[0, 2, 1, 5, 5\] = nan")),
    Case("oov-id-llava-next", "generate(LLaVA-NeXT) with input_ids[0, 3] = 70000 (vocabulary 256)",
         "UserError: input_ids hold ids outside the vocabulary [0, 256) (no index)",
         "UserError naming input_ids[0, 3] = 70000 and the vocabulary size",
         _refused(lambda: _generate(_next_model(), _id(_next_inputs(), 0, 3, 70000)),
                  r"input_ids\[0, 3\] = 70000 is outside the vocabulary \(size 256\)")),
    Case("inf-frame-video-llava", "forward(Video-LLaVA) with one inf in frame 7 of pixel_values_videos",
         "UserError: pixel_values_videos hold 1 NaN / Inf value(s) (no index)",
         "UserError naming pixel_values_videos[0, 7, 0, 3, 4] = inf",
         _refused(lambda: _forward(_video_model(), _video_inf_frame()),
                  r"pixel_values_videos\[0, 7, 0, 3, 4\] = inf")),
    Case("negative-id-video-llava", "generate(Video-LLaVA) with input_ids[0, 1] = -1",
         "UserError: input_ids hold ids outside the vocabulary [0, 256) (no index)",
         "UserError naming input_ids[0, 1] = -1",
         _refused(lambda: _generate(_video_model(), _id(_video_inputs(), 0, 1, -1)), r"input_ids\[0, 1\] = -1 ")),
    Case("unknown-input-name", "generate(LLaVA, ..., token_type_ids=...) (a raw transformers processor output)",
         "TypeError: prepare() got an unexpected keyword argument 'token_type_ids' (traceback)",
         "UserError: unexpected input(s) ['token_type_ids'] for a llava model (accepted: [...])",
         _refused(lambda: _generate(T.llava(), _with(T.llava_inputs(), token_type_ids=np.zeros((1, 100), int))),
                  r"unexpected input\(s\) \['token_type_ids'\] for a llava model")),
]


@functools.cache
def _next_model():
    """A tiny random LLaVA-NeXT (112 px tiles; tests/llava_next_reference.py's config)."""
    import llava_next_reference as NR
    from jaxvlm.model import random_params
    from jaxvlm.models import llava_next

    return random_params(llava_next.parse_config(NR.hf_config_dict()))


def _next_inputs():
    import llava_next_reference as NR

    return NR.make_inputs(_next_model(), sizes=((60, 240),), text=(12,))


def _next_nan_tile():
    x = _next_inputs()
    x["pixel_values"][0, 2, 1, 5, 5] = np.nan  # tile 2 of image 0
    return x


@functools.cache
def _video_model():
    """A tiny random Video-LLaVA (224 px, 8 frames; tests/video_llava_reference.py's config)."""
    import video_llava_reference as VR
    from jaxvlm.model import random_params
    from jaxvlm.models import video_llava

    return random_params(video_llava.parse_config(VR.hf_config_dict(text_layers=1, vision_layers=1)))


def _video_inputs():
    import video_llava_reference as VR

    x = VR.make_inputs(_video_model(), rows=("video",), text=(10,))
    return {k: v for k, v in x.items() if v is not None}


def _video_inf_frame():
    x = _video_inputs()
    x["pixel_values_videos"][0, 7, 0, 3, 4] = np.inf  # the last frame
    return x


def _all_padding_row():
    x = T.llava_inputs(rows=2)
    x["attention_mask"][1] = 0
    return x


def _one_d():
    x = T.llava_inputs()
    return _with(x, input_ids=x["input_ids"][0], attention_mask=x["attention_mask"][0])
