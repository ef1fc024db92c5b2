"""`jaxvlm demo`: fully offline tour of pruning with and without attention debiasing.

Runs a LLaVA-1.5-shaped model with RANDOM weights (no real VLM weights can be had offline: the answers are
noise, the machinery is real) on real photographs from scikit-image, batched through one compiled program
per schedule: unpruned, FastV (layer 2, keep 128 of 576) and debiased FastV (the release's recipe: cubic
recency trend + padding suppression at threshold 0.5). Prints timings (compile apart) and kept-token counts,
and writes one PNG per photo showing which of the 24 x 24 patches each method kept, over the padded square
the model sees. --next and --video add LLaVA-NeXT's tile view and Video-LLaVA's frame view
(experiments/demo_views.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import assets

QUESTION = "What is shown in this image?"
GRID = 24


def build(workdir: Path, seed: int, fast: bool):
    """The processor (saved and reloaded through jaxvlm.Processor, as a user would) and a random model."""
    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    processor_dir = assets.llava_processor_dir(workdir / "processor")
    processor = jaxvlm.Processor.from_pretrained(processor_dir)
    tok = processor.tokenizer
    config = llava.parse_config(
        assets.llava_hf_config(
            vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(assets.IMAGE_TOKEN),
            pad_token_id=tok.pad_token_id, hidden=128 if fast else 512, layers=4 if fast else 8,
            heads=4 if fast else 8,
        )
    )
    return processor, random_params(config, seed=seed, std=0.05)


def schedules():
    from jaxvlm import prune

    return {"unpruned": None, "FastV": prune.fastv(layer=2, keep=128), "debiased FastV": prune.debiased_fastv()}


def timed_generate(params, inputs, schedule, max_new_tokens: int, repeats: int):
    """(output, first-call seconds incl. compile, median seconds of the repeats after it)."""
    import jax

    import jaxvlm

    def run():
        out = jaxvlm.generate(params, **inputs, prune=schedule, max_new_tokens=max_new_tokens)
        jax.block_until_ready(out.tokens)
        return out

    start = time.perf_counter()
    out = run()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return out, first, float(np.median(times)) if times else first


def square_view(pixel_values: np.ndarray, processor) -> np.ndarray:
    """The (336, 336, 3) uint8 image the model sees, un-normalised from its pixel_values (3, 336, 336)."""
    ip = processor.hf.image_processor
    mean = np.asarray(ip.image_mean)[:, None, None]
    std = np.asarray(ip.image_std)[:, None, None]
    return (np.clip(pixel_values * std + mean, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


def kept_span(kept_row: np.ndarray, image_start: int) -> np.ndarray:
    """Raster indices (0..575) of the kept visual tokens of one row, from `out.kept` input-T indices."""
    kept_row = kept_row[kept_row >= 0]
    return kept_row - image_start


def shade(view: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """view (H, W, 3) uint8 with the cells of `keep` (h, w) bool bright and the rest dimmed to a quarter."""
    cy, cx = view.shape[0] // keep.shape[0], view.shape[1] // keep.shape[1]
    mask = np.repeat(np.repeat(keep, cy, 0), cx, 1)
    return np.where(mask[..., None], view, (view * 0.25).astype(np.uint8))


def plot_photo(path: Path, name: str, view: np.ndarray, kept: dict, pad: np.ndarray) -> None:
    """One panel per pruning schedule: kept patches bright, dropped dimmed, padding patches outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kept), figsize=(4.2 * len(kept), 4.6))
    for ax, (label, idx) in zip(np.atleast_1d(axes), kept.items()):
        keep = np.zeros(GRID * GRID, bool)
        keep[idx] = True
        ax.imshow(shade(view, keep.reshape(GRID, GRID)))
        on_pad = int((keep & (pad == 0)).sum())
        ax.set_title(f"{label}: {keep.sum()} kept, {on_pad} on padding", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name}: kept visual tokens (random-weight model)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxvlm demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="folder for the PNGs (default: outputs/demo)")
    parser.add_argument("--fast", action="store_true", help="small model, 2 photos, few tokens (for tests)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--next", action="store_true",
                        help="also LLaVA-NeXT: kept tokens over the base tile and the tile grid (next_<photo>.png)")
    parser.add_argument("--video", action="store_true",
                        help="also Video-LLaVA: kept tokens per frame of an 8-frame pan over a photo (video.png)")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        from jaxvlm.errors import UserError

        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")

    from jaxvlm import debias

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = assets.PHOTOS[:2] if args.fast else assets.PHOTOS[:4]
    max_new = args.max_new_tokens or (4 if args.fast else 16)
    repeats = 1 if args.fast else 3

    with tempfile.TemporaryDirectory() as tmp:
        processor, params = build(Path(tmp), args.seed, args.fast)
    images = [assets.photo(n) for n in names]
    inputs = processor(images=images, text=[assets.vicuna_prompt(QUESTION)] * len(images))
    n_params = sum(int(np.prod(w.shape)) for w in __import__("jax").tree.leaves(params.weights))
    print(f"model: LLaVA-1.5-shaped, {n_params / 1e6:.1f}M parameters, RANDOM weights (answers are noise)")
    print(f"batch: {len(images)} photos ({', '.join(names)}), prompt length {inputs['input_ids'].shape[1]} tokens "
          f"incl. {GRID * GRID} image tokens each, {max_new} new tokens")

    image_token = params.config.image_token_id
    starts = np.argmax(np.asarray(inputs["input_ids"]) == image_token, axis=1)
    pad = np.asarray(debias.pad_mask(np.asarray(inputs["image_sizes"]), grid=GRID, image_size=336, threshold=0.5))

    kept_by = {name: {} for name in names}
    print(f"\n{'schedule':<16}{'first call (compile+run)':>26}{'generate (median)':>20}{'kept/row':>10}"
          f"{'kept on padding':>17}")
    for label, schedule in schedules().items():
        out, first, median = timed_generate(params, inputs, schedule, max_new, repeats)
        if schedule is None:
            kept_rows = [np.arange(GRID * GRID)] * len(names)
        else:
            kept = np.asarray(out.kept[0])
            kept_rows = [kept_span(kept[b], starts[b]) for b in range(len(names))]
        on_pad = sum(int((pad[b][rows] == 0).sum()) for b, rows in enumerate(kept_rows))
        mean_kept = np.mean([len(r) for r in kept_rows])
        print(f"{label:<16}{first:>24.2f} s{median:>18.3f} s{mean_kept:>10.0f}{on_pad:>17d}")
        for b, name in enumerate(names):
            kept_by[name][label] = kept_rows[b]

    print()
    for b, name in enumerate(names):
        view = square_view(np.asarray(inputs["pixel_values"][b]), processor)
        path = out_dir / f"{name}.png"
        plot_photo(path, name, view, {k: v for k, v in kept_by[name].items() if k != "unpruned"}, pad[b])
        h, w = images[b].shape[:2]
        print(f"wrote {path}  ({w}x{h}, {int(pad[b].sum())} of {GRID * GRID} patches are image, rest padding)")
    if args.next or args.video:
        from experiments import demo_views

        with tempfile.TemporaryDirectory() as tmp:
            if args.next:
                demo_views.run_next(out_dir, Path(tmp), names, args.seed, args.fast)
            if args.video:
                demo_views.run_video(out_dir, Path(tmp), names[0], args.seed, args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
