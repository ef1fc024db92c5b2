"""MM-Vet: LLaVA-1.5's question file (or lmms-eval's parquet), the results JSON the GPT-4 grader takes, and the
aggregate of a grader's result file as mm-vet_evaluator.py computes it. No local score without one.

Layouts read:
- LLaVA-1.5 `mm-vet/`: `llava-mm-vet.jsonl` (`{"image", "text", "category", "question_id"}`), images in
  `images/` (or `image_folder`), and MM-Vet's metadata `mm-vet.json` (`{"v1_<id>": {"capability": [...], ...}}`,
  from mm-vet.zip; needed only to aggregate a grade file).
- lmms-eval `lmms-lab/MMVet` parquet, split `test` (`question_id` "v1_<id>", `capability` "rec,ocr").

Prompt: the raw question ("llava", model_vqa.py); lmms-eval prepends its step-by-step pre-prompt ("lmms").
Export (`out_dir`): `results/<model_id>.json` = `{"v1_<question_id>": text}` (convert_mmvet_for_eval.py).
`judge`: the evaluator's grade file `<model>_<gpt>-grade-<n>runs.json` (`{"v1_<id>": {"score": [s per run],
...}}`): per capability and per capability set, Σ score / #questions having it × 100, the total, each the mean
over runs rounded to 1 decimal (numpy rounding), the total's std over runs and the per-run totals.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import (DataError, Sample, check_variant, ScoreResult, check_answer_count, check_media, read_json,
                                    read_jsonl, require_fields)

NAME = "mmvet"
MAX_NEW_TOKENS = 1024
QUESTION_FILE = "llava-mm-vet.jsonl"
METADATA_FILE = "mm-vet.json"
IMAGE_DIR = "images"
PARQUET_SPLIT = "test"
LMMS_PRE_PROMPT = ("First please perform reasoning, and think step by step to provide best answer to the following "
                   "question: \n\n")
KEY_PREFIX = "v1_"
DECIMALS = 1


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """The questions in file order (every image checked)."""
    check_variant(variant)
    pre = LMMS_PRE_PROMPT if variant == "lmms" else ""
    if parquet.is_parquet_dataset(data_dir):
        samples = []
        for source, row in parquet.read_rows(data_dir, PARQUET_SPLIT, columns=["question_id", "image", "question"]):
            if not isinstance(row["question"], str):
                raise DataError(f"{source}: `question` must be a string, got {row['question']!r}")
            image = None if row["image"] is None else parquet.image_bytes(row["image"], source)
            samples.append(Sample(line=len(samples), question_id=row["question_id"], prompt=pre + row["question"],
                                  image=image, source=source))
        return samples
    images = Path(image_folder) if image_folder is not None else Path(data_dir) / IMAGE_DIR
    samples = []
    for n, record in read_jsonl(Path(data_dir) / QUESTION_FILE):
        source = f"{Path(data_dir) / QUESTION_FILE}:{n}"
        require_fields(record, ("question_id", "image", "text"), source)
        if not isinstance(record["text"], str) or not isinstance(record["image"], str):
            raise DataError(f"{source}: `text` and `image` must be strings")
        samples.append(Sample(line=len(samples), question_id=record["question_id"], prompt=pre + record["text"],
                              image=check_media(images / record["image"], source), source=source))
    return samples


def result_key(question_id) -> str:
    """The metadata / results key of a question: "v1_<id>" (lmms-eval's ids already carry the prefix)."""
    text = str(question_id)
    return text if text.startswith(KEY_PREFIX) else KEY_PREFIX + text


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """The grader's results JSON under `out_dir`; with `judge` (a grade file) its aggregate and per line the
    mean grade over runs."""
    questions, where = _question_ids(data_dir)
    check_answer_count(answers, len(questions), where)
    keys = [result_key(a.get("question_id")) for a in answers]
    for n, (key, qid) in enumerate(zip(keys, questions)):
        if key != result_key(qid):
            raise DataError(f"answers line {n + 1}: question_id {answers[n].get('question_id')!r}, but {where} "
                            f"has {qid!r} there: answers must follow the question file's order")
    artifacts = {}
    if out_dir is not None:
        artifacts["results"] = write_results(Path(out_dir), answers, keys)
    if judge is None:
        return ScoreResult({}, [None] * len(answers), artifacts)
    grades = read_grades(Path(judge))
    metrics = aggregate(_capabilities(data_dir), grades)
    per_question = [float(np.mean(grades[k])) if k in grades else None for k in keys]
    return ScoreResult(metrics, per_question, artifacts)


def _question_ids(data_dir) -> tuple[list, str]:
    """(question ids in file order, the file they come from)."""
    if parquet.is_parquet_dataset(data_dir):
        return [row["question_id"] for _, row in parquet.read_rows(data_dir, PARQUET_SPLIT,
                                                                   columns=["question_id"])], str(data_dir)
    path = Path(data_dir) / QUESTION_FILE
    return [record.get("question_id") for _, record in read_jsonl(path)], str(path)


def write_results(out_dir: Path, answers: list[dict], keys: list[str]) -> Path:
    """`results/<model_id>.json`: {"v1_<question_id>": text} (a repeated id keeps its last line), indent 2."""
    model = str(answers[0].get("model_id") or "answers") if answers else "answers"
    path = out_dir / "results" / (re.sub(r"[^\w.-]+", "_", model) + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: a.get("text") for k, a in zip(keys, answers)}, f, indent=2)
    return path


def _capabilities(data_dir) -> dict[str, list[str]]:
    """{"v1_<id>": [capability, ...]} in the metadata's order: mm-vet.json, or the parquet's `capability`."""
    if parquet.is_parquet_dataset(data_dir):
        return {result_key(row["question_id"]): str(row["capability"]).split(",")
                for _, row in parquet.read_rows(data_dir, PARQUET_SPLIT, columns=["question_id", "capability"])}
    path = Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file; aggregating grades needs MM-Vet's metadata (mm-vet.json from "
                        "mm-vet.zip) in the data folder")
    metadata = read_json(path)
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: expected {{\"v1_<id>\": {{\"capability\": [...], ...}}}}")
    out = {}
    for key, item in metadata.items():
        if not isinstance(item, dict) or not isinstance(item.get("capability"), list):
            raise DataError(f"{path}: {key!r} lacks a `capability` list")
        out[key] = [str(c) for c in item["capability"]]
    return out


def read_grades(path: Path) -> dict[str, list[float]]:
    """{"v1_<id>": [score per run]} from the evaluator's grade file; every entry needs the same number of runs."""
    grades = read_json(path)
    if not isinstance(grades, dict) or not grades:
        raise DataError(f"{path}: expected the MM-Vet grade file {{\"v1_<id>\": {{\"score\": [...], ...}}}}")
    out = {}
    for key, entry in grades.items():
        scores = entry.get("score") if isinstance(entry, dict) else None
        if (not isinstance(scores, list) or not scores
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise DataError(f"{path}: {key!r} lacks a non-empty `score` list of numbers")
        out[key] = [float(s) for s in scores]
    runs = {len(v) for v in out.values()}
    if len(runs) > 1:
        raise DataError(f"{path}: entries hold different numbers of runs {sorted(runs)}; finish the grading first")
    return out


def aggregate(capabilities: dict[str, list[str]], grades: dict[str, list[float]]) -> dict:
    """mm-vet_evaluator.py's `export_result`: per capability (columns by frequency), per capability set
    (by frequency, named "_".join of its capabilities in their metadata order: the official name order
    follows string hashing), `total`, `std` of the per-run totals, and `runs` (the per-run totals)."""
    unknown = [k for k in grades if k not in capabilities]
    missing = [k for k in capabilities if k not in grades]
    if unknown or missing:
        raise DataError(f"the grade file does not match the questions: {len(missing)} question(s) ungraded "
                        f"{missing[:3]}, {len(unknown)} unknown key(s) {unknown[:3]}")
    count = collections.Counter(c for caps in capabilities.values() for c in dict.fromkeys(caps))
    sets: dict[frozenset, str] = {}
    set_count: collections.Counter = collections.Counter()
    for caps in capabilities.values():
        sets.setdefault(frozenset(caps), "_".join(dict.fromkeys(caps)))
        set_count[frozenset(caps)] += 1
    n_runs = len(next(iter(grades.values())))
    cap_sum = {c: np.zeros(n_runs) for c, _ in count.most_common()}
    set_sum = {s: np.zeros(n_runs) for s, _ in set_count.most_common()}
    total = np.zeros(n_runs)
    for key, scores in grades.items():
        caps = frozenset(capabilities[key])
        for c in caps:
            cap_sum[c] += scores
        set_sum[caps] += scores
        total += scores
    totals = total / len(capabilities) * 100
    return {"total": _round(totals.mean()), "std": _round(totals.std()), "runs": [_round(t) for t in totals],
            "capabilities": {c: _round((v / count[c] * 100).mean()) for c, v in cap_sum.items()},
            "capability_sets": {sets[s]: _round((v / set_count[s] * 100).mean()) for s, v in set_sum.items()}}


def _round(value) -> float:
    return float(np.round(value, DECIMALS))
