"""The model-free intelligibility check (vita_jax.eval.TemplateRecogniser): fresh espeak renderings of the shapes
answers are recognised among all of them, a degraded rendering is not, and too few candidates are refused."""
import numpy as np
import pytest

from vita_jax import data as data_lib
from vita_jax.eval import TemplateRecogniser

ANSWERS = ["yes", "no", "2", "3", "red", "blue", "green", "circle", "square", "top left", "top right", "bottom left",
           "small", "large", "triangle", "star"]


def test_fresh_renderings_are_recognised_and_noise_is_not():
    rec = TemplateRecogniser(ANSWERS, seed=0)
    assert "two" in rec.candidates and "2" not in rec.candidates  # phrases as said
    bank, rng = data_lib.load_word_bank(), np.random.default_rng(7)  # other speeds / pauses / gains than the templates
    texts = ANSWERS * 2
    res = rec.accuracy([bank.say(data_lib.spoken_form(t), rng) for t in texts], texts)
    assert res["accuracy"] >= 0.9 and res["chance"] == 1 / len(ANSWERS)
    noise = [0.3 * rng.standard_normal(16000).astype(np.float32) for _ in texts]
    assert rec.accuracy(noise, texts)["accuracy"] <= 0.25


def test_needs_two_phrases():
    with pytest.raises(ValueError, match="at least two"):
        TemplateRecogniser(["yes", "yes."])


def test_a_channel_distorts_the_templates_the_same_way():
    """Speech through a channel (here: time reversal) is judged against templates through the same channel."""
    reverse = lambda wave: wave[::-1].copy()  # noqa: E731
    plain, matched = TemplateRecogniser(ANSWERS), TemplateRecogniser(ANSWERS, channel=reverse)
    bank, rng = data_lib.load_word_bank(), np.random.default_rng(7)
    waves = [reverse(bank.say(data_lib.spoken_form(t), rng)) for t in ANSWERS]
    assert matched.accuracy(waves, ANSWERS)["accuracy"] >= 0.9
    assert plain.accuracy(waves, ANSWERS)["accuracy"] < matched.accuracy(waves, ANSWERS)["accuracy"]
