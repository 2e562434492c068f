"""The analytic FLOP counts (LM, CLIP ViT, the Flamingo training step by part) against the matmuls JAX actually
traces (`common.flops`, counted from the jaxpr of the forward and of the training gradient)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.flops import matmul_flops
from common.lm import DecoderLM, matmul_flops_per_token
from common.vision import build_vision_tower
from common.vision.clip import matmul_flops_per_image
from common.vision.nfnet import nfnet_f
from flamingo_jax.model import Flamingo, abstract_params, train_flops_per_example, vision_forward_flops
from flamingo_testlib import IMAGE, tiny_config

L, N = 16, 2


def _ids():
    ids = np.full((2, L), 7, np.int32)
    ids[:, [1, 9]] = IMAGE
    return jnp.asarray(ids)


def test_counter_matches_the_analytic_lm_and_vit():
    cfg = tiny_config()
    lm = DecoderLM(cfg.lm)
    ids = jax.ShapeDtypeStruct((1, L), jnp.int32)
    params = nn.unbox(jax.eval_shape(lm.init, jax.random.key(0), ids))["params"]
    assert matmul_flops(lambda p, i: lm.apply({"params": p}, i), params, ids) == matmul_flops_per_token(cfg.lm, L) * L
    tower = build_vision_tower(cfg.vision)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    assert matmul_flops(tower.apply, jax.eval_shape(tower.init, jax.random.key(0), x), x) == \
        matmul_flops_per_image(cfg.vision)


def test_counter_counts_scanned_and_grouped_convolutions():
    """NFNet-F0 at 256 px: 12.6 GMACs by timm's count (with its classifier head); XLA's cost analysis would count
    a scanned stage's body once."""
    flops = vision_forward_flops(nfnet_f(0, image_size=256, num_classes=0))
    assert 2 * 12.0e9 < flops < 2 * 12.7e9


@pytest.mark.parametrize("every,position", [(2, None), (1, None), (4, 2)])
def test_flamingo_forward_and_training_flops_match_the_traced_ones(every, position):
    """Forward: exactly. Training (the gradient of the trained parts, dead code dropped): within 2%, the analytic
    count's 3x for the trained parts also counting the few products a frozen input needs no gradient for. Unscanned
    layers: under scan_layers the shared body also runs the backward of the layers below the first block."""
    cfg = tiny_config(every=every, position=position, scan=False)
    model = Flamingo(cfg)
    ids, px = _ids(), jax.ShapeDtypeStruct((2, N, 16, 16, 3), jnp.float32)
    params = nn.unbox(abstract_params(model.config))
    parts = {k: 2 * v for k, v in train_flops_per_example(cfg, L, N).items()}  # batch 2

    forward = matmul_flops(lambda p, x: model.apply({"params": p}, ids, pixel_values=x), params, px)
    lm_forward = 2 * matmul_flops_per_token(cfg.lm, L) * L
    assert forward == pytest.approx(parts["vision"] + (parts["resampler"] + parts["blocks"]) / 3 + lm_forward)

    trained = ("resampler", "block")  # the Flamingo recipe: everything else is frozen (a constant to the gradient)

    def loss(p, x):
        p = jax.tree_util.tree_map_with_path(
            lambda path, v: v if any(t in jax.tree_util.keystr(path) for t in trained) else jax.lax.stop_gradient(v), p)
        return model.apply({"params": p}, ids, pixel_values=x).sum()

    assert matmul_flops(jax.grad(loss), params, px) == pytest.approx(parts["total"], rel=0.02)
