"""Evaluation prompting and metrics: the official VQA accuracy (normalisation, min(1, n/3) over the 10 leave-one-out
subsets), ScienceQA-style multiple-choice prompts and letter parsing, and the evaluation loops' plumbing (with the
generator stubbed: the generation itself is tested in test_inference.py)."""
import pytest

from common import metrics
from llava_jax import eval as llava_eval


def test_vqa_normalisation():
    assert metrics.normalize_vqa_answer("Two.") == "2"
    assert metrics.normalize_vqa_answer("The dog") == "dog"
    assert metrics.normalize_vqa_answer("  yes!\n") == "yes"
    assert metrics.normalize_vqa_answer("dont") == "don't"
    assert metrics.normalize_vqa_answer("red, white") == "red white"
    assert metrics.normalize_vqa_answer("1,000") == "1000"
    assert metrics.normalize_vqa_answer("3.5") == "3.5"


def test_vqa_accuracy_values():
    ten = ["2"] * 10
    assert metrics.vqa_accuracy("two", ten) == 1.0
    assert metrics.vqa_accuracy("3", ten) == 0.0
    # 2 of 10 annotators: leave-one-out -> 8 subsets with 2 matches (2/3), 2 subsets with 1 match (1/3)
    two = ["cat", "cat"] + ["dog"] * 8
    assert metrics.vqa_accuracy("cat", two) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    # 3 of 10: 7 subsets with 3 (1.0) and 3 with 2 (2/3)
    three = ["cat"] * 3 + ["dog"] * 7
    assert metrics.vqa_accuracy("Cat.", three) == pytest.approx((7 + 3 * 2 / 3) / 10)
    assert metrics.mean_vqa_accuracy(["two", "3"], [ten, ten]) == 50.0


def test_multiple_choice_prompt_and_parsing():
    prompt = llava_eval.multiple_choice_prompt("Which shape is red?", ["circle", "star"], context="A picture.")
    assert prompt == ("Context: A picture.\nWhich shape is red?\nA. circle\nB. star\n"
                      "Answer with the option's letter from the given choices directly.")
    assert llava_eval.vqa_prompt("What color?") == "What color?\nAnswer the question using a single word or phrase."
    assert metrics.parse_choice("B", 2) == 1
    assert metrics.parse_choice("(A) circle", 2) == 0
    assert metrics.parse_choice("The answer is B.", 3) == 1
    assert metrics.parse_choice("C", 2) is None and metrics.parse_choice("circle", 2) is None
    assert metrics.multiple_choice_accuracy(["A", "B.", "zzz"], [0, 0, 1], [2, 2, 2]) == pytest.approx(100 / 3)


def test_evaluation_loops_score_the_generations(monkeypatch):
    items = llava_eval.shapes_vqa_items(6, "validation", 32)
    assert all(len(it["answers"]) == 10 for it in items)
    truth = [max(set(it["answers"]), key=it["answers"].count) for it in items]
    seen = []

    def fake_generate(model, params, tok, requests, **kwargs):
        seen.extend(requests)
        return [truth[len(seen) - len(requests) + i] if i % 2 == 0 else "wrong" for i in range(len(requests))]

    monkeypatch.setattr(llava_eval, "generate_batch", fake_generate)
    res = llava_eval.evaluate_vqa(None, None, None, items, batch_size=4)
    assert res["count"] == 6 and res["predictions"][1] == "wrong"
    assert res["accuracy"] == pytest.approx(100 * sum(metrics.vqa_accuracy(t, it["answers"])
                                                      for t, it in zip(truth[::2], items[::2])) / 6)
    assert seen[0][1].endswith("Answer the question using a single word or phrase.") and len(seen[0][0]) == 1

    mc = llava_eval.shapes_multiple_choice_items(8, "validation", 32)
    assert all(it["choices"][it["answer"]] == t
               for it, t in zip(mc, [max(set(i["answers"]), key=i["answers"].count)
                                     for i in llava_eval.shapes_vqa_items(8, "validation", 32)]))
    monkeypatch.setattr(llava_eval, "generate_batch",
                        lambda m, p, t, reqs, **k: ["ABCD"[it["answer"]] for it in mc[:len(reqs)]])
    assert llava_eval.evaluate_multiple_choice(None, None, None, mc, batch_size=8)["accuracy"] == 100.0
