"""MMBench (EN dev) and MMBench-CN (dev): LLaVA-1.5's tsv (or lmms-eval's parquet), CircularEval with exact
matching, and the submission sheet.

Layouts read:
- LLaVA-1.5 `mmbench/mmbench_dev_20230712.tsv` and `mmbench_cn/mmbench_dev_cn_20231003.tsv` (another single
  `*.tsv` in the folder, e.g. a test sheet, when the dev file is absent). Columns `index, question, hint, A, B,
  C, D, answer, category, image (base64), source, l2-category, comment, split`. Cells are read as pandas'
  `read_table` reads them in the official scripts: an empty cell or one of pandas' NA strings ("None", "NA",
  "nan", ...) is NaN (None here); other cells stay text.
- lmms-eval `lmms-lab/MMBench`, config `en` / `cn`, split `dev` (`L2-category`, image embedded).

The tsv holds the CircularEval copies: a question with n options has n rows, `index + k * 1,000,000`, options
rotated and `answer` re-lettered. Every row is asked once.

Prompts: "llava" as model_vqa_mmbench.py with --single-pred-prompt: `[hint "\\n"] question`, then `"\\nA. opt"`
for the options A-D up to the first missing one (a cell reading "nan"/"none" in any case counts as missing),
then the EN or CN letter instruction. "lmms" as lmms-eval: `"{hint} {question} There are several options:\\nA.
opt\\n..."` then `"\\n\\n"` and its own EN / CN instruction. Answers lines carry LLaVA's `round_id` (0), `options`
and `option_char`.

Scoring (opencompass tools/eval_mmbench.py; VLMEvalKit's exact-matching policy): each row's answer is
prefetched to a letter (`infer_letter`, then `infer_text`); questions are grouped by `index % 1,000,000`; a group
with any prefetched letter wrong scores 0, one with every row prefetched right scores 1, any other group needs
the GPT matcher and is listed in `unresolved` (counted 0 under exact matching). `circular_accuracy` is the
percentage over the groups (the index < 1,000,000 rows), also per `category` and `l2-category`.
`score(out_dir=...)` writes the upload sheet as LLaVA's convert_mmbench_for_submission.py does.
"""

from __future__ import annotations

import base64
import binascii
import csv
import math
import re
from pathlib import Path

from jaxvlm.errors import require_module
from jaxvlm.evaluation import parquet
from jaxvlm.evaluation.base import DataError, Sample, ScoreResult, check_answer_count, check_variant
from jaxvlm.evaluation.llava_layout import strip_suffix

NAME = "mmbench"
MAX_NEW_TOKENS = 1024
QUESTION_FILES = {"mmbench": "mmbench_dev_20230712.tsv", "mmbench_cn": "mmbench_dev_cn_20231003.tsv"}
PARQUET_CONFIGS = {"mmbench": "en", "mmbench_cn": "cn"}
PARQUET_SPLIT = "dev"
INSTRUCTIONS = {"mmbench": "\nAnswer with the option's letter from the given choices directly.",
                "mmbench_cn": "\n请直接回答选项字母。"}
LMMS_INSTRUCTIONS = {"mmbench": "\n\nAnswer with the option's letter from the given choices directly.",
                     "mmbench_cn": "\n\n请直接使用所提供的选项字母作为答案回答。"}
LMMS_OPTIONS_HEADER = "There are several options:"
OPTION_LETTERS = "ABCD"              # LLaVA's prompt and the scorer's choices
LMMS_OPTION_LETTERS = "ABCDE"        # lmms-eval's prompt
INFER_LETTERS = "ABCDE"              # letters the prefetch accepts ("E": no option, then wrong)
LETTER_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                (":", ","), (":", "."), (":", ")"), (":", ")."))
API_FAILURE = "Failed to obtain answer via API"
CIRCULAR = 1_000_000
# pandas.read_table's default NA strings (pandas._libs.parsers.STR_NA_VALUES, pandas >= 2).
PANDAS_NA = frozenset({"-1.#IND", "1.#QNAN", "1.#IND", "-1.#QNAN", "#N/A N/A", "#N/A", "N/A", "n/a", "NA", "<NA>",
                       "#NA", "NULL", "null", "NaN", "-NaN", "nan", "-nan", "", "None"})
SHEET_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
SHEET_PREDICTION_AT = 6
SUBMISSION = "{benchmark}_submission.xlsx"


# ---------------------------------------------------------------------------------------------------- reading

def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    """One Sample per row (circular copies included) in file order; the image is the row's decoded bytes
    (`image_folder` is unused: MMBench embeds its images)."""
    _check(benchmark, variant)
    prompt = _llava_prompt if variant == "llava" else _lmms_prompt
    samples = []
    for n, row in enumerate(_rows(data_dir, benchmark)):
        if not isinstance(row.get("question"), str):
            raise DataError(f"{row['_at']}: the question cell is empty")
        options = llava_options(row)
        text = prompt(row, options, benchmark)
        # LLaVA's answers line records the question without the instruction (model_vqa_mmbench.py's cur_prompt).
        record = strip_suffix(text, INSTRUCTIONS[benchmark]) if variant == "llava" else None
        samples.append(Sample(line=n, question_id=row["index"], prompt=text, answer_prompt=record,
                              image=_image(row), source=row["_at"],
                              extra={"round_id": 0, "options": options,
                                     "option_char": list(OPTION_LETTERS[:len(options)])}))
    return samples


def _check(benchmark: str, variant: str = "llava") -> None:
    if benchmark not in QUESTION_FILES:
        raise DataError(f"mmbench.py serves {', '.join(QUESTION_FILES)}, not {benchmark!r}")
    check_variant(variant)


def _rows(data_dir, benchmark: str) -> list[dict]:
    """The benchmark's rows as dicts (`index` an int, `l2-category` spelled so, `_at` = "file:line")."""
    if parquet.is_parquet_dataset(data_dir):
        rows = []
        for source, row in parquet.read_rows(data_dir, PARQUET_SPLIT, PARQUET_CONFIGS[benchmark]):
            if "L2-category" in row:
                row["l2-category"] = row.pop("L2-category")
            rows.append(_indexed(row, source))
        return rows
    return read_tsv(_question_file(Path(data_dir), benchmark))


def _question_file(data_dir: Path, benchmark: str) -> Path:
    path = data_dir / QUESTION_FILES[benchmark]
    if path.is_file():
        return path
    others = sorted(data_dir.glob("*.tsv"))
    if len(others) == 1:
        return others[0]
    raise DataError(f"{path}: no such file" + (f" (and {len(others)} other .tsv files: name one by its standard "
                                               "name)" if others else ""))


def read_tsv(path: Path) -> list[dict]:
    """The rows of an MMBench tsv: pandas-NA cells as None, the rest as text (`_at` = "file:line")."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # base64 image cells exceed the default
    try:
        return _tsv_rows(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _tsv_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # pandas drops a byte-order mark too
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or "index" not in header or "question" not in header:
            raise DataError(f"{path}:1: not an MMBench tsv (the header needs `index` and `question`)")
        start = reader.line_num + 1
        for cells in reader:
            source = f"{path}:{start}"
            start = reader.line_num + 1
            if not cells:
                continue
            if len(cells) != len(header):
                raise DataError(f"{source}: {len(cells)} tab-separated fields, the header has {len(header)}")
            rows.append(_indexed({k: None if v in PANDAS_NA else v for k, v in zip(header, cells)}, source))
    return rows


def _indexed(row: dict, source: str) -> dict:
    try:
        row["index"] = int(row.get("index"))
    except (TypeError, ValueError):
        raise DataError(f"{source}: `index` must be an integer, got {row.get('index')!r}") from None
    row["_at"] = source
    return row


def _image(row: dict) -> bytes:
    cell = row.get("image")
    if isinstance(cell, str):
        try:
            data = base64.b64decode(cell)
        except (binascii.Error, ValueError) as e:
            raise DataError(f"{row['_at']}: the image cell is not base64 ({e})") from None
        if data:
            return data
    elif isinstance(cell, (dict, bytes, bytearray)):
        return parquet.image_bytes(cell, row["_at"])
    raise DataError(f"{row['_at']}: the image cell is empty")


# ---------------------------------------------------------------------------------------------------- prompts

def is_none(value) -> bool:
    """LLaVA's test for a missing option / hint: NaN, None, or text "nan" / "none" in any case."""
    return _is_nan(value) or (isinstance(value, str) and value.lower() in ("nan", "none"))


def llava_options(row: dict) -> list[str]:
    """Options A-D up to the first missing one (model_vqa_mmbench.py `get_options`)."""
    options = []
    for letter in OPTION_LETTERS:
        if is_none(row.get(letter)):
            break
        options.append(str(row[letter]))
    return options


def _llava_prompt(row: dict, options: list[str], benchmark: str) -> str:
    text = row["question"] if is_none(row.get("hint")) else f"{row['hint']}\n{row['question']}"
    for letter, option in zip(OPTION_LETTERS, options):
        text += f"\n{letter}. {option}"
    return text + INSTRUCTIONS[benchmark]


def _lmms_prompt(row: dict, options: list[str], benchmark: str) -> str:
    """lmms-eval's `mmbench_doc_to_text` (EN also skips a hint reading "nan"; CN does not)."""
    listed = "".join(f"{c}. {row[c]}\n" for c in LMMS_OPTION_LETTERS if c in row and _present(row[c]))
    options_text = f"{LMMS_OPTIONS_HEADER}\n{listed}".rstrip("\n")
    hint = row.get("hint")
    has_hint = not _is_nan(hint) and (benchmark == "mmbench_cn" or hint != "nan")
    query = f"{hint} {row['question']} {options_text}" if has_hint else f"{row['question']} {options_text}"
    return query + LMMS_INSTRUCTIONS[benchmark]


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _present(value) -> bool:
    """lmms-eval's option filter: truthy, not NaN, not the text "nan"."""
    return bool(value) and not _is_nan(value) and value != "nan"


# ---------------------------------------------------------------------------------------------------- matching

def is_na(value) -> bool:
    """pandas' NaN as the official scorer sees a cell after the xlsx round trip."""
    return _is_nan(value) or (isinstance(value, str) and value in PANDAS_NA)


def infer_letter(answer: str) -> str | None:
    """opencompass `can_infer_option`: the one bare letter of ABCDE among the whitespace tokens (unless "A"
    is one of more than 3 tokens: "A dog ..."), else the one letter written in a form of LETTER_FORMS."""
    if API_FAILURE in answer:
        return None
    tokens = answer.split()
    bare = [c for c in INFER_LETTERS if c in tokens]
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in LETTER_FORMS:
        hits = [c for c in INFER_LETTERS if prefix + c + suffix in tokens]
        if len(hits) == 1:
            return hits[0]
    return None


def infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """opencompass `can_infer_text`: the one option whose lower-cased text is in the lower-cased answer."""
    answer = answer.lower()
    hits = [letter for letter, text in choices.items() if str(text).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def infer(answer: str, choices: dict[str, str]) -> str | None:
    """The prefetched letter of `answer` (None: only the GPT matcher could tell)."""
    return infer_letter(answer) or infer_text(answer, choices)


def choices(row: dict) -> dict[str, str]:
    """The scorer's options: every non-NaN cell of A-D (opencompass `build_choices`; gaps are not a stop)."""
    return {c: row[c] for c in OPTION_LETTERS if not is_na(row.get(c))}


def prediction_cell(text) -> str:
    """The prediction as the scorer reads it back from the sheet: `str(cell)`, "nan" for an NA-like text."""
    return "nan" if is_na(text) else str(text)


def circular_group(verdicts: list[tuple[str, str | None]]) -> int | None:
    """One question's CircularEval from its rows' (answer, prefetched letter) in index order: 0 if a letter is
    wrong, 1 if every letter is right, None if some row needs the GPT matcher (and none is wrong)."""
    if any(letter is not None and letter != answer for answer, letter in verdicts):
        return 0
    return 1 if all(letter is not None for _, letter in verdicts) else None


# ---------------------------------------------------------------------------------------------------- scoring

def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    """CircularEval with exact matching per group; the upload sheet under `out_dir`."""
    _check(benchmark)
    if judge is not None:
        raise DataError(f"{benchmark} takes no judge file: the groups the GPT matcher would settle are listed in "
                        "`unresolved`")
    rows = _rows(data_dir, benchmark)
    check_answer_count(answers, len(rows), str(data_dir))
    texts = []
    for n, (row, record) in enumerate(zip(rows, answers)):
        if record.get("question_id") != row["index"]:
            raise DataError(f"answers line {n + 1}: question_id {record.get('question_id')!r}, but {row['_at']} "
                            f"has index {row['index']}: answers must follow the question file's order")
        texts.append(record.get("text"))
    artifacts = {}
    if out_dir is not None:
        artifacts["submission"] = write_sheet(Path(out_dir) / SUBMISSION.format(benchmark=benchmark), rows, texts)
    if any("answer" not in row for row in rows):  # a test sheet: scored by the server
        return ScoreResult({}, [None] * len(rows), artifacts)
    metrics, per_question = circular_eval(rows, [prediction_cell(t) for t in texts])
    return ScoreResult(metrics, per_question, artifacts)


def circular_eval(rows: list[dict], predictions: list[str]) -> tuple[dict, list]:
    """(metrics, per_question) of CircularEval with exact matching; per_question[i] = {"index", "option" (the
    prefetched letter or None), "hit" (its group's 1 / 0, None when unresolved or without an index < 1e6 row)}."""
    letters = [infer(p, choices(row)) for row, p in zip(rows, predictions)]
    members: dict[int, list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: rows[i]["index"]):
        members.setdefault(rows[i]["index"] % CIRCULAR, []).append(i)
    mains = sorted((row["index"], i) for i, row in enumerate(rows) if row["index"] < CIRCULAR)
    if not mains:
        raise DataError(f"{rows[0]['_at'] if rows else 'MMBench'}: no question with index < {CIRCULAR}")
    hits = {idx: circular_group([(rows[i]["answer"], letters[i]) for i in members[idx]]) for idx, _ in mains}
    metrics = {"circular_accuracy": _percent([hits[idx] for idx, _ in mains]),
               "unresolved": [idx for idx, _ in mains if hits[idx] is None],
               "groups": len(mains)}
    for column, key in (("category", "per_category"), ("l2-category", "per_l2_category")):
        if all(column in rows[i] for _, i in mains):
            by: dict[str, list] = {}
            for idx, i in mains:
                by.setdefault(str(rows[i][column]), []).append(hits[idx])
            metrics[key] = {name: _percent(v) for name, v in sorted(by.items())}
    per_question = [{"index": row["index"], "option": letter, "hit": hits.get(row["index"] % CIRCULAR)}
                    for row, letter in zip(rows, letters)]
    return metrics, per_question


def _percent(hits: list) -> float:
    return 100.0 * sum(h == 1 for h in hits) / len(hits)


# ---------------------------------------------------------------------------------------------------- export

def write_sheet(path: Path, rows: list[dict], texts: list) -> Path:
    """convert_mmbench_for_submission.py's sheet: the question file's columns less hint, category, source,
    image, comment and l2-category, `prediction` inserted as the 7th column; NaN cells empty."""
    openpyxl = require_module("openpyxl", "eval", "writing the MMBench submission sheet")
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    columns = [c for c in rows[0] if c not in (*SHEET_DROPPED, "_at")]
    columns.insert(min(SHEET_PREDICTION_AT, len(columns)), "prediction")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(columns)
    for row, text in zip(rows, texts):
        cells = {**row, "prediction": text}
        sheet.append([_cell(cells.get(c), ILLEGAL_CHARACTERS_RE) for c in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def _cell(value, illegal: re.Pattern):
    if _is_nan(value) or (value == "" and isinstance(value, str)):
        return None
    return illegal.sub("", value) if isinstance(value, str) else value

