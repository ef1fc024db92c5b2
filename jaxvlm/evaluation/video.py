"""Video QA (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA): Video-LLaVA's `GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/`
(or lmms-eval's ActivityNetQA parquet), Video-LLaVA's 8-frame sampling, the `merge.jsonl` the GPT judge takes,
and the aggregate of a judge's results as eval_video_qa.py computes it. No local score without one.

Layouts read:
- Video-LLaVA: `test_q.json` `[{"video_name", "question_id", "question"}]` and `test_a.json` `[{"answer", ...}]`,
  paired by position; videos `<name>.{mp4,avi,mov,mkv}` (first found, in that order) in `videos/` (MSVD),
  `videos/all/` (MSRVTT), `mp4/` (TGIF), `all_test/` as `v_<name>.*` (ActivityNet), or in `image_folder`.
- lmms-eval `lmms-eval/ActivityNetQA` parquet, split `test` (`video_name, question, answer, question_id`), videos
  `v_<name>.{mp4,webm,mkv}` in the unzipped `all_test/` beside it (or `image_folder`). Only ActivityNet exists
  there.

Prompt: the raw question ("llava": Video-LLaVA's run_inference_video_qa.py); lmms-eval's
`question.capitalize() + "?" + " Answer the question using a single word or phrase."` ("lmms").
Frames (`load_frames`): `np.linspace(0, n - 1, 8, dtype=int)` of the n frames (decord's count: the video
stream's packets), decoded with PyAV as RGB; resizing, cropping (and Video-LLaVA's random flip) belong to the
model's processor.
Export (`out_dir`): `merge.jsonl` lines `{"id", "question", "answer", "pred"}`. `judge`: the judge's combined
`results.json` (`{id: [{"pred": "yes", "score": 4}, qa]}`) or its folder of per-id `<id>.json` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxvlm.errors import require_module
from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, check_answer_count, read_json

NAME = "msvd_qa"
MAX_NEW_TOKENS = 1024
NUM_FRAMES = 8
VIDEO_DIRS = {"msvd_qa": ("videos", ""), "msrvtt_qa": ("videos/all", ""), "tgif_qa": ("mp4", ""),
              "activitynet_qa": ("all_test", "v_")}  # benchmark -> (video subfolder, file-name prefix)
EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
LMMS_EXTENSIONS = (".mp4", ".webm", ".mkv")
LMMS_BENCHMARK = "activitynet_qa"
LMMS_SPLIT = "test"
LMMS_POST_PROMPT = " Answer the question using a single word or phrase."
QUESTIONS, ANSWERS = "test_q.json", "test_a.json"
MERGE = "merge.jsonl"


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """The questions in file order, each with its video's path (checked to exist)."""
    check_variant(variant)
    lmms = parquet.is_parquet_dataset(data_dir)
    subfolder, prefix = VIDEO_DIRS[_checked(benchmark)]
    folder = Path(image_folder) if image_folder is not None else Path(data_dir) / subfolder
    samples = []
    for n, qa in enumerate(_qa(data_dir, benchmark)):
        prompt = qa["question"] if variant == "llava" else qa["question"].capitalize() + "?" + LMMS_POST_PROMPT
        video = _video(folder, prefix + str(qa["video_name"]), LMMS_EXTENSIONS if lmms else EXTENSIONS, qa["at"])
        samples.append(Sample(line=n, question_id=qa["question_id"], prompt=prompt, video=video, source=qa["at"]))
    return samples


def _checked(benchmark: str) -> str:
    if benchmark not in VIDEO_DIRS:
        raise DataError(f"video.py serves {', '.join(VIDEO_DIRS)}, not {benchmark!r}")
    return benchmark


def _video(folder: Path, stem: str, extensions: tuple[str, ...], source: str) -> str:
    for ext in extensions:
        if (folder / f"{stem}{ext}").is_file():
            return os.fspath(folder / f"{stem}{ext}")
    raise DataError(f"{source}: media file {folder / stem}{{{','.join(extensions)}}} does not exist")


def _qa(data_dir, benchmark: str) -> list[dict]:
    """[{"video_name", "question_id", "question", "answer", "at"}] in question order (`at`: "file[k]" or
    "shard:row")."""
    if parquet.is_parquet_dataset(data_dir):
        if _checked(benchmark) != LMMS_BENCHMARK:
            raise DataError(f"{data_dir}: lmms-eval has a parquet dataset for ActivityNet-QA only, not {benchmark}")
        out = []
        for source, row in parquet.read_rows(data_dir, LMMS_SPLIT,
                                             columns=["video_name", "question_id", "question", "answer"]):
            out.append(_valid({**row, "at": source}))
        return out
    questions_path, answers_path = Path(data_dir) / QUESTIONS, Path(data_dir) / ANSWERS
    questions, answers = read_json(questions_path), read_json(answers_path)
    for path, items in ((questions_path, questions), (answers_path, answers)):
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list, got {type(items).__name__}")
    if len(questions) != len(answers):
        raise DataError(f"{questions_path} has {len(questions)} questions but {answers_path} has {len(answers)} "
                        "answers: they are paired by position")
    out = []
    for k, (q, a) in enumerate(zip(questions, answers)):
        if not isinstance(q, dict):
            raise DataError(f"{questions_path}[{k}]: expected an object, got {type(q).__name__}")
        if not isinstance(a, dict) or "answer" not in a:
            raise DataError(f"{answers_path}[{k}]: lacks `answer`")
        out.append(_valid({**q, "answer": a["answer"], "at": f"{questions_path}[{k}]"}))
    return out


def _valid(qa: dict) -> dict:
    missing = [k for k in ("video_name", "question_id", "question") if k not in qa]
    if missing:
        raise DataError(f"{qa['at']}: lacks field(s) {missing}")
    if not isinstance(qa["question"], str):
        raise DataError(f"{qa['at']}: `question` must be a string, got {qa['question']!r}")
    return qa


# ---------------------------------------------------------------------------------------------------- frames

def frame_indices(n: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """(num_frames,) int: Video-LLaVA's `np.linspace(0, n - 1, num_frames, dtype=int)` (repeats when n is small)."""
    return np.linspace(0, n - 1, num_frames, dtype=int)


def load_frames(path: str | os.PathLike, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames of the video at `frame_indices(n)`, n counted as decord counts."""
    av = require_module("av", "video", "decoding videos")
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: has no video stream")
            n = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        if n == 0:
            raise DataError(f"{path}: the video stream has no frames")
        wanted = frame_indices(n, num_frames)
        targets, frames = set(wanted.tolist()), {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in targets:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
    except av.error.FFmpegError as e:
        raise DataError(f"{path}: not a decodable video ({e})") from None
    if len(frames) < len(targets):
        raise DataError(f"{path}: decoded {len(frames)} of the frames {sorted(targets)} ({n} packets)")
    return np.stack([frames[i] for i in wanted.tolist()])


# ---------------------------------------------------------------------------------------------------- scoring

def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """`merge.jsonl` under `out_dir`; with `judge`, eval_video_qa.py's accuracy and average score, and per line
    the judge's {"pred", "score"} for its id (None where the judge has no entry)."""
    qa = _qa(data_dir, _checked(benchmark))
    check_answer_count(answers, len(qa), str(data_dir))
    for n, (q, a) in enumerate(zip(qa, answers)):
        if a.get("question_id") != q["question_id"]:
            raise DataError(f"answers line {n + 1}: question_id {a.get('question_id')!r}, but {q['at']} has "
                            f"{q['question_id']!r}: answers must follow the question file's order")
    artifacts = {}
    if out_dir is not None:
        artifacts["merge"] = write_merge(Path(out_dir) / MERGE, qa, answers)
    if judge is None:
        return ScoreResult({}, [None] * len(answers), artifacts)
    results = read_judge(Path(judge))
    per_question = [_verdict(results[str(q["question_id"])]) if str(q["question_id"]) in results else None
                    for q in qa]
    return ScoreResult(aggregate(results, Path(judge)), per_question, artifacts)


def write_merge(path: Path, qa: list[dict], answers: list[dict]) -> Path:
    """Video-LLaVA's inference output: one `{"id", "question", "answer", "pred"}` line per question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q, a in zip(qa, answers):
            f.write(json.dumps({"id": q["question_id"], "question": q["question"], "answer": q["answer"],
                                "pred": a.get("text")}) + "\n")
    return path


def read_judge(path: Path) -> dict:
    """{id: [judge reply dict, qa]}: the combined results.json, or the judge's folder of `<id>.json` files."""
    if path.is_dir():
        return {p.name[:-5]: read_json(p) for p in sorted(path.iterdir()) if p.name.endswith(".json")}
    results = read_json(path)
    if not isinstance(results, dict):
        raise DataError(f"{path}: expected the judge's results {{id: [{{'pred', 'score'}}, qa]}}")
    return results


def _verdict(result) -> dict:
    """One entry as eval_video_qa.py reads it: score = int(result[0]["score"]), pred yes / no by substring;
    None for what it cannot parse."""
    try:
        reply = result[0]
        points = int(reply["score"])
    except (TypeError, KeyError, IndexError, ValueError, OverflowError):
        return {"pred": None, "score": None}
    try:
        pred = reply["pred"].lower()
    except (TypeError, KeyError, AttributeError):
        return {"pred": None, "score": points}
    return {"pred": "yes" if "yes" in pred else "no" if "no" in pred else None, "score": points}


def aggregate(results: dict, where: Path) -> dict:
    """eval_video_qa.py: accuracy = #yes / (#yes + #no); average score = Σ int(score) / #entries, every entry
    counted, a reply it cannot parse as 0 (the count comes before the parse)."""
    verdicts = [_verdict(r) for r in results.values()]
    yes = sum(v["pred"] == "yes" for v in verdicts)
    no = sum(v["pred"] == "no" for v in verdicts)
    if not verdicts or yes + no == 0:
        raise DataError(f"{where}: no judge entry has a yes / no verdict")
    return {"accuracy": yes / (yes + no), "average_score": sum(v["score"] or 0 for v in verdicts) / len(verdicts),
            "yes_count": yes, "no_count": no, "count": len(verdicts)}
