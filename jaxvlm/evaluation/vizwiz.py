"""VizWiz-VQA: LLaVA-1.5's test question file (or lmms-eval's parquet); the test set is scored by the EvalAI
server, so this module writes the upload JSON; lmms-eval's `val` split is scored as lmms-eval's port does.

Layouts read:
- LLaVA-1.5 `vizwiz/`: `llava_test.jsonl` (`{"question_id": int, "image", "text"}`, `text` ending in the
  "unanswerable" and short-answer lines), images in `test/` (or `image_folder`). `score(out_dir=...)` writes
  `[{"image", "answer": evalai_answer(text)}]` for every question of the file, as LLaVA's
  `convert_vizwiz_for_submission.py` does, refusing (as it asserts) when a question has no answer. Metrics: {}.
- lmms-eval `lmms-lab/VizWiz-VQA` parquet: split `test` (upload as above, `image` = `<question_id>.jpg`), else
  `val`, scored per line with lmms-eval's `vizwiz_vqa_val` rule: EvalAI normalisation of the prediction *and*
  the answers, leave-one-out min(1, matches / 3), 0 for a question without answers. That is not the EvalAI
  server's metric (which compares to raw answers and adds answerability), hence the metric name
  `lmms_eval_accuracy` (percent).

Prompts: "llava" = the question + the unanswerable and short-answer lines (LLaVA's file text as is); "lmms" =
the same with `question.capitalize()`.
"""

from __future__ import annotations

from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, read_jsonl, require_fields
from jaxvlm.evaluation.normalize import evalai_answer, soft_accuracy
from jaxvlm.evaluation.llava_layout import (SHORT_ANSWER, UNANSWERABLE, answer_fields, image_dir,
                                          llava_samples, parquet_samples, percent, pick_split,
                                          rows_by_id, strip_suffix, texts_by_id, write_json)

NAME = "vizwiz"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_test.jsonl"
IMAGE_DIR = "test"
SPLITS = ("test", "val")
ANNOTATED_SPLIT = "val"
INSTRUCTION = UNANSWERABLE + SHORT_ANSWER
UPLOAD = "vizwiz_upload.json"


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """The questions in file (dataset) order with the `variant`'s prompt."""
    check_variant(variant)
    lmms = variant == "lmms"
    if parquet.is_parquet_dataset(data_dir):
        return parquet_samples(data_dir, pick_split(data_dir, SPLITS), ["question"],
                               lambda row, source: _prompt(row["question"], lmms))
    prompt = (lambda text: _prompt(strip_suffix(text, INSTRUCTION), True)) if lmms else (lambda text: text)
    return llava_samples(Path(data_dir) / QUESTION_FILE, image_dir(data_dir, image_folder, IMAGE_DIR), prompt)


def _prompt(question: str, lmms: bool) -> str:
    return (question.capitalize() if lmms else question) + INSTRUCTION


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """The upload JSON under `out_dir` (test), or lmms-eval's val accuracy (parquet `val`)."""
    if not parquet.is_parquet_dataset(data_dir):
        path = Path(data_dir) / QUESTION_FILE
        questions = []
        for n, record in read_jsonl(path):
            require_fields(record, ("question_id", "image"), f"{path}:{n}")
            questions.append((f"{path}:{n}", record["question_id"], record["image"]))
        return _upload(answers, questions, out_dir)
    split = pick_split(data_dir, SPLITS)
    if split != ANNOTATED_SPLIT:
        questions = [(source, row["question_id"], f"{row['question_id']}.jpg")
                     for source, row in parquet.read_rows(data_dir, split, columns=["question_id"])]
        return _upload(answers, questions, out_dir)
    rows = rows_by_id(parquet.read_rows(data_dir, split, columns=["question_id", "answers"]))
    per_question = []
    for n, record in enumerate(answers):
        qid, text = answer_fields(record, n)
        if qid not in rows:
            raise DataError(f"answers line {n + 1}: question_id {qid!r} is not in {data_dir} split {split}")
        gt = rows[qid]["answers"] or []
        if not all(isinstance(a, str) for a in gt):
            raise DataError(f"{data_dir} split {split}: question_id {qid!r} has non-string answers {gt!r}")
        per_question.append(soft_accuracy(text, gt))
    return ScoreResult({"lmms_eval_accuracy": percent(per_question)}, per_question)


def _upload(answers: list[dict], questions: list[tuple], out_dir) -> ScoreResult:
    """[{"image", "answer"}] over `questions` ((source, question_id, image) in order) when `out_dir` is given;
    DataError naming the first question without an answer."""
    result = ScoreResult({}, [None] * len(answers))
    texts = texts_by_id(answers)
    if out_dir is None:
        return result
    upload = []
    for source, qid, image in questions:
        if qid not in texts:
            raise DataError(f"{source}: question_id {qid!r} has no answer; the VizWiz upload needs every test "
                            f"question ({len(texts)} of {len(questions)} answered)")
        upload.append({"image": image, "answer": evalai_answer(texts[qid])})
    result.artifacts["upload"] = write_json(out_dir, UPLOAD, upload)
    return result
