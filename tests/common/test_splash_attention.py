"""Splash attention (common/splash_attention.py) against the XLA attention path, on the CPU through the kernel's
interpret mode: causal GQA within segments, forward and gradients, f32 and bf16, sharded over 8 fake devices,
and the LM core with attention_impl='splash' (padding as segment ids) against attention_impl='xla'."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.layers import dot_product_attention
from common.lm import DecoderLM, LMConfig
from common.sharding import activate, make_mesh
from common.splash_attention import splash_causal_attention


def reference(query, key, value, segment_ids):
    """Masked softmax over [T, S]: causal and same segment."""
    t = query.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return dot_product_attention(query, key, value, mask=causal & same)


def inputs(batch=2, length=200, heads=4, kv_heads=2, dim=32, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, dim)), dtype)
    k = jnp.asarray(rng.normal(size=(batch, length, kv_heads, dim)), dtype)
    v = jnp.asarray(rng.normal(size=(batch, length, kv_heads, dim)), dtype)
    # row 0: three packed samples; row 1: one sample then padding (segment 0)
    seg = np.zeros((batch, length), np.int32)
    seg[0, :70], seg[0, 70:150], seg[0, 150:] = 1, 2, 3
    seg[1, :130] = 1
    return q, k, v, jnp.asarray(seg)


@pytest.mark.slow
class SplashTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_and_gradients_match_xla_f32(self):
        q, k, v, seg = inputs()
        splash = self.variant(splash_causal_attention)
        out = splash(q, k, v, seg)
        chex.assert_shape(out, q.shape)
        chex.assert_tree_all_finite(out)
        chex.assert_trees_all_close(out, reference(q, k, v, seg), atol=1e-4)

        weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
        loss = lambda f: lambda q, k, v: (f(q, k, v, seg) * weights).sum()  # noqa: E731
        grads = self.variant(jax.grad(loss(splash_causal_attention), argnums=(0, 1, 2)))(q, k, v)
        expected = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
        chex.assert_trees_all_close(grads, expected, atol=1e-4)

    def test_bf16_within_stated_bound(self):
        """bf16 inputs: |splash - f32 reference| <= 2e-2 (bf16 has 8 bits of mantissa; outputs are O(1))."""
        q, k, v, seg = inputs(dtype=jnp.bfloat16, seed=2)
        out = jax.jit(splash_causal_attention)(q, k, v, seg)
        assert out.dtype == jnp.bfloat16
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        chex.assert_trees_all_close(f32(out), reference(f32(q), f32(k), f32(v), seg), atol=2e-2)

    def test_sharded_equals_single_device(self):
        """8 fake CPU devices: batch over data x fsdp (2 x 2), heads over tensor (2), kernel per shard."""
        q, k, v, seg = inputs(batch=4, length=128)
        single = jax.jit(splash_causal_attention)(q, k, v, seg)
        mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
        with activate(mesh):
            sharded = jax.jit(splash_causal_attention)(q, k, v, seg)
        chex.assert_trees_all_close(sharded, single, atol=1e-5)

    def test_bad_shapes_are_named(self):
        q, k, v, seg = inputs(heads=3, kv_heads=2)
        with pytest.raises(ValueError, match="multiple of key / value heads"):
            splash_causal_attention(q, k, v, seg)
        q, k, v, seg = inputs()
        with pytest.raises(ValueError, match="segment_ids must be"):
            splash_causal_attention(q, k, v, seg[:, :10])


def tiny_lm(**overrides) -> LMConfig:
    return LMConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                    max_position_embeddings=256).replace(**overrides)


@pytest.mark.slow
def test_lm_core_splash_equals_xla_with_padding():
    """The LM core's training path: logits and gradients of attention_impl='splash' equal 'xla' (f32 <= 1e-4) on
    the real tokens, left and right padded rows included (padding becomes segment 0)."""
    xla, splash = DecoderLM(tiny_lm()), DecoderLM(tiny_lm(attention_impl="splash"))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 97, (3, 150)), jnp.int32)
    mask = np.ones((3, 150), np.int32)
    mask[1, 120:] = 0  # right padding
    mask[2, :40] = 0  # left padding
    mask = jnp.asarray(mask)
    params = xla.init(jax.random.key(0), ids)["params"]
    real = mask[..., None].astype(bool)

    def loss(model):
        return lambda p: jnp.sum(jnp.where(real, model.apply({"params": p}, ids, mask), 0.0) ** 2) / 1e3

    out_x, out_s = (jax.jit(m.apply)({"params": params}, ids, mask) for m in (xla, splash))
    chex.assert_trees_all_close(jnp.where(real, out_s, 0.0), jnp.where(real, out_x, 0.0), atol=1e-4)
    grads_x, grads_s = (jax.jit(jax.grad(loss(m)))(params) for m in (xla, splash))
    chex.assert_trees_all_close(grads_s, grads_x, atol=1e-4)


def test_splash_refuses_alibi():
    with pytest.raises(ValueError, match="needs RoPE"):
        tiny_lm(position="alibi", attention_impl="splash")
