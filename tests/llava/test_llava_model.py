"""The Llava module on its own: a batch with mixed image counts (2, 0, 1 images; a hole in the image mask) equals
each sample run alone; the original's out-of-vocabulary placeholder id (-200) works; sharding on a (2, 2, 2) mesh of
8 fake devices equals one device; clear errors for bad inputs; stage-1 / stage-2 trainable patterns; published
LLaVA-1.5 / 1.6 parameter counts from `jax.eval_shape`."""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from common.lm import LMConfig
from common.sharding import activate, make_mesh, params_sharding
from common.vision.clip import CLIPVisionConfig
from llava_jax import Llava, LlavaConfig, presets, example_inputs, param_counts, trainable_patterns
from llava_testlib import jit_apply, prompts, random_params

CONFIG = LlavaConfig(
    text=LMConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
    vision=CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=2,
                            num_heads=2),
    image_token_index=-200, vision_feature_layer=-2)
F = CONFIG.tokens_per_crop  # 4


@pytest.fixture(scope="module")
def model():
    module = Llava(CONFIG)
    boxed, params = random_params(module, example_inputs(CONFIG))
    return module, boxed, params


def _batch(rng):
    """3 samples with 2, 0 and 1 images in N=2 slots (sample 2 uses slot 1: a hole in the mask), right padded."""
    ids, mask = prompts([[F, F], [], [F]], F, rng, length=24, vocab=64, image_token=-200)
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding this time
    pixels = rng.randn(3, 2, 28, 28, 3).astype(np.float32)
    image_mask = np.array([[True, True], [False, False], [False, True]])
    return ids, mask, pixels, image_mask


class LlavaForwardVariantsTest(chex.TestCase):
    """The Llava forward pass under jit (fast tier) and eagerly (chex variants). The eager variant is in the slow
    tier: eagerly, flax's layer scans are compiled again on every call (~25 s on 2 CPU cores)."""

    @pytest.fixture(autouse=True)
    def _module_and_params(self, model):
        self.module, _, self.params = model

    @chex.variants(with_jit=True)
    def test_mixed_image_counts_equal_per_sample_results(self):
        self._check_mixed_image_counts_equal_per_sample_results()

    @chex.variants(without_jit=True)
    @pytest.mark.slow
    def test_mixed_image_counts_equal_per_sample_results_slow(self):
        self._check_mixed_image_counts_equal_per_sample_results()

    def _check_mixed_image_counts_equal_per_sample_results(self):
        module, params = self.module, self.params
        forward = self.variant(lambda p, *a: module.apply({"params": p}, *a))
        apply = lambda *a: np.asarray(forward(params, *(jnp.asarray(x) for x in a)))  # noqa: E731
        ids, mask, pixels, image_mask = _batch(np.random.RandomState(0))
        batch = apply(ids, pixels, mask, image_mask)
        chex.assert_shape(batch, (3, 24, 64))
        chex.assert_tree_all_finite(batch)
        for b in range(3):
            real = pixels[b][image_mask[b]]  # this sample's images, compacted into the first slots
            alone_pixels = np.zeros_like(pixels[:1])
            alone_pixels[0, :len(real)] = real
            # per-sample image counts [B] instead of a mask: the first `count` slots are real
            alone = apply(ids[b:b + 1], alone_pixels, mask[b:b + 1], np.array([len(real)]))
            valid = mask[b].astype(bool)
            chex.assert_trees_all_close(alone[0][valid], batch[b][valid], atol=1e-5, rtol=1e-7)


@pytest.mark.slow
def test_sharded_on_2x2x2_mesh_equals_single_device(model):
    module, boxed, params = model
    rng = np.random.RandomState(1)
    ids, mask = prompts([[F, F], [F], [], [F, F]], F, rng, length=24, vocab=64, image_token=-200)
    pixels = rng.randn(4, 2, 28, 28, 3).astype(np.float32)
    image_mask = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], bool)
    single = jit_apply(module, params, ids, pixels, mask, image_mask)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded_params = jax.device_put(params, params_sharding(boxed, mesh))
    assert sharded_params["lm"]["decoder"]["layers"]["mlp"]["up"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert sharded_params["projector"]["linear_1"]["kernel"].sharding.spec == P("fsdp", "tensor")
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    inputs = [jax.device_put(jnp.asarray(a), batch_sharding) for a in (ids, pixels, mask, image_mask)]
    with activate(mesh):
        out = jax.jit(lambda p, *a: module.apply({"params": p}, *a))(sharded_params, *inputs)
    assert len(out.sharding.device_set) == 8
    valid = mask.astype(bool)
    chex.assert_trees_all_close(np.asarray(out)[valid], single[valid], atol=1e-5, rtol=1e-7)


def test_bad_inputs_raise_clear_errors(model):
    module, boxed, params = model
    ids, mask, pixels, image_mask = _batch(np.random.RandomState(0))
    apply = lambda *a, **k: module.apply({"params": params}, *a, **k)  # noqa: E731 - eager: checks run on values
    with pytest.raises(ValueError, match="sample 0: 8 placeholder tokens vs 4 image feature tokens"):
        apply(ids, pixels, mask, np.array([[True, False], [False, False], [False, True]]))
    with pytest.raises(ValueError, match="no pixel_values"):
        apply(ids, None, mask)
    with pytest.raises(ValueError, match="pixel_values must be .*NHWC"):
        apply(ids, pixels[:, :, :, :, :, None], mask, image_mask)
    with pytest.raises(ValueError, match="image_mask must be"):
        apply(ids, pixels, mask, image_mask[:, :1])
    with pytest.raises(ValueError, match="input_ids must be"):
        apply(ids[0], pixels, mask, image_mask)
    # under jit nothing can be raised: the mismatched sample's logits become NaN, the others are untouched
    bad_mask = np.array([[True, False], [False, False], [False, True]])
    out = jit_apply(module, params, ids, pixels, mask, bad_mask)
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()
    with pytest.raises(ValueError, match="unknown projector type"):
        CONFIG.replace(projector_type="mlp2x")
    with pytest.raises(ValueError, match="anyres needs the 'default' select strategy"):
        CONFIG.replace(image_grid_pinpoints=((28, 56),), vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="not a multiple of the crop size"):
        CONFIG.replace(image_grid_pinpoints=((30, 56),))
    next_module = Llava(CONFIG.replace(image_grid_pinpoints=((28, 56), (56, 28))))
    with pytest.raises(ValueError, match="image_sizes is traced"):
        jax.eval_shape(lambda s: next_module.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                                  jnp.zeros((1, 1, 3, 28, 28, 3)), None, None, s),
                       jnp.zeros((1, 1, 2), jnp.int32))


def test_trainable_patterns_per_stage(model):
    params = model[2]
    paths = ["/".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    trainable = lambda stage: {p for p in paths if any(re.fullmatch(r, p) for r in trainable_patterns(stage, CONFIG))}  # noqa: E731
    assert trainable(1) == {p for p in paths if p.startswith("projector/")}
    assert trainable(2) == {p for p in paths if p.startswith(("projector/", "lm/"))}
    assert not any(p.startswith("vision_tower/") for p in trainable(2))


@pytest.mark.parametrize("name", sorted(presets.PUBLISHED_PARAMS))
def test_published_param_counts(name):
    count = param_counts(getattr(presets, name)())["total"]
    assert abs(count - presets.PUBLISHED_PARAMS[name]) / presets.PUBLISHED_PARAMS[name] <= 0.001, (name, count)
    if name == "llava_v1_5_7b":  # Vicuna-7B + CLIP ViT-L/14-336 (no visual projection) + mlp2x_gelu 1024->4096->4096
        assert count == 6_738_415_616 + 303_507_456 + (1024 * 4096 + 4096) + (4096 * 4096 + 4096)
