"""Flamingo under mesh (data, fsdp, tensor) = (2, 2, 2) on 8 faked CPU devices: logits and gradients equal the
single-device ones, and the parameters are really split by their logical axis names."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flamingo_testlib import IMAGE, tiny_config, with_gates
from jax.sharding import NamedSharding, PartitionSpec as P

from common.sharding import activate, make_mesh, params_sharding
from flamingo_jax.model import Flamingo, init_params

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


@pytest.mark.slow
def test_sharded_forward_and_gradients_equal_single_device():
    # No vision tower here (its sharding is tested in common): features in, so that compilation stays short.
    model = Flamingo(tiny_config().replace(vision=None, vision_width=24))
    boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0), batch=4, num_media=2))
    params = with_gates(jax.jit(lambda k: nn.unbox(init_params(model, k, batch=4, num_media=2)))(jax.random.key(0)))
    rng = np.random.RandomState(0)
    ids = rng.randint(6, 48, (4, 12)).astype(np.int32)
    ids[:, [1, 6]] = IMAGE
    px = jnp.asarray(np.random.RandomState(1).randn(4, 2, 1, 5, 24).astype(np.float32))  # [B, N, T, S, Dv]

    def loss_fn(p, ids, px):
        logits = model.apply({"params": p}, ids, vision_features=px)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)), logits

    (ref_loss, ref_logits), ref_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, ids, px)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = params_sharding(boxed, mesh)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    with activate(mesh):
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), in_shardings=(shardings, batch, batch),
                       out_shardings=((NamedSharding(mesh, P()), None), shardings))
        (loss, logits), grads = step(jax.device_put(params, shardings), jax.device_put(ids, batch),
                                     jax.device_put(px, batch))
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-5, rtol=1e-7)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-5, rtol=1e-7)
    # gated block and resampler weights are split too (heads over `tensor`, embed over `fsdp`)
    q = grads["lm"]["decoder"]["groups"]["block"]["attn"]["q"]["kernel"]  # [G, E, H, Dh]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert grads["resampler"]["layers_0"]["ff"]["up"]["kernel"].sharding.spec == P("fsdp", "tensor")
