"""VQAv2: LLaVA-1.5's test-dev question file (or lmms-eval's parquet), the official vqaEval accuracy where
annotations exist, and the EvalAI upload JSON.

Layouts read:
- LLaVA-1.5 `vqav2/`: `llava_vqav2_mscoco_test-dev2015.jsonl` (`{"question_id", "image", "text"}`, the `text`
  already ending in the short-answer instruction; without it, the folder's one other `llava_vqav2_*.jsonl`, e.g.
  a val split in LLaVA's format), images in `test2015/` (or `image_folder`). Annotations in
  the VQA release format (`*annotations*.json`, e.g. `v2_mscoco_val2014_annotations.json`:
  `{"annotations": [{"question_id", "answer_type", "answers": [{"answer", "answer_confidence", "answer_id"}]}]}`)
  placed in the folder score the questions they cover (a val-format question file needs no questions JSON:
  vqaEval takes only metadata from it). With `llava_vqav2_mscoco_test2015.jsonl` (all 447,793 test questions)
  present, `score(out_dir=...)` writes the EvalAI upload `[{"question_id", "answer"}]` over all of them, `""` for
  the questions not run, as LLaVA's `convert_vqav2_for_submission.py` does.
- lmms-eval `lmms-lab/VQAv2` parquet: split `testdev`, else `validation`, else `test` (point the data dir at a
  folder with one split's shards to pick another); `validation` is scored from its `answers`, the test splits
  give the upload over their rows.

Scoring: the answer LLaVA uploads, `evalai_answer(text)`, under vqaEval (`normalize.vqa_accuracy`); `accuracy`
and `per_answer_type` in percent rounded to 2 decimals as vqaEval reports them, over the answers lines whose
question is annotated (a partial answers file gives a partial-sample accuracy); `per_question` is the
accuracy in [0, 1] per line (None where not annotated).
"""

from __future__ import annotations

from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, read_json, read_jsonl, require_fields
from jaxvlm.evaluation.normalize import evalai_answer, vqa_accuracy
from jaxvlm.evaluation.llava_layout import (SHORT_ANSWER, answer_fields, image_dir, llava_samples,
                                          parquet_samples, percent, pick_split, strip_suffix,
                                          texts_by_id, write_json)

NAME = "vqav2"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_vqav2_mscoco_test-dev2015.jsonl"
TEST_FILE = "llava_vqav2_mscoco_test2015.jsonl"
IMAGE_DIR = "test2015"
SPLITS = ("testdev", "validation", "test")
ANNOTATED_SPLIT = "validation"
UPLOAD = "vqav2_upload.json"


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """The questions in file order; the prompt is the question + the short-answer line for both variants
    (lmms-eval's vqav2 prompt is LLaVA's)."""
    check_variant(variant)
    if parquet.is_parquet_dataset(data_dir):
        return parquet_samples(data_dir, pick_split(data_dir, SPLITS), ["question"],
                               lambda row, source: row["question"] + SHORT_ANSWER)
    prompt = _lmms_prompt if variant == "lmms" else (lambda text: text)
    return llava_samples(question_file(Path(data_dir)), image_dir(data_dir, image_folder, IMAGE_DIR), prompt)


def question_file(data_dir: Path) -> Path:
    """The test-dev question file, else the folder's one other `llava_vqav2_*.jsonl` (not the full test2015)."""
    if (data_dir / QUESTION_FILE).is_file():
        return data_dir / QUESTION_FILE
    others = sorted(p for p in data_dir.glob("llava_vqav2_*.jsonl") if p.name != TEST_FILE)
    if len(others) != 1:
        raise DataError(f"{data_dir / QUESTION_FILE}: no such file"
                        + (f" (and several other question files: {[p.name for p in others]})" if others else ""))
    return others[0]


def _lmms_prompt(text: str) -> str:
    """The question file's question + lmms-eval's post prompt (the same short-answer line LLaVA appends)."""
    return strip_suffix(text, SHORT_ANSWER) + SHORT_ANSWER


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """vqaEval accuracy where annotations exist, and the upload JSON under `out_dir` where a test set is known."""
    if parquet.is_parquet_dataset(data_dir):
        split = pick_split(data_dir, SPLITS)
        if split == ANNOTATED_SPLIT:
            rows = parquet.read_rows(data_dir, split, columns=["question_id", "answers", "answer_type"])
            return _scored(answers, {row["question_id"]: _checked(row, source) for source, row in rows})
        test_ids = [row["question_id"] for _, row in parquet.read_rows(data_dir, split, columns=["question_id"])]
        return _unscored(answers, test_ids, out_dir)
    annotations = _annotations(Path(data_dir))
    result = _scored(answers, annotations) if annotations else _unscored(answers, [], None)
    test_file = Path(data_dir) / TEST_FILE
    if out_dir is not None and test_file.is_file():
        result.artifacts = _unscored(answers, _test_ids(test_file), out_dir).artifacts
    return result


def _test_ids(path: Path) -> list:
    """The question ids of LLaVA's full test2015 question file, in file order."""
    ids = []
    for n, record in read_jsonl(path):
        require_fields(record, ("question_id",), f"{path}:{n}")
        ids.append(record["question_id"])
    return ids


def _checked(annotation: dict, source: str) -> dict:
    """An annotation with a list of answer dicts (each with a string `answer`) and an `answer_type`."""
    answers = annotation.get("answers")
    if (not isinstance(answers, list) or not answers
            or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)):
        raise DataError(f"{source}: `answers` must be a non-empty list of {{'answer': str, ...}}")
    if not isinstance(annotation.get("answer_type"), str):
        raise DataError(f"{source}: lacks a string `answer_type`")
    return annotation


def _annotations(data_dir: Path) -> dict:
    """{question_id: annotation} from every VQA-format `*annotations*.json` in the folder ({} if none)."""
    out = {}
    for path in sorted(data_dir.glob("*annotations*.json")):
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise DataError(f"{path}: not a VQA annotation file (needs an `annotations` list)")
        for i, annotation in enumerate(data["annotations"]):
            source = f"{path}: annotations[{i}]"
            if not isinstance(annotation, dict) or "question_id" not in annotation:
                raise DataError(f"{source}: lacks `question_id`")
            out[annotation["question_id"]] = _checked(annotation, source)
    return out


def _scored(answers: list[dict], annotations: dict) -> ScoreResult:
    per_question, by_type = [], {}
    for n, record in enumerate(answers):
        qid, text = answer_fields(record, n)
        annotation = annotations.get(qid)
        if annotation is None:
            per_question.append(None)
            continue
        acc = vqa_accuracy(evalai_answer(text), annotation["answers"])
        per_question.append(acc)
        by_type.setdefault(annotation["answer_type"], []).append(acc)
    scored = [p for p in per_question if p is not None]
    if not scored:
        raise DataError(f"none of the {len(answers)} answers lines is a question of the annotations")
    metrics = {"accuracy": round(percent(scored), 2),
               "per_answer_type": {t: round(percent(v), 2) for t, v in by_type.items()}}
    return ScoreResult(metrics, per_question)


def _unscored(answers: list[dict], test_ids: list, out_dir) -> ScoreResult:
    """No local score; the EvalAI upload over `test_ids` ("" for a question without an answer)."""
    result = ScoreResult({}, [None] * len(answers))
    texts = texts_by_id(answers)
    if out_dir is not None:
        upload = [{"question_id": qid, "answer": evalai_answer(texts[qid]) if qid in texts else ""}
                  for qid in test_ids]
        result.artifacts["upload"] = write_json(out_dir, UPLOAD, upload)
    return result
