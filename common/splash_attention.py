"""TPU attention for the LM core's training path: Pallas splash attention (block-sparse flash attention,
`jax.experimental.pallas.ops.tpu.splash_attention`), causal and restricted to segments.

Splash never forms the [B, H, T, S] logits: it walks [block_q, block_kv] tiles, skips those the mask empties
(the causal upper triangle, other segments' blocks) and keeps only the per-row softmax statistics for the
backward pass. Grouped-query attention is native (each key / value head serves H / K query heads).

Segments: a token attends only to earlier tokens with its own segment id. The LM core passes its padding mask
as segment ids (1 = real token, 0 = padding), which gives every real token exactly the keys the masked softmax
gives it; packed sequences (several samples per row, 1, 2, 3, ...) use the same argument.

Where it runs: the Mosaic kernel when the program is compiled for a TPU, the same kernel in Pallas' interpret
mode elsewhere (numerics tests on the CPU); the choice is made at lowering for the target platform
(`lax.platform_dependent`). Under a mesh the kernel runs per shard (`jax.shard_map`): batch over the
`act_batch` mesh axes, heads over `tensor`, every shard holding whole sequences.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from common.sharding import logical_to_spec

# The TPU's lane width: splash tiles the sequence in multiples of it.
LANES = 128
DEFAULT_BLOCK = 512


def _kernel(length: int, heads: int, block: int, interpret: bool):
    """A splash kernel for one sequence: q [H, T, D], k / v [K, T, D] (+ SegmentIds [T]) -> [H, T, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # Built in each trace (never cached across traces: its mask tables become constants of the calling trace).
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(query, key, value, segment_ids, block: int):
    """One shard: query [b, T, h, D], key / value [b, T, k, D], segment_ids [b, T] -> [b, T, h, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    length, heads, dim = query.shape[1], query.shape[2], query.shape[3]
    q = jnp.swapaxes(query * (1.0 / math.sqrt(dim)), 1, 2)  # [b, h, T, D] (splash does not scale)
    k, v = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)  # [b, k, T, D]

    def run(interpret):  # the kernel over the batch rows
        kernel = _kernel(length, heads, block, interpret)
        return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(q=s, kv=s)))

    out = jax.lax.platform_dependent(q, k, v, segment_ids, tpu=run(False), default=run(True))  # [b, h, T, D]
    return jnp.swapaxes(out, 1, 2)


def splash_causal_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array | None = None,
                            *, block_size: int = DEFAULT_BLOCK) -> jax.Array:
    """Causal (grouped-query) self-attention within segments through splash attention.

    query [B, T, H, D], key / value [B, T, K, D] (K divides H), segment_ids [B, T] int (None: one segment per row).
    Returns [B, T, H, D] in the query's dtype. T is padded up to a multiple of the block (128 at least) and the
    padding dropped again: under the causal mask no real query sees a padded key.
    """
    batch, length, heads, _ = query.shape
    kv_heads = key.shape[2]
    if key.shape[1] != length or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"splash attention is self-attention: query {query.shape}, key {key.shape}, value "
                         f"{value.shape}")
    if heads % kv_heads:
        raise ValueError(f"query heads {heads} are not a multiple of key / value heads {kv_heads}")
    if block_size % LANES:
        raise ValueError(f"block_size must be a multiple of {LANES}, got {block_size}")
    if segment_ids is None:
        segment_ids = jnp.ones((batch, length), jnp.int32)
    if segment_ids.shape != (batch, length):
        raise ValueError(f"segment_ids must be [B, T] = {(batch, length)}, got {segment_ids.shape}")
    segment_ids = segment_ids.astype(jnp.int32)
    block = min(block_size, -(-length // LANES) * LANES)
    padded = -(-length // block) * block
    if padded != length:  # [B, T] -> [B, T'] (T' a multiple of the block)
        pad = lambda x: jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
        query, key, value, segment_ids = pad(query), pad(key), pad(value), pad(segment_ids)

    local = functools.partial(_local_attention, block=block)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        heads_spec = logical_to_spec(("act_batch", "act_length", "act_heads", "act_head_dim"))
        seg_spec = PartitionSpec(heads_spec[0], None)
        tensor = heads_spec[2]
        shards = mesh.shape[tensor] if isinstance(tensor, str) else 1
        if heads % shards or kv_heads % shards:
            raise ValueError(f"splash attention splits heads over the '{tensor}' mesh axis of size {shards}: "
                             f"{heads} query and {kv_heads} key / value heads must both divide by it")
        local = jax.shard_map(local, in_specs=(heads_spec, heads_spec, heads_spec, seg_spec), out_specs=heads_spec,
                              check_vma=False)
    out = local(query, key, value, segment_ids)
    return out[:, :length]
