"""Packed VITA batches (config `data.pack: true`): tiles and audio clips of several samples in one row, each sample of
a packed row (its own image and its own speech) gets the logits it gets alone (f32 <= 1e-4), a clip credited to
another sample poisons the row, and the packed task's batch spec is what its pipeline yields."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.trainer import DataShard
from configs import load_config
from vita_jax.task import make_task, model_inputs

pytestmark = pytest.mark.slow  # builds and runs the VITA task (speech encoder, vision tower, LM)


@pytest.fixture(scope="module")
def packed():
    config = load_config("vita/tiny_stage2_2")
    config.model.text.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=48,
                             max_position_embeddings=1024)
    config.model.vision.update(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=1,
                               num_heads=1)
    config.model.audio.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
    config.data.pack = True
    for spec in config.data.datasets.values():
        spec.image_size, spec.size, spec.max_len = 28, 64, 480
    config.batch_size = 2
    task = make_task(config)
    params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
    batch = next(task.make_train_data(DataShard(0, 1))["spoken_qa"])
    return task, params, batch


def test_each_packed_sample_equals_the_sample_alone(packed):
    task, params, batch = packed
    assert batch["segment_ids"].max() >= 2, "nothing was packed"
    assert batch["audio_mask"].any(axis=-1).sum() >= 2, "fewer than two clips in the batch"
    apply = jax.jit(lambda p, ids, kw: task.model.apply({"params": p}, ids, **kw))
    logits = apply(params, batch["input_ids"], model_inputs(batch))
    chex.assert_tree_all_finite(logits)
    for r, seg in enumerate(batch["segment_ids"]):
        for s in range(1, seg.max() + 1):
            where = np.nonzero(seg == s)[0]
            tiles = np.nonzero(batch["image_segment_ids"][r] == s)[0]
            clips = np.nonzero(batch["audio_segment_ids"][r] == s)[0]
            alone = {"attention_mask": np.ones((1, len(where)), bool),
                     "pixel_values": batch["images"][r, tiles][None], "image_mask": np.ones((1, len(tiles)), bool)}
            if len(clips):
                alone.update(input_features=batch["audio_features"][r, clips][None],
                             feature_attention_mask=batch["audio_mask"][r, clips][None])
            expected = apply(params, batch["input_ids"][r, where][None], alone)[0]
            chex.assert_trees_all_close(logits[r, where], expected, atol=1e-4)


def test_a_clip_credited_to_another_sample_poisons_the_row(packed):
    task, params, batch = packed
    batch = dict(batch)
    owners = batch["audio_segment_ids"].copy()
    row = int(np.argmax((owners > 0).sum(1)))
    owners[row, np.nonzero(owners[row] > 0)[0][0]] = batch["segment_ids"][row].max() + 1
    batch["audio_segment_ids"] = owners
    logits = task.model.apply({"params": params}, jnp.asarray(batch["input_ids"]), **model_inputs(batch))
    assert np.isnan(np.asarray(logits[row])).all()


def test_batch_spec_is_what_the_packed_pipeline_yields(packed):
    task, _, batch = packed
    spec = task.batch_spec()["spoken_qa"]
    assert set(spec) == set(batch)
    for key, value in batch.items():
        assert spec[key].shape[1:] == value.shape[1:] and spec[key].dtype == value.dtype, key
