"""TextVQA (val): LLaVA-1.5's OCR-token question file (or lmms-eval's parquet) scored as LLaVA's
`eval_textvqa.py` scores it (m4c soft accuracy).

Layouts read:
- LLaVA-1.5 `textvqa/`: `llava_textvqa_val_v051_ocr.jsonl` (`{"question_id": <image id>, "image", "text"}`,
  `text` = `{question}\\nReference OCR token: {tok1}, {tok2}, ...\\nAnswer the question using a single word or
  phrase.`), images in `train_images/` (or `image_folder`), annotations `TextVQA_0.5.1_val.json`
  (`{"data": [{"image_id", "question", "answers" (10)}]}`). The question id is the *image* id, two questions
  per image: each answers line is matched to its annotation by (question_id, question.lower()), the question
  recovered from the line's prompt as `eval_textvqa.prompt_processor` does.
- lmms-eval `lmms-lab/textvqa` parquet: split `validation`, else `test`; questions keep the dataset's
  (unique) `question_id` and are matched by it; the test split gives lmms-eval's submission
  `[{"question_id", "answer"}]` (answers EvalAI-normalised) under `out_dir` instead of a score.

Prompts: "llava" is LLaVA's OCR-token prompt (built from `ocr_tokens` for parquet; an empty list still
writes "Reference OCR token: "); "lmms" is lmms-eval's default, `question.capitalize()` + the short-answer line,
no OCR tokens.

Scoring: `normalize.soft_accuracy` per answers line (`per_question`, in [0, 1]); `accuracy` = its mean over the
answers lines in percent (a partial answers file gives a partial-sample accuracy, as the official script).
"""

from __future__ import annotations

import re
from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, read_json
from jaxvlm.evaluation.normalize import evalai_answer, soft_accuracy
from jaxvlm.evaluation.llava_layout import (SHORT_ANSWER, answer_fields, image_dir, llava_samples,
                                          parquet_samples, percent, pick_split, rows_by_id,
                                          write_json)

NAME = "textvqa"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATION_FILE = "TextVQA_0.5.1_val.json"
IMAGE_DIR = "train_images"
SPLITS = ("validation", "test")
ANNOTATED_SPLIT = "validation"
OCR_LINE = "\nReference OCR token: "
N_ANSWERS = 10  # m4c's TextVQAAccuracyEvaluator asserts ten human answers per question
UPLOAD = "textvqa_upload.json"


def llava_prompt(question: str, ocr_tokens: list[str]) -> str:
    """LLaVA-1.5's OCR-token TextVQA prompt."""
    return question + OCR_LINE + ", ".join(ocr_tokens) + SHORT_ANSWER


def lmms_prompt(question: str) -> str:
    """lmms-eval's default TextVQA prompt (`ocr: false`)."""
    return question.capitalize() + SHORT_ANSWER


def prompt_question(prompt: str) -> str:
    """The lower-cased question of an answers line's prompt, as `eval_textvqa.prompt_processor` recovers it;
    DataError for a prompt shape it does not know (where it asserts)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise DataError(f"prompt {prompt[:60]!r} starts with 'OCR tokens: ' but lacks "
                            "'Question: ... Short answer:'")
        question = match.group(1)
    elif OCR_LINE.lstrip("\n") in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise DataError(f"prompt {prompt[:60]!r} is not a TextVQA prompt eval_textvqa can parse "
                        "(question, optional 'Reference OCR token: ' line, instruction)")
    return question.lower()


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """The questions in file (dataset) order with the `variant`'s prompt."""
    check_variant(variant)
    if parquet.is_parquet_dataset(data_dir):
        columns = ["question", "ocr_tokens"] if variant == "llava" else ["question"]
        return parquet_samples(data_dir, pick_split(data_dir, SPLITS), columns, _parquet_prompt(variant))
    prompt = (lambda text: text) if variant == "llava" else (lambda text: lmms_prompt(text.split("\n")[0]))
    return llava_samples(Path(data_dir) / QUESTION_FILE, image_dir(data_dir, image_folder, IMAGE_DIR), prompt)


def _parquet_prompt(variant: str):
    def prompt(row: dict, source: str) -> str:
        if variant == "lmms":
            return lmms_prompt(row["question"])
        tokens = row["ocr_tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{source}: `ocr_tokens` must be a list of strings, got {tokens!r}")
        return llava_prompt(row["question"], tokens)
    return prompt


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """m4c soft accuracy per answers line; for the parquet test split, lmms-eval's submission instead."""
    if not parquet.is_parquet_dataset(data_dir):
        path = Path(data_dir) / ANNOTATION_FILE
        return _scored(answers, _by_prompt(_annotation_index(path)),
                       f"{path} (matched by question_id and the prompt's question)")
    split = pick_split(data_dir, SPLITS)
    if split != ANNOTATED_SPLIT:
        result = ScoreResult({}, [None] * len(answers))
        upload = [{"question_id": qid, "answer": evalai_answer(text)}
                  for qid, text in (answer_fields(a, n) for n, a in enumerate(answers))]
        if out_dir is not None:
            result.artifacts["upload"] = write_json(out_dir, UPLOAD, upload)
        return result
    rows = rows_by_id(parquet.read_rows(data_dir, split, columns=["question_id", "answers"]))
    return _scored(answers, lambda qid, record, n: rows.get(qid), f"{data_dir} split {split} (by question_id)")


def _by_prompt(index: dict):
    """Annotation lookup of an answers line by (question_id, the question its prompt holds)."""
    def lookup(qid, record: dict, n: int):
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise DataError(f"answers line {n + 1}: `prompt` must be a string")
        try:
            return index.get((qid, prompt_question(prompt)))
        except DataError as e:
            raise DataError(f"answers line {n + 1}: {e}") from None
    return lookup


def _annotation_index(path: Path) -> dict:
    """{(image_id, question.lower()): annotation} of TextVQA_0.5.1_val.json (a repeated key keeps the last)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not a TextVQA annotation file (needs a `data` list)")
    index = {}
    for i, annotation in enumerate(data["data"]):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("question"), str) \
                or "image_id" not in annotation:
            raise DataError(f"{path}: data[{i}] lacks `image_id` or a string `question`")
        index[(annotation["image_id"], annotation["question"].lower())] = annotation
    return index


def _scored(answers: list[dict], lookup, where: str) -> ScoreResult:
    per_question = []
    for n, record in enumerate(answers):
        qid, text = answer_fields(record, n)
        annotation = lookup(qid, record, n)
        if annotation is None:
            raise DataError(f"answers line {n + 1}: question_id {qid!r} has no annotation in {where}")
        gt = annotation.get("answers")
        if not isinstance(gt, list) or len(gt) != N_ANSWERS or not all(isinstance(a, str) for a in gt):
            raise DataError(f"answers line {n + 1}: the annotation of question_id {qid!r} needs "
                            f"{N_ANSWERS} string answers, has {gt!r}")
        per_question.append(soft_accuracy(text, gt))
    return ScoreResult({"accuracy": percent(per_question)}, per_question)
