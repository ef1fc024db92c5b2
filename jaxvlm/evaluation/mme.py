"""MME: LLaVA-1.5's question file or lmms-eval's parquet, scored as convert_answer_to_mme.py + calculation.py.

LLaVA-1.5 layout (`--data playground/data/eval/MME`):

    llava_mme.jsonl                         {"question_id": image path, "image", "text", "category"} per line
    MME_Benchmark_release_version/<cat>/    images + <name>.txt (flat), or images/ + questions_answers_YN/
                                            (artwork, celebrity, landmark, posters, scene); each txt line
                                            `question<TAB>Yes|No`, the question ending " Please answer yes or no."

lmms-eval layout (`lmms-lab/MME`, split `test`): rows with question_id (image path), question, answer, category,
image; the ground truth is read from the rows.

Scoring, as LLaVA's converter then MME's eval_tool: per answers line, category = question_id up to the first
'/', file = the last path part up to its first '.' + ".txt", question = the prompt without the short-answer
instruction, stripped, + " Please answer yes or no." (if absent with one space, with two); the line
`file<TAB>question<TAB>gt<TAB>answer` goes to `<category>.txt` in answers order. calculation.py then pairs
CONSECUTIVE lines of each subtask file (one image = two lines) and reads an answer by its lower-cased text:
exactly yes / no, else "yes" in its first 4 characters -> yes, elif "no" -> no, else wrong. Per subtask
acc (questions right) and acc+ (pairs with both right), in percent, score = acc + acc+ (max 200); perception
sums 10 subtasks, cognition 4; every subtask must be answered. An answer holding a tab or line break breaks that
txt format (calculation.py fails on it): refused here with the answers line.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult
from jaxvlm.evaluation.llava_layout import SHORT_ANSWER, answer_fields, image_dir, llava_samples

NAME = "mme"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_mme.jsonl"
BENCHMARK_DIR = "MME_Benchmark_release_version"
SPLIT = "test"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO = " Please answer yes or no."
EXPORT_DIR = "eval_tool/answers"


def read(data_dir, *, benchmark: str = NAME, image_folder=None, variant: str = "llava") -> list[Sample]:
    """The questions in file order; the prompt is the question file's `text`. From parquet rows: the question
    with " Please answer yes or no." replaced by the short-answer instruction (lmms-eval strips first, LLaVA's
    file after the replacement, which differ where the official text has two spaces before it)."""
    check_variant(variant)
    question_file = Path(data_dir) / QUESTION_FILE
    if question_file.is_file():
        return llava_samples(question_file, image_dir(data_dir, image_folder, BENCHMARK_DIR), lambda text: text)
    if parquet.is_parquet_dataset(data_dir):
        samples = []
        for source, row in _rows(data_dir, with_images=True):
            question = _question(row, source)
            stem = (question.strip().replace(YES_NO, "") if variant == "lmms"
                    else question.replace(YES_NO, "").strip())
            samples.append(Sample(line=len(samples), question_id=row["question_id"], prompt=stem + SHORT_ANSWER,
                                  image=parquet.image_bytes(row["image"], source), source=source))
        return samples
    raise DataError(f"{data_dir}: neither LLaVA's {QUESTION_FILE} nor an lmms-eval MME parquet dataset")


def _rows(data_dir, with_images: bool):
    columns = ["question_id", "question", "answer"] + (["image"] if with_images else [])
    return parquet.read_rows(data_dir, SPLIT, columns=columns)


def _question(row: dict, source: str) -> str:
    if not isinstance(row["question"], str) or not isinstance(row["question_id"], str):
        raise DataError(f"{source}: `question` and `question_id` must be strings")
    return row["question"]


def ground_truth(data_dir) -> dict[tuple[str, str, str], str]:
    """{(category, txt file name, question): "Yes"/"No"} as convert_answer_to_mme.py's get_gt reads it."""
    root = Path(data_dir) / BENCHMARK_DIR
    if root.is_dir():
        gt = {}
        for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            qa_dir = category_dir / "questions_answers_YN" if (category_dir / "images").exists() else category_dir
            if not qa_dir.is_dir():
                raise DataError(f"{category_dir}: has images/ but no questions_answers_YN/")
            for path in sorted(qa_dir.glob("*.txt")):
                with open(path, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        fields = line.strip().split("\t")
                        if len(fields) != 2:
                            raise DataError(f"{path}:{n}: expected `question<TAB>answer`, got {line.strip()!r}")
                        gt[(category_dir.name, path.name, fields[0])] = fields[1]
        return gt
    if not (Path(data_dir) / QUESTION_FILE).is_file() and parquet.is_parquet_dataset(data_dir):
        return {_key(row["question_id"], _question(row, source).strip()): row["answer"]
                for source, row in _rows(data_dir, with_images=False)}
    raise DataError(f"{data_dir}: no MME ground truth ({BENCHMARK_DIR}/ or an lmms-eval MME parquet dataset)")


def _key(question_id: str, question: str) -> tuple[str, str, str]:
    return question_id.split("/")[0], question_id.split("/")[-1].split(".")[0] + ".txt", question


def yes_no(answer: str) -> str:
    """calculation.py's parse of a lower-cased answer: "yes", "no" or "other" (wrong whatever the truth).
    (It reads the answer with its line's trailing newline, which changes nothing here.)"""
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def convert(answers: list[dict], gt: dict) -> dict[str, list[tuple]]:
    """convert_answer_to_mme.py: {category: [(file, question, gt, answer text, answers line)]}, answers order."""
    results = defaultdict(list)
    for n, record in enumerate(answers):
        qid, text = answer_fields(record, n)
        prompt = record.get("prompt")
        if not isinstance(qid, str) or not isinstance(prompt, str):
            raise DataError(f"answers line {n + 1}: MME needs a string question_id (image path) and prompt")
        if re.search(r"[\t\n\r]", text):
            raise DataError(f"answers line {n + 1}: answer {text!r} holds a tab or line break, which breaks MME's "
                            "txt format (calculation.py cannot read it)")
        question = prompt
        if SHORT_ANSWER.strip() in question:
            question = question.replace(SHORT_ANSWER.strip(), "").strip()
        if YES_NO.strip() not in question:
            question += YES_NO
            if _key(qid, question) not in gt:
                question = question.replace(YES_NO, " " + YES_NO)
        category, file, question = _key(qid, question)
        if (category, file, question) not in gt:
            raise DataError(f"answers line {n + 1}: no MME ground truth for {category}/{file} question {question!r}")
        results[category].append((file, question, gt[category, file, question], text, n))
    return dict(results)


def subtask_score(lines: list[tuple], category: str) -> tuple[dict, list[float]]:
    """calculation.py for one subtask file: ({acc, acc_plus, score}, per-line 1.0 / 0.0), lines paired in order."""
    if len(lines) % 2:
        raise DataError(f"MME subtask {category}: {len(lines)} answers, an odd number: calculation.py pairs "
                        "consecutive lines (two questions per image)")
    correct = []
    for file, _, gt, text, _ in lines:
        if gt.lower() not in ("yes", "no"):
            raise DataError(f"MME ground truth for {category}/{file} is {gt!r}, not Yes or No")
        correct.append(float(yes_no(text.lower()) == gt.lower()))
    acc = 100.0 * sum(correct) / len(correct)
    acc_plus = 100.0 * sum(a and b for a, b in zip(correct[::2], correct[1::2])) / (len(correct) // 2)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}, correct


def export(results: dict[str, list[tuple]], out_dir, experiment: str) -> Path:
    """The converter's `eval_tool/answers/<experiment>/<category>.txt` files under `out_dir`; returns the folder."""
    folder = Path(out_dir) / EXPORT_DIR / experiment
    folder.mkdir(parents=True, exist_ok=True)
    for category, lines in results.items():
        with open(folder / f"{category}.txt", "w", encoding="utf-8") as f:
            f.writelines("\t".join(line[:4]) + "\n" for line in lines)
    return folder


def experiment_name(answers: list[dict]) -> str:
    """The answers' common model_id as a folder name (LLaVA names it after the answers file), else "answers"."""
    ids = {str(a.get("model_id") or "") for a in answers}
    name = re.sub(r"[^\w.+-]+", "_", ids.pop()).strip("._") if len(ids) == 1 else ""
    return name or "answers"


def score(data_dir, answers: list[dict], *, benchmark: str = NAME, out_dir=None, judge=None) -> ScoreResult:
    """`perception`, `cognition` (points) and `subtasks` {name: {acc, acc_plus, score}} (acc, acc+ in percent);
    per answers line 1.0 / 0.0. Writes the eval_tool answer files under `out_dir`."""
    results = convert(answers, ground_truth(data_dir))
    artifacts = {}
    if out_dir is not None:  # the converter's files, written before calculation.py reads (or fails on) them
        artifacts["eval_tool_answers"] = export(results, out_dir, experiment_name(answers))
    missing = [c for c in PERCEPTION + COGNITION if c not in results]
    if missing:
        raise DataError(f"answers have no line of MME subtask(s) {missing}: calculation.py needs all 14")
    per_question: list = [None] * len(answers)
    subtasks = {}
    for category in PERCEPTION + COGNITION:
        subtasks[category], correct = subtask_score(results[category], category)
        for line, value in zip(results[category], correct):
            per_question[line[4]] = value
    metrics = {"perception": sum(subtasks[c]["score"] for c in PERCEPTION),
               "cognition": sum(subtasks[c]["score"] for c in COGNITION), "subtasks": subtasks}
    return ScoreResult(metrics=metrics, per_question=per_question, artifacts=artifacts)
