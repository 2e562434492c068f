"""Packed LLaVA batches (config `data.pack: true`): each conversation of a packed row, with its own image, gets the
logits it gets alone (f32 <= 1e-4); an image slot credited to another sample poisons the row; the packed task's
batch spec is what its pipeline yields."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.trainer import DataShard
from llava_jax.task import make_task, model_inputs
from tiny_llava_testlib import load_config, micro

pytestmark = pytest.mark.slow  # builds and runs the LLaVA task


@pytest.fixture(scope="module")
def packed_task():
    config = micro(load_config("tiny_stage2"))
    config.data.pack = True
    for spec in config.data.datasets.values():
        spec.max_len = 256
    task = make_task(config)
    params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
    batches = task.make_train_data(DataShard(0, 1))
    return task, params, {name: next(it) for name, it in batches.items()}


def test_each_packed_conversation_equals_the_conversation_alone(packed_task):
    task, params, batches = packed_task
    batch = batches["conversations"]
    chex.assert_equal_shape([batch["input_ids"], batch["segment_ids"], batch["positions"]])
    assert batch["segment_ids"].max() >= 2, "nothing was packed"
    apply = jax.jit(lambda p, ids, kw: task.model.apply({"params": p}, ids, **kw))
    packed = apply(params, batch["input_ids"], model_inputs(batch))  # [R, L, V]
    chex.assert_tree_all_finite(packed)
    checked = 0
    for r, seg in enumerate(batch["segment_ids"]):
        for s in range(1, seg.max() + 1):
            where = np.nonzero(seg == s)[0]
            slots = np.nonzero(batch["image_segment_ids"][r] == s)[0]
            alone = {"attention_mask": np.ones((1, len(where)), bool),
                     "pixel_values": batch["images"][r, slots][None], "image_mask": np.ones((1, len(slots)), bool)}
            logits = apply(params, batch["input_ids"][r, where][None], alone)[0]
            chex.assert_trees_all_close(packed[r, where], logits, atol=1e-4)
            checked += 1
    assert checked > len(batch["segment_ids"])


def test_an_image_credited_to_another_sample_poisons_the_row(packed_task):
    task, params, batches = packed_task
    batch = dict(batches["conversations"])
    owners = batch["image_segment_ids"].copy()
    row = int(np.argmax((owners > 0).sum(1)))
    first = np.nonzero(owners[row] > 0)[0][0]
    owners[row, first] = owners[row].max() + 1  # a sample that has no tokens in the row
    batch["image_segment_ids"] = owners
    logits = task.model.apply({"params": params}, jnp.asarray(batch["input_ids"]), **model_inputs(batch))
    assert np.isnan(np.asarray(logits[row])).all()
    others = [r for r in range(len(owners)) if r != row]
    chex.assert_tree_all_finite(logits[jnp.asarray(others)])


def test_batch_spec_is_what_the_packed_pipeline_yields(packed_task):
    task, _, batches = packed_task
    spec = task.batch_spec()
    for name, batch in batches.items():
        assert set(spec[name]) == set(batch), name
        for key, value in batch.items():
            assert spec[name][key].shape[1:] == value.shape[1:] and spec[name][key].dtype == value.dtype, key
