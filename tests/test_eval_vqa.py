"""VQAv2, TextVQA and VizWiz: readers on the real layouts, and per-question official scores worked out by hand
from vqaEval.py / m4c_evaluator.py / eval_textvqa.py / lmms-eval's vizwiz port (the comments show the steps)."""

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from jaxvlm.evaluation import DataError, benchmark, textvqa, vizwiz, vqav2
from jaxvlm.evaluation.base import read_answers
from jaxvlm.evaluation.normalize import (ARTICLES, evalai_answer, soft_accuracy, vqa_accuracy, vqa_digit_article,
                                         vqa_normalize, vqa_punctuation)
from tests.evalfix import vqa as fix

SHORT = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


def gts(answers):
    return fix.vqa_answers(answers)


# ---- normalisation -------------------------------------------------------------------------------------------

# (text, vqaEval punctuation + digit/article, EvalAIAnswerProcessor)
NORMALISED = [
    ("5.", "5", "5"),                          # period regex: a '.' not followed by a digit goes
    ("3.5", "3.5", "3.5"),                     # ... one followed by a digit stays
    ("www.x.com", "wwwxcom", "wwwxcom"),
    ("man's", "man's", "man 's"),              # EvalAI splits 's off
    ("A", "", ""),                             # articles dropped, lower-cased first
    ("The Dog", "dog", "dog"),
    ("1,000-2,000", "10002000", "1000 2000"),  # digit,digit comma: every punctuation mark deleted (vqaEval);
    #                                            EvalAI deletes commas first, then '-' becomes a space
    ("Ten", "10", "10"),
    ("eleven", "eleven", "eleven"),            # number words stop at ten
    ("none", "0", "0"),
    ("dont", "don't", "don't"),
    ("Im", "im", "im"),                        # the key "Im" never matches a lower-cased word
    ("black/white", "black white", "black white"),    # '/' away from spaces -> space
    ("black / white", "black white", "black white"),  # '/' next to a space -> deleted
    ("yes!", "yes", "yes"),
    ("what?", "what", "what"),
    ("hello, world", "hello world", "hello world"),
    ("$5 & 50%", "$5 & 50%", "$5 & 50%"),     # $ & % : ' are not in the list
    ("a:b", "a:b", "a:b"),
    ("it's", "it's", "it 's"),
    ("\tYes\n", "yes", "yes"),
    ("two cats", "2 cats", "2 cats"),
    ("(red)", "red", "red"),                   # '(' and ')' away from spaces -> spaces, then split
]


@pytest.mark.parametrize("text,vqa,evalai", NORMALISED)
def test_normalisations(text, vqa, evalai):
    assert vqa_normalize(text) == vqa
    assert evalai_answer(text) == evalai


def test_period_strip_stops_after_32():
    # vqaEval passes re.UNICODE (32) as the count of periodStrip.sub
    assert vqa_punctuation("." * 40) == "." * 8
    assert vqa_punctuation("x." * 33) == "x" * 32 + "x."


def test_digits_are_ascii_for_vqaeval_only():
    # vqaEval.py runs under Python 2 (its \d is [0-9]); EvalAI's processor is Python 3 (any Unicode digit)
    assert vqa_punctuation(".\uff15") == "\uff15"
    assert evalai_answer(".\uff15") == ".\uff15"
    # no [0-9],[0-9]: "," and "-" become spaces; with one, both are deleted
    assert vqa_punctuation("1,\uff15-2") == "1 \uff15 2" and vqa_punctuation("1,5-2") == "152"


def test_punctuation_tests_original_text():
    # the space test looks at the original text, mark by mark. "a -b/c": '-' has a space before it -> deleted;
    # '/' has no space next to it -> space
    assert vqa_punctuation("a -b/c") == "a b c"
    assert vqa_digit_article("the  An a") == ""


# (GT answers, prediction, vqaEval accuracy): leave-one-out over 10 answers -> 0.3 / 0.6 / 0.9 / 1 for 1/2/3/4+
VQA_ACCURACY = [
    (["yes"] * 10, "yes", 1.0),
    (["yes"] * 10, "Yes", 0.0),               # unanimous GT: nothing normalised, "Yes" != "yes"
    (["yes"] * 10, "yes ", 1.0),              # ... but stripped
    (["yes"] * 9 + ["no"], "Yes", 1.0),       # disagreeing GT: both sides normalised
    (["red"] + ["blue"] * 9, "red", 0.3),
    (["red"] * 2 + ["blue"] * 8, "red", 0.6),
    (["red"] * 3 + ["blue"] * 7, "red", 0.9),
    (["red"] * 4 + ["blue"] * 6, "red", 1.0),
    (["red"] * 4 + ["blue"] * 6, "green", 0.0),
    (["two"] * 10, "2", 0.0),                 # unanimous number word stays a word
    (["a"] * 3 + ["b"] * 7, "", 0.9),         # GT "a" normalises to ""
]


@pytest.mark.parametrize("answers,prediction,expected", VQA_ACCURACY)
def test_vqa_accuracy(answers, prediction, expected):
    assert vqa_accuracy(prediction, gts(answers)) == pytest.approx(expected)


def test_vqa_accuracy_compares_whole_answer_dicts():
    # vqaEval drops every GT dict *equal* to the left-out one: identical dicts without answer_id leave no
    # "other" answers to match
    assert vqa_accuracy("yes", [{"answer": "yes"}] * 10) == 0.0
    # ... except when the left-out dict is the "no": then the nine "yes" dicts all count (1 of 10 subsets)
    assert vqa_accuracy("yes", [{"answer": "yes"}] * 9 + [{"answer": "no"}]) == pytest.approx(0.1)


# (GT answers, prediction, m4c soft accuracy): EvalAI on both sides
SOFT_ACCURACY = [
    (["yes"] * 10, "Yes", 1.0),
    (["man's"] * 10, "man's", 1.0),
    (["5"] + ["five"] * 2 + ["15"] * 7, "5.", 0.9),
    (["coca cola", "coca-cola"] + ["coke"] * 8, "Coca-Cola", 0.6),
    (["mocha"] * 4 + ["coffee"] * 6, "it's mocha", 0.0),
    ([], "anything", 0.0),                     # lmms-eval's VizWiz port: no answers -> 0
]


@pytest.mark.parametrize("answers,prediction,expected", SOFT_ACCURACY)
def test_soft_accuracy(answers, prediction, expected):
    assert soft_accuracy(prediction, answers) == pytest.approx(expected)


text = st.text(alphabet=st.sampled_from("aAbZ 09.,'?!-/\"()\t\n:stheon"), max_size=30)


@given(text)
def test_evalai_output_shape(s):
    out = evalai_answer(s)
    assert out == out.strip() and "  " not in out and "," not in out and "?" not in out
    assert out == out.lower()  # the contraction keys with capitals ("Im") never see a capital
    assert not set(out.split()) & set(ARTICLES)


@given(st.lists(st.sampled_from(["red", "Red", "blue", "a", "the", "2", "two"]), min_size=10, max_size=10),
       st.sampled_from(["red", "Red.", "blue", "", "2", "two"]), st.permutations(range(10)))
def test_accuracies_ignore_answer_order(answers, prediction, order):
    shuffled = [answers[i] for i in order]
    # the dicts keep their answer_id, so reordering them is reordering the annotators
    assert vqa_accuracy(prediction, [gts(answers)[i] for i in order]) == pytest.approx(
        vqa_accuracy(prediction, gts(answers)))
    assert soft_accuracy(prediction, shuffled) == pytest.approx(soft_accuracy(prediction, answers))
    assert vqa_accuracy(prediction, gts(answers)) in [pytest.approx(v) for v in (0, 0.3, 0.6, 0.9, 1)]


@given(st.lists(st.sampled_from(["red", "blue", "green"]), min_size=10, max_size=10))
def test_soft_accuracy_rewards_agreement(answers):
    # a prediction equal to a more frequent answer never scores lower
    by_count = sorted(set(answers), key=answers.count)
    scores = [soft_accuracy(a, answers) for a in by_count]
    assert all(a <= b + 1e-12 for a, b in zip(scores, scores[1:])) and scores[-1] >= 0.3  # 1e-12: float sums


# ---- VQAv2 ---------------------------------------------------------------------------------------------------

def test_vqav2_registered():
    assert benchmark("vqav2") is vqav2 and vqav2.MAX_NEW_TOKENS == 128


def test_vqav2_read_llava_layout(tmp_path):
    data = fix.make_vqav2(tmp_path)
    samples = vqav2.read(data, benchmark="vqav2")
    assert [s.question_id for s in samples] == [262144000, 262144001, 262145000, 262146000]
    assert samples[1].prompt == "What is the person wearing?" + SHORT
    assert samples[1].image == str(data / "test2015" / "COCO_test2015_000000262144.jpg")
    assert samples[2].source.endswith("llava_vqav2_mscoco_test-dev2015.jsonl:3") and samples[2].line == 2
    assert [s.prompt for s in vqav2.read(data, benchmark="vqav2", variant="lmms")] == [s.prompt for s in samples]
    moved = tmp_path / "elsewhere"
    (data / "test2015").rename(moved)
    assert vqav2.read(data, benchmark="vqav2", image_folder=moved)[0].image == str(
        moved / "COCO_test2015_000000262144.jpg")


def test_vqav2_reader_errors(tmp_path):
    data = fix.make_vqav2(tmp_path)
    (data / "test2015" / "COCO_test2015_000000262145.jpg").unlink()
    with pytest.raises(DataError, match=r"test-dev2015\.jsonl:3: media file .*262145\.jpg does not exist"):
        vqav2.read(data, benchmark="vqav2")
    qfile = data / "llava_vqav2_mscoco_test-dev2015.jsonl"
    qfile.write_text('{"question_id": 1, "image": "x.jpg"}\n')
    with pytest.raises(DataError, match=r"test-dev2015\.jsonl:1: record lacks field\(s\) \['text'\]"):
        vqav2.read(data, benchmark="vqav2")
    qfile.write_text('\n{"question_id": 1,\n')
    with pytest.raises(DataError, match=r"test-dev2015\.jsonl:2: invalid JSON"):
        vqav2.read(data, benchmark="vqav2")
    with pytest.raises(DataError, match="variant"):
        vqav2.read(data, benchmark="vqav2", variant="qwen")


def test_vqav2_other_llava_question_file(tmp_path):
    data = fix.make_vqav2(tmp_path)
    (data / "llava_vqav2_mscoco_test-dev2015.jsonl").rename(data / "llava_vqav2_mscoco_val2014.jsonl")
    assert len(vqav2.read(data, benchmark="vqav2")) == 4  # the full test2015 file is never the question file
    (data / "llava_vqav2_mscoco_val2014_b.jsonl").write_text("")
    with pytest.raises(DataError, match="several other question files"):
        vqav2.read(data, benchmark="vqav2")


SMALL_VQAV2_TEXTS = ["Yes", "suit", "One", "Latte"]
# yes x10 unanimous: "Yes" -> upload "yes" -> 1 | spacesuit/space suit: "suit" -> 0
# 1 x9 + one (disagree, "one" -> "1"): "One" -> "1" matches all 10 -> 1 | coffee x8 + latte x2: "latte" -> 0.6
SMALL_VQAV2_SCORES = [1.0, 0.0, 1.0, 0.6]


def small_vqav2_answers(path, samples):
    return read_answers(fix.answers_file(path, [(s.question_id, s.prompt, t)
                                                for s, t in zip(samples, SMALL_VQAV2_TEXTS)]))


def test_vqav2_small_fixture_score_and_upload(tmp_path):
    data = fix.make_vqav2(tmp_path)
    answers = small_vqav2_answers(tmp_path / "answers.jsonl", vqav2.read(data, benchmark="vqav2"))
    result = vqav2.score(data, answers, benchmark="vqav2", out_dir=tmp_path / "out")
    assert result.per_question == pytest.approx(SMALL_VQAV2_SCORES)
    assert result.metrics == {"accuracy": 65.0, "per_answer_type": {"yes/no": 100.0, "other": 30.0,
                                                                   "number": 100.0}}
    # over all test2015 questions, "" for the test-std ones not run
    assert json.loads(result.artifacts["upload"].read_text()) == [
        {"question_id": 262144000, "answer": "yes"}, {"question_id": 262144001, "answer": "suit"},
        {"question_id": 262145000, "answer": "1"}, {"question_id": 262146000, "answer": "latte"},
        {"question_id": 262147000, "answer": ""}, {"question_id": 262147001, "answer": ""}]
    assert vqav2.score(data, answers, benchmark="vqav2").artifacts == {}


def test_vqav2_without_annotations_is_upload_only(tmp_path):
    data = fix.make_vqav2(tmp_path)
    (data / "v2_mscoco_val2014_annotations.json").unlink()
    answers = small_vqav2_answers(tmp_path / "answers.jsonl", vqav2.read(data, benchmark="vqav2"))
    result = vqav2.score(data, answers, benchmark="vqav2", out_dir=tmp_path / "out")
    assert result.metrics == {} and result.per_question == [None] * 4 and "upload" in result.artifacts


def test_vqav2_quirks_per_question(tmp_path):
    data, answers_path = fix.make_vqav2_quirks(tmp_path)
    result = vqav2.score(data, read_answers(answers_path), benchmark="vqav2")
    assert result.per_question == pytest.approx([
        1.0,   # 1001 yes x10, "Yes" -> upload "yes": LLaVA's EvalAI pass saves the unanimous case
        1.0,   # 1002 no x10, "No." -> "no"
        0.0,   # 1003 man's x9 + mans: upload "man 's" != "man's"
        0.9,   # 1004 5 x3 + 4 x7: "5." -> "5", 3 matches
        0.6,   # 1005 3.5 x2 + 3 x8: "3.5" kept, 2 matches
        1.0,   # 1006 10 x5 + 11 x5: "Ten" -> "10", 5 matches
        0.0,   # 1007 11 x5 + 10 x5: "eleven" is no number word
        0.9,   # 1008 a x3 + b x7: GT "a" -> "", "The" -> "", 3 matches
        0.0,   # 1009 1,000-2,000 x4 -> "10002000"; upload "1000 2000"
        0.3,   # 1010 red + blue x9: "Red" -> "red", 1 match
        0.9,   # 1011 "black white" x3: "black/white" -> "black white"
        0.0,   # 1012 two x10 unanimous: "2" compared raw with "two"
        0.6,   # 1013 yes x8 + no x2: "No" -> "no", 2 matches
        1.0,   # 1014 2,000 x2 + 2000 x2: both -> "2000", 4 matches
        None,  # 9999 not annotated (1015 is annotated but not answered: left out, as the file is partial)
    ])
    # yes/no (1 + 1 + .6) / 3; number (.9 + .6 + 1 + 0 + 0 + 0 + 1) / 7; other (0 + .9 + .3 + .9) / 4; all 8.2 / 14
    assert result.metrics == {"accuracy": 58.57,
                              "per_answer_type": {"yes/no": 86.67, "other": 52.5, "number": 50.0}}


def test_vqav2_no_annotated_answer_is_an_error(tmp_path):
    data = fix.make_vqav2(tmp_path)
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(5, "q?" + SHORT, "yes")]))
    with pytest.raises(DataError, match="none of the 1 answers lines"):
        vqav2.score(data, answers, benchmark="vqav2")


def test_vqav2_parquet(tmp_path):
    data = fix.make_vqav2_parquet(tmp_path)
    samples = vqav2.read(data, benchmark="vqav2")
    assert [s.question_id for s in samples] == [262144000, 262144001, 262145000, 262146000]  # shard order
    assert samples[3].prompt == "What is in the cup?" + SHORT and samples[3].source.endswith("00002.parquet:2")
    assert Image.open(io.BytesIO(samples[0].image)).size == (256, 256)
    answers = small_vqav2_answers(tmp_path / "answers.jsonl", samples)
    result = vqav2.score(data, answers, benchmark="vqav2", out_dir=tmp_path / "out")
    assert result.per_question == pytest.approx(SMALL_VQAV2_SCORES) and result.metrics["accuracy"] == 65.0
    assert result.artifacts == {}


def test_vqav2_parquet_testdev_upload(tmp_path):
    data = fix.make_vqav2_parquet(tmp_path, split="testdev")
    answers = small_vqav2_answers(tmp_path / "answers.jsonl", vqav2.read(data, benchmark="vqav2")[:3])
    result = vqav2.score(data, answers, benchmark="vqav2", out_dir=tmp_path / "out")
    assert result.metrics == {} and result.per_question == [None] * 3
    assert [a["answer"] for a in json.loads(result.artifacts["upload"].read_text())] == ["yes", "suit", "1", ""]


# ---- TextVQA -------------------------------------------------------------------------------------------------

def test_textvqa_read_llava_layout(tmp_path):
    data = fix.make_textvqa(tmp_path)
    samples = textvqa.read(data, benchmark="textvqa")
    # two questions of one image share the image id as question_id
    assert [s.question_id for s in samples][:2] == ["003a8ae2ef43b901"] * 2
    assert samples[0].prompt == ("what brand is the camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use"
                                 + SHORT)
    assert samples[2].prompt == "what number is on the jersey?\nReference OCR token: " + SHORT  # empty OCR list
    assert samples[2].image == str(data / "train_images" / "0a1b2c3d4e5f6071.jpg")
    lmms = textvqa.read(data, benchmark="textvqa", variant="lmms")
    assert [s.prompt for s in lmms][2:] == ["What number is on the jersey?" + SHORT,
                                            "What is the name of the cafe?" + SHORT]


SMALL_TEXTVQA_TEXTS = ["Dakota", "single use", "5", "Latte Art"]
# dakota x10 -> 1 | digital x7 + single-use x3 (-> "single use"): 0.9 | 5 + five x2 -> three "5": 0.9 | 1
SMALL_TEXTVQA_SCORES = [1.0, 0.9, 0.9, 1.0]


def test_textvqa_small_fixture(tmp_path):
    data = fix.make_textvqa(tmp_path)
    samples = textvqa.read(data, benchmark="textvqa")
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(s.question_id, s.prompt, t)
                                                                   for s, t in zip(samples, SMALL_TEXTVQA_TEXTS)]))
    result = textvqa.score(data, answers, benchmark="textvqa")
    assert result.per_question == pytest.approx(SMALL_TEXTVQA_SCORES)
    assert result.metrics["accuracy"] == pytest.approx(95.0)


def test_textvqa_quirks_per_question(tmp_path):
    data, answers_path = fix.make_textvqa_quirks(tmp_path)
    result = textvqa.score(data, read_answers(answers_path), benchmark="textvqa")
    assert result.per_question == pytest.approx([
        1.0,  # dakota x10: "Dakota" -> "dakota" (both sides normalised, unlike vqaEval's unanimous case)
        0.6,  # same image id, second question: digital x2 -> 2 matches
        0.9,  # empty OCR list: 5 + five x2 -> "5" x3; "5." -> "5"
        1.0,  # man's x10 -> "man 's" on both sides (2-line prompt)
        0.6,  # coca cola + coca-cola -> "coca cola" x2; "Coca-Cola" -> "coca cola"
        0.9,  # OCR line first: a x3 -> "", "the" -> ""
        1.0,  # 10 x10: "ten" -> "10"
        0.0,  # 11 x10: "eleven" stays (question matched case-insensitively)
        0.9,  # 3.5 x3: "3.5" kept
        0.0,  # paris x10: "London"
    ])
    # the mean over the answers lines only (the unanswered annotated question does not count)
    assert result.metrics["accuracy"] == pytest.approx(69.0)


def test_textvqa_prompt_question():
    assert textvqa.prompt_question("What Is It?\nReference OCR token: A, B\nAnswer it.") == "what is it?"
    assert textvqa.prompt_question("Reference OCR token: A\nWhat Is It?\nAnswer it.") == "what is it?"
    assert textvqa.prompt_question("What Is It?\nAnswer it.") == "what is it?"
    assert textvqa.prompt_question("OCR tokens: A B Question: What\nIs It? Short answer:") == "what\nis it?"
    for bad in ("one line", "a\nb\nc", "OCR tokens: no question"):
        with pytest.raises(DataError):
            textvqa.prompt_question(bad)


def test_textvqa_score_errors(tmp_path):
    data = fix.make_textvqa(tmp_path)
    unknown = read_answers(fix.answers_file(tmp_path / "a.jsonl", [
        ("003a8ae2ef43b901", "what brand is the camera?" + SHORT, "x"),
        ("003a8ae2ef43b901", "what colour is the sky?" + SHORT, "x")]))
    with pytest.raises(DataError, match="answers line 2: question_id '003a8ae2ef43b901' has no annotation"):
        textvqa.score(data, unknown, benchmark="textvqa")
    unparsable = read_answers(fix.answers_file(tmp_path / "b.jsonl", [("003a8ae2ef43b901", "no newline", "x")]))
    with pytest.raises(DataError, match="answers line 1: prompt 'no newline'"):
        textvqa.score(data, unparsable, benchmark="textvqa")
    (data / "TextVQA_0.5.1_val.json").unlink()
    with pytest.raises(DataError, match=r"TextVQA_0\.5\.1_val\.json: no such file"):
        textvqa.score(data, unknown, benchmark="textvqa")


def test_textvqa_parquet(tmp_path):
    data = fix.make_textvqa_parquet(tmp_path)
    samples = textvqa.read(data, benchmark="textvqa")
    llava = textvqa.read(fix.make_textvqa(tmp_path), benchmark="textvqa")
    assert [s.prompt for s in samples] == [s.prompt for s in llava]  # LLaVA's OCR prompt from `ocr_tokens`
    assert [s.question_id for s in samples] == [34602, 34603, 34604, 34605]
    assert textvqa.read(data, benchmark="textvqa", variant="lmms")[0].prompt == "What brand is the camera?" + SHORT
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(s.question_id, s.prompt, t)
                                                                   for s, t in zip(samples, SMALL_TEXTVQA_TEXTS)]))
    result = textvqa.score(data, answers, benchmark="textvqa")
    assert result.per_question == pytest.approx(SMALL_TEXTVQA_SCORES)


def test_textvqa_parquet_test_split_writes_submission(tmp_path):
    data = fix.make_textvqa_parquet(tmp_path, split="test")
    samples = textvqa.read(data, benchmark="textvqa")
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(s.question_id, s.prompt, t)
                                                                   for s, t in zip(samples, SMALL_TEXTVQA_TEXTS)]))
    result = textvqa.score(data, answers, benchmark="textvqa", out_dir=tmp_path / "out")
    assert result.metrics == {}
    assert json.loads(result.artifacts["upload"].read_text())[1] == {"question_id": 34603, "answer": "single use"}


# ---- VizWiz --------------------------------------------------------------------------------------------------

VIZWIZ_TEXTS = ["Black", "Unanswerable", "It's a can of soup."]


def test_vizwiz_read(tmp_path):
    data = fix.make_vizwiz(tmp_path)
    samples = vizwiz.read(data, benchmark="vizwiz")
    assert samples[1].prompt == "what is this can?" + UNANSWERABLE + SHORT
    assert samples[1].image == str(data / "test" / "VizWiz_test_00000001.jpg")
    assert vizwiz.read(data, benchmark="vizwiz", variant="lmms")[1].prompt == "What is this can?" + UNANSWERABLE + SHORT
    assert Image.open(samples[0].image).mode == "L"  # a grayscale photo, as VizWiz has
    (data / "test" / "VizWiz_test_00000002.jpg").unlink()
    with pytest.raises(DataError, match=r"llava_test\.jsonl:3: media file"):
        vizwiz.read(data, benchmark="vizwiz")


def test_vizwiz_upload(tmp_path):
    data = fix.make_vizwiz(tmp_path)
    lines = [(q, text, t) for (q, _, text, _), t in zip(fix.VIZWIZ_QUESTIONS, VIZWIZ_TEXTS)]
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", lines))
    result = vizwiz.score(data, answers, benchmark="vizwiz", out_dir=tmp_path / "out")
    assert result.metrics == {} and result.per_question == [None] * 3
    # "It's a can of soup." -> "it 's a can of soup." -> period stripped -> article dropped
    assert json.loads(result.artifacts["upload"].read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "black"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000002.jpg", "answer": "it 's can of soup"}]
    partial = read_answers(fix.answers_file(tmp_path / "b.jsonl", lines[:2]))
    with pytest.raises(DataError, match=r"llava_test\.jsonl:3: question_id 2 has no answer"):
        vizwiz.score(data, partial, benchmark="vizwiz", out_dir=tmp_path / "out")


def test_vizwiz_parquet_val_scored_as_lmms_eval(tmp_path):
    data = fix.make_vizwiz_parquet(tmp_path)
    samples = vizwiz.read(data, benchmark="vizwiz", variant="lmms")
    assert samples[0].prompt == "What is this?" + UNANSWERABLE + SHORT and isinstance(samples[0].image, bytes)
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(q, text, t)
                                                                   for q, text, _, t, _ in fix.VIZWIZ_VAL]))
    result = vizwiz.score(data, answers, benchmark="vizwiz")
    # unanswerable x10: 1 | red x2: "Red." -> "red" 0.6 | no answers: 0 | "it's mocha" -> "it 's mocha": 0
    assert result.per_question == pytest.approx([1.0, 0.6, 0.0, 0.0])
    assert result.metrics == {"lmms_eval_accuracy": pytest.approx(40.0)}


def test_vizwiz_parquet_test_upload(tmp_path):
    data = fix.make_vizwiz_parquet(tmp_path, split="test")
    samples = vizwiz.read(data, benchmark="vizwiz")
    assert [s.question_id for s in samples] == ["VizWiz_test_00000000", "VizWiz_test_00000001",
                                                "VizWiz_test_00000002"]
    answers = read_answers(fix.answers_file(tmp_path / "a.jsonl", [(s.question_id, s.prompt, t)
                                                                   for s, t in zip(samples, VIZWIZ_TEXTS)]))
    result = vizwiz.score(data, answers, benchmark="vizwiz", out_dir=tmp_path / "out")
    assert [a["image"] for a in json.loads(result.artifacts["upload"].read_text())] == [
        "VizWiz_test_00000000.jpg", "VizWiz_test_00000001.jpg", "VizWiz_test_00000002.jpg"]


def test_answers_text_must_be_a_string(tmp_path):
    data = fix.make_vizwiz(tmp_path)
    with pytest.raises(DataError, match="answers line 1: `text` must be a string"):
        vizwiz.score(data, [{"question_id": 0, "prompt": "p", "text": None}], benchmark="vizwiz")


def test_scorers_import_without_jax():
    import subprocess
    import sys

    code = ("import sys, jaxvlm.evaluation.vqav2, jaxvlm.evaluation.textvqa, jaxvlm.evaluation.vizwiz; "
            "sys.exit('jax' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
