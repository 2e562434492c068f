"""Batched generation with LLaVA-NeXT (anyres): `generate_batch` over requests with mixed image counts and image
sizes (different crop grids, so different placeholder counts per image) gives the same tokens as one request at a
time, and its greedy output equals transformers' `LlavaNextForConditionalGeneration.generate` on the converted tiny
model."""
import chex
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import llava_jax  # noqa: E402
from common.generate import GenerationConfig  # noqa: E402
from llava_jax.inference import build_batch  # noqa: E402
from llava_testlib import IMAGE_TOKEN, hf_llava, next_inputs  # noqa: E402

PINPOINTS = [[42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]  # LLaVA-NeXT's five, scaled to 42 px crops
NEW = 8


@pytest.fixture(scope="module")
def next_model(tmp_path_factory):
    hf = hf_llava("llama", 42, next_pinpoints=PINPOINTS, seed=5, text_overrides=dict(max_position_embeddings=256))
    path = tmp_path_factory.mktemp("llava_next_gen")
    hf.save_pretrained(path)
    module, params = llava_jax.load_hf(str(path))
    return hf, module, params


def _requests(real_images):
    """Token-id prompts, one IMAGE_TOKEN per image: two images (2x2 and 3x1 crop grids), one (2x2, square), none."""
    rng = np.random.RandomState(7)
    text = lambda n: list(rng.randint(1, IMAGE_TOKEN, n))  # noqa: E731
    images = [real_images["coffee"], real_images["astronaut"][:, 200:350], real_images["astronaut"]]
    return [([images[0], images[1]], text(4) + [IMAGE_TOKEN] + text(2) + [IMAGE_TOKEN] + text(5)),
            ([images[2]], text(3) + [IMAGE_TOKEN] + text(6)),
            ([], text(7))]


@pytest.mark.slow
def test_next_batched_equals_one_by_one_and_transformers(next_model, real_images):
    hf, module, params = next_model
    requests = _requests(real_images)
    config = GenerationConfig(max_new_tokens=NEW, pad_token_id=0, bucket=128)
    batched = llava_jax.generate_batch(module, params, None, requests, config=config)
    # image_slots=2: the single requests share one compilation (one image slot or none is padded to two)
    single = [llava_jax.generate_batch(module, params, None, [r], config=config, image_slots=2)[0] for r in requests]
    assert batched == single and all(len(t) == NEW for t in batched)

    # transformers on the same prompts (placeholders expanded by our config, which the parity tests check) and pixels
    batch = build_batch(module, None, requests)
    counts = module.config.tokens_per_image(batch["image_sizes"][batch["image_mask"]])
    assert batch["pixel_values"].shape[1:3] == (2, module.config.max_crops) and len(set(counts.tolist())) == 3
    pixels, sizes = next_inputs([img for images, _ in requests for img in images], PINPOINTS, 42)
    chex.assert_trees_all_equal(sizes, batch["image_sizes"][batch["image_mask"]])
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                          attention_mask=torch.tensor(batch["attention_mask"]),
                          pixel_values=torch.tensor(np.moveaxis(pixels, -1, -3)), image_sizes=torch.tensor(sizes),
                          max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0,
                          suppress_tokens=[IMAGE_TOKEN])  # ours never generates the placeholder id either
    chex.assert_trees_all_equal(np.asarray(batched), ref[:, batch["input_ids"].shape[1]:].numpy())
