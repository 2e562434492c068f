"""Logical-axis sharding of the LM core on 8 faked CPU devices: under mesh (data, fsdp, tensor) = (2, 2, 2)
the forward pass and gradients equal single-device results, and the large parameters really are split."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from common.lm import DecoderLM, LMConfig
from common.params import random_params
from common.sharding import activate, logical_to_spec, make_mesh, params_sharding

CFG = LMConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
               max_position_embeddings=32)

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def test_make_mesh_sizes_and_errors():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 2})


def test_rules_table():
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("act_batch", "act_length", "act_embed")) == P(("data", "fsdp"), None, None)


@pytest.mark.slow
def test_sharded_forward_and_gradients_equal_single_device():
    model = DecoderLM(CFG)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (8, 16)))
    mask = jnp.ones((8, 16), jnp.int32).at[1, :5].set(0)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]
    params = random_params(model, ids)

    def loss_fn(p, ids, mask):
        logits = model.apply({"params": p}, ids, mask)
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:]), logits

    (ref_loss, ref_logits), ref_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, ids, mask)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = params_sharding(boxed, mesh)
    sharded_params = jax.device_put(params, shardings)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    with activate(mesh):
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                       in_shardings=(shardings, batch_sharding, batch_sharding),
                       out_shardings=((NamedSharding(mesh, P()), None), shardings))
        (loss, logits), grads = step(sharded_params, jax.device_put(ids, batch_sharding),
                                     jax.device_put(mask, batch_sharding))
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)

    # The large parameters really are split: kernels over fsdp x tensor, embedding over vocab x embed.
    up = sharded_params["decoder"]["layers"]["mlp"]["up"]["kernel"]  # [L, E, F]
    assert up.sharding.spec == P(None, "fsdp", "tensor")
    chex.assert_shape(up.addressable_shards[0].data, (CFG.num_layers, CFG.hidden_size // 2, CFG.intermediate_size // 2))
    q = sharded_params["decoder"]["layers"]["attn"]["q"]["kernel"]  # [L, E, H, D]
    chex.assert_shape(q.addressable_shards[0].data, (CFG.num_layers, CFG.hidden_size // 2, CFG.num_heads // 2,
                                                    CFG.dim_per_head))
    embedding = sharded_params["embed"]["embedding"]  # [V, E]
    chex.assert_shape(embedding.addressable_shards[0].data, (CFG.vocab_size // 2, CFG.hidden_size // 2))
    assert grads["decoder"]["layers"]["mlp"]["down"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")
