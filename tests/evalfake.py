"""A small benchmark module honouring the harness contract (jaxvlm.evaluation.base), for runner and store
tests that must not depend on any one real benchmark: `make(root, n)` writes a LLaVA-style folder
(questions.jsonl + images/, real skimage photos, repeated question ids, one text-only line)."""

from __future__ import annotations

import json
from pathlib import Path

from jaxvlm.evaluation.base import DataError, Sample, ScoreResult, check_media, read_jsonl, require_fields

NAME = "fakeqa"
MAX_NEW_TOKENS = 4
QUESTIONS = "questions.jsonl"


def make(root, n: int = 7, text_only: int | None = 3) -> Path:
    from PIL import Image

    from experiments import assets

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = assets.PHOTOS[i % len(assets.PHOTOS)]
        image = f"{name}.png"
        if not (root / "images" / image).exists():
            Image.fromarray(assets.photo(name)).save(root / "images" / image)
        # question ids repeat (as TextVQA's image ids do); text lengths vary (one length bucket) so batches sort
        rec = {"question_id": f"img{i // 2}", "text": f"Is there a {name}?" + " Yes" * (i % 3)}
        if i != text_only:
            rec["image"] = image
        lines.append(rec)
    (root / QUESTIONS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def read(data_dir, *, benchmark=NAME, image_folder=None, variant="llava") -> list[Sample]:
    path = Path(data_dir) / QUESTIONS
    images = Path(image_folder) if image_folder else Path(data_dir) / "images"
    out = []
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        require_fields(rec, ("question_id", "text"), where)
        image = check_media(images / rec["image"], where) if "image" in rec else None
        out.append(Sample(line=len(out), question_id=rec["question_id"], prompt=rec["text"], image=image,
                          source=where))
    return out


def score(data_dir, answers, *, benchmark=NAME, out_dir=None, judge=None) -> ScoreResult:
    samples = read(data_dir)
    if len(answers) != len(samples):
        raise DataError(f"answers file has {len(answers)} lines but {len(samples)} questions")
    per = [float(bool(a["text"])) for a in answers]
    return ScoreResult({"nonempty": 100.0 * sum(per) / len(per)}, per)
