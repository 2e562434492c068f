"""Contrastive pretraining of the vision encoder (common.contrastive; Flamingo App. B.1.3): CLIP's loss against a
direct numpy implementation, the dual encoder's pooling and padding invariance, the training stage through
common.trainer, and `init_vision.workdir` grafting the trained tower into a Flamingo, frozen."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.contrastive import DualEncoder, DualEncoderConfig, contrastive_loss
from common.data import shapes
from common.lm import LMConfig
from common.vision.clip import CLIPVisionConfig


def _numpy_clip_loss(img, txt, scale):
    logits = scale * img @ txt.T
    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return -np.mean(np.diag(lg) - np.log(np.exp(lg).sum(1)))
    return (ce(logits) + ce(logits.T)) / 2


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_contrastive_loss_equals_clip_pseudocode():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(6, 8)))
    loss, aux = contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(14.3))
    chex.assert_trees_all_close(float(loss), _numpy_clip_loss(img, txt, 14.3), rtol=1e-5)
    assert float(aux["tokens"]) == 6
    # Matching pairs identical -> accuracy 1 and a loss far below log(B).
    loss, aux = contrastive_loss(jnp.asarray(img), jnp.asarray(img), jnp.float32(100.0))
    assert float(aux["i2t_accuracy"]) == float(aux["t2i_accuracy"]) == 1.0 and float(loss) < 0.1


def test_contrastive_loss_padding_rows_drop_out():
    rng = np.random.default_rng(1)
    img, txt = _unit(rng.normal(size=(5, 8))), _unit(rng.normal(size=(5, 8)))
    valid = np.array([True, True, True, False, False])
    loss, aux = contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(10.0), valid=jnp.asarray(valid))
    chex.assert_trees_all_close(float(loss), _numpy_clip_loss(img[:3], txt[:3], 10.0), rtol=1e-5)
    assert float(aux["tokens"]) == 3


def _tiny_encoder():
    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48, num_layers=1,
                              num_heads=2)
    text = LMConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32,
                    max_position_embeddings=32)
    return DualEncoder(DualEncoderConfig(vision=vision, text=text, projection_dim=12))


@pytest.mark.slow
def test_dual_encoder_unit_embeddings_and_eos_pooling():
    model = _tiny_encoder()
    pixels = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    ids = jnp.array([[1, 5, 6, 7, 2], [1, 9, 2, 0, 0]])
    mask = ids > 0
    params = model.init(jax.random.key(1), pixels, ids, mask)["params"]
    assert set(params) == {"vision", "text", "image_projection", "text_projection", "logit_scale"}
    img, txt, scale = model.apply({"params": params}, pixels, ids, mask)
    chex.assert_shape([img, txt], (2, 12))
    chex.assert_trees_all_close(np.linalg.norm(np.asarray(img), axis=-1), np.asarray(1.0), rtol=1e-5)
    chex.assert_trees_all_close(float(scale), 1 / 0.07, rtol=1e-5)
    # The second text read at its eos (slot 2), whatever padding follows: equal to the unpadded text alone.
    alone = model.apply({"params": params}, ids[1:, :3], method=DualEncoder.encode_text)
    chex.assert_trees_all_close(np.asarray(txt[1]), np.asarray(alone[0]), atol=1e-6, rtol=1e-7)
    # A different last token changes the embedding (it is read there, not at slot 0).
    other = model.apply({"params": params}, jnp.array([[1, 9, 3]]), method=DualEncoder.encode_text)
    assert not np.allclose(np.asarray(other[0]), np.asarray(alone[0]), atol=1e-4)


def test_single_object_captions():
    src = shapes.ShapesSource("captions", "train", size=20, image_size=16, max_objects=1)
    assert all(" shapes:" not in src[i]["caption"] for i in range(20))
    assert src[3]["caption"] == shapes.ShapesSource("captions", "train", 20, 0, 16, 1)[3]["caption"]
    with pytest.raises(ValueError, match="max_objects"):
        shapes.ShapesSource("vqa", "train", size=4, max_objects=1)


@pytest.mark.slow
def test_contrastive_stage_trains_and_grafts_into_flamingo(tmp_path):
    from common.trainer import Trainer
    from configs.flamingo.tiny_vision import get_config
    from flamingo_jax.task import make_task, restore_params
    from test_task_eval import _tiny_train_config

    small = _tiny_train_config()
    config = get_config()
    config.model = small.model
    config.total_steps, config.log_every = 12, 1  # checkpoint_every stays: only the final step
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    config.contrastive.text.update(hidden_size=32, num_layers=1, intermediate_size=64)
    config.data.datasets.captions.update(batch_size=16, size=64, max_len=24)
    config.optimizer.update(lr=3e-3, warmup_steps=0)
    vision_dir = str(tmp_path / "vision")
    trainer = Trainer(config, make_task(config, vision_dir), vision_dir)
    result = trainer.run()
    trainer.close()
    losses = [r["loss"] for r in result.metrics if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    trained = restore_params(vision_dir)["vision"]

    small.init_vision.workdir = vision_dir
    small.total_steps = 2
    flamingo_dir = str(tmp_path / "flamingo")
    task = make_task(small, flamingo_dir)
    trainer = Trainer(small, task, flamingo_dir)
    trainer.run()
    trainer.close()
    final = jax.device_get(trainer.state.params)["vision"]  # grafted, then frozen through both steps
    chex.assert_trees_all_equal(final, trained)

    # A Flamingo whose tower differs from the pretrained one is refused, not half-grafted.
    small.model.vision.update(hidden_size=32, intermediate_size=64)
    small.model.resampler.update(head_dim=8)
    with pytest.raises(ValueError, match="different vision tower"):
        bad = make_task(small, None)
        bad.load_pretrained(nn_unbox(bad.init_params(jax.random.key(0))))


def nn_unbox(tree):
    import flax.linen as nn
    return nn.unbox(tree)
