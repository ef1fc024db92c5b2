"""POPE (COCO; adversarial, popular, random): LLaVA-1.5's files or lmms-eval's parquet, scored as eval_pope.py.

LLaVA-1.5 layout (`--data playground/data/eval/pope`):

    llava_pope_test.jsonl                   {"question_id", "image", "text", "category"} per line
    val2014/<image>                         COCO val2014 (or --image-folder)
    coco/coco_pope_<split>.json             JSON lines {"question_id", "image", "text", "label"} (POPE @e3e3926)

lmms-eval layout (`lmms-lab/POPE`, default config, split `test`): rows with question_id, question, answer,
category, image; the label of a row is its `answer`.

Scoring is llava/eval/eval_pope.py, per split (one label file each): the answers of that split's questions, in
answers order, are zipped with the label file IN FILE ORDER (not matched by id). A text maps to "no" iff its
first sentence (before the first '.'), with ',' deleted and split on single spaces, has a token exactly "No",
"not" or "no"; anything else is "yes" (so "NO" is yes). A label other than "no" counts as yes. Metrics are
fractions; yes_ratio is the share of "yes" predictions. Where eval_pope.py divides by zero (precision without a
"yes" prediction, recall without a "yes" label, F1 with precision + recall = 0) it stops without a number: that
metric is None here, and so is `f1_mean` (the reported POPE, mean F1 over the splits).

The answers file must hold one line per question-file line in that order (checked by question id), since the
official pairing by position is otherwise silently wrong.
"""

from __future__ import annotations

from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, check_answer_count, read_jsonl, require_fields
from jaxvlm.evaluation.llava_layout import SHORT_ANSWER, answer_fields, image_dir, llava_samples

NAME = "pope"
MAX_NEW_TOKENS = 128
QUESTION_FILE = "llava_pope_test.jsonl"
IMAGE_DIR = "val2014"
LABEL_DIR = "coco"
LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"
SPLIT = "test"
NO_TOKENS = ("No", "not", "no")


def yes_no(text: str) -> str:
    """eval_pope.py's reading of a model answer: "no" iff a token of the first sentence is No / not / no."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if any(token in words for token in NO_TOKENS) else "yes"


def read(data_dir, *, benchmark: str = NAME, image_folder=None, variant: str = "llava") -> list[Sample]:
    """The questions in file order; the prompt is the question file's `text` (for parquet rows
    `question.strip()` + the short-answer instruction, which both LLaVA and lmms-eval use)."""
    check_variant(variant)
    question_file = Path(data_dir) / QUESTION_FILE
    if question_file.is_file():
        return llava_samples(question_file, image_dir(data_dir, image_folder, IMAGE_DIR), lambda text: text)
    if parquet.is_parquet_dataset(data_dir):
        return [Sample(line=n, question_id=row["question_id"], prompt=_question(row, source).strip() + SHORT_ANSWER,
                       image=parquet.image_bytes(row["image"], source), source=source)
                for n, (source, row) in enumerate(_rows(data_dir, with_images=True))]
    raise DataError(f"{data_dir}: neither LLaVA's {QUESTION_FILE} nor an lmms-eval POPE parquet dataset")


def _rows(data_dir, with_images: bool):
    columns = ["question_id", "question", "answer", "category"] + (["image"] if with_images else [])
    return parquet.read_rows(data_dir, SPLIT, columns=columns)


def _question(row: dict, source: str) -> str:
    if not isinstance(row["question"], str):
        raise DataError(f"{source}: `question` must be a string, got {row['question']!r}")
    return row["question"]


def annotations(data_dir) -> tuple[list[tuple], dict[str, list[str]]]:
    """([(question_id, category)] per question line, {split: [label] in label-file order})."""
    question_file = Path(data_dir) / QUESTION_FILE
    if question_file.is_file():
        questions = []
        for n, record in read_jsonl(question_file):
            require_fields(record, ("question_id", "category"), f"{question_file}:{n}")
            questions.append((record["question_id"], record["category"]))
        label_dir = Path(data_dir) / LABEL_DIR
        files = sorted(label_dir.glob(f"{LABEL_PREFIX}*{LABEL_SUFFIX}")) if label_dir.is_dir() else []
        if not files:
            raise DataError(f"{label_dir}: no POPE label files {LABEL_PREFIX}<split>{LABEL_SUFFIX}")
        labels = {}
        for path in files:
            split = path.name[len(LABEL_PREFIX):-len(LABEL_SUFFIX)]
            labels[split] = []
            for n, record in read_jsonl(path):
                require_fields(record, ("label",), f"{path}:{n}")
                labels[split].append(record["label"])
        return questions, labels
    if parquet.is_parquet_dataset(data_dir):
        questions, labels = [], {}
        for _, row in _rows(data_dir, with_images=False):
            questions.append((row["question_id"], row["category"]))
            labels.setdefault(row["category"], []).append(row["answer"])
        return questions, dict(sorted(labels.items()))
    raise DataError(f"{data_dir}: neither LLaVA's {QUESTION_FILE} nor an lmms-eval POPE parquet dataset")


def split_metrics(predictions: list[str], labels: list[str]) -> dict:
    """eval_pope.py's numbers for one split: predictions ("yes"/"no") paired with labels by position."""
    pairs = [(p == "yes", label != "no") for p, label in zip(predictions, labels)]
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    tn = sum(not p and not g for p, g in pairs)
    fn = sum(not p and g for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else None)
    return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": predictions.count("yes") / len(predictions)}


def score(data_dir, answers: list[dict], *, benchmark: str = NAME, out_dir=None, judge=None) -> ScoreResult:
    """Per split {accuracy, precision, recall, f1, yes_ratio} and `f1_mean`; per answers line 1.0 / 0.0 (the
    mapped answer equals its label), None for a question of a split without a label file."""
    questions, labels = annotations(data_dir)
    check_answer_count(answers, len(questions), "the POPE question file")
    texts = []
    for n, (record, (qid, _)) in enumerate(zip(answers, questions)):
        answer_qid, text = answer_fields(record, n)
        if answer_qid != qid:
            raise DataError(f"answers line {n + 1}: question_id {answer_qid!r} but question line {n + 1} is "
                            f"{qid!r}: POPE pairs answers with labels by position, keep question-file order")
        texts.append(text)
    per_question: list = [None] * len(answers)
    metrics = {}
    for split, split_labels in labels.items():
        lines = [n for n, (_, category) in enumerate(questions) if category == split]
        if not lines or len(lines) != len(split_labels):
            raise DataError(f"POPE split {split!r}: {len(split_labels)} labels but {len(lines)} questions of that "
                            "category (LLaVA-1.5's question file pairs with the labels of POPE @e3e3926)")
        predictions = [yes_no(texts[n]) for n in lines]
        metrics[split] = split_metrics(predictions, split_labels)
        for n, p, label in zip(lines, predictions, split_labels):
            per_question[n] = float((p == "yes") == (label != "no"))
    f1s = [m["f1"] for m in metrics.values()]
    metrics["f1_mean"] = sum(f1s) / len(f1s) if None not in f1s else None
    return ScoreResult(metrics=metrics, per_question=per_question)
