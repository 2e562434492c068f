"""LLaVA evaluation prompting (LLaVA-1.5, Liu et al. 2023b, Sec. 3.3 / Table 7 "response format prompting"; LLaVA
Sec. 5.2 ScienceQA): short-answer VQA with "Answer the question using a single word or phrase." scored with the
official VQA accuracy, and ScienceQA-style multiple choice (options "A. ...", "Answer with the option's letter
from the given choices directly.") scored by the parsed letter. Metrics live in `common.metrics`.

Items are plain dicts, so any data set fits:
  VQA:             {image (array / path / bytes), question, answers [10 strings], answer_type?}
  multiple choice: {images [0+], question, choices [str], answer (index), context?}
`shapes_vqa_items` / `shapes_multiple_choice_items` build them from the bundled held-out split.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common import metrics
from common.data.shapes import COLOURS, SHAPES, ShapesSource
from llava_jax.data import VQA_SHORT_ANSWER_PROMPT
from llava_jax.inference import generate_batch

MC_PROMPT = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"


def vqa_prompt(question: str) -> str:
    """LLaVA-1.5's VQAv2 / GQA prompt (llava_vqav2_mscoco_test-dev2015.jsonl)."""
    return f"{question}\n{VQA_SHORT_ANSWER_PROMPT}"


def multiple_choice_prompt(question: str, choices: Sequence[str], context: str | None = None) -> str:
    """ScienceQA in LLaVA-1.5's format (llava_test_CQM-A.json): [Context: ...\\n] question, one "A. choice" line per
    option, then the letter instruction."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options")
    head = f"Context: {context}\n{question}" if context else question
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{head}\n{options}\n{MC_PROMPT}"


def _batched(items, batch_size):
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


def evaluate_vqa(model, params, tokenizer, items: Sequence[dict], *, template: str = "vicuna_v1",
                 batch_size: int = 64, max_new_tokens: int = 8) -> dict:
    """Greedy short answers -> {'accuracy' (VQA accuracy, %), 'per_type' {answer_type: %}, 'predictions'}."""
    preds = []
    for chunk in _batched(list(items), batch_size):
        preds += generate_batch(model, params, tokenizer, [([it["image"]], vqa_prompt(it["question"])) for it in chunk],
                                template=template, max_new_tokens=max_new_tokens, stop_strings=("\n",))
    answers = [it["answers"] for it in items]
    per_type: dict[str, list[float]] = {}
    for it, p in zip(items, preds):
        per_type.setdefault(it.get("answer_type", "all"), []).append(metrics.vqa_accuracy(p, it["answers"]))
    return {"accuracy": metrics.mean_vqa_accuracy(preds, answers),
            "per_type": {k: 100.0 * float(np.mean(v)) for k, v in sorted(per_type.items())},
            "predictions": preds, "count": len(preds)}


def evaluate_multiple_choice(model, params, tokenizer, items: Sequence[dict], *, template: str = "vicuna_v1",
                             batch_size: int = 64, max_new_tokens: int = 4) -> dict:
    """Greedy answers to multiple-choice prompts -> {'accuracy' (%), 'predictions', 'parsed'}."""
    preds = []
    for chunk in _batched(list(items), batch_size):
        reqs = [(it.get("images", []), multiple_choice_prompt(it["question"], it["choices"], it.get("context")))
                for it in chunk]
        preds += generate_batch(model, params, tokenizer, reqs, template=template, max_new_tokens=max_new_tokens)
    targets = [int(it["answer"]) for it in items]
    counts = [len(it["choices"]) for it in items]
    return {"accuracy": metrics.multiple_choice_accuracy(preds, targets, counts), "predictions": preds,
            "parsed": [metrics.parse_choice(p, n) for p, n in zip(preds, counts)], "count": len(preds)}


# ----------------------------------------------------------------------------------------------------------------
# Held-out bundled data
# ----------------------------------------------------------------------------------------------------------------
def shapes_vqa_items(num_questions: int, split: str = "validation", image_size: int = 48, seed: int = 0) -> list:
    src = ShapesSource("vqa", split, num_questions, seed, image_size)
    out = []
    for i in range(len(src)):
        ex = src[i]
        out.append({"image": ex["image"], "question": ex["question"][0].upper() + ex["question"][1:],
                    "answers": ex["answers"], "answer_type": ex["answer_type"]})
    return out


def _distractors(answer: str, rng: np.random.Generator, k: int) -> list[str]:
    if answer in COLOURS:
        pool = list(COLOURS)
    elif answer in SHAPES:
        pool = list(SHAPES)
    elif answer in ("yes", "no"):
        pool = ["yes", "no"]
    elif answer.isdigit():
        pool = [str(i) for i in range(1, 7)]
    elif answer in ("small", "large"):
        pool = ["small", "large"]
    else:
        pool = ["top", "bottom", "left", "right", "center", "top left", "top right", "bottom left", "bottom right"]
    pool = [p for p in pool if p != answer]
    return [str(x) for x in rng.permutation(pool)[:k]]


def shapes_multiple_choice_items(num_questions: int, split: str = "validation", image_size: int = 48,
                                 seed: int = 0, num_choices: int = 4) -> list:
    """ScienceQA-style items from the held-out shapes VQA questions: the true answer among up to num_choices-1
    distractors of the same kind, in a random order."""
    rng = np.random.default_rng(seed + 7)
    items = []
    for it in shapes_vqa_items(num_questions, split, image_size, seed):
        answer = max(set(it["answers"]), key=it["answers"].count)
        choices = [answer] + _distractors(answer, rng, num_choices - 1)
        order = rng.permutation(len(choices))
        choices = [choices[i] for i in order]
        items.append({"images": [it["image"]], "question": it["question"], "choices": choices,
                      "answer": int(np.argmax(order == 0))})
    return items


def evaluate_shapes_vqa(model, params, tokenizer, *, num_questions: int = 200, split: str = "validation",
                        image_size: int = 48, template: str = "vicuna_v1", max_new_tokens: int = 8,
                        batch_size: int = 64) -> dict:
    return evaluate_vqa(model, params, tokenizer, shapes_vqa_items(num_questions, split, image_size),
                        template=template, max_new_tokens=max_new_tokens, batch_size=batch_size)
