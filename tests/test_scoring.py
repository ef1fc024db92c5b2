"""Benchmark answer scoring (experiments/scoring.py)."""

import pytest

from experiments import scoring


def test_normalize_answer_follows_the_vqa_rules():
    assert scoring.normalize_answer("Two dogs.") == "2 dogs"
    assert scoring.normalize_answer("The Red, bus!") == "red bus"
    assert scoring.normalize_answer("1,000") == "1000"
    assert scoring.normalize_answer("dont know") == "don't know"
    assert scoring.normalize_answer("3.5") == "3.5"


def test_vqa_accuracy_is_the_leave_one_out_mean():
    answers = ["2"] * 3 + ["3"] * 7
    # leaving out a "2": 2 of 9 agree -> 2/3; leaving out a "3": 3 agree -> 1.
    assert scoring.vqa_accuracy("Two.", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert scoring.vqa_accuracy("three", answers) == pytest.approx(1.0)
    assert scoring.vqa_accuracy("four", answers) == 0.0


def test_yes_no_takes_the_first_yes_or_no_word():
    assert scoring.yes_no("Yes, there is a cat.", ["yes"]) == 1.0
    assert scoring.yes_no("There is no cat, yes.", ["no"]) == 1.0
    assert scoring.yes_no("I cannot tell", ["yes"]) == 0.0


@pytest.mark.parametrize("prediction,expected", [("B", 1.0), ("(B) cat", 1.0), ("B. cat", 1.0), ("A", 0.0),
                                                 ("cat", 1.0), ("dog", 0.0), ("Because", 0.0)])
def test_choice_accepts_the_letter_or_the_option_text(prediction, expected):
    assert scoring.choice(prediction, ["B"], ["dog", "cat"]) == expected


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.score("bleu", "a", ["a"])
