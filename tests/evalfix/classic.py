"""Fixtures for GQA, POPE, MME and ScienceQA-IMG in the layouts users have, with real scikit-image photos.

    make_gqa(root) / make_pope(root) / make_mme(root) / make_scienceqa(root) -> LLaVA-1.5 eval folder
    make_<bench>_parquet(root)                                                 -> lmms-eval parquet folder

The question / label / annotation contents are the module constants below (tests derive expected official
scores from them by hand). Image sets stay small: GQA 7 questions on 3 images, POPE 6 on 3, ScienceQA 5 (3
with images); MME needs every one of its 14 subtasks answered, so it has 15 images (two for `existence`) and
30 questions. `answers(samples, texts)` makes an answers file's records from read() samples.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import skimage.data
from PIL import Image

SHORT = "\nAnswer the question using a single word or phrase."
YES_NO = " Please answer yes or no."
LETTER = "\nAnswer with the option's letter from the given choices directly."
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
MAX_SIDE = 160  # photos are downscaled: real pictures, small files


@functools.lru_cache(maxsize=None)
def _photo(index: int) -> Image.Image:
    image = Image.fromarray(np.asarray(getattr(skimage.data, PHOTOS[index])())).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return image


def photo(index: int) -> Image.Image:
    """The `index`-th scikit-image photo (cycling), RGB, at most MAX_SIDE pixels a side."""
    return _photo(index % len(PHOTOS)).copy()


def save_photo(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(index).save(path)


def image_cell(index: int, name: str) -> dict:
    """A datasets Image cell: the photo's encoded bytes and a file name."""
    buf = io.BytesIO()
    photo(index).save(buf, format="PNG" if name.endswith(".png") else "JPEG")
    return {"bytes": buf.getvalue(), "path": name}


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_json(path: Path, obj, indent=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent), encoding="utf-8")


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def answers(samples, texts: list[str], model_id: str = "tiny-llava") -> list[dict]:
    """Answers-file records (LLaVA's format) for `samples` with model outputs `texts`, in order."""
    assert len(samples) == len(texts)
    return [{"question_id": s.question_id, "prompt": s.record_prompt, "text": t,
             "answer_id": f"a{s.line}", "model_id": model_id, "metadata": {}} for s, t in zip(samples, texts)]


# ---------------------------------------------------------------------------------------------------- GQA
# (question id, image id, question, answer, structural type, isBalanced); the last one is in the official
# annotations only (unbalanced, so it needs no prediction).
GQA = [
    ("201307251", "n161313", "Is there a flag behind the woman?", "yes", "verify", True),
    ("201640614", "n161313", "What is the woman holding?", "helmet", "query", True),
    ("202225914", "n235859", "What animal is this?", "cat", "query", True),
    ("2062325", "n235859", "Is the cat black?", "no", "verify", True),
    ("20602979", "n336443", "What is in the cup?", "coffee", "query", True),
    ("20875532", "n336443", "Is the spoon to the left or to the right of the cup?", "right", "choose", True),
    ("20875533", "n336443", "Is the saucer white?", "yes", "verify", False),
]
GQA_EXTRA = ("20875534", "n336443", "Is the cup white?", "yes", "verify", False)
GQA_IMAGES = ("n161313", "n235859", "n336443")


def _gqa_annotation(q) -> dict:
    qid, image, question, answer, structural, balanced = q
    semantic = "rel" if structural == "choose" else "attr" if structural == "verify" else "obj"
    return {"question": question, "imageId": image, "answer": answer, "fullAnswer": f"The answer is {answer}.",
            "isBalanced": balanced, "types": {"structural": structural, "semantic": semantic,
                                              "detailed": f"{semantic}{structural.capitalize()}"},
            "groups": {"global": None, "local": f"10q-{image}"}, "entailed": [], "equivalent": [qid],
            "semantic": [{"operation": "select", "argument": "scene", "dependencies": []}], "annotations": {}}


def make_gqa(root) -> Path:
    data = Path(root) / "gqa"
    write_jsonl(data / "llava_gqa_testdev_balanced.jsonl",
                [{"question_id": q[0], "image": f"{q[1]}.jpg", "text": q[2] + SHORT, "category": "default"}
                 for q in GQA])
    for i, image in enumerate(GQA_IMAGES):
        save_photo(data / "data" / "images" / f"{image}.jpg", i)
    write_json(data / "data" / "testdev_balanced_questions.json",
               {q[0]: _gqa_annotation(q) for q in GQA + [GQA_EXTRA]})
    return data


def make_gqa_parquet(root) -> Path:
    """`lmms-lab/GQA`: the balanced questions (instructions config) and the images config, joined on imageId."""
    data = Path(root) / "GQA"
    rows = [{"id": q[0], **_gqa_annotation(q), "semanticStr": "select: scene"} for q in GQA if q[5]]
    for row in rows:  # parquet needs one type per column: the all-None `global` group becomes a string
        row["groups"] = {"global": "", "local": row["groups"]["local"]}
        del row["annotations"], row["semantic"]
    write_parquet(data / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", rows)
    write_parquet(data / "testdev_balanced_images" / "testdev-00000-of-00001.parquet",
                  [{"id": image, "image": image_cell(i, f"{image}.jpg")} for i, image in enumerate(GQA_IMAGES)])
    return data


# --------------------------------------------------------------------------------------------------- POPE
# (question id, photo, question, category, label) in the question file's order (adversarial, random, popular).
POPE = [
    (1, 0, "Is there a person in the image?", "adversarial", "yes"),
    (2, 1, "Is there a dog in the image?", "adversarial", "no"),
    (10000001, 2, "Is there a cup in the image?", "random", "yes"),
    (10000002, 0, "Is there a giraffe in the image?", "random", "no"),
    (20000001, 1, "Is there a cat in the image?", "popular", "yes"),
    (20000002, 2, "Is there a chair in the image?", "popular", "no"),
]
POPE_IMAGES = ("COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg", "COCO_val2014_000000429109.jpg")


def make_pope(root) -> Path:
    """LLaVA's pope folder; the label files number their questions 1, 2, ... per split (as POPE's do), so only
    their order ties them to the question file."""
    data = Path(root) / "pope"
    write_jsonl(data / "llava_pope_test.jsonl",
                [{"question_id": qid, "image": POPE_IMAGES[p], "text": q + SHORT, "category": c}
                 for qid, p, q, c, _ in POPE])
    for i, name in enumerate(POPE_IMAGES):
        save_photo(data / "val2014" / name, i)
    for split in ("adversarial", "popular", "random"):
        rows = [r for r in POPE if r[3] == split]
        write_jsonl(data / "coco" / f"coco_pope_{split}.json",
                    [{"question_id": n, "image": POPE_IMAGES[p], "text": q, "label": label}
                     for n, (_, p, q, _, label) in enumerate(rows, 1)])
    return data


def make_pope_parquet(root) -> Path:
    """`lmms-lab/POPE` default config: split `test` in three shards."""
    data = Path(root) / "POPE"
    rows = [{"id": str(n), "question_id": str(qid), "question": q, "answer": label,
             "image_source": POPE_IMAGES[p][:-4], "image": image_cell(p, POPE_IMAGES[p]), "category": c}
            for n, (qid, p, q, c, label) in enumerate(POPE)]
    for shard in range(3):
        write_parquet(data / "data" / f"test-{shard:05d}-of-00003.parquet", rows[2 * shard: 2 * shard + 2])
    return data


# ---------------------------------------------------------------------------------------------------- MME
# (category, image path under the category, [(question stem, gt), (question stem, gt)]); subtasks with an
# images/ folder keep their txt files in questions_answers_YN/. One existence question has the official
# two-space "?  Please answer yes or no." spelling.
MME = [
    ("existence", "000000006040.jpg", [("Is there a train in this image?", "Yes"),
                                       ("Is there a bed in this image?", "No")]),
    ("existence", "000000018150.jpg", [("Is there a person in this image?", "Yes"),
                                       ("Is there a cat in this image? ", "No")]),
    ("count", "000000040205.jpg", [("Is there only one person in the image?", "Yes"),
                                   ("Are there two persons in the image?", "No")]),
    ("position", "000000062808.jpg", [("Is the cup on the left of the spoon?", "Yes"),
                                      ("Is the cup on the right of the spoon?", "No")]),
    ("color", "000000008277.jpg", [("Is there a white helmet in the image?", "Yes"),
                                   ("Is there a red helmet in the image?", "No")]),
    ("posters", "images/tt0048545.jpg", [("Is this movie titled rebel without a cause (1955)?", "Yes"),
                                         ("Is this movie titled the godfather (1972)?", "No")]),
    ("celebrity", "images/tt0032138_shot_0395_img_0.jpg", [("Is the actor inside the red box named Judy?", "Yes"),
                                                            ("Is the actor inside the red box named Bob?", "No")]),
    ("scene", "images/Places365_val_00000001.jpg", [("Is this picture captured in a kitchen?", "Yes"),
                                                    ("Is this picture captured in a forest?", "No")]),
    ("landmark", "images/0006adf999ccc899.jpg", [("Is this a photo of the launch pad?", "Yes"),
                                                 ("Is this a photo of the Eiffel Tower?", "No")]),
    ("artwork", "images/14777.jpg", [("Does this artwork exist in the form of photography?", "Yes"),
                                     ("Does this artwork exist in the form of sculpture?", "No")]),
    ("OCR", "0001.jpg", [("Is the word in the logo \"NASA\"?", "Yes"),
                         ("Is the word in the logo \"ESA\"?", "No")]),
    ("commonsense_reasoning", "0001.png", [("Is it safe to drink this while very hot?", "Yes"),
                                           ("Is this drink frozen?", "No")]),
    ("numerical_calculation", "0001.png", [("Is the answer to the arithmetic question 2?", "Yes"),
                                           ("Is the answer to the arithmetic question 5?", "No")]),
    ("text_translation", "0001.png", [("Is it appropriate to translate the text into \"cat\"?", "Yes"),
                                      ("Is it appropriate to translate the text into \"dog\"?", "No")]),
    ("code_reasoning", "0020.png", [("Is a python code shown in the picture?", "Yes"),
                                    ("Is a c++ code shown in the picture?", "No")]),
]


def _mme_txt(image: str) -> str:
    """The ground-truth txt of an image: beside it (flat), or in questions_answers_YN/ (images/ layout)."""
    stem = Path(image).name.split(".")[0] + ".txt"
    return f"questions_answers_YN/{stem}" if image.startswith("images/") else stem


def mme_rows():
    """(question_id, category, official question, gt, photo) per question, in llava_mme.jsonl order."""
    return [(f"{c}/{image}", c, stem + YES_NO, gt, i)
            for i, (c, image, qa) in enumerate(MME) for stem, gt in qa]


def make_mme(root) -> Path:
    data = Path(root) / "MME"
    bench = data / "MME_Benchmark_release_version"
    write_jsonl(data / "llava_mme.jsonl",
                [{"question_id": qid, "image": qid, "text": q.replace(YES_NO, "").strip() + SHORT, "category": c}
                 for qid, c, q, _, _ in mme_rows()])
    for i, (category, image, qa) in enumerate(MME):
        save_photo(bench / category / image, i)
        txt = bench / category / _mme_txt(image)
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"{stem}{YES_NO}\t{gt}\n" for stem, gt in qa), encoding="utf-8")
    return data


def make_mme_parquet(root) -> Path:
    """`lmms-lab/MME` split `test` (one shard)."""
    data = Path(root) / "MME"
    write_parquet(data / "data" / "test-00000-of-00001.parquet",
                  [{"question_id": qid, "image": image_cell(i, qid), "question": q, "answer": gt, "category": c}
                   for qid, c, q, gt, i in mme_rows()])
    return data


# ---------------------------------------------------------------------------------------------- ScienceQA
# pid -> (question, choices, answer index, hint, photo or None); test problems in pid order, "1" is train.
SQA = {
    "4": ("Which word rhymes with cat?", ["hat", "dog"], 0, "", None),
    "5": ("What is the woman holding?", ["a helmet", "a flag", "a cup"], 0, "", 0),
    "11": ("Which animal is shown?", ["dog", "cat"], 1, "Look at the picture.", 1),
    "15": ("Which animal is a mammal?", ["shark", "whale", "trout"], 1, "Mammals feed their young milk.", None),
    "23": ("What is in the cup?", ["tea", "coffee", "milk", "juice"], 1, "", 2),
}
SQA_TRAIN = {"1": ("Which word rhymes with dog?", ["log", "cat"], 0, "", None)}


def sqa_text(pid: str) -> str:
    """The human turn of llava_test_CQM-A.json (without the image token)."""
    question, choices, _, hint, _ = SQA[pid]
    context = f"Context: {hint}\n" if hint else ""
    return context + question + "\n" + "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))


def _sqa_problem(p, split: str) -> dict:
    question, choices, answer, hint, image = p
    return {"question": question, "choices": choices, "answer": answer, "hint": hint,
            "image": "image.png" if image is not None else None, "task": "closed choice", "grade": "grade2",
            "subject": "natural science", "topic": "biology", "category": "Classification", "skill": "",
            "lecture": "", "solution": "", "split": split}


def make_scienceqa(root) -> Path:
    data = Path(root) / "scienceqa"
    records = []
    for pid, (_, _, answer, _, image) in SQA.items():
        turn = ("<image>\n" if image is not None else "") + sqa_text(pid)
        record = {"id": pid, **({"image": f"{pid}/image.png"} if image is not None else {}),
                  "conversations": [{"from": "human", "value": turn}, {"from": "gpt", "value": "ABCDE"[answer]}]}
        records.append(record)
        if image is not None:
            save_photo(data / "images" / "test" / pid / "image.png", image)
    write_json(data / "llava_test_CQM-A.json", records, indent=2)
    write_json(data / "problems.json", {**{pid: _sqa_problem(p, "train") for pid, p in SQA_TRAIN.items()},
                                        **{pid: _sqa_problem(p, "test") for pid, p in SQA.items()}})
    write_json(data / "pid_splits.json", {"train": list(SQA_TRAIN), "val": [], "test": list(SQA),
                                          "minival": [], "minitest": []})
    return data


def make_scienceqa_parquet(root) -> Path:
    """`lmms-lab/ScienceQA` config ScienceQA-IMG split `test`: the image problems, no problem id."""
    data = Path(root) / "ScienceQA"
    rows = []
    for pid, p in SQA.items():
        if p[4] is not None:
            problem = _sqa_problem(p, "test")
            del problem["split"]
            rows.append({**problem, "image": image_cell(p[4], "image.png")})
    write_parquet(data / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows)
    return data
