"""The contract between the harness's benchmark modules, the runner and the scorers.

A benchmark module `jaxvlm/evaluation/<name>.py` (registered in `jaxvlm.evaluation.BENCHMARKS`) provides:

    NAME: str                       # the CLI name (gqa, pope, ...)
    MAX_NEW_TOKENS: int             # LLaVA-1.5's setting for this benchmark (128 / 1024)
    (`benchmark` is the CLI name: one module may serve several, e.g. mmbench / mmbench_cn, the video sets)
    read(data_dir, *, benchmark, image_folder=None, variant="llava") -> list[Sample]
        the questions in file order, from LLaVA-1.5's `playground/data/eval/<bench>/` layout (Video-LLaVA's
        `GPT_Zero_Shot_QA/<set>/` for video) or a local lmms-eval parquet dataset folder; `variant` picks the
        prompt ("llava": as LLaVA-1.5 evaluates, "lmms": as lmms-eval does). Every record and media path is
        validated here, before any model is loaded; problems raise DataError naming file:line.
    score(data_dir, answers, *, benchmark, out_dir=None, judge=None) -> ScoreResult
        `answers`: the answers file's records (LLaVA's format, `read_answers`) in file order; scores what the
        official script scores, per line; writes official artefacts (submission / judge files) under
        `out_dir` when given; `judge` is a judge's result file to aggregate (MM-Vet, video sets).

Answers files are LLaVA's format: one JSON line per question-file line, in that order, with `question_id`,
`prompt`, `text`, `answer_id`, `model_id`, `metadata` (+ a benchmark's extra fields, e.g. MMBench's
`round_id`, `options`, `option_char`). Question ids are not unique in every set: everything keys by line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

from jaxvlm.errors import UserError

ANSWER_FIELDS = ("question_id", "prompt", "text", "answer_id", "model_id", "metadata")
VARIANTS = ("llava", "lmms")  # prompts as LLaVA-1.5 evaluates / as lmms-eval does


class DataError(UserError):
    """A benchmark file, record or media path is unusable; the message starts with `file:line`."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One question, as the runner feeds it to a model.

    line:        0-based position in the question file (or dataset row order): the key of everything.
    question_id: as the question file has it (any JSON value), written back unchanged.
    prompt:      the question text the chat template wraps (instruction included, no image token): LLaVA's
                 question-file `text` field as is, or the text built from a dataset's fields.
    image:       a path (str) or encoded image bytes (parquet), or None for a text-only question.
    video:       a video path, or None.
    extra:       fields the answers line carries besides ANSWER_FIELDS (MMBench: round_id, options, ...).
    source:      "file:line" (1-based line) for messages.
    answer_prompt: the answers line's `prompt` where the official code writes another text than the model's
                 prompt (ScienceQA: "<image>\n" + prompt, which its scorer reads); None: `prompt`.
    """

    line: int
    question_id: Any
    prompt: str
    image: str | bytes | None = None
    video: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    answer_prompt: str | None = None

    @property
    def record_prompt(self) -> str:
        """The `prompt` field of this question's answers line."""
        return self.prompt if self.answer_prompt is None else self.answer_prompt


@dataclasses.dataclass
class ScoreResult:
    """What `jaxvlm score` prints: `metrics` named as the official script reports them, one `per_question`
    value per answers line (None where a line is not scored), and `artifacts` {name: path} written."""

    metrics: dict
    per_question: list
    artifacts: dict = dataclasses.field(default_factory=dict)

    def to_json(self, benchmark: str) -> dict:
        return {"benchmark": benchmark, "metrics": self.metrics, "per_question": self.per_question,
                "artifacts": {k: str(v) for k, v in self.artifacts.items()}}


def check_variant(variant: str) -> None:
    """DataError unless `variant` is one of VARIANTS."""
    if variant not in VARIANTS:
        raise DataError(f"unknown prompt variant {variant!r}; have {', '.join(VARIANTS)}")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(1-based line number, record) per non-empty line; DataError names file:line of invalid JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield n, record


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON file; DataError names the file (and line) when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def require_fields(record: dict, fields: tuple[str, ...], source: str) -> None:
    missing = [k for k in fields if k not in record]
    if missing:
        raise DataError(f"{source}: record lacks field(s) {missing}")


def read_answers(path: str | os.PathLike) -> list[dict]:
    """An answers file (LLaVA's format) in file order; each record needs `question_id`, `prompt`, `text`."""
    out = []
    for n, record in read_jsonl(path):
        require_fields(record, ("question_id", "prompt", "text"), f"{path}:{n}")
        out.append(record)
    return out


def answer_record(sample: Sample, text: str, model_id: str, answer_id: str, metadata: dict | None = None) -> dict:
    """The answers-file line for `sample` (LLaVA's field order, then the benchmark's extra fields)."""
    return {"question_id": sample.question_id, "prompt": sample.record_prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": metadata or {}, **sample.extra}


def check_media(path: str | os.PathLike, source: str) -> str:
    """`path` as a string if it is a readable file, else DataError naming `source` (file:line) and the path."""
    if not os.path.isfile(path):
        raise DataError(f"{source}: media file {path} does not exist")
    return os.fspath(path)


def check_answer_count(answers: list, expected: int, what: str) -> None:
    """Scorers that pair answers with annotations by position need exactly one answer per question line."""
    if len(answers) != expected:
        raise DataError(f"answers file has {len(answers)} lines but {what} has {expected} questions: "
                        "answers must be complete and in question-file order")
