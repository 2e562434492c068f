"""LLaVA training (Liu et al. 2023, Sec. 4.2): the answer-only loss mask through the data transform, a few trainer
steps lower the loss (micro tiny stage 0), stage 1 trains the projector only, stage 2 starts from the stage-1
checkpoint, users' own LLaVA JSON data trains with one command's config."""
import json
import os

import chex
import numpy as np
import pytest

from tiny_llava_testlib import load_config, micro

pytestmark = pytest.mark.slow  # trainings


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """Micro stage 0 (the LM on text, 10 steps) then micro stage 1 (projector only, 2 steps) through common.train."""
    from common.train import train
    from llava_jax.task import make_task

    root = tmp_path_factory.mktemp("llava_train")
    s0 = micro(load_config("tiny_stage0"), steps=10, batch=8)
    del s0.data.datasets["captions"]
    s0.optimizer.lr, s0.optimizer.warmup_steps = 1e-2, 2
    result = train(s0, str(root / "s0"), make_task)
    s1 = micro(load_config("tiny_stage1"), steps=2)
    s1.init_from = str(root / "s0")
    train(s1, str(root / "s1"), make_task)
    return root, result


def test_transform_masks_answers_only_and_expands_images():
    from llava_jax import data

    tok = data.shapes_tokenizer(1024)
    image_id = tok.token_to_id("<image>")
    src = data.ShapesLlavaSource("conversations", "train", size=4, image_size=32, max_rounds=2)
    record = src[0]
    ex = data.LlavaSampleTransform(tok, "vicuna_v1", image_token_id=image_id, tokens_per_image=4, image_size=32)(record)
    ids, mask = ex["input_ids"], ex["loss_mask"]
    assert (ids == image_id).sum() == 4 and not mask[ids == image_id].any()
    answers = [t["value"] for t in record["conversations"][1::2]]
    assert tok.decode(ids[mask]) == "".join(f" {a}</s>" for a in answers)
    chex.assert_shape(ex["images"], (1, 32, 32, 3))
    assert ex["images"].dtype == np.float32
    # stage 1 (plain): only the caption and its newline are targets
    cap = data.ShapesLlavaSource("captions", "train", size=2, image_size=32)[1]
    ex = data.LlavaSampleTransform(tok, "plain", image_token_id=image_id, tokens_per_image=4, image_size=32)(cap)
    assert tok.decode(ex["input_ids"][ex["loss_mask"]]) == cap["conversations"][1]["value"] + "\n"
    # text-only (stage 0): no image tokens, no images
    ex = data.LlavaSampleTransform(tok, "vicuna_v1", image_token_id=image_id, tokens_per_image=4, image_size=32,
                                   text_only=True)(record)
    assert image_id not in ex["input_ids"] and "images" not in ex


def test_loss_ignores_everything_but_answers():
    """Changing a non-target token's logit target changes nothing; the loss counts exactly the masked tokens."""
    import jax.numpy as jnp

    from common.losses import shifted_next_token_loss

    logits = jnp.asarray(np.random.RandomState(0).randn(1, 6, 11), jnp.float32)
    ids = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    mask = jnp.asarray([[False, False, False, True, True, False]])
    loss, aux = shifted_next_token_loss(logits, ids, mask)
    other = ids.at[0, 2].set(9).at[0, 5].set(10)  # targets outside the answer
    loss2, _ = shifted_next_token_loss(logits, other, mask)
    assert float(aux["tokens"]) == 2 and float(loss) == pytest.approx(float(loss2))


def test_training_lowers_the_loss(stage1_run):
    _, result = stage1_run
    losses = [row["loss"] for row in result.metrics if "loss" in row]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


def test_stage2_starts_from_the_stage1_checkpoint(stage1_run):
    import flax
    import flax.linen as nn
    import jax

    from llava_jax.task import make_task, restore_params

    root, _ = stage1_run
    s1_params = restore_params(str(root / "s1"))
    s0_params = restore_params(str(root / "s0"))
    config = micro(load_config("tiny_stage2"))
    config.init_from = str(root / "s1")
    task = make_task(config, workdir=str(root / "s2"))
    fresh = nn.unbox(jax.jit(task.init_params)(jax.random.key(123)))
    loaded = task.load_pretrained(fresh)
    flat = flax.traverse_util.flatten_dict
    for path, value in flat(s1_params).items():
        chex.assert_trees_all_equal(np.asarray(flat(loaded)[path]), value)
    # stage 1 trained the projector and nothing else
    assert not np.allclose(s1_params["projector"]["linear_1"]["kernel"], s0_params["projector"]["linear_1"]["kernel"])
    for path, value in flat(s0_params["lm"]).items():
        chex.assert_trees_all_equal(flat(s1_params["lm"])[path], value)
    assert os.path.isfile(root / "s2" / "tokenizer.json")


def test_own_llava_json_data_feeds_the_trainer(tmp_path):
    """The documented path: configs/llava/own_data.py with data.json + data.image_dir."""
    from common.data.image_ops import encode_png
    from common.data.shapes import ShapesSource
    from common.trainer import DataShard
    from llava_jax.task import make_task

    (tmp_path / "images").mkdir()
    records = []
    for i in range(6):
        ex = ShapesSource("captions", "train", 6, 0, 32)[i]
        (tmp_path / "images" / f"{i}.png").write_bytes(encode_png(ex["image"]))
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": ex["caption"]}]})
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Hi"},
                                                    {"from": "gpt", "value": "Hello."}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    config = micro(load_config("own_data"), batch=4)
    config.data.json, config.data.image_dir = str(tmp_path / "data.json"), str(tmp_path / "images")
    config.data.max_len = 96
    task = make_task(config)
    batch = next(task.make_train_data(DataShard(0, 1))["own"])
    chex.assert_shape(batch["input_ids"], (4, 96))
    chex.assert_shape(batch["images"], (4, 1, 32, 32, 3))
    assert batch["loss_mask"].any(axis=1).all()
