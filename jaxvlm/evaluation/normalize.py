"""The VQA answer normalisations and accuracies, exactly as the official code computes them.

Two normalisers share one rule set:
- vqaEval (the VQA challenge's `vqaEval.py`): `vqa_punctuation` then `vqa_digit_article`, applied to a question's
  prediction and ground truth only when its (stripped) GT answers are not all identical (`vqa_accuracy`).
- EvalAI's answer processor (MMF, as LLaVA's `m4c_evaluator.py` carries it; `evalai_answer`): lower-case,
  delete `,` and `?`, `'s` -> ` 's`, then the same punctuation and digit/article steps. LLaVA uploads
  `evalai_answer(text)` to the VQAv2 / VizWiz servers; TextVQA (and lmms-eval) apply it to both sides
  (`soft_accuracy`).

Quirks kept on purpose (the official numbers depend on them):
- punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space in the original
  text (or the text has a digit,digit comma), else replaced by a space; `' : $ % & .` are not in the list;
- the period regex `(?!<=\\d)(\\.)(?!\\d)` is a look-ahead typo for a look-behind: every `.` not followed by a
  digit goes ("5." -> "5", "3.5" stays), at most 32 of them (`re.UNICODE` is passed as the count);
- number words stop at "ten", articles a/an/the are dropped ("a" -> ""), contraction keys with capitals
  (`Im`, `Ive`) can never match the lower-cased words.
"""

from __future__ import annotations

import re
from typing import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")

_PERIOD = r"(?!<=\d)(\.)(?!\d)"
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # both pass the flag as `count`: 32 periods at most
# vqaEval.py is Python 2 code on unicode text without re.UNICODE: its \d is [0-9]; EvalAI's (Python 3) is not
_VQA = (re.compile(_PERIOD, re.ASCII), re.compile(r"(\d)(\,)(\d)", re.ASCII))
_EVALAI = (re.compile(_PERIOD), re.compile(r"(?<=\d)(\,)+(?=\d)"))  # its comma test cannot fire after tokenize


def _punctuation(text: str, patterns: tuple[re.Pattern, re.Pattern]) -> str:
    period, comma = patterns
    out = text
    has_digit_comma = comma.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period.sub("", out, _PERIOD_STRIP_COUNT)


def vqa_punctuation(text: str) -> str:
    """vqaEval `processPunctuation` (tests the *original* text for neighbouring spaces / digit commas)."""
    return _punctuation(text, _VQA)


def vqa_digit_article(text: str) -> str:
    """vqaEval `processDigitArticle`: lower, split on whitespace, number words -> digits, drop articles,
    restore contractions, join with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def vqa_normalize(text: str) -> str:
    """vqaEval's normalisation of one answer: punctuation then digits/articles."""
    return vqa_digit_article(vqa_punctuation(text))


def evalai_answer(text: str) -> str:
    """EvalAIAnswerProcessor(text): the answer LLaVA uploads / TextVQA compares."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digit_article(_punctuation(text, _EVALAI))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, gt_answers: Sequence[dict]) -> float:
    """vqaEval accuracy of one prediction, in [0, 1].

    gt_answers: the annotation's answer dicts ({"answer", "answer_confidence", "answer_id"}). Answers are
    normalised only when the stripped GT strings are not all identical. Each GT dict is left out in turn and
    the prediction scores min(1, #matching others / 3); "others" are the dicts *unequal* to the left-out one,
    as vqaEval compares whole dicts (with distinct `answer_id`s, as real annotations have, that is plain
    leave-one-out). 1 / 2 / 3 / >=4 matches of 10 give 0.3 / 0.6 / 0.9 / 1.
    """
    gts = [{**a, "answer": _clean(a["answer"])} for a in gt_answers]
    pred = _clean(prediction)
    if len({a["answer"] for a in gts}) > 1:
        gts = [{**a, "answer": vqa_normalize(a["answer"])} for a in gts]
        pred = vqa_normalize(pred)
    accs = [min(1.0, sum(1 for o in gts if o != a and o["answer"] == pred) / 3) for a in gts]
    return sum(accs) / len(accs)


def soft_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """TextVQA (m4c) / lmms-eval soft accuracy in [0, 1]: EvalAI-normalise the prediction and every GT string,
    then the mean over leave-one-out subsets (by position) of min(1, #matches / 3); 0 for no GT answers."""
    gts = [evalai_answer(a) for a in gt_answers]
    if not gts:
        return 0.0
    pred = evalai_answer(prediction)
    matches = sum(g == pred for g in gts)
    accs = [min(1.0, (matches - (g == pred)) / 3) for g in gts]
    return sum(accs) / len(accs)
