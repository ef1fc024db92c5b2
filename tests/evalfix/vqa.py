"""VQAv2, TextVQA and VizWiz fixtures in the layouts users have, with real scikit-image photos.

Small end-to-end sets (3-6 questions with images), each `make_<bench>(root) -> data dir`:
- `make_vqav2`: LLaVA's `vqav2/` (test-dev question file, `test2015/` images, the full test2015 question file
  with two extra test-std questions, val-format annotation + question JSON for the four test-dev questions).
- `make_textvqa`: LLaVA's `textvqa/` (OCR-token question file, two questions on one image, one empty OCR list,
  `train_images/`, `TextVQA_0.5.1_val.json`).
- `make_vizwiz`: LLaVA's `vizwiz/` (`llava_test.jsonl`, `test/`).
- `make_<bench>_parquet`: the lmms-eval dataset folder (`data/<split>-0000i-of-0000n.parquet`, images embedded as
  {"bytes", "path"} structs, the dataset card's columns).

Answer-only scoring fixtures, `make_<bench>_quirks(root) -> (data dir, answers file)`, hold the cases of the
`*_QUIRKS` tables (inputs only: the expected official scores are worked out by hand in the tests).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

SHORT = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def photo_jpeg(name: str, max_side: int = 256) -> bytes:
    """A scikit-image sample photo (`skimage.data.<name>()`) as JPEG bytes, longest side <= max_side."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(getattr(data, name)())
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def answers_file(path: Path, lines) -> Path:
    """A LLaVA answers file from (question_id, prompt, text) triples."""
    return write_jsonl(path, [{"question_id": q, "prompt": p, "text": t, "answer_id": f"a{i}",
                               "model_id": "fixture", "metadata": {}} for i, (q, p, t) in enumerate(lines)])


def write_parquet(folder: Path, split: str, columns: dict, n_shards: int = 1) -> Path:
    """`columns` ({name: list}) as `folder/data/<split>-0000i-of-0000n.parquet` shards (rows split in order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    n = table.num_rows
    bounds = [round(i * n / n_shards) for i in range(n_shards + 1)]
    for i in range(n_shards):
        path = folder / "data" / f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), path)
    return folder


def image_cell(name: str, filename: str) -> dict:
    return {"bytes": photo_jpeg(name), "path": filename}


def vqa_answers(answers: list[str]) -> list[dict]:
    """VQA annotation answer dicts (distinct answer_id 1..n, as the release has)."""
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


# ---- VQAv2 ---------------------------------------------------------------------------------------------------

# (question_id, image number, question, answer_type, 10 GT answers) of the small test-dev fixture
VQAV2_QUESTIONS = [
    (262144000, 262144, "Is there a person in the picture?", "yes/no", ["yes"] * 10),
    (262144001, 262144, "What is the person wearing?", "other", ["spacesuit"] * 6 + ["space suit"] * 4),
    (262145000, 262145, "How many cats are there?", "number", ["1"] * 9 + ["one"]),
    (262146000, 262146, "What is in the cup?", "other", ["coffee"] * 8 + ["latte"] * 2),
]
VQAV2_TEST_STD = [(262147000, 262147, "What is flying?"), (262147001, 262147, "Is it day?")]


def _coco_image(number: int) -> str:
    return f"COCO_test2015_{number:012d}.jpg"


def _vqa_release(data_dir: Path, rows) -> None:
    """VQA-format annotation and question JSON for (question_id, image id, question, answer_type, answers)."""
    meta = {"info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco"}
    write_json(data_dir / "v2_mscoco_val2014_annotations.json", {**meta, "annotations": [
        {"question_id": q, "image_id": img, "question_type": "what", "answer_type": t,
         "multiple_choice_answer": a[0], "answers": vqa_answers(a)} for q, img, _, t, a in rows]})
    write_json(data_dir / "v2_OpenEnded_mscoco_val2014_questions.json", {**meta, "task_type": "Open-Ended",
               "questions": [{"question_id": q, "image_id": img, "question": text} for q, img, text, _, _ in rows]})


def make_vqav2(root: Path) -> Path:
    data_dir = Path(root) / "vqav2"
    records = [{"question_id": q, "image": _coco_image(img), "text": text + SHORT, "category": "default"}
               for q, img, text, _, _ in VQAV2_QUESTIONS]
    write_jsonl(data_dir / "llava_vqav2_mscoco_test-dev2015.jsonl", records)
    write_jsonl(data_dir / "llava_vqav2_mscoco_test2015.jsonl", records + [
        {"question_id": q, "image": _coco_image(img), "text": text + SHORT, "category": "default"}
        for q, img, text in VQAV2_TEST_STD])
    for number, photo in zip(sorted({img for _, img, *_ in VQAV2_QUESTIONS}), PHOTOS):
        (data_dir / "test2015").mkdir(parents=True, exist_ok=True)
        (data_dir / "test2015" / _coco_image(number)).write_bytes(photo_jpeg(photo))
    _vqa_release(data_dir, VQAV2_QUESTIONS)
    return data_dir


def make_vqav2_parquet(root: Path, split: str = "validation") -> Path:
    """lmms-lab/VQAv2 with the small fixture's questions in two shards (answers None outside `validation`)."""
    rows = VQAV2_QUESTIONS
    photos = dict(zip(sorted({img for _, img, *_ in rows}), PHOTOS))
    annotated = split == "validation"
    return write_parquet(Path(root) / "VQAv2", split, {
        "question_type": ["what"] * len(rows),
        "multiple_choice_answer": [a[0] if annotated else None for *_, a in rows],
        "answers": [vqa_answers(a) if annotated else None for *_, a in rows],
        "image_id": [img for _, img, *_ in rows],
        "answer_type": [t if annotated else None for _, _, _, t, _ in rows],
        "question_id": [q for q, *_ in rows],
        "question": [text for _, _, text, _, _ in rows],
        "image": [image_cell(photos[img], _coco_image(img)) for _, img, *_ in rows],
    }, n_shards=2)


# (question_id, answer_type, 10 GT answers, raw model text): the vqaEval quirks of BENCHMARKS.md
VQAV2_QUIRKS = [
    (1001, "yes/no", ["yes"] * 10, "Yes"),
    (1002, "yes/no", ["no"] * 10, "No."),
    (1003, "other", ["man's"] * 9 + ["mans"], "man's"),
    (1004, "number", ["5"] * 3 + ["4"] * 7, "5."),
    (1005, "number", ["3.5"] * 2 + ["3"] * 8, "3.5"),
    (1006, "number", ["10"] * 5 + ["11"] * 5, "Ten"),
    (1007, "number", ["11"] * 5 + ["10"] * 5, "eleven"),
    (1008, "other", ["a"] * 3 + ["b"] * 7, "The"),
    (1009, "number", ["1,000-2,000"] * 4 + ["1000"] * 6, "1,000-2,000"),
    (1010, "other", ["red"] + ["blue"] * 9, "Red"),
    (1011, "other", ["black white"] * 3 + ["black"] * 7, "black/white"),
    (1012, "number", ["two"] * 10, "2"),
    (1013, "yes/no", ["yes"] * 8 + ["no"] * 2, "No"),
    (1014, "number", ["2,000"] * 2 + ["2000"] * 2 + ["3000"] * 6, "2,000"),
]
VQAV2_UNANSWERED = (1015, "other", ["tree"] * 10)   # annotated, left out of the answers file
VQAV2_UNANNOTATED = (9999, "Is it red?", "yes")     # answered, not annotated


def make_vqav2_quirks(root: Path) -> tuple[Path, Path]:
    """Annotations of VQAV2_QUIRKS (+ VQAV2_UNANSWERED) and a partial answers file (+ VQAV2_UNANNOTATED)."""
    data_dir = Path(root) / "vqav2_quirks"
    rows = [(q, 100 + i, f"question {q}?", t, a) for i, (q, t, a, _) in enumerate(VQAV2_QUIRKS)]
    q, t, a = VQAV2_UNANSWERED
    _vqa_release(data_dir, rows + [(q, 200, f"question {q}?", t, a)])
    lines = [(q, f"question {q}?" + SHORT, text) for q, _, _, text in VQAV2_QUIRKS]
    q, text, prediction = VQAV2_UNANNOTATED
    return data_dir, answers_file(Path(root) / "vqav2_quirks_answers.jsonl",
                                  lines + [(q, text + SHORT, prediction)])


# ---- TextVQA -------------------------------------------------------------------------------------------------

# (image id, question, OCR tokens, 10 GT answers, photo)
TEXTVQA_QUESTIONS = [
    ("003a8ae2ef43b901", "what brand is the camera?", ["DAKOTA", "DIGITAL", "Single-Use"],
     ["dakota"] * 10, "astronaut"),
    ("003a8ae2ef43b901", "what is written below the brand?", ["DAKOTA", "DIGITAL", "Single-Use"],
     ["digital"] * 7 + ["single-use"] * 3, "astronaut"),
    ("0a1b2c3d4e5f6071", "what number is on the jersey?", [], ["5"] * 1 + ["five"] * 2 + ["15"] * 7, "chelsea"),
    ("f0e1d2c3b4a59687", "What is the name of the cafe?", ["LATTE", "ART"], ["latte art"] * 10, "coffee"),
]


def textvqa_prompt(question: str, ocr: list[str]) -> str:
    return f"{question}\nReference OCR token: {', '.join(ocr)}{SHORT}"


def _textvqa_annotations(data_dir: Path, rows) -> None:
    write_json(data_dir / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "data": [
        {"question": q, "image_id": img, "image_classes": ["Camera"], "flickr_original_url": "",
         "flickr_300k_url": "", "image_width": 256, "image_height": 256, "answers": a,
         "question_tokens": q.split(), "question_id": 34602 + i, "set_name": "val"}
        for i, (img, q, _, a, *_) in enumerate(rows)]})


def make_textvqa(root: Path) -> Path:
    data_dir = Path(root) / "textvqa"
    write_jsonl(data_dir / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": img, "image": f"{img}.jpg", "text": textvqa_prompt(q, ocr), "category": "default"}
        for img, q, ocr, _, _ in TEXTVQA_QUESTIONS])
    (data_dir / "train_images").mkdir(parents=True, exist_ok=True)
    for img, *_, photo in TEXTVQA_QUESTIONS:
        (data_dir / "train_images" / f"{img}.jpg").write_bytes(photo_jpeg(photo))
    _textvqa_annotations(data_dir, TEXTVQA_QUESTIONS)
    return data_dir


def make_textvqa_parquet(root: Path, split: str = "validation") -> Path:
    """lmms-lab/textvqa with the small fixture's questions (answers None outside `validation`)."""
    rows = TEXTVQA_QUESTIONS
    return write_parquet(Path(root) / "textvqa", split, {
        "image_id": [img for img, *_ in rows],
        "question_id": [34602 + i for i in range(len(rows))],
        "question": [q for _, q, *_ in rows],
        "question_tokens": [q.split() for _, q, *_ in rows],
        "image": [image_cell(photo, f"{img}.jpg") for img, *_, photo in rows],
        "image_width": [256] * len(rows), "image_height": [256] * len(rows),
        "flickr_original_url": [""] * len(rows), "flickr_300k_url": [""] * len(rows),
        "answers": [a if split == "validation" else None for _, _, _, a, _ in rows],
        "image_classes": [["Camera"]] * len(rows),
        "set_name": ["val" if split == "validation" else "test"] * len(rows),
        "ocr_tokens": [ocr for _, _, ocr, _, _ in rows],
    })


# (image id, question, 10 GT answers, raw model text, prompt style): m4c quirks; "ocr" = LLaVA's 3-line prompt
# (with the OCR tokens "X, Y"), "plain" = the 2-line prompt, "ocr_first" = the OCR line first
TEXTVQA_QUIRKS = [
    ("1111111111111111", "what brand is the camera?", ["dakota"] * 10, "Dakota", "ocr"),
    ("1111111111111111", "what is written below the brand?", ["digital"] * 2 + ["dakota digital"] * 8,
     "digital", "ocr"),
    ("2222222222222222", "what number is on the jersey?", ["5"] + ["five"] * 2 + ["15"] * 7, "5.", "empty_ocr"),
    ("3333333333333333", "whose hat is it?", ["man's"] * 10, "man's", "plain"),
    ("4444444444444444", "what drink is advertised?", ["coca cola"] + ["coca-cola"] + ["coke"] * 8,
     "Coca-Cola", "ocr"),
    ("5555555555555555", "what letter is on the sign?", ["a"] * 3 + ["b"] * 7, "the", "ocr_first"),
    ("6666666666666666", "how many floors?", ["10"] * 10, "ten", "ocr"),
    ("7777777777777777", "what Number Is This?", ["11"] * 10, "eleven", "plain"),
    ("8888888888888888", "what is the price?", ["3.5"] * 3 + ["35"] * 7, "3.5", "ocr"),
    ("9999999999999999", "what city?", ["paris"] * 10, "London", "ocr"),
]
TEXTVQA_UNANSWERED = ("aaaaaaaaaaaaaaaa", "what color is the logo?", ["red"] * 10)


def _quirk_prompt(question: str, style: str) -> str:
    if style == "plain":
        return question.capitalize() + SHORT
    if style == "ocr_first":
        return f"Reference OCR token: X, Y\n{question}{SHORT}"
    return textvqa_prompt(question, [] if style == "empty_ocr" else ["X", "Y"])


def make_textvqa_quirks(root: Path) -> tuple[Path, Path]:
    """Annotations of TEXTVQA_QUIRKS (+ TEXTVQA_UNANSWERED) and an answers file without the unanswered one."""
    data_dir = Path(root) / "textvqa_quirks"
    _textvqa_annotations(data_dir, [(img, q, None, a) for img, q, a, *_ in TEXTVQA_QUIRKS]
                         + [(TEXTVQA_UNANSWERED[0], TEXTVQA_UNANSWERED[1], None, TEXTVQA_UNANSWERED[2])])
    return data_dir, answers_file(Path(root) / "textvqa_quirks_answers.jsonl",
                                  [(img, _quirk_prompt(q, style), text) for img, q, _, text, style in TEXTVQA_QUIRKS])


# ---- VizWiz --------------------------------------------------------------------------------------------------

VIZWIZ_QUESTIONS = [
    (0, "VizWiz_test_00000000.jpg", "What is this? and what color is it?", "camera"),
    (1, "VizWiz_test_00000001.jpg", "what is this can?", "coffee"),
    (2, "VizWiz_test_00000002.jpg", "Can you tell me what this is?", "chelsea"),
]


def make_vizwiz(root: Path) -> Path:
    data_dir = Path(root) / "vizwiz"
    write_jsonl(data_dir / "llava_test.jsonl", [
        {"question_id": q, "image": image, "text": text + UNANSWERABLE + SHORT, "category": "default"}
        for q, image, text, _ in VIZWIZ_QUESTIONS])
    (data_dir / "test").mkdir(parents=True, exist_ok=True)
    for _, image, _, photo in VIZWIZ_QUESTIONS:
        (data_dir / "test" / image).write_bytes(photo_jpeg(photo))
    return data_dir


# (question_id, question, GT answers, raw model text) of the parquet val fixture: lmms-eval's port
VIZWIZ_VAL = [
    ("VizWiz_val_00000000", "what is this?", ["unanswerable"] * 10, "Unanswerable", "camera"),
    ("VizWiz_val_00000001", "what color is this shirt?", ["red"] * 2 + ["blue"] * 8, "Red.", "astronaut"),
    ("VizWiz_val_00000002", "what is it?", [], "a cat", "chelsea"),
    ("VizWiz_val_00000003", "Which flavor?", ["mocha"] * 4 + ["coffee"] * 6, "it's mocha", "coffee"),
]


def make_vizwiz_parquet(root: Path, split: str = "val") -> Path:
    """lmms-lab/VizWiz-VQA: `val` from VIZWIZ_VAL (with answers), `test` from the small fixture's questions."""
    if split == "val":
        rows = [(q, text, a, photo) for q, text, a, _, photo in VIZWIZ_VAL]
    else:
        rows = [(image[:-4], text, [], photo) for _, image, text, photo in VIZWIZ_QUESTIONS]
    return write_parquet(Path(root) / "VizWiz-VQA", split, {
        "question_id": [q for q, *_ in rows],
        "image": [image_cell(photo, f"{q}.jpg") for q, _, _, photo in rows],
        "question": [text for _, text, _, _ in rows],
        "answers": [a for _, _, a, _ in rows],
        "category": ["other"] * len(rows),
    })
