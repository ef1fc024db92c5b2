"""Fixtures for MMBench / MMBench-CN (multiple choice, circular copies), MM-Vet and the video QA sets (judge-
scored), in the layouts users have, with real scikit-image photos (and tiny real mp4 videos made of them).

    make_mmbench(root) -> root/mmbench            mmbench_dev_20230712.tsv (3 questions, 8 rows with the copies)
    make_mmbench_cn(root) -> root/mmbench_cn      mmbench_dev_cn_20231003.tsv
    make_mmbench_parquet(root, "en" | "cn")       lmms-eval lmms-lab/MMBench: <config>/dev-00000-of-00001.parquet
    make_mmvet(root) -> root/mm-vet               llava-mm-vet.jsonl, images/, mm-vet.json
    make_mmvet_parquet(root)                      lmms-eval lmms-lab/MMVet: data/test-00000-of-00001.parquet
    make_video(root, "msvd_qa" | ...)             GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/ with 12-frame mp4 videos
    make_activitynet_parquet(root)                lmms-eval ActivityNetQA: data/test-*.parquet + all_test/v_*.mp4

The writers below them (`write_mmbench_tsv`, `circular_rows`, `write_video`, ...) build other cases for tests.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle")
LETTERS = "ABCD"
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split")
CIRCULAR = 1_000_000


def photo(name: str, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A scikit-image photograph, RGB uint8, resized to `size` (W, H) to keep fixtures small."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return np.asarray(Image.fromarray(image).convert("RGB").resize(size, Image.BILINEAR))


def png_bytes(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(name)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- MMBench

def mmbench_row(index: int, question: str, options: list[str], answer: str, **cells) -> dict:
    """One tsv row: options fill A.. in order, the rest empty; `cells` sets hint, category, l2-category, ...,
    or overrides an option cell (e.g. C="None"); `photo` picks the image."""
    row = {"index": index, "question": question, "answer": answer, "category": "attribute_recognition",
           "l2-category": "finegrained_perception", "split": "dev", "source": "fixture", "photo": PHOTOS[0],
           **dict(zip(LETTERS, options)), **cells}
    return row


def circular_rows(index: int, question: str, options: list[str], answer: str, **cells) -> list[dict]:
    """The question and its CircularEval copies as MMBench ships them: copy k has index + k * 1e6, the options
    rotated left k times and the answer re-lettered."""
    n, at = len(options), LETTERS.index(answer)
    return [mmbench_row(index + k * CIRCULAR, question, options[k:] + options[:k], LETTERS[(at - k) % n], **cells)
            for k in range(n)]


def write_mmbench_tsv(path: Path, rows: list[dict], columns: tuple[str, ...] = MMBENCH_COLUMNS) -> Path:
    """`rows` (dicts as `mmbench_row` makes them) as a tab-separated file with base64 PNG image cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            cells = {**row, "image": base64.b64encode(png_bytes(row["photo"])).decode()}
            writer.writerow(["" if cells.get(c) is None else cells.get(c) for c in columns])
    return path


def mmbench_en_rows() -> list[dict]:
    rows = (circular_rows(11, "Which animal is in the picture?", ["cat", "dog", "bird"], "A", hint="A pet photo.",
                          photo="chelsea")
            + circular_rows(12, "Is this an astronaut?", ["yes", "no"], "A", photo="astronaut")
            + circular_rows(13, "What is in the cup?", ["coffee", "tea", "milk"], "A", D="None", photo="coffee",
                            category="object_localization", **{"l2-category": "coarse_perception"}))
    return sorted(rows, key=lambda r: r["index"])


def mmbench_cn_rows() -> list[dict]:
    rows = (circular_rows(21, "图中是什么动物？", ["猫", "狗", "鸟"], "A", hint="一张宠物照片。", photo="chelsea")
            + circular_rows(22, "这是宇航员吗？", ["是", "不是"], "A", photo="astronaut")
            + circular_rows(23, "杯子里是什么？", ["咖啡", "茶", "牛奶"], "A", photo="coffee"))
    return sorted(rows, key=lambda r: r["index"])


def make_mmbench(root: Path) -> Path:
    write_mmbench_tsv(Path(root) / "mmbench" / "mmbench_dev_20230712.tsv", mmbench_en_rows())
    return Path(root) / "mmbench"


def make_mmbench_cn(root: Path) -> Path:
    write_mmbench_tsv(Path(root) / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv", mmbench_cn_rows())
    return Path(root) / "mmbench_cn"


def make_mmbench_parquet(root: Path, config: str = "en", rows: list[dict] | None = None) -> Path:
    """lmms-lab/MMBench's layout: `<config>/dev-00000-of-00001.parquet`, `L2-category`, images embedded, missing
    options null."""
    rows = rows if rows is not None else (mmbench_en_rows() if config == "en" else mmbench_cn_rows())
    table = []
    for row in rows:
        cells = {c: (None if row.get(c) in (None, "", "None") else row[c]) for c in MMBENCH_COLUMNS if c != "image"}
        cells["L2-category"] = cells.pop("l2-category")
        cells["image"] = {"bytes": png_bytes(row["photo"]), "path": None}
        table.append(cells)
    return _write_parquet(Path(root) / "MMBench" / config / "dev-00000-of-00001.parquet", table).parents[1]


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------------- MM-Vet

MMVET = (  # (question, answer, capabilities, photo)
    ("What animal is this?", "cat", ["rec"], "chelsea"),
    ("What is the person wearing?", "a spacesuit <OR> space suit", ["rec", "know"], "astronaut"),
    ("What drink is shown?", "coffee", ["rec"], "coffee"),
    ("Describe the scene in detail.", "a rocket on a launch pad", ["rec", "gen", "know"], "rocket"),
    ("How many cups are there?", "1", ["rec", "math"], "coffee"),
)


def make_mmvet(root: Path) -> Path:
    """LLaVA's `mm-vet/` (llava-mm-vet.jsonl, images/v1_<k>.png) with MM-Vet's `mm-vet.json` metadata."""
    folder = Path(root) / "mm-vet"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, metadata = [], {}
    for k, (question, answer, capability, name) in enumerate(MMVET):
        image = f"v1_{k}.png"
        (folder / "images" / image).write_bytes(png_bytes(name))
        lines.append({"image": image, "text": question, "category": "conv", "question_id": k})
        metadata[f"v1_{k}"] = {"imagename": image, "capability": capability, "question": question, "answer": answer}
    (folder / "llava-mm-vet.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (folder / "mm-vet.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return folder


def make_mmvet_parquet(root: Path) -> Path:
    """lmms-lab/MMVet's layout: question_id "v1_<k>", capability as "rec,know"."""
    rows = [{"question_id": f"v1_{k}", "image": {"bytes": png_bytes(name), "path": None}, "question": question,
             "answer": answer, "capability": ",".join(capability)}
            for k, (question, answer, capability, name) in enumerate(MMVET)]
    return _write_parquet(Path(root) / "MMVet" / "data" / "test-00000-of-00001.parquet", rows).parents[1]


# ---------------------------------------------------------------------------------------------------- video

VIDEO_SETS = {  # benchmark -> (folder, video subfolder, file prefix)
    "msvd_qa": ("MSVD_Zero_Shot_QA", "videos", ""),
    "msrvtt_qa": ("MSRVTT_Zero_Shot_QA", "videos/all", ""),
    "tgif_qa": ("TGIF_Zero_Shot_QA", "mp4", ""),
    "activitynet_qa": ("Activitynet_Zero_Shot_QA", "all_test", "v_"),
}
VIDEO_QA = (  # (video name, question, answer)
    ("vid_cat", "what is the animal doing", "sitting"),
    ("vid_space", "who is in the video", "astronaut"),
    ("vid_cat", "what color is the animal", "brown"),
    ("vid_cup", "what is in the cup", "coffee"),
)
VIDEO_PHOTOS = {"vid_cat": "chelsea", "vid_space": "astronaut", "vid_cup": "coffee"}


def moving_frames(name: str, n: int = 12, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """(n, H, W, 3) uint8: a photo panned 4 px to the right per frame (every frame differs)."""
    wide = photo(name, (size[0] + 4 * n, size[1]))
    return np.stack([wide[:, 4 * k:4 * k + size[0]] for k in range(n)])


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> Path:
    """`frames` (F, H, W, 3) uint8 as an H.264 mp4 at near-lossless quality (PyAV)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_video(root: Path, benchmark: str = "msvd_qa") -> Path:
    """Video-LLaVA's `GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/`: test_q.json + test_a.json (paired by position) and
    12-frame mp4 videos in the set's video subfolder."""
    folder_name, subfolder, prefix = VIDEO_SETS[benchmark]
    folder = Path(root) / "GPT_Zero_Shot_QA" / folder_name
    for name, picture in VIDEO_PHOTOS.items():
        write_video(folder / subfolder / f"{prefix}{name}.mp4", moving_frames(picture))
    questions = [{"video_name": name, "question_id": f"{name}_{k}", "question": q}
                 for k, (name, q, _) in enumerate(VIDEO_QA)]
    answers = [{"answer": a, "question_id": f"{name}_{k}"} for k, (name, _, a) in enumerate(VIDEO_QA)]
    (folder / "test_q.json").write_text(json.dumps(questions), encoding="utf-8")
    (folder / "test_a.json").write_text(json.dumps(answers), encoding="utf-8")
    return folder


def make_activitynet_parquet(root: Path) -> Path:
    """lmms-eval/ActivityNetQA's layout: `data/test-00000-of-00001.parquet` (video_name, question, answer,
    question_id, type) and the unzipped videos in `all_test/v_<name>.mp4`."""
    folder = Path(root) / "ActivityNetQA"
    for name, picture in VIDEO_PHOTOS.items():
        write_video(folder / "all_test" / f"v_{name}.mp4", moving_frames(picture))
    rows = [{"video_name": name, "question": q, "answer": a, "question_id": f"v_{name}_{k}", "type": 0}
            for k, (name, q, a) in enumerate(VIDEO_QA)]
    _write_parquet(folder / "data" / "test-00000-of-00001.parquet", rows)
    return folder
