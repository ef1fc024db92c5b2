"""What the benchmark modules share: LLaVA-1.5 question files (`{"question_id", "image", "text"}` lines), the
instruction lines they append, lmms-eval parquet splits, answers keyed by question id, JSON artefacts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_media, read_jsonl, require_fields

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."

def strip_suffix(text: str, suffix: str) -> str:
    """`text` without the instruction `suffix` LLaVA's question files append (unchanged if absent)."""
    return text[: -len(suffix)] if suffix and text.endswith(suffix) else text


def llava_samples(question_file: Path, image_dir: Path, prompt: Callable[[str], str]) -> list[Sample]:
    """One Sample per line of a LLaVA question file ({"question_id", "image", "text", ...}); `prompt` maps the
    `text` field to the prompt; every image must exist under `image_dir` (DataError naming file:line)."""
    samples = []
    for n, record in read_jsonl(question_file):
        source = f"{question_file}:{n}"
        require_fields(record, ("question_id", "image", "text"), source)
        if not isinstance(record["text"], str) or not isinstance(record["image"], str):
            raise DataError(f"{source}: `text` and `image` must be strings")
        image = check_media(image_dir / record["image"], source)
        samples.append(Sample(line=len(samples), question_id=record["question_id"], prompt=prompt(record["text"]),
                              image=image, source=source))
    return samples


def image_dir(data_dir: str | os.PathLike, image_folder: str | os.PathLike | None, default: str) -> Path:
    return Path(image_folder) if image_folder is not None else Path(data_dir) / default


def pick_split(data_dir: str | os.PathLike, splits: tuple[str, ...]) -> str:
    """The first of `splits` the parquet dataset folder has shards for (the modules' documented preference)."""
    for split in splits:
        try:
            parquet.parquet_files(data_dir, split)
        except DataError:
            continue
        return split
    raise DataError(f"{data_dir}: no parquet shard for any of the splits {list(splits)}")


def parquet_samples(data_dir, split: str, columns: list[str], prompt: Callable[[dict, str], str]) -> list[Sample]:
    """One Sample per row of `split`: its `question_id`, `prompt(row, source)` and the embedded `image` bytes
    (a `question` column must hold strings)."""
    samples = []
    for source, row in parquet.read_rows(data_dir, split, columns=["question_id", "image", *columns]):
        if "question" in row and not isinstance(row["question"], str):
            raise DataError(f"{source}: `question` must be a string, got {row['question']!r}")
        samples.append(Sample(line=len(samples), question_id=row["question_id"], prompt=prompt(row, source),
                              image=parquet.image_bytes(row["image"], source), source=source))
    return samples


def rows_by_id(rows: Iterable[tuple[str, dict]]) -> dict:
    """{question_id: row}; DataError when an id repeats (the parquet sets these modules read have unique ids)."""
    out = {}
    for source, row in rows:
        if row["question_id"] in out:
            raise DataError(f"{source}: question_id {row['question_id']!r} repeats")
        out[row["question_id"]] = row
    return out


def answer_fields(record: dict, n: int) -> tuple:
    """(question_id, text) of answers line `n` (0-based); the id must be a JSON scalar, the text a string."""
    qid, text = record.get("question_id"), record.get("text")
    if isinstance(qid, (dict, list)) or qid is None:
        raise DataError(f"answers line {n + 1}: `question_id` must be a string or number, got {qid!r}")
    if not isinstance(text, str):
        raise DataError(f"answers line {n + 1}: `text` must be a string, got {type(text).__name__}")
    return qid, text


def texts_by_id(answers: list[dict]) -> dict:
    """{question_id: text} as LLaVA's converters build it (a repeated id keeps its last line)."""
    return dict(answer_fields(a, n) for n, a in enumerate(answers))


def write_json(out_dir: str | os.PathLike, name: str, obj) -> Path:
    """`obj` as JSON at `out_dir/name` (folders made); returns the path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path


def percent(values: list[float]) -> float:
    """100 x mean of `values` (per-question accuracies in [0, 1])."""
    if not values:
        raise DataError("no answers line could be scored")
    return 100.0 * sum(values) / len(values)
