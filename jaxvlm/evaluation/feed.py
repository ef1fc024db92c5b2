"""Host side of an evaluation: samples -> model inputs, length-sorted batches, prefetched in a thread.

    encoder = Encoder(processor, bench_module, video_config, skip_bad=True)
    batches = plan_batches(lines, encoder.estimate_lengths(samples_at_lines), batch_size)
    for lines, encoded in Prefetcher(encoder, samples, batches):       # decoding runs ahead of the device
        inputs = collate(encoded, batch_size, pad_id)                     # (batch_size, T) + media arrays

Batches are planned before anything is decoded: in windows of WINDOW_BATCHES batches (in question order), the
lines of a window are sorted by estimated prompt length (text tokens + visual tokens), longest first, as
lmms-eval's Collator does, so a batch's rows share a length bucket (few compiled programs, little padding).
Every batch is padded to `batch_size` rows with copies of its last row (one program per bucket).
"""

from __future__ import annotations

import dataclasses
import io
import queue
import threading
import time
from typing import Sequence

import numpy as np

from jaxvlm.evaluation import prompts
from jaxvlm.evaluation.base import DataError, Sample

WINDOW_BATCHES = 16
SEQ_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
LLAVA_IMAGE_TOKENS = 576


@dataclasses.dataclass
class Encoded:
    """One sample's model inputs (arrays with a leading axis of 1 row / its media), or why it was skipped."""

    line: int
    arrays: dict | None
    length: int = 0
    visual: int = 0
    skipped: str | None = None


def open_image(sample: Sample):
    """The sample's image as (H, W, 3) uint8 RGB (every PIL mode converted by jaxvlm.images.to_rgb: 16-bit,
    palette, CMYK, alpha); DataError naming the sample's file:line otherwise."""
    from PIL import Image

    from jaxvlm.images import to_rgb

    src = io.BytesIO(sample.image) if isinstance(sample.image, (bytes, bytearray)) else sample.image
    try:
        with Image.open(src) as im:
            return to_rgb(im)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for broken files
        where = sample.image if isinstance(sample.image, str) else "embedded image"
        raise DataError(f"{sample.source}: cannot decode {where} ({type(e).__name__}: {e})") from None


class Encoder:
    """Turns a Sample into the named arrays of `jaxvlm.generate` (prompt from `prompts`, media decoded)."""

    def __init__(self, processor, bench, video_config=None, skip_bad: bool = False):
        self.processor, self.bench, self.video_config, self.skip_bad = processor, bench, video_config, skip_bad
        tokens = [getattr(processor.hf, name, None) for name in ("image_token", "video_token")]
        self.media_ids = {processor.tokenizer.convert_tokens_to_ids(t) for t in tokens if t}

    def _visual_estimate(self, sample: Sample) -> int:
        kind = prompts.media_kind(sample)
        if kind != "image":
            return 0
        family, hf = self.processor.family, self.processor.hf
        if family == "llava":
            return LLAVA_IMAGE_TOKENS
        ip = hf.image_processor
        if family == "video_llava":  # one fixed crop per image
            return (ip.crop_size["height"] // hf.patch_size) * (ip.crop_size["width"] // hf.patch_size)
        from PIL import Image

        src = io.BytesIO(sample.image) if isinstance(sample.image, (bytes, bytearray)) else sample.image
        try:
            with Image.open(src) as im:
                w, h = im.size
        except Exception:
            return 0  # a broken image is reported when it is decoded
        if family == "llava_next":  # the any-resolution count, from the pinpoint the image gets
            return int(hf._get_num_multimodal_tokens(image_sizes=[[h, w]]).num_image_tokens[0])
        return ip.get_number_of_image_patches(h, w) // (ip.merge_size ** 2)

    def estimate_lengths(self, samples: Sequence[Sample]) -> list[int]:
        """Prompt tokens per sample (text tokens + visual tokens), without decoding any media."""
        if not samples:
            return []
        texts = [prompts.build_prompt(self.processor, s) for s in samples]
        ids = self.processor.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return [len(i) + self._visual_estimate(s) for i, s in zip(ids, samples)]

    def __call__(self, sample: Sample, line: int) -> Encoded:
        """`line`: the sample's index in the list being answered (its answers-file line)."""
        try:
            arrays = self._arrays(sample)
        except DataError as e:
            if not self.skip_bad:
                raise
            return Encoded(line, None, skipped=str(e))
        ids = arrays["input_ids"]
        visual = int(np.isin(ids, list(self.media_ids)).sum()) if self.media_ids else 0
        return Encoded(line, arrays, length=int(ids.shape[1]), visual=visual)

    def _arrays(self, sample: Sample) -> dict:
        text = prompts.build_prompt(self.processor, sample)
        kind = prompts.media_kind(sample)
        if kind == "image":
            return self.processor(text=[text], images=[open_image(sample)])
        if kind is None:
            return self.processor(text=[text])
        return self._video_arrays(sample, text)

    def _video_arrays(self, sample: Sample, text: str) -> dict:
        from jaxvlm import video_inputs

        try:
            frames = self.bench.load_frames(sample.video)
        except DataError:
            raise
        except Exception as e:  # decoder errors on a broken file
            raise DataError(f"{sample.source}: cannot decode video {sample.video} ({type(e).__name__}: {e})") from None
        if self.processor.family == "video_llava":  # its 8 frames, each through the image processor
            return self.processor(text=[text], videos=[frames])
        pixels, grid = video_inputs.video_patches(frames, self.video_config)
        token = getattr(self.processor.hf, "video_token", "<|video_pad|>")
        text = video_inputs.expand_video_tokens(text, token, grid, self.video_config.merge_size)
        enc = self.processor.tokenizer([text], return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int32),
                "attention_mask": enc["attention_mask"].astype(np.int32),
                "pixel_values_videos": pixels, "video_grid_thw": grid[None]}


def plan_batches(lines: Sequence[int], lengths: Sequence[int], batch_size: int,
                 window_batches: int = WINDOW_BATCHES) -> list[list[int]]:
    """Batches of lines: windows of `window_batches * batch_size` consecutive lines, each sorted by length
    (longest first, ties in line order) and cut into batches of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = batch_size * window_batches
    out = []
    for start in range(0, len(lines), window):
        idx = sorted(range(start, min(start + window, len(lines))), key=lambda i: (-lengths[i], lines[i]))
        out += [[lines[i] for i in idx[j:j + batch_size]] for j in range(0, len(idx), batch_size)]
    return out


def collate(encoded: Sequence[Encoded], batch_size: int, pad_id: int) -> dict:
    """One batch: (B, T) keys right-padded (ids with `pad_id`, masks 0) and media arrays concatenated in row
    order; rows beyond len(encoded) (up to batch_size) are copies of the last row."""
    rows = list(encoded) + [encoded[-1]] * (batch_size - len(encoded))
    t = max(e.length for e in rows)
    out = {}
    for key in rows[0].arrays:
        arrs = [e.arrays[key] for e in rows if key in e.arrays]
        if key in SEQ_KEYS:
            fill = pad_id if key == "input_ids" else 0
            arrs = [np.pad(a, ((0, 0), (0, t - a.shape[1])), constant_values=fill) for a in arrs]
        out[key] = _concat_padded(arrs)
    for key in {k for e in rows for k in e.arrays} - set(out):  # media some rows have and the first lacks
        out[key] = _concat_padded([e.arrays[key] for e in rows if key in e.arrays])
    return out


def _concat_padded(arrs: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenated on axis 0, the other axes zero-padded to the largest (LLaVA-NeXT's pixel_values (1, tiles,
    C, S, S) differ in tiles per image; the padding tiles are never read)."""
    shape = np.max([a.shape[1:] for a in arrs], axis=0)
    return np.concatenate([np.pad(a, [(0, 0)] + [(0, int(m - n)) for m, n in zip(shape, a.shape[1:])])
                           for a in arrs], axis=0)


class Prefetcher:
    """Encodes the planned batches in a background thread, at most `depth` batches ahead of the consumer.

    Iterating yields (lines, [Encoded]) in plan order; an exception in the thread is re-raised here.
    `wait_seconds` accumulates the time the consumer spent waiting for the host.
    """

    def __init__(self, encoder: Encoder, samples: Sequence[Sample], batches: list[list[int]], depth: int = 4):
        self.encoder, self.samples, self.batches = encoder, samples, batches
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.wait_seconds = 0.0
        self.thread = threading.Thread(target=self._work, name="jaxvlm-eval-feed", daemon=True)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            for lines in self.batches:
                if self.stop.is_set():
                    return
                self._put((lines, [self.encoder(self.samples[i], i) for i in lines]))
        except BaseException as e:  # handed to the consumer
            self._put(e)
        else:
            self._put(None)

    def __iter__(self):
        self.thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = self.queue.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()
