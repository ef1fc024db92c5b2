"""ScienceQA-IMG: LLaVA-1.5's question file or lmms-eval's parquet, scored as llava/eval/eval_science_qa.py.

LLaVA-1.5 layout (`--data playground/data/eval/scienceqa`):

    llava_test_CQM-A.json                   JSON array [{"id", "image"?, "conversations": [{"from": "human",
                                            "value": "<image>\\nContext: ...\\nA. ...\\nB. ..."}, ...]}]
    images/test/<image>                     `<pid>/image.png` (or --image-folder)
    problems.json, pid_splits.json          official annotations: pid -> {question, choices, answer, hint, ...}

lmms-eval layout (`lmms-lab/ScienceQA`, config `ScienceQA-IMG`, split `test`): rows with image, question,
choices, answer, hint; no problem id, so a row's question_id is its 0-based row index.

Prompt (model_vqa_science.py --single-pred-prompt): the human turn without "<image>", stripped, + "\\nAnswer with
the option's letter from the given choices directly."; the answers line's `prompt` gets "<image>\\n" in front for
a question with an image (the scorer's IMG test reads it), carried in `Sample.answer_prompt`. Text-only
questions have image None. The lmms variant (and parquet rows) build "Context: {hint}\\n" (if a hint) +
question + "\\nA. c0\\nB. c1..." + the same instruction, as lmms-eval does.

Scoring over every test problem: text in A-E -> that letter; else `X. ...` (letter, ". ", 3+ characters) -> X;
else exactly one match of r"The answer is ([A-Z])." -> that letter; else FAILED. A letter beyond the problem's
choices is wrong; a problem without an answers line is FAILED and not multimodal. Accuracy over all problems,
IMG-Accuracy over those whose answers-line prompt contains "<image>" (the reported SQA), in percent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, check_variant, ScoreResult, check_answer_count, check_media, read_json
from jaxvlm.evaluation.llava_layout import answer_fields, image_dir

NAME = "scienceqa"
MAX_NEW_TOKENS = 1024
QUESTION_FILE = "llava_test_CQM-A.json"
IMAGE_DIR = "images/test"
PROBLEMS_FILE, SPLITS_FILE, TEST_SPLIT = "problems.json", "pid_splits.json", "test"
CONFIG, SPLIT = "ScienceQA-IMG", "test"
INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."
IMAGE_TOKEN = "<image>"
OPTIONS = ("A", "B", "C", "D", "E")
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_letter(text: str) -> str:
    """eval_science_qa.py's reading of a model answer: a letter, or "FAILED"."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def choice_index(letter: str, n_choices: int) -> int:
    """The chosen option's index, -1 for FAILED or a letter beyond the problem's choices."""
    return OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1


def lmms_prompt(question: str, choices: list, hint: str | None) -> str:
    """lmms-eval's default ScienceQA prompt (without image token), instruction included."""
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{options}{INSTRUCTION}"


def _sample(line: int, question_id, prompt: str, image, source: str) -> Sample:
    answer_prompt = f"{IMAGE_TOKEN}\n{prompt}" if image is not None else prompt
    return Sample(line=line, question_id=question_id, prompt=prompt, image=image,
                  answer_prompt=answer_prompt, source=source)


def read(data_dir, *, benchmark: str = NAME, image_folder=None, variant: str = "llava") -> list[Sample]:
    """The problems in file order (see the module docstring for the prompt)."""
    check_variant(variant)
    question_file = Path(data_dir) / QUESTION_FILE
    if question_file.is_file():
        images = image_dir(data_dir, image_folder, IMAGE_DIR)
        problems = _problems(data_dir) if variant == "lmms" else None
        return [_llava_sample(n, record, f"{question_file}:{line}", images, problems)
                for n, (line, record) in enumerate(json_array(question_file))]
    if parquet.is_parquet_dataset(data_dir):
        samples = []
        for source, row in _rows(data_dir, with_images=True):
            _check_row(row, source)
            image = parquet.image_bytes(row["image"], source) if row["image"] is not None else None
            prompt = lmms_prompt(row["question"], row["choices"], row["hint"])
            samples.append(_sample(len(samples), len(samples), prompt, image, source))
        return samples
    raise DataError(f"{data_dir}: neither LLaVA's {QUESTION_FILE} nor an lmms-eval ScienceQA parquet dataset")


def _llava_sample(line: int, record: dict, source: str, images: Path, problems: dict | None) -> Sample:
    """One llava_test_CQM-A.json record; `problems` (problems.json) given for the lmms variant's prompt."""
    pid, value = _human_turn(record, source)
    if problems is None:
        prompt = value.replace(IMAGE_TOKEN, "").strip() + INSTRUCTION
    elif pid in problems:
        prompt = lmms_prompt(problems[pid]["question"], problems[pid]["choices"], problems[pid].get("hint"))
    else:
        raise DataError(f"{source}: problem {pid!r} is not in {PROBLEMS_FILE}")
    image = None
    if "image" in record:
        if not isinstance(record["image"], str):
            raise DataError(f"{source}: `image` must be a string, got {record['image']!r}")
        image = check_media(images / record["image"], source)
    return _sample(line, pid, prompt, image, source)


def _human_turn(record: dict, source: str) -> tuple[str, str]:
    turns = record.get("conversations")
    if "id" not in record or not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) \
            or not isinstance(turns[0].get("value"), str):
        raise DataError(f"{source}: expected {{'id', 'conversations': [{{'from': 'human', 'value': str}}, ...]}}")
    return record["id"], turns[0]["value"]


def _rows(data_dir, with_images: bool):
    columns = ["question", "choices", "answer", "hint"] + (["image"] if with_images else [])
    return parquet.read_rows(data_dir, SPLIT, CONFIG, columns=columns)


def _check_row(problem: dict, source: str) -> None:
    if not isinstance(problem.get("question"), str) or not isinstance(problem.get("choices"), list) \
            or not isinstance(problem.get("answer"), int):
        raise DataError(f"{source}: a ScienceQA problem needs `question` (str), `choices` (list), `answer` (int)")


def json_array(path) -> list[tuple[int, dict]]:
    """(1-based line where the element starts, element) for each object of a JSON array file."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array")
    text = Path(path).read_text(encoding="utf-8")
    decoder, separator = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    line, out = 1 + text.count("\n", 0, pos), []
    for element in data:
        start = separator.match(text, pos).end()
        line += text.count("\n", pos, start)
        if not isinstance(element, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, got {type(element).__name__}")
        out.append((line, element))
        _, end = decoder.raw_decode(text, start)
        line += text.count("\n", start, end)
        pos = end
    return out


def _problems(data_dir) -> dict:
    path = Path(data_dir) / PROBLEMS_FILE
    problems = read_json(path)
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected a JSON object pid -> problem")
    for pid, problem in problems.items():
        _check_row(problem, f"{path}: problem {pid}")
    return problems


def annotations(data_dir) -> list[tuple]:
    """[(pid, problem)] of the test split as eval_science_qa.py iterates them (pid None for parquet rows)."""
    if (Path(data_dir) / QUESTION_FILE).is_file() or (Path(data_dir) / PROBLEMS_FILE).is_file():
        problems = _problems(data_dir)
        splits_path = Path(data_dir) / SPLITS_FILE
        splits = read_json(splits_path)
        if not isinstance(splits, dict) or not isinstance(splits.get(TEST_SPLIT), list):
            raise DataError(f"{splits_path}: expected an object with a {TEST_SPLIT!r} list of problem ids")
        missing = [pid for pid in splits[TEST_SPLIT] if pid not in problems]
        if missing:
            raise DataError(f"{splits_path}: test problem {missing[0]!r} is not in {PROBLEMS_FILE}")
        return [(pid, problems[pid]) for pid in splits[TEST_SPLIT]]
    if parquet.is_parquet_dataset(data_dir):
        rows = []
        for source, row in _rows(data_dir, with_images=False):
            _check_row(row, source)
            rows.append((None, row))
        return rows
    raise DataError(f"{data_dir}: neither LLaVA's {PROBLEMS_FILE} nor an lmms-eval ScienceQA parquet dataset")


def score(data_dir, answers: list[dict], *, benchmark: str = NAME, out_dir=None, judge=None) -> ScoreResult:
    """`accuracy` and `img_accuracy` (percent; None where no answer prompt has "<image>", where the official
    script divides by zero); per answers line 1.0 / 0.0, None for a line not scored (not a test problem, or an
    earlier line of a repeated id). Parquet rows pair with answers lines by position."""
    problems = annotations(data_dir)
    if not problems:
        raise DataError(f"{data_dir}: the ScienceQA test split has no problems")
    fields = [answer_fields(a, n) for n, a in enumerate(answers)]
    if problems[0][0] is None:
        check_answer_count(answers, len(problems), "the ScienceQA parquet split")
        for n, (qid, _) in enumerate(fields):
            if qid != n:
                raise DataError(f"answers line {n + 1}: question_id {qid!r} but parquet row {n} is expected there: "
                                "keep the dataset's row order")
        lines = list(range(len(problems)))
    else:
        last_line = {qid: n for n, (qid, _) in enumerate(fields)}
        lines = [last_line.get(pid) for pid, _ in problems]
    per_question: list = [None] * len(answers)
    correct = multimodal = multimodal_correct = 0
    for (_, problem), n in zip(problems, lines):
        text, prompt = ("FAILED", "Unknown") if n is None else (fields[n][1], answers[n].get("prompt"))
        right = choice_index(parse_letter(text), len(problem["choices"])) == problem["answer"]
        is_multimodal = isinstance(prompt, str) and IMAGE_TOKEN in prompt
        correct += right
        multimodal += is_multimodal
        multimodal_correct += right and is_multimodal
        if n is not None:
            per_question[n] = float(right)
    metrics = {"accuracy": 100.0 * correct / len(problems),
               "img_accuracy": 100.0 * multimodal_correct / multimodal if multimodal else None}
    return ScoreResult(metrics=metrics, per_question=per_question)
