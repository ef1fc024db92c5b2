"""Answer scoring for the standard VLM benchmarks, as pure functions of (prediction, references).

- `vqa_accuracy`: VQAv2 / TextVQA / VizWiz soft accuracy min(#annotators agreeing / 3, 1), averaged over the
  10 leave-one-out subsets as the official script does, after the official answer normalisation.
- `exact_match`: GQA (normalised exact match).
- `yes_no`: POPE (first yes/no word of the prediction vs the label).
- `choice`: MMBench / ScienceQA-IMG / SEED-style multiple choice (the option letter, or the option text).
"""

from __future__ import annotations

import re

_CONTRACTIONS = {
    "dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't", "wont": "won't",
    "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "hasnt": "hasn't", "havent": "haven't",
    "shouldnt": "shouldn't", "couldnt": "couldn't", "wouldnt": "wouldn't", "im": "i'm", "ive": "i've",
    "youre": "you're", "theyre": "they're", "whats": "what's", "thats": "that's", "lets": "let's",
}
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """The VQA evaluation's normalisation: lower case, punctuation, number words, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _COMMA_NUMBER.sub(r"\1\3", text)
    text = _PUNCT.sub(" ", text)
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction against the annotators' answers (usually 10)."""
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if not refs:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1 :]
        scores.append(min(1.0, sum(r == pred for r in others) / 3.0))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def yes_no(prediction: str, answers: list[str]) -> float:
    """POPE: the first 'yes'/'no' word of the prediction (no such word counts as 'no', as in POPE's script)."""
    words = re.findall(r"[a-z]+", prediction.lower())
    said = next((w for w in words if w in ("yes", "no")), "no")
    return float(said == answers[0].strip().lower())


def choice(prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    """Multiple choice: answers[0] is the correct letter ("A".."Z"); the prediction may give the letter
    ("B", "(B)", "B. cat") or the option's text."""
    letter = answers[0].strip().upper()[:1]
    text = prediction.strip()
    match = re.match(r"^\(?([A-Z])(?:[).:\s]|$)", text)
    if match:
        return float(match.group(1) == letter)
    if choices:
        pred = normalize_answer(text)
        for i, option in enumerate(choices):
            if pred == normalize_answer(option):
                return float(chr(ord("A") + i) == letter)
    return 0.0


METRICS = {"vqa": vqa_accuracy, "exact": exact_match, "yesno": yes_no, "choice": choice}

# Benchmark name -> (metric, instruction appended to the question; LLaVA-1.5's evaluation prompts).
BENCHMARKS = {
    "vqav2": ("vqa", "Answer the question using a single word or phrase."),
    "textvqa": ("vqa", "Answer the question using a single word or phrase."),
    "vizwiz": ("vqa", "When the provided information is insufficient, respond with 'Unanswerable'. "
                      "Answer the question using a single word or phrase."),
    "gqa": ("exact", "Answer the question using a single word or phrase."),
    "pope": ("yesno", "Answer the question using a single word or phrase."),
    "mmbench": ("choice", "Answer with the option's letter from the given choices directly."),
    "scienceqa": ("choice", "Answer with the option's letter from the given choices directly."),
}


def score(metric: str, prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; have {sorted(METRICS)}")
    if metric == "choice":
        return choice(prediction, answers, choices)
    return METRICS[metric](prediction, answers)
