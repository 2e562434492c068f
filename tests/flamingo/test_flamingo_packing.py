"""Packed Flamingo rows: text_time and the per-image masks restart per sample, so no token cross-attends to an image
of another sample; each sample of a packed row (different images per sample, gates open) gets the logits it gets
alone (f32 <= 1e-4), with the immediate-image and the all-previous-images masking."""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.gated_cross_attention import media_segments_from_ids, text_time_from_ids
from flamingo_testlib import IMAGE, build, jit_apply, tiny_config, with_gates

ROW = 40


def test_text_time_restarts_per_sample():
    ids = jnp.asarray([[IMAGE, 9, 9, 9, IMAGE, 9, 9, IMAGE, 9, 0]])
    seg = jnp.asarray([[1, 1, 2, 2, 2, 2, 3, 3, 3, 0]])
    # sample 2's tokens before its own <image> see nothing (not sample 1's image); media numbered across the row
    chex.assert_trees_all_equal(text_time_from_ids(ids, IMAGE, segment_ids=seg),
                                np.asarray([[1, 1, 0, 0, 2, 2, 0, 3, 3, 0]]))
    chex.assert_trees_all_equal(media_segments_from_ids(ids, IMAGE, seg, 4), np.asarray([[1, 2, 3, 0]]))


def samples(rng):
    """Token ids of three samples (two images, one image after some text, no image) and their images."""
    text = lambda n: list(rng.integers(6, 48, n))  # noqa: E731
    return [([IMAGE] + text(6) + [IMAGE] + text(5), 2), (text(4) + [IMAGE] + text(7), 1), (text(9), 0)]


@pytest.mark.parametrize("immediate", [True, False])
def test_each_packed_sample_equals_the_sample_alone(immediate):
    cfg = tiny_config(every=2, only_attend_immediate_media=immediate)
    model, params = build(cfg)
    params = with_gates(params, seed=3)  # open gates: the cross-attention counts
    rng = np.random.default_rng(0)
    items = samples(rng)
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)  # a different image for every medium
    ids, seg = np.zeros((1, ROW), np.int32), np.zeros((1, ROW), np.int32)
    owners, start = [], 0
    for s, (tokens, n_images) in enumerate(items, start=1):
        ids[0, start:start + len(tokens)], seg[0, start:start + len(tokens)] = tokens, s
        owners += [s] * n_images
        start += len(tokens)
    media_slots = 4  # one unused slot
    pixel_values = np.zeros((1, media_slots, 16, 16, 3), np.float32)
    pixel_values[0, :3] = images
    image_segment_ids = np.asarray([owners + [0]], np.int32)
    apply = jit_apply(model)
    packed = apply(params, jnp.asarray(ids), pixel_values=jnp.asarray(pixel_values), segment_ids=jnp.asarray(seg),
                   image_segment_ids=jnp.asarray(image_segment_ids))  # [1, ROW, V]
    chex.assert_tree_all_finite(packed)
    derived = apply(params, jnp.asarray(ids), pixel_values=jnp.asarray(pixel_values), segment_ids=jnp.asarray(seg))
    chex.assert_trees_all_close(derived, packed, atol=1e-6)  # the media-to-sample map read from the <image> tokens

    start, first_image = 0, 0
    for tokens, n_images in items:
        own = images[first_image:first_image + max(n_images, 1)][None] if n_images else None
        alone = apply(params, jnp.asarray([tokens], jnp.int32),
                      pixel_values=None if own is None else jnp.asarray(own))[0]
        chex.assert_trees_all_close(packed[0, start:start + len(tokens)], alone, atol=1e-4)
        start += len(tokens)
        first_image += n_images


@pytest.mark.slow
def test_packed_task_batches_match_the_spec_and_give_a_finite_loss():
    """`data.pack: true` through the Flamingo task: the pipeline's packed batches (several interleaved samples per
    row, image slots by sample) match the task's batch spec, and the loss over them is finite."""
    import flax.linen as nn
    import jax

    from common.trainer import DataShard
    from flamingo_jax.task import make_task
    from test_task_eval import _tiny_train_config

    config = _tiny_train_config()
    config.data.pack = True
    task = make_task(config)
    params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
    spec = task.batch_spec()
    for name, iterator in task.make_train_data(DataShard(0, 1)).items():
        batch = next(iterator)
        assert batch["segment_ids"].max() >= 2, f"{name}: nothing was packed"
        assert set(spec[name]) == set(batch), name
        for key, value in batch.items():
            assert spec[name][key].shape[1:] == value.shape[1:] and spec[name][key].dtype == value.dtype, key
        loss, aux = jax.jit(task.loss_fn)(params, batch, jax.random.key(1))
        chex.assert_tree_all_finite((loss, aux))
        assert aux["tokens"] == batch["loss_mask"][:, 1:].sum()
