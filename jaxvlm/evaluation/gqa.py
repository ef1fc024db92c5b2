"""GQA testdev-balanced: LLaVA-1.5's question file or lmms-eval's parquet dataset, scored as GQA's eval.py.

LLaVA-1.5 layout (`--data playground/data/eval/gqa`):

    llava_gqa_testdev_balanced.jsonl        {"question_id", "image", "text", "category"} per line
    data/images/<image>                     (or --image-folder)
    data/testdev_balanced_questions.json    the official annotations: qid -> {answer, isBalanced, types, ...}
                                            (`testdev_balanced_all_questions.json`, eval.py's default name, too)

lmms-eval layout (`lmms-lab/GQA`): config `testdev_balanced_instructions` split `testdev` (id, imageId, question,
answer, isBalanced, types, ...) joined on `imageId` with config `testdev_balanced_images` (id, image).

Scoring is scripts/convert_gqa_for_eval.py then `eval.py --tier testdev_balanced`: prediction =
`text.rstrip('.').lower()`, nothing else; over the balanced questions `correct = prediction == answer`;
Accuracy, Binary (structural type other than "query") and Open ("query"), in percent. A repeated question id
keeps its last answers line (eval.py builds a dict); every balanced question needs a prediction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, read_json
from jaxvlm.evaluation.llava_layout import (SHORT_ANSWER, answer_fields, image_dir, llava_samples,
                                         write_json)

NAME = "gqa"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_gqa_testdev_balanced.jsonl"
IMAGE_DIR = "data/images"
ANNOTATION_FILES = ("data/testdev_balanced_questions.json", "data/testdev_balanced_all_questions.json")
PREDICTIONS_FILE = "testdev_balanced_predictions.json"
INSTRUCTIONS, IMAGES, SPLIT = "testdev_balanced_instructions", "testdev_balanced_images", "testdev"


@dataclasses.dataclass(frozen=True)
class Question:
    """The fields of one official annotation eval.py's accuracy reads."""

    answer: str
    balanced: bool
    structural: str


def prediction(text: str) -> str:
    """What convert_gqa_for_eval.py writes for a model answer: every trailing '.' removed, lower-cased."""
    return text.rstrip(".").lower()


def read(data_dir, *, benchmark: str = NAME, image_folder=None, variant: str = "llava") -> list[Sample]:
    """The questions in file order; the prompt is the question file's `text` (lmms-eval builds the same
    `{question}` + short-answer instruction)."""
    check_variant(variant)
    question_file = Path(data_dir) / QUESTION_FILE
    if question_file.is_file():
        return llava_samples(question_file, image_dir(data_dir, image_folder, IMAGE_DIR), lambda text: text)
    if parquet.is_parquet_dataset(data_dir):
        return _parquet_samples(data_dir)
    raise DataError(f"{data_dir}: neither LLaVA's {QUESTION_FILE} nor an lmms-eval GQA parquet dataset")


def _parquet_samples(data_dir) -> list[Sample]:
    images = {}
    for source, row in parquet.read_rows(data_dir, SPLIT, IMAGES, columns=["id", "image"]):
        images[row["id"]] = parquet.image_bytes(row["image"], source)
    samples = []
    for source, row in parquet.read_rows(data_dir, SPLIT, INSTRUCTIONS, columns=["id", "imageId", "question"]):
        if row["imageId"] not in images:
            raise DataError(f"{source}: imageId {row['imageId']!r} is not in the {IMAGES} config")
        if not isinstance(row["question"], str):
            raise DataError(f"{source}: `question` must be a string, got {row['question']!r}")
        samples.append(Sample(line=len(samples), question_id=row["id"], prompt=row["question"] + SHORT_ANSWER,
                              image=images[row["imageId"]], source=source))
    return samples


def annotations(data_dir) -> dict:
    """{question id: Question} from the official questions JSON, or the parquet instructions config."""
    for name in ANNOTATION_FILES:
        path = Path(data_dir) / name
        if path.is_file():
            raw = read_json(path)
            if not isinstance(raw, dict):
                raise DataError(f"{path}: expected a JSON object question id -> annotation")
            return {qid: _question(q, f"{path}: question {qid}") for qid, q in raw.items()}
    if not (Path(data_dir) / QUESTION_FILE).is_file() and parquet.is_parquet_dataset(data_dir):
        columns = ["id", "answer", "isBalanced", "types"]
        return {row["id"]: _question(row, source)
                for source, row in parquet.read_rows(data_dir, SPLIT, INSTRUCTIONS, columns=columns)}
    raise DataError(f"{data_dir}: no GQA annotations ({' or '.join(ANNOTATION_FILES)}): copy the official "
                    "testdev_balanced_questions.json there")


def _question(q, source: str) -> Question:
    try:
        answer, balanced, structural = q["answer"], q["isBalanced"], q["types"]["structural"]
    except (KeyError, TypeError):
        raise DataError(f"{source}: annotation lacks `answer`, `isBalanced` or `types.structural`") from None
    return Question(answer=answer, balanced=bool(balanced), structural=structural)


def score(data_dir, answers: list[dict], *, benchmark: str = NAME, out_dir=None, judge=None) -> ScoreResult:
    """eval.py's Accuracy / Binary / Open (percent) over the balanced questions; per answers line 1.0 / 0.0, or
    None where the line is not scored (unknown or unbalanced question, or an earlier line of a repeated id).
    Writes `testdev_balanced_predictions.json` (convert_gqa_for_eval.py's output) under `out_dir`."""
    predictions = [{"questionId": qid, "prediction": prediction(text)}
                   for qid, text in (answer_fields(a, n) for n, a in enumerate(answers))]
    artifacts = {}
    if out_dir is not None:  # convert_gqa_for_eval.py runs before eval.py: written even if eval.py then fails
        artifacts["predictions"] = write_json(out_dir, PREDICTIONS_FILE, predictions)
    questions = annotations(data_dir)
    last_line = {p["questionId"]: n for n, p in enumerate(predictions)}
    missing = [qid for qid, q in questions.items() if q.balanced and qid not in last_line]
    if missing:
        raise DataError(f"no prediction for GQA question {missing[0]!r} ({len(missing)} balanced questions lack "
                        "one): eval.py needs an answer for every balanced testdev question")
    per_question: list = [None] * len(answers)
    binary, open_ = [], []
    for qid, q in questions.items():
        if q.balanced:
            n = last_line[qid]
            per_question[n] = float(predictions[n]["prediction"] == q.answer)
            (open_ if q.structural == "query" else binary).append(per_question[n])
    metrics = {"accuracy": _percent(binary + open_), "binary": _percent(binary), "open": _percent(open_)}
    return ScoreResult(metrics=metrics, per_question=per_question, artifacts=artifacts)


def _percent(scores: list[float]) -> float:
    """eval.py's avg(...) * 100, 0 for an empty list."""
    return 100.0 * sum(scores) / len(scores) if scores else 0.0
