"""LLaVA inference: batched generation over (images, prompt) requests with mixed image counts equals one request at
a time; greedy output equals transformers' `generate` on a converted tiny LlavaForConditionalGeneration (issue 7);
the chat CLI answers a one-shot prompt in a subprocess and keeps a multi-turn history interactively."""
import io
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from common.data.shapes import ShapesSource
from tiny_llava_testlib import REPO, random_model


@pytest.fixture(scope="module")
def tiny():
    return random_model(seed=3)


@pytest.fixture(scope="module")
def images():
    src = ShapesSource("captions", "validation", 3, 0, 40)  # 40 px: resized to the tower's 32 like any photo
    return [src[i]["image"] for i in range(3)]


@pytest.mark.slow
def test_batched_generation_equals_one_by_one(tiny, images):
    from llava_jax import generate_batch

    model, params, tok = tiny
    requests = [([images[0], images[1]], "Compare the two images."), ([images[2]], "What is it?"),
                ([], "Say something."), ([images[1]], "How many shapes are there?")]
    batched = generate_batch(model, params, tok, requests, max_new_tokens=6, return_tokens=True)
    single = [generate_batch(model, params, tok, [r], max_new_tokens=6, return_tokens=True)[0] for r in requests]
    assert batched == single
    assert all(len(t) > 0 for t in batched)
    assert isinstance(generate_batch(model, params, tok, requests[:1], max_new_tokens=6)[0], str)


def test_greedy_equals_transformers_generate(save_hf, real_images):
    import torch

    import llava_jax
    from common.generate import GenerationConfig, generate
    from llava_jax.inference import GenerationAdapter
    from llava_testlib import clip_pixels, hf_llava, prompts

    hf = hf_llava("llama", 42, seed=2)
    module, params = llava_jax.load_hf(save_hf(hf))
    pixels = clip_pixels([real_images[k] for k in ("astronaut", "coffee", "chelsea")], 42)
    tokens = module.config.tokens_per_crop
    ids, mask = prompts([[tokens, tokens], [tokens]], tokens, np.random.RandomState(4))
    ours_pixels = np.zeros((2, 2) + pixels.shape[1:], np.float32)
    ours_pixels[0], ours_pixels[1, 0] = pixels[:2], pixels[2]
    new = 8
    out = generate(GenerationAdapter(module, suppress_image_token=False), params, ids, mask,
                   config=GenerationConfig(max_new_tokens=new, pad_token_id=0),
                   prefill_inputs={"pixel_values": ours_pixels, "image_mask": np.array([[1, 1], [1, 0]], bool)},
                   lm_config=module.config.text)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(np.moveaxis(pixels, -1, -3)), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    chex.assert_trees_all_equal(np.asarray(out["tokens"]), ref[:, ids.shape[1]:].numpy())


@pytest.mark.slow
def test_chat_cli_one_shot_and_interactive(tiny, images, tmp_path, monkeypatch, capsys):
    from common.data.image_ops import encode_png
    from llava_jax import chat, generate_batch
    from llava_jax.hf import save_msgpack

    model, params, tok = tiny
    save_msgpack(str(tmp_path / "ckpt"), model, jax.tree.map(np.asarray, params), tok)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        with open(paths[-1], "wb") as f:
            f.write(encode_png(images[i]))
    expected = generate_batch(model, params, tok, [(images[:2], "What is in the images?")], max_new_tokens=5)[0]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "llava_jax.chat", "--checkpoint", str(tmp_path / "ckpt"),
                           "--image", paths[0], "--image", paths[1], "--prompt", "What is in the images?",
                           "--max_new_tokens", "5"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == expected

    # interactive: one turn per stdin line until `exit`, history kept
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the images?\nAnd then?\nexit\nnever read\n"))
    assert chat.main(["--checkpoint", str(tmp_path / "ckpt"), "--image", paths[0], "--image", paths[1],
                      "--max_new_tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == expected
    session = chat.ChatSession(model, params, tok, images[:2], max_new_tokens=5)
    session.ask("What is in the images?")
    session.ask("And then?")
    assert len(session.messages) == 4 and session.messages[0][1].startswith("<image>\n<image>\n")
