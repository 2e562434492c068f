"""Evaluation metrics shared by the families.

VQA accuracy (Antol et al. 2015 / Goyal et al. 2017, the official VQAv2 evaluation `vqaEval.py`), used by
Flamingo's and LLaVA's VQAv2 / OK-VQA / VizWiz numbers: answers are normalised (punctuation, digits, articles,
contractions: `normalize_vqa_answer`), then acc(answer) = min(1, #humans that said it / 3) averaged over the 10
leave-one-annotator-out subsets of 9 annotators. Multiple-choice accuracy (ScienceQA, LLaVA Sec. 5.2) parses an
option letter from a generated answer. Exact-match accuracy for short answers. CIDEr(-D) (Vedantam et al. 2015) via
pycocoevalcap, x100 as papers report it, with a Java-free tokenizer (lower case, PTB punctuation removed) instead of
the PTB tokenizer: Flamingo's / OpenFlamingo's COCO and Flickr30k captioning numbers.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# The official evaluation's tables (vqaEval.py), unchanged.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
              "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation: whitespace, punctuation, number words -> digits, articles, contractions."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(answer))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (10 in VQAv2): the mean over the leave-one-out
    subsets of min(1, matches among the other annotators / 3). Fewer than 10 answers work the same way."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:] if len(gts) > 1 else gts
        accs.append(min(1.0, sum(g == pred for g in others) / 3.0))
    return float(sum(accs) / len(accs))


def mean_vqa_accuracy(predictions: Iterable[str], answers: Iterable[Sequence[str]]) -> float:
    """Mean VQA accuracy in percent."""
    scores = [vqa_accuracy(p, a) for p, a in zip(predictions, answers, strict=True)]
    return 100.0 * sum(scores) / max(len(scores), 1)


def parse_choice(text: str, num_options: int, letters: str = "ABCDEFGHIJ") -> int | None:
    """Option index from a generated answer: a leading letter ("B", "B.", "(B)", "The answer is B.") or, failing
    that, None. Mirrors LLaVA's ScienceQA evaluation (`eval_science_qa.py`: the answer must be one of the letters)."""
    valid = letters[:num_options]
    text = text.strip()
    m = re.match(r"^\(?([A-J])\)?(?:[.:)\s]|$)", text)
    if m and m.group(1) in valid:
        return valid.index(m.group(1))
    m = re.search(r"answer is:?\s*\(?([A-J])\)?\b", text, re.IGNORECASE)
    if m and m.group(1).upper() in valid:
        return valid.index(m.group(1).upper())
    return None


def multiple_choice_accuracy(predictions: Sequence[str], targets: Sequence[int],
                             num_options: Sequence[int]) -> float:
    """Percent of predictions whose parsed option letter is the target index (unparseable = wrong)."""
    hits = [parse_choice(p, n) == t for p, t, n in zip(predictions, targets, num_options, strict=True)]
    return 100.0 * sum(hits) / max(len(hits), 1)


def exact_match(prediction: str, target: str) -> bool:
    """Exact match after the VQA normalisation."""
    return normalize_vqa_answer(prediction) == normalize_vqa_answer(target)


# The punctuation pycocoevalcap's PTBTokenizer removes after tokenising.
_CAPTION_PUNCTUATION = re.compile(r"''|``|--|\.\.\.|[`'.?!,:;\-]")


def caption_tokens(text: str) -> str:
    """Caption -> space-joined lower-case tokens, punctuation removed (a Java-free stand-in for PTBTokenizer)."""
    return " ".join(_CAPTION_PUNCTUATION.sub(" ", text.lower().replace("\n", " ")).split())


def cider(predictions: dict, references: dict) -> float:
    """CIDEr(-D) x 100 (pycocoevalcap's `Cider`: tf-idf n-grams 1-4 over the references of this set, Gaussian length
    penalty, clipping). predictions {id: caption}; references {id: [captions]} (same ids)."""
    from pycocoevalcap.cider.cider import Cider

    if set(predictions) != set(references):
        raise ValueError("predictions and references must have the same ids")
    if not predictions:
        raise ValueError("cider needs at least one prediction")
    gts = {k: [caption_tokens(r) for r in refs] for k, refs in references.items()}
    res = {k: [caption_tokens(p)] for k, p in predictions.items()}
    score, _ = Cider().compute_score(gts, res)
    return 100.0 * float(score)
