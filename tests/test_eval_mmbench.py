"""MMBench / MMBench-CN: the tsv and parquet readers, LLaVA's and lmms-eval's prompts, the prefetch rules and
CircularEval with exact matching, checked per row and per group against values worked out by hand from
opencompass tools/eval_mmbench.py and LLaVA's model_vqa_mmbench.py / convert_mmbench_for_submission.py."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, strategies as st

from evalfix import choice_judge as cj
from jaxvlm.evaluation import DataError, benchmark
from jaxvlm.evaluation import mmbench

EN = "\nAnswer with the option's letter from the given choices directly."


def answers_for(samples, texts):
    return [{"question_id": s.question_id, "prompt": s.prompt, "text": t, "answer_id": "x", "model_id": "m",
             "metadata": {}, **s.extra} for s, t in zip(samples, texts)]


# ------------------------------------------------------------------------------------------- prefetch rules

@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("E", "E"),                        # accepted as a letter (then wrong: MMBench has no option E)
    ("b", None),                       # lower case is no letter
    ("A", "A"),
    ("A cat", "A"),                    # "A" among <= 3 tokens is the letter
    ("A dog is sleeping", None),       # "A" among > 3 tokens may be an article
    ("I think B is right", "B"),
    ("B and C", None),                 # two bare letters
    ("B.", "B"),
    ("(C)", "C"),
    ("The answer is D.", "D"),
    ("Answer: C", "C"),
    (":D", "D"),
    ("A. B.", None),                   # two letters in the same form
    ("(A) or B.", "B"),                # ("", ".") is tried before ("(", ")")
    ("Failed to obtain answer via API B", None),
])
def test_infer_letter(answer, letter):
    assert mmbench.infer_letter(answer) == letter


@pytest.mark.parametrize("answer, choices, letter", [
    ("black cat", {"A": "cat", "B": "black cat"}, None),      # both option texts occur
    ("It is a DOG.", {"A": "cat", "B": "dog"}, "B"),
    ("a bird", {"A": "cat", "B": "dog"}, None),
])
def test_infer_text(answer, choices, letter):
    assert mmbench.infer_text(answer, choices) == letter


@given(st.sampled_from("ABCD"), st.sampled_from(["", ".", ",", ":", ")"]))
def test_a_lone_letter_in_any_form_is_read(letter, suffix):
    assert mmbench.infer_letter(letter + suffix) == letter


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8)


@given(st.lists(words, min_size=2, max_size=4, unique=True), st.data())
def test_an_answer_quoting_one_option_reads_as_it(options, data):
    assume(not any(a != b and a in b for a in options for b in options))  # that case is unresolved (above)
    k = data.draw(st.integers(0, len(options) - 1))
    assert mmbench.infer(options[k].upper(), dict(zip("ABCD", options))) == "ABCD"[k]


@given(st.lists(st.tuples(st.sampled_from("ABCD"), st.sampled_from(["A", "B", "C", "D", "E", None])),
                min_size=1, max_size=4), st.randoms())
def test_circular_group_ignores_row_order(verdicts, rng):
    shuffled = list(verdicts)
    rng.shuffle(shuffled)
    assert mmbench.circular_group(shuffled) == mmbench.circular_group(verdicts)


# ------------------------------------------------------------------------------------------- prompts

def test_llava_prompts_and_answer_fields(tmp_path):
    rows = [cj.mmbench_row(1, "Which animal?", ["cat", "dog", "bird", "fish"], "B", hint="Look closely."),
            cj.mmbench_row(2, "What color?", ["red", "blue"], "A", C="None", D="green"),   # "None" is NaN: stop
            cj.mmbench_row(3, "Which way?", ["left", "NONE", "up"], "A", hint="NA"),       # is_none("NONE"); hint NaN
            cj.mmbench_row(4, "Is it?", ["yes", "nan"], "A")]
    data = cj.write_mmbench_tsv(tmp_path / "mmbench" / "mmbench_dev_20230712.tsv", rows).parent
    samples = mmbench.read(data, benchmark="mmbench")
    assert [s.prompt for s in samples] == [
        "Look closely.\nWhich animal?\nA. cat\nB. dog\nC. bird\nD. fish" + EN,
        "What color?\nA. red\nB. blue" + EN,
        "Which way?\nA. left" + EN,
        "Is it?\nA. yes" + EN,
    ]
    assert [s.extra for s in samples] == [
        {"round_id": 0, "options": ["cat", "dog", "bird", "fish"], "option_char": ["A", "B", "C", "D"]},
        {"round_id": 0, "options": ["red", "blue"], "option_char": ["A", "B"]},
        {"round_id": 0, "options": ["left"], "option_char": ["A"]},
        {"round_id": 0, "options": ["yes"], "option_char": ["A"]},
    ]
    # the answers line records the question without the instruction, as model_vqa_mmbench.py's cur_prompt
    assert [s.record_prompt for s in samples] == [s.prompt[: -len(EN)] for s in samples]
    assert [s.question_id for s in samples] == [1, 2, 3, 4]
    assert [s.source.rsplit(":", 1)[1] for s in samples] == ["2", "3", "4", "5"]
    assert samples[0].image.startswith(b"\x89PNG")
    tsv = data / "mmbench_dev_20230712.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes())              # a byte-order mark is not part of `index`
    assert [s.prompt for s in mmbench.read(data, benchmark="mmbench")] == [s.prompt for s in samples]
    lmms = mmbench.read(data, benchmark="mmbench", variant="lmms")
    assert lmms[0].prompt == ("Look closely. Which animal? There are several options:\nA. cat\nB. dog\nC. bird\n"
                              "D. fish\n\nAnswer with the option's letter from the given choices directly.")
    # lmms-eval lists every present option (no stop at a gap) and keeps "NONE"
    assert lmms[1].prompt == ("What color? There are several options:\nA. red\nB. blue\nD. green\n\n"
                              "Answer with the option's letter from the given choices directly.")
    assert lmms[2].prompt.startswith("Which way? There are several options:\nA. left\nB. NONE\nC. up\n\n")


def test_cn_prompts(tmp_path):
    data = cj.make_mmbench_cn(tmp_path)
    llava = mmbench.read(data, benchmark="mmbench_cn")
    assert llava[0].prompt == "一张宠物照片。\n图中是什么动物？\nA. 猫\nB. 狗\nC. 鸟\n请直接回答选项字母。"
    lmms = mmbench.read(data, benchmark="mmbench_cn", variant="lmms")
    assert lmms[1].prompt == "这是宇航员吗？ There are several options:\nA. 是\nB. 不是\n\n请直接使用所提供的选项字母作为答案回答。"
    assert len(llava) == 8 and benchmark("mmbench_cn") is mmbench


def test_parquet_reads_as_the_tsv(tmp_path):
    tsv = mmbench.read(cj.make_mmbench(tmp_path), benchmark="mmbench")
    pq = mmbench.read(cj.make_mmbench_parquet(tmp_path, "en"), benchmark="mmbench")
    assert [(s.question_id, s.prompt, s.extra, s.image) for s in pq] == [
        (s.question_id, s.prompt, s.extra, s.image) for s in tsv]
    assert pq[0].source.endswith("dev-00000-of-00001.parquet:1")


# ------------------------------------------------------------------------------------------- CircularEval

QUIRK_ROWS = (  # (question index, options, answer, per-copy model answers) -> group verdict worked out by hand
    (1, ["cat", "dog", "bird", "fish"], "B", ["B", "A", "D", "C"]),          # every copy right -> 1
    (2, ["cat", "dog", "bird", "fish"], "B", ["B", "A", "D", "B"]),          # copy 3 (answer C) wrong -> 0
    (3, ["yes", "no"], "A", ["A", "E"]),                                     # "E" read, wrong -> 0
    (4, ["red", "blue"], "A", ["b", "B"]),                                   # "b" unresolved -> judge
    (5, ["cat", "black cat", "dog"], "B", ["black cat", "A", "C"]),          # two texts match -> judge
    (6, ["cat", "dog"], "B", ["A dog is sleeping on the sofa.", "Dog"]),     # not letter A; text "dog" -> 1
    (7, ["left", "right", "up"], "C", ["B and C", "C", "A"]),                # copy 1 (answer B) wrong beats unresolved
)


def quirk_fixture(tmp_path, shuffle=False):
    rows, texts = [], {}
    for index, options, answer, said in QUIRK_ROWS:
        category = "cat_a" if index <= 3 else "cat_b"
        copies = cj.circular_rows(index, f"Question {index}?", options, answer, category=category,
                                  **{"l2-category": category.upper()})
        rows += copies
        texts.update({r["index"]: t for r, t in zip(copies, said)})
    rows.sort(key=lambda r: r["index"], reverse=shuffle)
    data = cj.write_mmbench_tsv(tmp_path / "mmbench" / "mmbench_dev_20230712.tsv", rows).parent
    samples = mmbench.read(data, benchmark="mmbench")
    return data, answers_for(samples, [texts[s.question_id] for s in samples])


@pytest.mark.parametrize("shuffle", [False, True])
def test_circular_eval_quirks(tmp_path, shuffle):
    data, answers = quirk_fixture(tmp_path, shuffle)
    result = mmbench.score(data, answers, benchmark="mmbench")
    assert result.metrics["circular_accuracy"] == pytest.approx(100 * 2 / 7)
    assert result.metrics["unresolved"] == [4, 5]
    assert result.metrics["groups"] == 7
    assert result.metrics["per_category"] == pytest.approx({"cat_a": 100 / 3, "cat_b": 25.0})
    assert result.metrics["per_l2_category"] == pytest.approx({"CAT_A": 100 / 3, "CAT_B": 25.0})
    by_index = {p["index"]: (p["option"], p["hit"]) for p in result.per_question}
    assert by_index == {
        1: ("B", 1), 1000001: ("A", 1), 2000001: ("D", 1), 3000001: ("C", 1),
        2: ("B", 0), 1000002: ("A", 0), 2000002: ("D", 0), 3000002: ("B", 0),
        3: ("A", 0), 1000003: ("E", 0),
        4: (None, None), 1000004: ("B", None),
        5: (None, None), 1000005: ("A", None), 2000005: ("C", None),
        6: ("B", 1), 1000006: ("A", 1),
        7: (None, 0), 1000007: ("C", 0), 2000007: ("A", 0),
    }


def test_scorer_choices_skip_nan_but_not_gaps(tmp_path):
    """The scorer's option texts are every non-NaN A-D cell: a "green" D after a NaN C still matches text."""
    rows = [cj.mmbench_row(1, "What color?", ["red", "blue"], "A", C="NA", D="green"),
            cj.mmbench_row(2, "What color?", ["red", "blue"], "A", C="NA", D="green")]
    data = cj.write_mmbench_tsv(tmp_path / "m" / "mmbench_dev_20230712.tsv", rows).parent
    samples = mmbench.read(data, benchmark="mmbench")
    result = mmbench.score(data, answers_for(samples, ["It is green", "NA"]), benchmark="mmbench")
    # "It is green" -> D (wrong); "NA" reads back as NaN -> "nan", no letter, no option text in it
    assert [p["option"] for p in result.per_question] == ["D", None]
    assert result.metrics["circular_accuracy"] == 0.0 and result.metrics["unresolved"] == [2]


def test_submission_sheet(tmp_path):
    import openpyxl

    data = cj.make_mmbench(tmp_path)
    samples = mmbench.read(data, benchmark="mmbench")
    texts = ["A", "B", "A", "C", "B", "C", "B", "None"]
    result = mmbench.score(data, answers_for(samples, texts), benchmark="mmbench", out_dir=tmp_path / "out")
    sheet = openpyxl.load_workbook(result.artifacts["submission"]).active
    values = list(sheet.values)
    assert values[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split")
    assert values[1] == (11, "Which animal is in the picture?", "cat", "dog", "bird", None, "A", "A", "dev")
    assert values[3] == (13, "What is in the cup?", "coffee", "tea", "milk", None, "A", "A", "dev")  # D "None"
    assert values[8][6] == "None" and len(values) == 9
    # groups: 11 (A, C, B: all right) = 1; 12 (B wrong) = 0; 13 (A, B, "None" -> nan unresolved) = judge
    assert result.metrics["circular_accuracy"] == pytest.approx(100 / 3)
    assert result.metrics["unresolved"] == [13]


def test_test_sheet_without_answers_is_export_only(tmp_path):
    rows = [cj.mmbench_row(5, "Q?", ["x", "y"], "A")]
    columns = tuple(c for c in cj.MMBENCH_COLUMNS if c != "answer")
    data = cj.write_mmbench_tsv(tmp_path / "t" / "mmbench_test_20230712.tsv", rows, columns).parent
    samples = mmbench.read(data, benchmark="mmbench")
    result = mmbench.score(data, answers_for(samples, ["A"]), benchmark="mmbench", out_dir=tmp_path / "o")
    assert result.metrics == {} and result.per_question == [None]
    assert result.artifacts["submission"].is_file()


# ------------------------------------------------------------------------------------------- errors

def test_reader_errors(tmp_path):
    rows = [cj.mmbench_row(1, "Q?", ["x", "y"], "A"), cj.mmbench_row(2, "Q?", ["x", "y"], "A")]
    path = cj.write_mmbench_tsv(tmp_path / "m" / "mmbench_dev_20230712.tsv", rows)
    lines = path.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[cj.MMBENCH_COLUMNS.index("image")] = "abc"
    path.write_text("\n".join([lines[0], lines[1], "\t".join(cells)]) + "\n")
    with pytest.raises(DataError, match=r"mmbench_dev_20230712.tsv:3: the image cell is not base64"):
        mmbench.read(path.parent, benchmark="mmbench")
    path.write_text("\n".join([lines[0], lines[1], "7\tQ?"]) + "\n")
    with pytest.raises(DataError, match=r"tsv:3: 2 tab-separated fields, the header has 14"):
        mmbench.read(path.parent, benchmark="mmbench")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"Q?", b"Q\xff?", 1))
    with pytest.raises(DataError, match=r"mmbench_dev_20230712.tsv: not UTF-8 text"):
        mmbench.read(path.parent, benchmark="mmbench")
    with pytest.raises(DataError, match=r"mmbench_dev_cn_20231003.tsv: no such file"):
        mmbench.read(tmp_path / "nothing", benchmark="mmbench_cn")
    with pytest.raises(DataError, match="variant"):
        mmbench.read(path.parent, benchmark="mmbench", variant="qwen")


def test_answers_must_follow_the_question_file(tmp_path):
    data = cj.make_mmbench(tmp_path)
    samples = mmbench.read(data, benchmark="mmbench")
    answers = answers_for(samples, ["A"] * len(samples))
    with pytest.raises(DataError, match="answers file has 7 lines but .* has 8"):
        mmbench.score(data, answers[:-1], benchmark="mmbench")
    answers[1], answers[2] = answers[2], answers[1]
    with pytest.raises(DataError, match=r"answers line 2: question_id 13, but .*tsv:3 has index 12"):
        mmbench.score(data, answers, benchmark="mmbench")


def test_lmms_hint_reading_nan_differs_between_en_and_cn(tmp_path):
    """lmms-eval's EN template skips a hint cell holding the text "nan"; its CN template prints it."""
    rows = [cj.mmbench_row(4, "Is it?", ["yes", "nan"], "A", hint="nan")]
    en = mmbench.read(cj.make_mmbench_parquet(tmp_path / "en", "en", rows), benchmark="mmbench", variant="lmms")
    cn = mmbench.read(cj.make_mmbench_parquet(tmp_path / "cn", "cn", rows), benchmark="mmbench_cn", variant="lmms")
    assert en[0].prompt == ("Is it? There are several options:\nA. yes\n\n"
                            "Answer with the option's letter from the given choices directly.")
    assert cn[0].prompt == "nan Is it? There are several options:\nA. yes\n\n请直接使用所提供的选项字母作为答案回答。"
    assert mmbench.read(tmp_path / "en" / "MMBench", benchmark="mmbench")[0].prompt == "Is it?\nA. yes" + EN
