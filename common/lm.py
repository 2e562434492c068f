"""The decoder-only language-model core shared by Flamingo, LLaVA and VITA: Llama / Vicuna / Mistral /
Qwen2 (RoPE, GQA, RMSNorm, SwiGLU) and MPT / GPT-NeoX (ALiBi, LayerNorm, GELU, parallel residual).

Layers are stacked with `nn.scan` (compile time flat in depth) under a named remat policy; a KV cache
gives prefill + one-token decode equal to the full forward pass. Extension points:
- `inputs_embeds` replaces token ids (LLaVA / VITA place projected image / audio features there);
- `block` inserts a module (Flamingo's GATED XATTN-DENSE) before one decoder layer in every group of
  `block_every` layers, at `block_position` inside the group, receiving `block_inputs`; when the depth is not a
  multiple of `block_every`, the remaining layers run last as a plain `tail`.

Shapes: B batch, T new tokens, S key slots (T, or the cache length), E width, V vocabulary, L layers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from common.layers import (MLP, REMAT_POLICIES, MultiHeadAttention, alibi_slopes, apply_rope,  # noqa: F401
                           causal_dot_product_attention, check_remat_policy, dot_product_attention, dtype_of, make_norm,
                           positions_within_segments, remat, rope_inverse_frequencies, same_segment)
from common.params import abstract_params as abstract
from common.params import counts_by_part
from common.sharding import constrain, target_platform, with_partitioning
from common.splash_attention import splash_causal_attention


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None  # None: = num_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_heads
    max_position_embeddings: int = 2048
    # norms
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    norm_bias: bool = True  # LayerNorm only (MPT has none)
    # feed-forward
    mlp_act: str = "silu"
    mlp_gated: bool = True  # SwiGLU (Llama family) vs plain up-act-down (MPT, GPT-NeoX)
    mlp_bias: bool = False
    # attention
    qkv_bias: bool = False  # Qwen2, GPT-NeoX
    out_bias: bool = False  # GPT-NeoX
    clip_qkv: float | None = None  # MPT
    sliding_window: int | None = None  # Mistral: attend to the last `sliding_window` positions only
    position: str = "rope"  # "rope" | "alibi"
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # HF rope_parameters / rope_scaling items (linear, llama3)
    rotary_pct: float = 1.0  # GPT-NeoX partial rotary
    alibi_bias_max: float = 8.0
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    tie_word_embeddings: bool = False
    # numerics and compilation
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    # Causal self-attention without a cache (the training path): "xla" (block-causal einsums, any backend,
    # exact f32), "cudnn" (cuDNN's fused flash attention through jax.nn.dot_product_attention: NVIDIA GPUs,
    # bf16 / f16 compute, RoPE models, no padding) or "splash" (Pallas splash attention: TPUs, any dtype, RoPE
    # models; padding is handled as segment ids; interpret mode off the TPU). Windowed or cached attention always
    # takes "xla", and so does padded attention under "cudnn".
    attention_impl: str = "xla"
    # Queries per block of the "xla" causal path: each block attends only to the keys up to its last query, so the
    # masked upper triangle is mostly never formed (fastest on the CPU); 0 = a single block, the masked full softmax.
    attention_block_size: int = 64

    def __post_init__(self):
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.kv_heads}")
        if self.position not in ("rope", "alibi"):
            raise ValueError(f"position must be 'rope' or 'alibi', got {self.position!r}")
        check_remat_policy(self.remat_policy)
        if self.attention_impl not in ("xla", "cudnn", "splash"):
            raise ValueError(f"attention_impl must be 'xla', 'cudnn' or 'splash', got {self.attention_impl!r}")
        if self.attention_impl in ("cudnn", "splash") and self.position == "alibi":
            raise ValueError(f"attention_impl={self.attention_impl!r} needs RoPE positions; ALiBi models use "
                             "attention_impl='xla'")
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise ValueError(f"attention_impl='cudnn' computes in bfloat16 / float16, not dtype={self.dtype!r}")
        if self.attention_block_size < 0:
            raise ValueError(f"attention_block_size must be >= 0 (0 = one block), got {self.attention_block_size}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rotary_pct)

    def replace(self, **changes) -> LMConfig:
        return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class KVCache:
    """Keys / values of every layer in fixed-size slots, plus which slots hold real tokens.

    key, value: [L, B, S_max, K, D]; valid: [B, S_max] bool; index: int32 scalar, the next free slot.
    """

    key: jax.Array
    value: jax.Array
    valid: jax.Array
    index: jax.Array

    @classmethod
    def create(cls, config: LMConfig, batch_size: int, max_length: int, dtype: Any = None) -> KVCache:
        if max_length > config.max_position_embeddings:
            raise ValueError(f"cache length {max_length} exceeds max_position_embeddings "
                             f"{config.max_position_embeddings}")
        dtype = dtype_of(config.dtype) if dtype is None else dtype
        shape = (config.num_layers, batch_size, max_length, config.kv_heads, config.dim_per_head)
        return cls(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch_size, max_length), bool), index=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


@flax.struct.dataclass
class SegmentIds:
    """Attention restricted to segments, as the layers' `mask`: a token attends to the earlier tokens of its own
    segment only. ids [B, T] int: 0 = padding, 1, 2, ... the segments (one per packed sample)."""

    ids: jax.Array


def cudnn_causal_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                           segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal GQA self-attention through cuDNN's fused kernel (never forms the [T, S] weights).
    query [B, T, H, D], key / value [B, T, K, D] -> [B, T, H, D]. segment_ids [B, T] (packed rows) restrict it to
    each segment through cuDNN's own mask input (a [B, 1, T, T] bias that the kernel reads)."""
    platform = target_platform()
    if platform != "gpu":
        raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU; this program is compiled for {platform!r}: "
                         "use attention_impl='xla' (or 'splash' on a TPU)")
    mask = None if segment_ids is None else same_segment(segment_ids, segment_ids)  # [B, 1, T, T]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=True, implementation="cudnn")


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)) then + mlp(norm(x)) (or both from x, in parallel).

    mask [B, 1, T, S] bool; or None (without a cache) for plain causal attention over the T tokens, which
    is then computed block-causally (`causal_dot_product_attention`) or by cuDNN; or `SegmentIds` (without a
    cache) for causal attention within segments (packed rows, or padding as segment 0) on the configured path:
    splash, cuDNN, or block-causal XLA.
    """

    config: LMConfig

    @nn.compact
    def __call__(self, x, layer_cache, positions, mask, bias, cache_index):
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        norm = lambda name: make_norm(cfg.norm, cfg.norm_eps, cfg.norm_bias, dtype, param_dtype, name)  # noqa: E731
        attention = MultiHeadAttention(cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_size,
                                       qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, clip_qkv=cfg.clip_qkv,
                                       dtype=dtype, param_dtype=param_dtype, name="attn")
        h = norm("attn_norm")(x)
        q, k, v = attention.project_qkv(h, h)  # [B, T, H, D], [B, T, K, D] x2
        if cfg.position == "rope":
            inv_freq = rope_inverse_frequencies(cfg.rotary_dim, cfg.rope_theta, dict(cfg.rope_scaling) or None)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if layer_cache is not None:  # write the new keys / values into their slots, attend over all slots
            cache_k, cache_v = layer_cache
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, cache_index, 0, 0))
            layer_cache = (k, v)  # [B, S_max, K, D]
        # Causal self-attention without a cache: plain (mask None) or within segments (SegmentIds).
        causal = isinstance(mask, SegmentIds) or (mask is None and layer_cache is None)
        segment_ids = mask.ids if isinstance(mask, SegmentIds) else None
        if segment_ids is not None and cfg.attention_impl == "splash":  # [B, T, H, D]
            attended = splash_causal_attention(q, k.astype(dtype), v.astype(dtype), segment_ids)
        elif causal and cfg.attention_impl == "cudnn":  # flash attention, [B, T, H, D]
            attended = cudnn_causal_attention(q, k.astype(dtype), v.astype(dtype), segment_ids)
        elif causal:  # block-causal, [B, T, H, D]
            attended = causal_dot_product_attention(q, k.astype(dtype), v.astype(dtype), bias=bias,
                                                    block_size=cfg.attention_block_size or q.shape[1],
                                                    segment_ids=segment_ids)
        else:
            attended = dot_product_attention(q, k.astype(dtype), v.astype(dtype), mask=mask, bias=bias)
        attn_out = attention.project_out(attended)  # [B, T, E]
        mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_act, cfg.mlp_gated, cfg.mlp_bias,
                  dtype=dtype, param_dtype=param_dtype, name="mlp")
        if cfg.parallel_residual:
            x = x + attn_out + mlp(norm("mlp_norm")(x))
        else:
            x = x + attn_out
            x = x + mlp(norm("mlp_norm")(x))
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        return x, layer_cache


class LayerGroup(nn.Module):
    """`size` decoder layers with the inserted block before layer `block_position` (or after the last)."""

    config: LMConfig
    size: int
    block: Callable[..., nn.Module]
    block_position: int

    @nn.compact
    def __call__(self, x, group_cache, positions, mask, bias, cache_index, block_inputs):
        new_cache = []
        for j in range(self.size + 1):
            if j == self.block_position:
                x = self.block(name="block")(x, block_inputs)
            if j == self.size:
                break
            layer_cache = None if group_cache is None else (group_cache[0][j], group_cache[1][j])
            x, layer_cache = DecoderLayer(self.config, name=f"layer_{j}")(x, layer_cache, positions, mask, bias,
                                                                         cache_index)
            new_cache.append(layer_cache)
        if group_cache is None:
            return x, None
        return x, (jnp.stack([c[0] for c in new_cache]), jnp.stack([c[1] for c in new_cache]))


def _remat(module_cls, config: LMConfig, static_argnums=()):
    return remat(module_cls, config.remat_policy, config.scan_layers, static_argnums)


class DecoderStack(nn.Module):
    """All decoder layers (scanned or unrolled), optionally interleaved with an inserted block."""

    config: LMConfig
    block: Callable[..., nn.Module] | None = None
    block_every: int = 1
    block_position: int = 0

    @property
    def num_groups(self) -> int:
        return self.config.num_layers // self.block_every

    @nn.compact
    def __call__(self, x, cache_kv, positions, mask, bias, cache_index, block_inputs=None):
        cfg = self.config
        broadcast = (nn.broadcast,) * 4
        if self.block is None:
            layer_cls = _remat(DecoderLayer, cfg)
            if cfg.scan_layers:
                scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                                  in_axes=(0,) + broadcast, length=cfg.num_layers,
                                  metadata_params={nn.PARTITION_NAME: "layers"})
                return scanned(cfg, name="layers")(x, cache_kv, positions, mask, bias, cache_index)
            new_k, new_v = [], []
            for i in range(cfg.num_layers):
                layer_cache = None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i])
                x, layer_cache = layer_cls(cfg, name=f"layers_{i}")(x, layer_cache, positions, mask, bias, cache_index)
                if layer_cache is not None:
                    new_k.append(layer_cache[0])
                    new_v.append(layer_cache[1])
            return x, (None if cache_kv is None else (jnp.stack(new_k), jnp.stack(new_v)))

        # Grouped layout: [G = L // every] groups of `every` layers and one inserted block each, then the
        # L % every remaining layers as a plain `tail` (Flamingo-80B: 80 layers, a block every 7th -> 11 + 3).
        if not 1 <= self.block_every <= cfg.num_layers:
            raise ValueError(f"block_every must be in [1, num_layers={cfg.num_layers}], got {self.block_every}")
        if not 0 <= self.block_position <= self.block_every:
            raise ValueError(f"block_position must be in [0, {self.block_every}], got {self.block_position}")
        groups, every = self.num_groups, self.block_every
        grouped = groups * every
        tail = cfg.num_layers - grouped
        tail_cache = None if cache_kv is None or not tail else jax.tree.map(lambda a: a[grouped:], cache_kv)
        group_cache = None if cache_kv is None else jax.tree.map(
            lambda a: a[:grouped].reshape((groups, every) + a.shape[1:]), cache_kv)  # [L, ...] -> [G, N, ...]
        group_cls = _remat(LayerGroup, cfg)
        if cfg.scan_layers:
            scanned = nn.scan(group_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=(0,) + broadcast + (nn.broadcast,), length=groups,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            x, new_cache = scanned(cfg, every, self.block, self.block_position, name="groups")(
                x, group_cache, positions, mask, bias, cache_index, block_inputs)
        else:
            outs = []
            for g in range(groups):
                gc = None if group_cache is None else jax.tree.map(lambda a: a[g], group_cache)
                x, gc = group_cls(cfg, every, self.block, self.block_position, name=f"groups_{g}")(
                    x, gc, positions, mask, bias, cache_index, block_inputs)
                outs.append(gc)
            new_cache = None if group_cache is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
        if new_cache is not None:
            new_cache = jax.tree.map(lambda a: a.reshape((grouped,) + a.shape[2:]), new_cache)
        if tail:
            # block_position past the end: the group runs its layers and never builds a block.
            x, new_tail = _remat(LayerGroup, cfg)(cfg, tail, self.block, tail + 1, name="tail")(
                x, tail_cache, positions, mask, bias, cache_index, block_inputs)
            if new_cache is not None:
                new_cache = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), new_cache, new_tail)
        return x, new_cache


def layer_param_location(config: LMConfig, layer: int,
                         block_every: int | None = None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(path prefix under `decoder`, index) of decoder layer `layer`'s parameters in this module's tree,
    for every layout: scanned `layers` [L, ...], unrolled `layers_i`, grouped `groups/layer_j` [G, ...] (or
    `groups_g/layer_j`), and the grouped layout's plain `tail/layer_j` when L is not a multiple of block_every."""
    if not 0 <= layer < config.num_layers:
        raise ValueError(f"layer {layer} out of range [0, {config.num_layers})")
    if block_every is None:
        return (("decoder", "layers"), (layer,)) if config.scan_layers else (("decoder", f"layers_{layer}"), ())
    grouped = config.num_layers // block_every * block_every
    if layer >= grouped:
        return ("decoder", "tail", f"layer_{layer - grouped}"), ()
    g, j = divmod(layer, block_every)
    if config.scan_layers:
        return ("decoder", "groups", f"layer_{j}"), (g,)
    return ("decoder", f"groups_{g}", f"layer_{j}"), ()


class DecoderLM(nn.Module):
    """Token embedding -> decoder stack -> final norm -> LM head (tied or separate)."""

    config: LMConfig
    block: Callable[..., nn.Module] | None = None
    block_every: int = 1
    block_position: int = 0

    def setup(self):
        cfg = self.config
        param_dtype = dtype_of(cfg.param_dtype)
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype_of(cfg.dtype), param_dtype=param_dtype,
                              embedding_init=with_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.decoder = DecoderStack(cfg, self.block, self.block_every, self.block_position)
        self.final_norm = make_norm(cfg.norm, cfg.norm_eps, cfg.norm_bias, dtype_of(cfg.dtype), param_dtype,
                                    name="final_norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype_of(cfg.dtype), param_dtype=param_dtype,
                                    kernel_init=with_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")))

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """[B, T] int -> [B, T, E]."""
        _check_ids(input_ids, self.config.vocab_size)
        return self.embed(input_ids)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, T, E] final hidden states (after the final norm) -> float32 logits [B, T, V]."""
        logits = self.embed.attend(hidden) if self.config.tie_word_embeddings else self.lm_head(hidden)
        return constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None, *,
                 inputs_embeds: jax.Array | None = None, position_ids: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, cache: KVCache | None = None, block_inputs: Any = None,
                 return_hidden: bool = False):
        """Returns float32 logits [B, T, V]; with `cache`, (logits, updated cache); with
        `return_hidden`, the final hidden states [B, T, E] the LM head reads (after the final norm, as HF's
        `last_hidden_state`) instead of logits: `common.losses.next_token_loss(..., kernel=head_kernel(...))`
        fuses the head with the loss from them.

        attention_mask [B, T]: 1 for real tokens, 0 for padding (left or right). position_ids [B, T]
        default to the slot index (0..T-1 after any cached tokens), as transformers' forward does.
        segment_ids [B, T] int (packed rows; no cache): a token attends only to the earlier tokens of its own
        segment, 0 = padding (never attended by a real token). They stand for attention_mask (= segment_ids > 0),
        and position_ids then default to positions that restart at every segment (RoPE; ALiBi restarts by
        itself, its bias being relative within the segment a query sees).
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(dtype_of(cfg.dtype))
        if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
            raise ValueError(f"inputs_embeds must be [B, T, {cfg.hidden_size}], got {x.shape}")
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        batch, length = x.shape[:2]
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) are for training / scoring without a KV cache")
            if segment_ids.shape != (batch, length):
                raise ValueError(f"segment_ids must be [B, T] = {(batch, length)}, got {segment_ids.shape}")
            segment_ids = segment_ids.astype(jnp.int32)
            attention_mask = segment_ids > 0
            if position_ids is None:
                position_ids = positions_within_segments(segment_ids)
        # No padding, no cache, no window: the mask is purely causal and the layers skip its masked blocks.
        plain_causal = attention_mask is None and cache is None and cfg.sliding_window is None
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), bool)
        elif attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask must be [B, T] = {(batch, length)}, got {attention_mask.shape}")
        attention_mask = attention_mask.astype(bool)

        if cache is None:
            if length > cfg.max_position_embeddings:
                raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                                 f"{cfg.max_position_embeddings}")
            start = jnp.zeros((), jnp.int32)
            key_valid = attention_mask  # [B, S=T]
            cache_kv = None
        else:
            if length > cache.max_length:
                raise ValueError(f"{length} new tokens do not fit a cache of {cache.max_length} slots")
            start = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, start))  # [B, S_max]
            cache_kv = (cache.key, cache.value)
        query_slots = start + jnp.arange(length)  # [T]
        key_slots = jnp.arange(key_valid.shape[1])  # [S]
        # mask [B, 1, T, S]: causal over slots, and only slots holding real tokens (None: plain causal).
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        if cfg.sliding_window is not None:
            causal &= query_slots[:, None] - key_slots[None, :] < cfg.sliding_window
        mask = None if plain_causal else causal[None, None] & key_valid[:, None, None, :]
        if segment_ids is not None:
            mask = SegmentIds(segment_ids) if cfg.sliding_window is None else (  # [B, 1, T, S] with the window
                mask & same_segment(segment_ids, segment_ids))
        elif cfg.attention_impl == "splash" and cache is None and cfg.sliding_window is None:
            mask = SegmentIds(attention_mask.astype(jnp.int32))  # padding = segment 0: real tokens see real keys
        if position_ids is None:
            position_ids = jnp.broadcast_to(query_slots[None, :], (batch, length))
        bias = None
        if cfg.position == "alibi":  # [1, H, 1, S]; softmax is shift invariant, so slope * slot suffices
            bias = jnp.asarray(alibi_slopes(cfg.num_heads, cfg.alibi_bias_max))[None, :, None, None] * key_slots

        x, new_kv = self.decoder(x, cache_kv, position_ids, mask, bias, start, block_inputs)
        x = self.final_norm(x)  # [B, T, E]
        out = x if return_hidden else self.logits(x)
        if cache is None:
            return out
        new_cache = KVCache(key=new_kv[0], value=new_kv[1], valid=key_valid, index=start + length)
        return out, new_cache


def _check_ids(input_ids: jax.Array, vocab_size: int) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {input_ids.shape}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")


def head_kernel(lm_params: Any, config: LMConfig) -> jax.Array:
    """The LM head's kernel [E, V] in the compute dtype, from a DecoderLM's (unboxed) parameters: the embedding
    table's transpose when the embeddings are tied, else lm_head/kernel."""
    kernel = lm_params["embed"]["embedding"].T if config.tie_word_embeddings else lm_params["lm_head"]["kernel"]
    return kernel.astype(dtype_of(config.dtype))


def abstract_params(config: LMConfig) -> Any:
    """Boxed ShapeDtypeStructs of a DecoderLM's parameters (jax.eval_shape: no memory used)."""
    return abstract(DecoderLM(config), jnp.zeros((1, 8), jnp.int32))


def param_counts(config: LMConfig) -> dict[str, int]:
    """Parameters per part (embed, decoder, final_norm, lm_head when untied) and 'total'."""
    return counts_by_part(abstract_params(config))


def matmul_flops_per_token(config: LMConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the matmuls (projections, MLP, attention scores and values, LM head),
    counting a multiply-add as 2 FLOPs. Training (forward + backward) is 3x this."""
    e, d, h, k = config.hidden_size, config.dim_per_head, config.num_heads, config.kv_heads
    attn_proj = 2 * e * d * (h + 2 * k) + 2 * h * d * e
    mlp = 2 * e * config.intermediate_size * (3 if config.mlp_gated else 2)
    attn_scores = 2 * 2 * h * d * seq_len  # QK^T and AV over seq_len keys (causal half not discounted)
    head = 2 * e * config.vocab_size
    return float(config.num_layers * (attn_proj + mlp + attn_scores) + head)
