"""Packed rows in the LM core (common/lm.py `segment_ids`): every sample inside a packed row gets the logits and
the loss it gets when run alone, on each attention path the CPU can run (block-causal XLA at several block sizes,
with a sliding window, splash in interpret mode; RoPE and ALiBi), and a packed batch's gradients equal the unpacked
batch's when the loss is the mean over target tokens."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.layers import positions_within_segments
from common.lm import DecoderLM, LMConfig
from common.losses import shifted_next_token_loss
from common.params import random_params

CFG = LMConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
               max_position_embeddings=64)
LENGTHS = ((9, 14, 6), (20,), (5, 5, 5, 5))  # samples of each packed row
ROW = 32


def samples(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in row] for row in LENGTHS]


def pack(rows):
    """-> input_ids, segment_ids [R, ROW] (padding: id 0, segment 0) and each sample's (row, start, length)."""
    ids = np.zeros((len(rows), ROW), np.int32)
    seg = np.zeros((len(rows), ROW), np.int32)
    where = []
    for r, row in enumerate(rows):
        start = 0
        for s, sample in enumerate(row, start=1):
            ids[r, start:start + len(sample)], seg[r, start:start + len(sample)] = sample, s
            where.append((r, start, len(sample)))
            start += len(sample)
    return jnp.asarray(ids), jnp.asarray(seg), where


def test_positions_restart_at_every_segment():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    expected = np.asarray([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    chex.assert_trees_all_equal(positions_within_segments(seg), expected)


CONFIGS = {
    "rope_xla_one_block": CFG,
    "rope_xla_blocks_of_8": CFG.replace(attention_block_size=8),
    "alibi_layer_norm": CFG.replace(position="alibi", norm="layer", mlp_gated=False, mlp_act="gelu",
                                    attention_block_size=16),
    "sliding_window": CFG.replace(sliding_window=6),
    "splash_interpret": CFG.replace(attention_impl="splash"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_packed_sample_equals_the_sample_alone(name):
    """Alone = one sample per row, right-padded (padding never reaches a real token: the parity tests show the
    padded path equals transformers), so one compiled program serves every sample."""
    cfg = CONFIGS[name]
    model = DecoderLM(cfg)
    params = random_params(model, jnp.zeros((1, ROW), jnp.int32))
    rows = samples()
    ids, seg, where = pack(rows)
    apply = jax.jit(lambda p, i, kw: model.apply({"params": p}, i, **kw))
    packed = apply(params, ids, {"segment_ids": seg})  # [R, ROW, V]
    chex.assert_shape(packed, (len(rows), ROW, cfg.vocab_size))
    chex.assert_tree_all_finite(packed)
    flat = [s for row in rows for s in row]
    alone_ids, alone_mask = np.zeros((len(flat), ROW), np.int32), np.zeros((len(flat), ROW), bool)
    for b, sample in enumerate(flat):
        alone_ids[b, :len(sample)], alone_mask[b, :len(sample)] = sample, True
    alone = apply(params, jnp.asarray(alone_ids), {"attention_mask": jnp.asarray(alone_mask)})  # [S, ROW, V]
    for b, (r, start, n) in enumerate(where):
        chex.assert_trees_all_close(packed[r, start:start + n], alone[b, :n], atol=1e-4)


@pytest.mark.slow
class PackedGradientsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_packed_gradients_equal_the_padded_batch(self):
        """Loss = mean over target tokens: one packed batch and the same samples padded one per row give the same
        loss and the same gradients (the first token of every sample is never a target)."""
        model = DecoderLM(CFG.replace(num_layers=1))
        params = random_params(model, jnp.zeros((1, ROW), jnp.int32))
        rows = samples(seed=1)
        ids, seg, _ = pack(rows)
        flat = [s for row in rows for s in row]
        padded = np.zeros((len(flat), ROW), np.int32)
        padded_mask = np.zeros((len(flat), ROW), bool)
        for b, sample in enumerate(flat):
            padded[b, :len(sample)], padded_mask[b, :len(sample)] = sample, True
        targets_packed = np.asarray(seg > 0) & np.asarray(positions_within_segments(seg) > 0)

        def packed_loss(p):
            logits = model.apply({"params": p}, ids, segment_ids=seg)
            return shifted_next_token_loss(logits, ids, jnp.asarray(targets_packed))[0]

        def padded_loss(p):
            logits = model.apply({"params": p}, jnp.asarray(padded), jnp.asarray(padded_mask))
            return shifted_next_token_loss(logits, jnp.asarray(padded), jnp.asarray(padded_mask))[0]

        loss_p, grads_p = self.variant(jax.value_and_grad(packed_loss))(params)
        loss_u, grads_u = self.variant(jax.value_and_grad(padded_loss))(params)
        chex.assert_trees_all_close(loss_p, loss_u, atol=1e-5)
        chex.assert_trees_all_close(grads_p, grads_u, atol=1e-5)


def test_segment_ids_need_no_cache_and_the_right_shape():
    from common.lm import KVCache

    model = DecoderLM(CFG)
    params = random_params(model, jnp.zeros((1, 8), jnp.int32))
    ids = jnp.ones((2, 8), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids must be"):
        model.apply({"params": params}, ids, segment_ids=jnp.ones((2, 7), jnp.int32))
    with pytest.raises(ValueError, match="without a KV cache"):
        model.apply({"params": params}, ids, segment_ids=jnp.ones((2, 8), jnp.int32),
                    cache=KVCache.create(CFG, 2, 16))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_packed_rows_equal_the_xla_path():
    """attention_impl='cudnn' with segment_ids (its mask input): the packed logits and gradients equal the XLA
    path's (bf16 compute, so within bf16 rounding). Runs on a GPU (bench/accelerator_check.sh)."""
    cfg = CFG.replace(dtype="bfloat16", hidden_size=64, num_heads=4, num_kv_heads=2)
    xla, cudnn = DecoderLM(cfg), DecoderLM(cfg.replace(attention_impl="cudnn"))
    params = random_params(xla, jnp.zeros((1, ROW), jnp.int32))
    ids, seg, _ = pack(samples())

    def loss(model):
        return lambda p: model.apply({"params": p}, ids, segment_ids=seg).astype(jnp.float32).std()

    out_x, out_c = (jax.jit(lambda p, m=m: m.apply({"params": p}, ids, segment_ids=seg))(params)
                    for m in (xla, cudnn))
    chex.assert_trees_all_close(out_c, out_x, atol=5e-2)
    chex.assert_trees_all_close(jax.grad(loss(cudnn))(params), jax.grad(loss(xla))(params), atol=5e-2)
