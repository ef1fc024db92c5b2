"""GQA, POPE, MME and ScienceQA-IMG: readers on the real layouts and scorers against scores worked out by hand
from the official rules (eval.py, eval_pope.py, convert_answer_to_mme.py + calculation.py, eval_science_qa.py),
per question. The fixtures (tests/evalfix/classic.py) list each question's gold answer; the comments below
give the derivation of every expected number."""

from __future__ import annotations

import json
import shutil

import pytest
from evalfix import classic as fx
from hypothesis import given
from hypothesis import strategies as st

from jaxvlm import evaluation
from jaxvlm.evaluation import base, gqa, mme, pope, scienceqa, store
from jaxvlm.evaluation.base import DataError

THIRD, TWO_THIRDS = 100 / 3, 200 / 3


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Every fixture folder, built once (read-only tests)."""
    root = tmp_path_factory.mktemp("classic")
    return {name: getattr(fx, f"make_{name}")(root / name) for name in
            ("gqa", "gqa_parquet", "pope", "pope_parquet", "mme", "mme_parquet", "scienceqa", "scienceqa_parquet")}


def approx(expected):
    """`expected` with every number compared at pytest.approx's tolerance (nested dicts too)."""
    if isinstance(expected, dict):
        return {k: approx(v) for k, v in expected.items()}
    return expected if expected is None else pytest.approx(expected)


def answers_for(data, bench, texts, **kw):
    return fx.answers(evaluation.benchmark(bench).read(data, benchmark=bench, **kw), texts)


def test_registry_constants():
    assert [(m.NAME, m.MAX_NEW_TOKENS) for m in (gqa, pope, mme, scienceqa)] == [
        ("gqa", 128), ("pope", 128), ("mme", 128), ("scienceqa", 1024)]
    assert evaluation.benchmark("scienceqa") is scienceqa


# ---------------------------------------------------------------------------------------------------- GQA
# gold: yes(verify) helmet(query) cat(query) no(verify) coffee(query) right(choose) | yes(verify, unbalanced)
GQA_TEXTS = ["yes,", "Helmet.", "The cat", "No..", "Coffee.", "to the right", "no"]
# predictions: "yes," wrong (comma kept) | "helmet" right | "the cat" wrong | "no" right (every trailing dot
# goes) | "coffee" right | "to the right" wrong | unbalanced: not scored. Binary = verify/choose lines 0, 3, 5:
# 1 of 3; Open = lines 1, 2, 4: 2 of 3; Accuracy 3 of 6.
GQA_PER_QUESTION = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, None]


def test_gqa_reader(layouts):
    samples = gqa.read(layouts["gqa"], benchmark="gqa")
    assert [s.question_id for s in samples] == [q[0] for q in fx.GQA]
    assert samples[3].prompt == "Is the cat black?\nAnswer the question using a single word or phrase."
    assert samples[3].image.endswith("gqa/data/images/n235859.jpg") and samples[3].source.endswith(".jsonl:4")


def test_gqa_official_score_per_question(layouts, tmp_path):
    result = gqa.score(layouts["gqa"], answers_for(layouts["gqa"], "gqa", GQA_TEXTS), benchmark="gqa",
                       out_dir=tmp_path)
    assert result.per_question == GQA_PER_QUESTION
    assert result.metrics == pytest.approx({"accuracy": 50.0, "binary": THIRD, "open": TWO_THIRDS})
    exported = json.loads((tmp_path / "testdev_balanced_predictions.json").read_text())
    assert result.artifacts["predictions"] == tmp_path / "testdev_balanced_predictions.json"
    assert exported == [{"questionId": q[0], "prediction": p} for q, p in zip(fx.GQA, [
        "yes,", "helmet", "the cat", "no", "coffee", "to the right", "no"])]


def test_gqa_repeated_id_keeps_last_line_and_unbalanced_needs_no_answer(layouts):
    records = answers_for(layouts["gqa"], "gqa", GQA_TEXTS)
    again = dict(records[0], text="Yes")          # eval.py's dict: the later line wins, now right
    result = gqa.score(layouts["gqa"], records[:6] + [again])  # the unbalanced question left out
    assert result.per_question == [None, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert result.metrics == pytest.approx({"accuracy": TWO_THIRDS, "binary": TWO_THIRDS, "open": TWO_THIRDS})


def test_gqa_every_balanced_question_needs_a_prediction(layouts, tmp_path):
    records = answers_for(layouts["gqa"], "gqa", GQA_TEXTS)
    with pytest.raises(DataError, match="2062325"):
        gqa.score(layouts["gqa"], records[:3] + records[4:], out_dir=tmp_path)
    # the converter's file is written first (as convert_gqa_for_eval.py runs before eval.py fails)
    assert len(json.loads((tmp_path / "testdev_balanced_predictions.json").read_text())) == 6
    with pytest.raises(DataError, match="201307251"):  # eval.py's ids are strings: an int id matches nothing
        gqa.score(layouts["gqa"], [dict(records[0], question_id=201307251)] + records[1:])


def test_gqa_parquet(layouts):
    samples = gqa.read(layouts["gqa_parquet"], benchmark="gqa")
    assert [s.question_id for s in samples] == [q[0] for q in fx.GQA[:6]]
    assert samples[0].prompt == "Is there a flag behind the woman?\nAnswer the question using a single word or phrase."
    assert samples[2].image[:2] == b"\xff\xd8" and samples[2].image == samples[3].image  # one image, two questions
    result = gqa.score(layouts["gqa_parquet"], fx.answers(samples, GQA_TEXTS[:6]))
    assert result.per_question == GQA_PER_QUESTION[:6]
    assert result.metrics == pytest.approx({"accuracy": 50.0, "binary": THIRD, "open": TWO_THIRDS})


def test_gqa_reader_errors(tmp_path):
    data = fx.make_gqa(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.move(data / "data" / "images", moved)
    assert len(gqa.read(data, benchmark="gqa", image_folder=moved)) == 7
    (moved / "n235859.jpg").unlink()
    with pytest.raises(DataError, match=r"llava_gqa_testdev_balanced\.jsonl:3: .*n235859\.jpg"):
        gqa.read(data, benchmark="gqa", image_folder=moved)
    (data / "data" / "testdev_balanced_questions.json").unlink()
    with pytest.raises(DataError, match="testdev_balanced_questions.json"):
        gqa.score(data, [])


# --------------------------------------------------------------------------------------------------- POPE
# labels: adversarial yes no | random yes no | popular yes no (file order adversarial, random, popular)
POPE_QUIRKS = ["Yes", "NO", "yes, no", "There is no giraffe.", "Yes, there is a cat.", "Not sure"]
# "NO" -> yes (only No/not/no count), "yes, no" -> "yes no" -> no, "There is no giraffe" -> no, "Not sure" -> yes.
# adversarial TP FP: acc 1/2, precision 1/2, recall 1, F1 2/3, yes 1 | random FN TN: acc 1/2, no "yes" so
# precision divides by zero (None), recall 0, F1 None, yes 0 | popular TP FP as adversarial. Mean F1: None.
POPE_PLAIN = ["Yes", "No.", "Yes.", "Yes", "I don't see one", "nope"]
# adversarial TP TN: all 1, yes 1/2 | random TP FP: acc 1/2, P 1/2, R 1, F1 2/3, yes 1 | popular: "I don't see
# one" and "nope" are yes -> TP FP as random. Mean F1 (1 + 2/3 + 2/3) / 3 = 7/9.
POPE_PLAIN_METRICS = {
    "adversarial": {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5},
    "popular": {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0},
    "random": {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0},
    "f1_mean": 7 / 9}


def test_pope_reader(layouts):
    samples = pope.read(layouts["pope"], benchmark="pope")
    assert [s.question_id for s in samples] == [r[0] for r in fx.POPE]
    assert samples[1].prompt == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    assert samples[1].image.endswith("pope/val2014/COCO_val2014_000000210789.jpg")


def test_pope_quirks_per_question(layouts):
    result = pope.score(layouts["pope"], answers_for(layouts["pope"], "pope", POPE_QUIRKS))
    assert result.per_question == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    half = {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "yes_ratio": 1.0}
    assert result.metrics == {"adversarial": half, "popular": half, "f1_mean": None, "random": {
        "accuracy": 0.5, "precision": None, "recall": 0.0, "f1": None, "yes_ratio": 0.0}}


def test_pope_plain_and_mean_f1(layouts):
    result = pope.score(layouts["pope"], answers_for(layouts["pope"], "pope", POPE_PLAIN))
    assert result.per_question == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.metrics == approx(POPE_PLAIN_METRICS)


def test_pope_zips_labels_by_file_order(tmp_path):
    data = fx.make_pope(tmp_path)
    labels = data / "coco" / "coco_pope_adversarial.json"
    labels.write_text("".join(reversed(labels.read_text().splitlines(keepends=True))))
    result = pope.score(data, answers_for(data, "pope", POPE_PLAIN))
    # adversarial predictions yes, no now meet labels no, yes: FP FN -> acc 0, P 0, R 0, F1 0/0 -> None
    assert result.per_question == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert result.metrics["adversarial"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": None,
                                             "yes_ratio": 0.5}
    assert result.metrics["f1_mean"] is None


@pytest.mark.parametrize("text, label", [
    ("No", "no"), ("no", "no"), ("not", "no"), ("It is not.", "no"), ("Nope, no", "no"), ("yes,no", "yes"),
    ("NO", "yes"), ("Not sure", "yes"), ("None", "yes"), ("", "yes"), ("Yes. No.", "yes"), ("no\n", "yes")])
def test_pope_yes_no_mapping(text, label):
    assert pope.yes_no(text) == label


@given(st.text(), st.text())
def test_pope_reads_only_the_first_sentence_without_commas(head, tail):
    assert pope.yes_no(head + "." + tail) == pope.yes_no(head.split(".")[0]) == pope.yes_no(head.replace(",", ""))


def test_pope_answers_must_follow_the_question_file(tmp_path):
    data = fx.make_pope(tmp_path)
    records = answers_for(data, "pope", POPE_PLAIN)
    with pytest.raises(DataError, match="answers line 1: question_id 2"):
        pope.score(data, [records[1], records[0]] + records[2:])
    with pytest.raises(DataError, match="5 lines .* 6 questions"):
        pope.score(data, records[:5])
    with open(data / "coco" / "coco_pope_random.json", "a") as f:
        f.write(json.dumps({"question_id": 3, "image": "x.jpg", "text": "Is there a car?", "label": "no"}) + "\n")
    with pytest.raises(DataError, match="'random': 3 labels but 2 questions"):
        pope.score(data, records)


def test_pope_reader_errors(tmp_path):
    data = fx.make_pope(tmp_path)
    question_file = data / "llava_pope_test.jsonl"
    lines = question_file.read_text().splitlines(keepends=True)
    question_file.write_text("".join(lines[:2] + ['{"question_id": 10000001, "image": \n'] + lines[3:]))
    with pytest.raises(DataError, match=r"llava_pope_test\.jsonl:3: invalid JSON"):
        pope.read(data, benchmark="pope")
    question_file.write_text("".join(lines))
    (data / "val2014" / fx.POPE_IMAGES[2]).unlink()
    with pytest.raises(DataError, match=r"llava_pope_test\.jsonl:3: media file .*000000429109\.jpg"):
        pope.read(data, benchmark="pope")


def test_pope_parquet(layouts):
    samples = pope.read(layouts["pope_parquet"], benchmark="pope")
    assert [s.question_id for s in samples] == [str(r[0]) for r in fx.POPE]
    assert samples[4].prompt == "Is there a cat in the image?\nAnswer the question using a single word or phrase."
    result = pope.score(layouts["pope_parquet"], fx.answers(samples, POPE_PLAIN))
    assert result.per_question == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.metrics == approx(POPE_PLAIN_METRICS)


# ---------------------------------------------------------------------------------------------------- MME
def mme_gold() -> list[str]:
    return [gt for _, _, _, gt, _ in fx.mme_rows()]


# lines (fixture order): existence A yes/no, B yes/no(two spaces), count, position, color, posters, celebrity,
# scene, landmark, artwork, OCR, commonsense, numerical, translation, code (gold yes then no each).
MME_QUIRKS = (["Yes", "Not sure", "Yeah", "There is no cat.",   # no (prefix "not "), other, other ("ther")
               "The answer is yes", "No",                      # other ("the "), no
               "yes", "None",                                  # "none" starts with "no" -> no
               "Y", "Nope"]                                    # "y" other, "nope" -> no
              + ["Yes", "No"] * 6                              # posters ... OCR right
              + ["no", "no", "YES", "no", "yes", "yes", "Yes, it is.", "No, it is not."])
# existence: 2 of 4 right, pair A right -> acc 50 + acc+ 50 = 100; count 50 + 0; position 200; color 50 + 0;
# 6 x 200 -> perception 100 + 50 + 200 + 50 + 1200 = 1600. commonsense (wrong, right) 50; numerical 200;
# translation (right, wrong) 50; code 200 -> cognition 500.
MME_QUIRKS_RIGHT = ([1, 1, 0, 0, 0, 1, 1, 1, 0, 1] + [1] * 12 + [0, 1, 1, 1, 1, 0, 1, 1])


def test_mme_reader_both_layouts(layouts):
    samples = mme.read(layouts["mme"], benchmark="mme")
    assert len(samples) == 30 and samples[0].question_id == samples[1].question_id == "existence/000000006040.jpg"
    assert samples[3].prompt == "Is there a cat in this image?\nAnswer the question using a single word or phrase."
    assert samples[18].image.endswith("MME_Benchmark_release_version/artwork/images/14777.jpg")


def test_mme_all_right_is_full_marks(layouts):
    result = mme.score(layouts["mme"], answers_for(layouts["mme"], "mme", mme_gold()))
    assert result.per_question == [1.0] * 30
    assert (result.metrics["perception"], result.metrics["cognition"]) == (2000.0, 800.0)
    assert set(result.metrics["subtasks"]) == set(mme.PERCEPTION + mme.COGNITION)


def test_mme_quirks_per_question_and_export(layouts, tmp_path):
    result = mme.score(layouts["mme"], answers_for(layouts["mme"], "mme", MME_QUIRKS), out_dir=tmp_path)
    assert result.per_question == [float(x) for x in MME_QUIRKS_RIGHT]
    assert (result.metrics["perception"], result.metrics["cognition"]) == pytest.approx((1600.0, 500.0))
    subtasks = result.metrics["subtasks"]
    assert subtasks["existence"] == pytest.approx({"acc": 50.0, "acc_plus": 50.0, "score": 100.0})
    assert subtasks["count"] == pytest.approx({"acc": 50.0, "acc_plus": 0.0, "score": 50.0})
    assert subtasks["position"]["score"] == subtasks["code_reasoning"]["score"] == 200.0
    assert subtasks["text_translation"] == pytest.approx({"acc": 50.0, "acc_plus": 0.0, "score": 50.0})
    folder = tmp_path / "eval_tool" / "answers" / "tiny-llava"
    assert result.artifacts["eval_tool_answers"] == folder
    assert sorted(p.stem for p in folder.glob("*.txt")) == sorted(mme.PERCEPTION + mme.COGNITION)
    # the converter's lines; the two-space question found through its fallback
    assert (folder / "existence.txt").read_text().splitlines()[2:] == [
        "000000018150.txt\tIs there a person in this image? Please answer yes or no.\tYes\tYeah",
        "000000018150.txt\tIs there a cat in this image?  Please answer yes or no.\tNo\tThere is no cat."]
    assert (folder / "artwork.txt").read_text() == (
        "14777.txt\tDoes this artwork exist in the form of photography? Please answer yes or no.\tYes\tYes\n"
        "14777.txt\tDoes this artwork exist in the form of sculpture? Please answer yes or no.\tNo\tNo\n")


def test_mme_pairs_consecutive_lines(layouts):
    texts = ["Yes", "No", "No", "Yes"] + mme_gold()[4:]   # image A right, image B wrong
    records = answers_for(layouts["mme"], "mme", texts)
    in_order = mme.score(layouts["mme"], records)
    assert in_order.metrics["subtasks"]["existence"] == pytest.approx({"acc": 50.0, "acc_plus": 50.0,
                                                                       "score": 100.0})
    assert in_order.metrics["perception"] == pytest.approx(1900.0)
    # A-yes, B-yes, A-no, B-no: calculation.py pairs lines 1-2 and 3-4 whatever their images -> no pair right
    mixed = mme.score(layouts["mme"], [records[0], records[2], records[1], records[3]] + records[4:])
    assert mixed.per_question[:4] == [1.0, 0.0, 1.0, 0.0]
    assert mixed.metrics["subtasks"]["existence"] == pytest.approx({"acc": 50.0, "acc_plus": 0.0, "score": 50.0})
    assert mixed.metrics["perception"] == pytest.approx(1850.0)


@pytest.mark.parametrize("answer, label", [
    ("yes", "yes"), ("no", "no"), ("yes\n", "yes"), ("not sure", "no"), ("none", "no"), ("nope", "no"),
    ("y", "other"), ("yeah", "other"), ("the answer is yes", "other"), ("there is no", "other"), ("", "other"),
    ("xyes", "yes"), ("no yes", "no"), ("noyes", "no")])
def test_mme_answer_parse(answer, label):
    assert mme.yes_no(answer) == label


@given(st.text(min_size=4), st.text())
def test_mme_parse_reads_only_four_characters(answer, tail):
    assert mme.yes_no(answer) == mme.yes_no(answer[:4] + tail)


def test_mme_errors(layouts, tmp_path):
    records = answers_for(layouts["mme"], "mme", mme_gold())
    with pytest.raises(DataError, match="code_reasoning"):
        mme.score(layouts["mme"], records[:-2], out_dir=tmp_path)
    assert len(list((tmp_path / "eval_tool" / "answers" / "tiny-llava").glob("*.txt"))) == 13  # converter ran
    with pytest.raises(DataError, match="count: 1 answers, an odd number"):
        mme.score(layouts["mme"], records[:4] + records[5:])
    with pytest.raises(DataError, match="answers line 2: .*tab or line break"):
        mme.score(layouts["mme"], [records[0], dict(records[1], text="No\nIt is not.")] + records[2:])
    with pytest.raises(DataError, match="answers line 1: no MME ground truth"):
        mme.score(layouts["mme"], [dict(records[0], prompt="Is this a dog?")] + records[1:])


def test_mme_reader_and_ground_truth_errors(tmp_path):
    data = fx.make_mme(tmp_path)
    (data / "MME_Benchmark_release_version" / "artwork" / "images" / "14777.jpg").unlink()
    with pytest.raises(DataError, match=r"llava_mme\.jsonl:19: media file .*artwork/images/14777\.jpg"):
        mme.read(data, benchmark="mme")
    txt = data / "MME_Benchmark_release_version" / "count" / "000000040205.txt"
    txt.write_text(txt.read_text() + "Are there three persons in the image? Yes\n")  # no tab
    with pytest.raises(DataError, match=r"000000040205\.txt:3: expected `question<TAB>answer`"):
        mme.score(data, [])


def test_mme_parquet(layouts):
    samples = mme.read(layouts["mme_parquet"], benchmark="mme")
    assert samples[3].prompt == "Is there a cat in this image?\nAnswer the question using a single word or phrase."
    lmms = mme.read(layouts["mme_parquet"], benchmark="mme", variant="lmms")
    assert lmms[3].prompt == "Is there a cat in this image? \nAnswer the question using a single word or phrase."
    assert [s.prompt for s in lmms[:3]] == [s.prompt for s in samples[:3]]
    result = mme.score(layouts["mme_parquet"], fx.answers(samples, MME_QUIRKS))
    assert result.per_question == [float(x) for x in MME_QUIRKS_RIGHT]
    assert (result.metrics["perception"], result.metrics["cognition"]) == pytest.approx((1600.0, 500.0))


# ---------------------------------------------------------------------------------------------- ScienceQA
# test problems in order: 4 (text, gold A of 2), 5 (image, A of 3), 11 (image, B of 2), 15 (text, B of 3),
# 23 (image, B of 4); IMG-Accuracy over 5, 11, 23.
SQA_CASES = [
    # "A" right; "A." / "b" / "(B)" do not parse; "B. coffee" right -> 2/5, IMG 1/3
    (["A", "A.", "b", "(B)", "B. coffee"], [1, 0, 0, 0, 1], 40.0, THIRD),
    # one "The answer is A." / "The answer is A," match right; "C" is beyond 11's two choices; "B " fails
    (["The answer is A.", "The answer is A, a helmet", "C", "B. whale", "B "], [1, 1, 0, 1, 0], 60.0, THIRD),
    # no character after the letter; "A "; two matches; "E" beyond 3 choices; "The answer is B.." right
    (["The answer is A", "A ", "The answer is B. The answer is B.", "E", "The answer is B.."], [0, 0, 0, 0, 1],
     20.0, THIRD),
]


def test_scienceqa_reader(layouts):
    samples = scienceqa.read(layouts["scienceqa"], benchmark="scienceqa")
    assert [s.question_id for s in samples] == ["4", "5", "11", "15", "23"]
    eleven = samples[2]
    assert eleven.prompt == ("Context: Look at the picture.\nWhich animal is shown?\nA. dog\nB. cat\n"
                             "Answer with the option's letter from the given choices directly.")
    assert eleven.record_prompt == "<image>\n" + eleven.prompt and eleven.extra == {}
    assert eleven.image.endswith("scienceqa/images/test/11/image.png")
    assert samples[0].image is None and samples[0].record_prompt == samples[0].prompt
    lmms = scienceqa.read(layouts["scienceqa"], benchmark="scienceqa", variant="lmms")
    assert [s.prompt for s in lmms] == [s.prompt for s in samples]  # the fixture's file is built the same way


def test_scienceqa_answers_lines_carry_the_image_token_and_resume(layouts, tmp_path):
    samples = scienceqa.read(layouts["scienceqa"], benchmark="scienceqa")
    lines = [base.answer_record(s, t, "m", f"a{s.line}") for s, t in zip(samples, SQA_CASES[0][0])]
    assert [r["prompt"].startswith("<image>\n") for r in lines] == [False, True, True, False, True]
    assert list(lines[1]) == list(base.ANSWER_FIELDS)  # LLaVA's fields, in LLaVA's order
    assert scienceqa.score(layouts["scienceqa"], lines).metrics == approx({"accuracy": 40.0, "img_accuracy": THIRD})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llava"}')
    identity = store.run_identity(model=str(tmp_path / "model"), dtype="float32", schedule=None, variant="llava",
                                  max_new_tokens=scienceqa.MAX_NEW_TOKENS, benchmark="scienceqa",
                                  data=str(layouts["scienceqa"]))
    path = tmp_path / "answers.jsonl"
    with store.AnswerStore(path, identity, samples) as answers:
        answers.append(lines[:3])
    with store.AnswerStore(path, identity, samples) as answers:  # resumes after the image questions' lines
        assert answers.done == 3


@pytest.mark.parametrize("texts, right, accuracy, img_accuracy", SQA_CASES)
def test_scienceqa_official_score_per_question(layouts, texts, right, accuracy, img_accuracy):
    result = scienceqa.score(layouts["scienceqa"], answers_for(layouts["scienceqa"], "scienceqa", texts))
    assert result.per_question == [float(x) for x in right]
    assert result.metrics == pytest.approx({"accuracy": accuracy, "img_accuracy": img_accuracy})


def test_scienceqa_missing_and_foreign_lines(layouts):
    records = answers_for(layouts["scienceqa"], "scienceqa", SQA_CASES[1][0])
    train = dict(records[0], question_id="1", text="A")  # not a test problem: not scored
    # problem 5 unanswered: FAILED and not multimodal -> IMG over 11, 23 only (both wrong); accuracy 4, 15 of 5
    result = scienceqa.score(layouts["scienceqa"], [records[0], train] + records[2:])
    assert result.per_question == [1.0, None, 0.0, 1.0, 0.0]
    assert result.metrics == pytest.approx({"accuracy": 40.0, "img_accuracy": 0.0})
    text_only = [dict(r, prompt=r["prompt"].replace("<image>\n", "")) for r in records]
    assert scienceqa.score(layouts["scienceqa"], text_only).metrics["img_accuracy"] is None


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("B. text", "B"), ("The answer is B.", "B"), ("The answer is F.", "F"), ("B.", "FAILED"),
    ("b", "FAILED"), ("(B)", "FAILED"), ("B ", "FAILED"), ("The answer is B", "FAILED"), ("F", "FAILED"),
    ("The answer is B. The answer is C.", "FAILED")])
def test_scienceqa_parse(text, letter):
    assert scienceqa.parse_letter(text) == letter


@given(st.sampled_from("ABCDE"), st.text())
def test_scienceqa_letter_dot_space_always_parses(letter, rest):
    assert scienceqa.parse_letter(f"{letter}. {rest}") == letter


def test_scienceqa_parquet(layouts):
    samples = scienceqa.read(layouts["scienceqa_parquet"], benchmark="scienceqa")
    assert [s.question_id for s in samples] == [0, 1, 2]
    assert samples[1].prompt == scienceqa.read(layouts["scienceqa"], benchmark="scienceqa")[2].prompt
    assert samples[1].image[:8] == b"\x89PNG\r\n\x1a\n"
    # problems 5, 11, 23: "A" right, "b" wrong, "The answer is B." right -> 2/3, all with an image
    result = scienceqa.score(layouts["scienceqa_parquet"], fx.answers(samples, ["A", "b", "The answer is B."]))
    assert result.per_question == [1.0, 0.0, 1.0]
    assert result.metrics == pytest.approx({"accuracy": TWO_THIRDS, "img_accuracy": TWO_THIRDS})


def test_scienceqa_reader_errors(tmp_path):
    data = fx.make_scienceqa(tmp_path)
    question_file = data / "llava_test_CQM-A.json"
    line = question_file.read_text().splitlines().index('    "id": "23",')  # its "{" is the line above
    (data / "images" / "test" / "23" / "image.png").unlink()
    with pytest.raises(DataError, match=rf"llava_test_CQM-A\.json:{line}: media file .*23/image\.png"):
        scienceqa.read(data, benchmark="scienceqa")
    question_file.write_text('[\n  {"id": "4",\n')
    with pytest.raises(DataError, match=r"llava_test_CQM-A\.json:3: invalid JSON"):
        scienceqa.read(data, benchmark="scienceqa")


def test_json_array_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('\n\n[{"id": "1"},\n {"id": "2",\n  "x": [1,\n 2]}, {"id": "3"}]')
    assert scienceqa.json_array(path) == [(3, {"id": "1"}), (4, {"id": "2", "x": [1, 2]}), (6, {"id": "3"})]
    path.write_text('[{"id": "1"}, 5]')
    with pytest.raises(DataError, match=r"a\.json:1: expected a JSON object, got int"):
        scienceqa.json_array(path)
