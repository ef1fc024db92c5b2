"""`jaxvlm demo --next / --video`: where FastV and debiased FastV keep tokens on LLaVA-NeXT's tiles and on
Video-LLaVA's frames.

Both models have RANDOM weights (labelled so on every figure and line: the kept sets show the machinery, not a
trained model's attention) and real skimage photographs, through jaxvlm.Processor as a user would:
  LLaVA-NeXT: 336 px tiles, the Hub's pinpoints (1,176-2,928 tokens per image); one PNG per photo,
      next_<photo>.png: a row per schedule, the base tile (the whole photo squashed, 24 x 24) and the tile
      grid (the photo in its pinpoint; rows / columns the unpadding cut hatched; newline tokens as a strip).
  Video-LLaVA: 224 px, 8 frames (a camera pan over a photograph), 8 x 257 tokens; video.png: a row per
      schedule, a panel per frame (16 x 16 patches; the frame's CLS token in the title).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import assets
from experiments.demo import QUESTION, shade, square_view

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's (height, width)
VIDEO_TOKEN = "<video>"
FRAMES = 8
LABEL = "RANDOM weights"


def schedules(n_visual: int) -> dict:
    """FastV raw and debiased at the same budget: a quarter of the smallest visual count (layer 2)."""
    from jaxvlm import prune

    keep = max(1, n_visual // 4)
    return {f"FastV keep {keep}": prune.fastv(layer=2, keep=keep),
            f"debiased FastV keep {keep}": prune.debiased_fastv(keep=keep)}


def _text_config(fast: bool) -> dict:
    return dict(hidden=128 if fast else 256, layers=4, heads=4)


def _kept_first_stage(params, inputs, schedule) -> np.ndarray:
    import jaxvlm

    return np.asarray(jaxvlm.forward(params, **inputs, prune=schedule).kept[0])


# ------------------------------------------------------------------------------------------ LLaVA-NeXT


def next_model(workdir: Path, seed: int, fast: bool):
    """(jaxvlm.Processor, random LLaVA-NeXT VLM): LlavaNextProcessor saved and reloaded, 336 px tiles."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import llava_next

    tok = assets.train_tokenizer()
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=PINPOINTS)
    LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1).save_pretrained(workdir / "next")
    processor = jaxvlm.Processor.from_pretrained(workdir / "next")
    d = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                               **_text_config(fast))
    d.update(model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"],
             image_grid_pinpoints=PINPOINTS)
    return processor, random_params(llava_next.parse_config(d), seed=seed, std=0.05)


def grid_view(tiles: np.ndarray, layout, processor) -> np.ndarray:
    """The photo in its pinpoint, (nph*S, npw*S, 3) uint8, from its tiles' pixel_values (1 + nph*npw, 3, S, S)."""
    views = [square_view(t, processor) for t in tiles[1:layout.tiles]]
    rows = [np.concatenate(views[r * layout.npw:(r + 1) * layout.npw], axis=1) for r in range(layout.nph)]
    return np.concatenate(rows, axis=0)


def plot_next(path: Path, name: str, base: np.ndarray, grid: np.ndarray, maps: dict) -> None:
    """A row per schedule: base tile and tile grid, kept bright; cut rows / columns hatched; newlines a strip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    aspect = grid.shape[1] / grid.shape[0]
    fig, axes = plt.subplots(len(maps), 2, figsize=(3.6 + 3.6 * aspect + 0.6, 3.8 * len(maps)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, aspect * 1.08]})
    for (ax_base, ax_grid), (label, m) in zip(axes, maps.items()):
        lay = m["layout"]
        ax_base.imshow(shade(base, m["base"]))
        ax_base.set_title(f"{label}\nbase tile: {int(m['base'].sum())} of {m['base'].size} kept", fontsize=9)
        cell = grid.shape[0] // m["grid"].shape[0]
        newline = np.zeros((grid.shape[0], 2 * cell, 3), np.uint8)
        newline[lay.r0 * cell:lay.r1 * cell] = np.where(np.repeat(m["newlines"], cell)[:, None, None], 255, 60)
        ax_grid.imshow(np.concatenate([shade(grid, m["grid"]), newline], axis=1))
        cut = [(0, 0, grid.shape[1], lay.r0 * cell), (0, lay.r1 * cell, grid.shape[1], grid.shape[0] - lay.r1 * cell),
               (0, 0, lay.c0 * cell, grid.shape[0]), (lay.c1 * cell, 0, grid.shape[1] - lay.c1 * cell, grid.shape[0])]
        for x, y, w, h in cut:
            if w > 0 and h > 0:
                ax_grid.add_patch(Rectangle((x, y), w, h, fill=False, hatch="///", edgecolor="orange", lw=0))
        n_grid = (lay.r1 - lay.r0) * (lay.c1 - lay.c0)
        ax_grid.set_title(f"{lay.nph} x {lay.npw} tile grid: {int(m['grid'].sum())} of {n_grid} kept\nnewlines "
                          f"{int(m['newlines'].sum())} of {m['newlines'].size} (right strip); hatched: cut by "
                          "unpadding", fontsize=9)
        for ax in (ax_base, ax_grid):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{name}: LLaVA-NeXT kept visual tokens ({LABEL}; 336 px tiles)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_next(out_dir: Path, workdir: Path, names, seed: int, fast: bool) -> tuple[list[Path], dict]:
    """Prints kept counts per schedule and writes next_<photo>.png; returns (the paths, {schedule label:
    llava_next.kept_maps per photo})."""
    from jaxvlm.models import llava_next

    processor, params = next_model(workdir, seed, fast)
    images = [assets.photo(n) for n in names]
    inputs = processor(images=images, text=[assets.vicuna_prompt(QUESTION)] * len(images))
    batch = llava_next.prepare(params.config, **inputs)
    counts = batch["visual"].sum(axis=1)
    print(f"\nLLaVA-NeXT ({LABEL}, answers are noise): {len(images)} photos, visual tokens per photo "
          f"{counts.tolist()} (base 576 + unpadded grid + newlines)")
    print(f"{'schedule':<28}{'kept/row':>10}{'on base tile':>14}{'on grid':>10}{'newlines':>10}")
    maps = {}
    for label, schedule in schedules(int(counts.min())).items():
        maps[label] = llava_next.kept_maps(params.config, inputs["image_sizes"], batch,
                                           _kept_first_stage(params, inputs, schedule))
        tot = [sum(int(m[k].sum()) for m in maps[label]) for k in ("base", "grid", "newlines")]
        print(f"{label:<28}{sum(tot) / len(images):>10.0f}{tot[0]:>14d}{tot[1]:>10d}{tot[2]:>10d}")
    paths = []
    for i, name in enumerate(names):
        tiles = inputs["pixel_values"][i]
        layout = maps[next(iter(maps))][i]["layout"]
        path = out_dir / f"next_{name}.png"
        plot_next(path, name, square_view(tiles[0], processor), grid_view(tiles, layout, processor),
                  {label: m[i] for label, m in maps.items()})
        print(f"wrote {path}  ({images[i].shape[1]}x{images[i].shape[0]} -> {layout.nph} x {layout.npw} tiles)")
        paths.append(path)
    return paths, maps


# ------------------------------------------------------------------------------------------ Video-LLaVA


def video_model(workdir: Path, seed: int, fast: bool):
    """(jaxvlm.Processor, random Video-LLaVA VLM): VideoLlavaProcessor (frames through its image processor)."""
    from transformers import VideoLlavaImageProcessor

    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import video_llava
    from jaxvlm.processor import hf_processor_class

    tok = assets.train_tokenizer()
    tok.add_tokens([VIDEO_TOKEN], special_tokens=True)
    hf_processor_class("video_llava")(image_processor=VideoLlavaImageProcessor(), tokenizer=tok,
                                      patch_size=14).save_pretrained(workdir / "video")
    processor = jaxvlm.Processor.from_pretrained(workdir / "video")
    d = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                               **_text_config(fast))
    d["vision_config"]["image_size"] = 224
    d.update(model_type="video_llava", architectures=["VideoLlavaForConditionalGeneration"],
             video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN))
    return processor, random_params(video_llava.parse_config(d), seed=seed, std=0.05)


def pan(image: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """A camera pan over a photograph: (frames, H, W', 3) crops sliding left to right over a third of it."""
    step = max(1, image.shape[1] // (3 * (frames - 1)))
    w = image.shape[1] - step * (frames - 1)
    return np.stack([image[:, k * step:k * step + w] for k in range(frames)])


def plot_video(path: Path, name: str, views: list[np.ndarray], maps: dict) -> None:
    """A row per schedule, a panel per frame: kept patches bright, the frame's CLS token in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), len(views), figsize=(2.1 * len(views), 2.6 * len(maps)), squeeze=False)
    for row, (label, m) in zip(axes, maps.items()):
        for f, ax in enumerate(row):
            ax.imshow(shade(views[f], m["patches"][f]))
            ax.set_title(f"frame {f}: {int(m['patches'][f].sum())} kept" + (" + CLS" if m["cls"][f] else ""),
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"{name} (camera pan, {len(views)} frames): Video-LLaVA kept visual tokens per frame ({LABEL})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_video(out_dir: Path, workdir: Path, name: str, seed: int, fast: bool) -> tuple[Path, dict]:
    """Prints kept tokens per frame per schedule and writes video.png; returns (its path, {schedule label: the
    video's video_llava.kept_maps entry})."""
    from jaxvlm.models import video_llava

    processor, params = video_model(workdir, seed, fast)
    video = pan(assets.photo(name))
    prompt = assets.vicuna_prompt(QUESTION).replace(assets.IMAGE_TOKEN, VIDEO_TOKEN)
    inputs = processor(text=[prompt], videos=[video])
    batch = video_llava.prepare(params.config, **inputs)
    n_visual = int(batch["visual"].sum())
    print(f"\nVideo-LLaVA ({LABEL}, answers are noise): a {FRAMES}-frame pan over {name}, {n_visual} visual "
          f"tokens ({FRAMES} x {params.config.tokens_per_frame})")
    print(f"{'schedule':<28}{'kept per frame (patches + CLS)':>40}")
    maps = {}
    for label, schedule in schedules(n_visual).items():
        maps[label] = video_llava.kept_maps(params.config, batch, _kept_first_stage(params, inputs, schedule))[0]
        per = [int(p.sum()) + int(c) for p, c in zip(maps[label]["patches"], maps[label]["cls"])]
        print(f"{label:<28}{' '.join(f'{k:>4d}' for k in per):>40}")
    views = [square_view(f, processor) for f in inputs["pixel_values_videos"][0]]
    path = out_dir / "video.png"
    plot_video(path, name, views, maps)
    print(f"wrote {path}")
    return path, maps
