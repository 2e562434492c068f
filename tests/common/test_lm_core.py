"""LM core behaviour: KV-cache decoding equals the full forward pass, scan equals unrolled, remat keeps
gradients, the inserted-block extension point, and clear errors on bad input. The core behaviours that check a
module's output (KV-cache decoding, block-causal attention, inputs_embeds, gelu_exact) run both under jit and
eagerly (chex variants)."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from common.lm import DecoderLM, KVCache, LMConfig, layer_param_location
from common.params import random_params

CFG = LMConfig(vocab_size=61, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=48,
               max_position_embeddings=32)


def _init(module, length=8, **kwargs):
    return random_params(module, jnp.zeros((2, length), jnp.int32), **kwargs)


@pytest.mark.slow
def test_scan_equals_unrolled_and_remat_keeps_gradients():
    ids = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 8)))
    scanned = DecoderLM(CFG)
    params = _init(scanned)
    unrolled = DecoderLM(CFG.replace(scan_layers=False))
    unrolled_params = dict(params)
    unrolled_params["decoder"] = {f"layers_{i}": jax.tree.map(lambda a: a[i], params["decoder"]["layers"])
                                  for i in range(CFG.num_layers)}
    chex.assert_trees_all_close(unrolled.apply({"params": unrolled_params}, ids),
                                scanned.apply({"params": params}, ids), atol=1e-5, rtol=1e-7)

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, ids) ** 2)

    grads = jax.jit(jax.grad(lambda p: loss(scanned, p)))(params)
    for policy in ("full", "dots", "dots_no_batch"):
        remat = DecoderLM(CFG.replace(remat_policy=policy))
        remat_grads = jax.jit(jax.grad(lambda p: loss(remat, p)))(params)
        chex.assert_trees_all_close(remat_grads, grads, atol=1e-6, rtol=1e-7)


class AddBias(nn.Module):
    """A test block: adds a learned vector times a scale read from block_inputs."""

    @nn.compact
    def __call__(self, x, block_inputs):
        bias = self.param("bias", nn.initializers.normal(1.0), (x.shape[-1],))
        return x + block_inputs["scale"] * bias


@pytest.mark.slow
@pytest.mark.parametrize("scan,every,position", [(True, 1, 0), (True, 2, 1), (False, 4, 4),
                                                 (True, 3, 0), (False, 3, 3)])  # 3 of 4: a plain tail layer
def test_inserted_block_extension_point(scan, every, position):
    cfg = CFG.replace(scan_layers=scan)
    bare = DecoderLM(cfg)
    bare_params = _init(bare)
    model = DecoderLM(cfg, block=AddBias, block_every=every, block_position=position)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 8)))
    params = random_params(model, ids, block_inputs={"scale": 1.0}, seed=1)
    # Copy the bare LM's layers into the grouped layout.
    for i in range(cfg.num_layers):
        src_path, src_idx = layer_param_location(cfg, i)
        dst_path, dst_idx = layer_param_location(cfg, i, every)
        src = bare_params
        for key in src_path:
            src = src[key]
        layer = jax.tree.map(lambda a: a[src_idx] if src_idx else a, src)
        parent = params
        for key in dst_path[:-1]:
            parent = parent[key]
        parent[dst_path[-1]] = (jax.tree.map(lambda dst, a: dst.at[dst_idx].set(a), parent[dst_path[-1]], layer)
                                if dst_idx else layer)
    for key in ("embed", "final_norm", "lm_head"):
        params[key] = bare_params[key]
    # scale 0: the blocks are the identity and the model equals the bare LM (up to XLA's op ordering).
    chex.assert_trees_all_close(model.apply({"params": params}, ids, block_inputs={"scale": 0.0}),
                                bare.apply({"params": bare_params}, ids), atol=1e-6, rtol=0)
    # scale 1: blocks change the output, and cached decoding still equals the full pass.
    full = model.apply({"params": params}, ids, block_inputs={"scale": 1.0})
    assert np.abs(np.asarray(full) - np.asarray(bare.apply({"params": bare_params}, ids))).max() > 1e-3
    cache = KVCache.create(cfg, 2, 8)
    first, cache = model.apply({"params": params}, ids[:, :5], cache=cache, block_inputs={"scale": 1.0})
    rest, cache = model.apply({"params": params}, ids[:, 5:], cache=cache, block_inputs={"scale": 1.0})
    chex.assert_trees_all_close(jnp.concatenate([first, rest], 1), full, atol=1e-5, rtol=1e-7)
    n_params = lambda p: sum(a.size for a in jax.tree.leaves(p))  # noqa: E731
    assert n_params(params) - n_params(bare_params) == (cfg.num_layers // every) * cfg.hidden_size


def test_bad_inputs_raise_clear_errors():
    model = DecoderLM(CFG)
    params = _init(model)
    with pytest.raises(ValueError, match="input_ids must be \\[B, T\\]"):
        model.apply({"params": params}, jnp.zeros((8,), jnp.int32))
    with pytest.raises(ValueError, match="must be integers"):
        model.apply({"params": params}, jnp.zeros((1, 8), jnp.float32))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model.apply({"params": params}, jnp.zeros((1, 33), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 7)))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model.apply({"params": params})
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model.apply({"params": params}, inputs_embeds=jnp.zeros((1, 8, 5)))
    with pytest.raises(ValueError, match="cache length 64 exceeds"):
        KVCache.create(CFG, 1, 64)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        CFG.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="block_every must be in"):
        DecoderLM(CFG, block=AddBias, block_every=CFG.num_layers + 1).init(jax.random.key(0),
                                                                           jnp.zeros((1, 4), jnp.int32),
                                                                           block_inputs={"scale": 0.0})


def test_bfloat16_compute():
    model = DecoderLM(CFG.replace(dtype="bfloat16", param_dtype="bfloat16"))
    params = _init(model)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params))
    logits = model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.float32
    chex.assert_tree_all_finite(logits)


def test_cudnn_attention_matches_xla_or_names_missing_gpu():
    """attention_impl='cudnn' (cuDNN flash attention) computes the same logits and gradients as the XLA path
    on a GPU (bf16 tolerance); elsewhere it says that it needs an NVIDIA GPU. Bad configs are refused."""
    with pytest.raises(ValueError, match="RoPE"):
        CFG.replace(attention_impl="cudnn", position="alibi", dtype="bfloat16")
    with pytest.raises(ValueError, match="bfloat16"):
        CFG.replace(attention_impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl"):
        CFG.replace(attention_impl="flash")
    cfg = CFG.replace(hidden_size=64, num_heads=4, num_kv_heads=2, max_position_embeddings=128, dtype="bfloat16")
    ids = jnp.asarray(np.random.RandomState(3).randint(0, cfg.vocab_size, (2, 128)))
    xla, cudnn = DecoderLM(cfg), DecoderLM(cfg.replace(attention_impl="cudnn"))
    params = _init(xla)
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            cudnn.apply({"params": params}, ids)
        return

    def loss_and_grads(model):
        return jax.value_and_grad(lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, ids))[..., 0]))(
            params)

    def rel_err(a, b):
        return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))

    assert rel_err(cudnn.apply({"params": params}, ids), xla.apply({"params": params}, ids)) < 1e-2
    (loss_c, grads_c), (loss_x, grads_x) = loss_and_grads(cudnn), loss_and_grads(xla)
    assert abs(float(loss_c) - float(loss_x)) < 1e-2 * abs(float(loss_x))
    for g_c, g_x in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_x)):
        assert rel_err(g_c, g_x) < 3e-2


@pytest.mark.parametrize("n_in,dtype", [(1, jnp.float32), (2, jnp.float32), (1, jnp.bfloat16)])
def test_dense_custom_gradient_equals_dot_general_autodiff(n_in, dtype):
    """`common.layers.dense` (every Linear: its backward takes x^T dy from a materialised transpose on the CPU)
    has the same value and gradients as plain `jax.lax.dot_general` under autodiff."""
    from common.layers import dense
    rng = np.random.RandomState(n_in)
    x = jnp.asarray(rng.randn(2, 5, 3, 4) if n_in == 2 else rng.randn(2, 5, 12), dtype)
    kernel = jnp.asarray(rng.randn(3, 4, 7) if n_in == 2 else rng.randn(12, 7), dtype)
    cotangent = jnp.asarray(rng.randn(2, 5, 7), dtype)
    contract = tuple(range(x.ndim - n_in, x.ndim))

    def reference(x, k):
        return jax.lax.dot_general(x, k, ((contract, tuple(range(n_in))), ((), ())))

    out, vjp = jax.vjp(lambda x, k: dense(x, k, n_in), x, kernel)
    ref_out, ref_vjp = jax.vjp(reference, x, kernel)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    chex.assert_trees_all_close(np.asarray(out, np.float32), np.asarray(ref_out, np.float32), rtol=tol, atol=tol)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
        assert got.dtype == want.dtype
        chex.assert_equal_shape([got, want])
        chex.assert_trees_all_close(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol,
                                    atol=tol * 10)
    # under jit and grad as well (the train step's path)
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(dense(x, k, n_in).astype(jnp.float32) ** 2),
                             argnums=(0, 1)))(x, kernel)
    ref_grads = jax.grad(lambda x, k: jnp.sum(reference(x, k).astype(jnp.float32) ** 2), argnums=(0, 1))(x, kernel)
    for got, want in zip(grads, ref_grads):
        chex.assert_trees_all_close(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol * 3,
                                    atol=tol * 30)


class LMCoreVariantsTest(chex.TestCase):
    """Fast-tier core behaviours, each run under jit and eagerly (the `_with_jit` / `_without_jit` variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_inputs_embeds_equals_token_ids(self):
        model = DecoderLM(CFG)
        params = _init(model)
        ids = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 8)))
        embed = self.variant(lambda p, x: model.apply({"params": p}, x, method=DecoderLM.embed_tokens))
        from_embeds = self.variant(lambda p, e: model.apply({"params": p}, inputs_embeds=e))
        from_ids = self.variant(lambda p, x: model.apply({"params": p}, x))
        chex.assert_trees_all_equal(from_embeds(params, embed(params, ids)), from_ids(params, ids))

    @chex.variants(with_jit=True, without_jit=True)
    def test_gelu_exact_matches_autodiff_of_the_erf_formula(self):
        """common.layers.gelu_exact (a custom JVP that saves one tensor) has jax.nn.gelu's exact value and
        derivatives."""
        from common.layers import gelu_exact
        x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
        reference = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
        value = lambda f: self.variant(f)(x)  # noqa: E731
        chex.assert_trees_all_equal(value(gelu_exact), value(reference))
        grad = lambda f: self.variant(jax.vmap(jax.grad(f)))(x)  # noqa: E731
        chex.assert_trees_all_close(grad(gelu_exact), grad(reference), atol=1e-6, rtol=1e-7)
        second = lambda f: self.variant(jax.vmap(jax.grad(jax.grad(f))))(x)  # noqa: E731
        chex.assert_trees_all_close(second(gelu_exact), second(reference), atol=1e-5, rtol=1e-7)


@pytest.mark.slow
class LMCoreSlowVariantsTest(chex.TestCase):
    """Slow-tier core behaviours (several configs each), each run under jit and eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("rope_rmsnorm_gated", CFG),
        ("alibi_layernorm_gelu", CFG.replace(position="alibi", norm="layer", mlp_gated=False, mlp_act="gelu")),
        ("parallel_partial_rotary_qkv_bias", CFG.replace(parallel_residual=True, rotary_pct=0.5, qkv_bias=True)))
    def test_prefill_then_decode_equals_full_forward(self, cfg):
        model = DecoderLM(cfg)
        params = _init(model)
        apply = self.variant(lambda p, ids, mask, positions, cache=None: model.apply(
            {"params": p}, ids, mask, position_ids=positions, cache=cache))
        rng = np.random.RandomState(1)
        ids = jnp.asarray(rng.randint(0, cfg.vocab_size, (2, 10)))
        mask = np.ones((2, 10), np.int32)
        mask[0, :3] = 0  # left-padded prompt
        mask = jnp.asarray(mask)
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        full = apply(params, ids, mask, positions)

        prompt = 6
        cache = KVCache.create(cfg, batch_size=2, max_length=16)
        logits, cache = apply(params, ids[:, :prompt], mask[:, :prompt], positions[:, :prompt], cache=cache)
        steps = [logits]
        for t in range(prompt, 10):  # one token at a time
            logits, cache = apply(params, ids[:, t:t + 1], mask[:, t:t + 1], positions[:, t:t + 1], cache=cache)
            steps.append(logits)
        cached = jnp.concatenate(steps, axis=1)
        valid = np.asarray(mask).astype(bool)
        chex.assert_trees_all_close(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5, rtol=1e-5)
        assert int(cache.index) == 10

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("rope_gqa", CFG), ("alibi_mha", CFG.replace(position="alibi", num_kv_heads=4)))
    def test_block_causal_attention_equals_masked_full_softmax(self, cfg):
        """The unpadded training path computes causal attention in query blocks (`attention_block_size`, 0 = one
        block); every block size, one that does not divide the length included, gives the logits and gradients of
        the masked full softmax that an all-ones attention_mask takes."""
        ids = jnp.asarray(np.random.RandomState(4).randint(0, cfg.vocab_size, (2, 23)))
        params = _init(DecoderLM(cfg))

        def logits_and_grads(model, **kwargs):
            def run(p, ids, **kwargs):
                loss = lambda q: jnp.sum(jnp.sin(model.apply({"params": q}, ids, **kwargs)))  # noqa: E731
                return model.apply({"params": p}, ids, **kwargs), jax.grad(loss)(p)
            return self.variant(run)(params, ids, **kwargs)

        want = logits_and_grads(DecoderLM(cfg), attention_mask=jnp.ones(ids.shape, jnp.int32))
        for block in (5, 0):  # 5 blocks, the last short; one block
            got = logits_and_grads(DecoderLM(cfg.replace(attention_block_size=block)))
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-4)  # GPU: 2e-5
        with pytest.raises(ValueError, match="attention_block_size"):
            cfg.replace(attention_block_size=-1)
