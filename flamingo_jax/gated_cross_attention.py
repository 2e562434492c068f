"""GATED XATTN-DENSE (Flamingo, Alayrac et al. 2022, Sec. 2.2 / Fig. 4 and App. A.1.2): the block inserted between
frozen LM layers so text tokens can attend to the resampled visual tokens, with per-image masking (Sec. 2.3).

    y = y + tanh(alpha_xattn) * xattn(q=LN(y), kv=media)
    y = y + tanh(alpha_dense) * ffw(LN(y))

Both alphas start at 0, so at initialisation the model equals the frozen LM exactly. Media masking: a token's
`text_time` is the number of <image> tokens at or before it (itself included); medium j (0-based) has
media_time j + 1. only_attend_immediate_media (default) -> a token sees medium j iff media_time == text_time,
else iff media_time <= text_time. Tokens that see no medium get a zero cross-attention output (zeroed after the
softmax). Configurable to match OpenFlamingo (LayerNorm, GELU FFW x4, scalar alphas) and IDEFICS (RMSNorm,
SwiGLU FFW of the LM's width, qk RMS norms, scalar or vector alphas).

Shapes: B batch, T text tokens, E LM width, N media, R visual tokens per medium, Dv visual width, H heads, Dh head
dim. Params: attn_norm, attn: {q [E, H, Dh], k / v [Dv, H, Dh], o [H, Dh, E]}, [q_norm, k_norm], alpha_xattn,
ff_norm, ff: {up, [gate], down}, alpha_dense.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from common.layers import (MLP, MultiHeadAttention, dot_product_attention, dtype_of, make_norm,
                           positions_within_segments)
from common.sharding import constrain, with_partitioning


@dataclasses.dataclass(frozen=True)
class GatedXAttnConfig:
    """Defaults = OpenFlamingo's `GatedCrossAttentionBlock(dim, dim_visual)`: 8 heads x 64, no biases,
    LayerNorm, FFW LN -> Linear(4E) -> GELU -> Linear, scalar tanh gates."""

    num_heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4  # FFW width = ff_mult * E, unless ff_intermediate_size is set
    ff_intermediate_size: int | None = None
    ff_act: str = "gelu"  # "gelu" (OpenFlamingo), "squared_relu" (paper), the LM's act (IDEFICS)
    ff_gated: bool = False  # IDEFICS: SwiGLU down(act(gate(x)) * up(x))
    norm: str = "layer"  # "layer" (OpenFlamingo) | "rms" (IDEFICS)
    norm_eps: float = 1e-5
    norm_bias: bool = True
    qk_norm: bool = False  # IDEFICS `qk_layer_norms`: RMSNorm over Dh on q and k
    alpha_shape: str = "scalar"  # "scalar" -> alphas [1]; "vector" -> alphas [E] (IDEFICS alpha_type="vector")
    # "tanh": y + tanh(alpha) * f(y) (the paper); "none": y + f(y), no alpha params (the paper's "w/o tanh gating"
    # ablation row, Table 3 / App. B: at init the model no longer equals the frozen LM).
    gating: str = "tanh"
    only_attend_immediate_media: bool = True
    # OpenFlamingo / flamingo-pytorch zero only text_time == 0 tokens, and only when only_attend_immediate_media;
    # with it False, tokens before the first image average all media uniformly (they see later images). True
    # reproduces that exactly; False (default) zeroes every token that sees no medium (paper, IDEFICS).
    openflamingo_zeroing: bool = False
    # Projection kernels' init (common.layers.kernel_initializer): torch.nn.Linear's default as OpenFlamingo and
    # flamingo-pytorch, or "normal_0.02" (HF, IDEFICS).
    kernel_init: str = "torch_linear"
    # None: the LM's (inside Flamingo; float32 for a block used alone). A float32 param_dtype with the LM's in
    # bfloat16 keeps the trained blocks' master weights in float32 while the frozen LM is stored in bfloat16.
    dtype: str | None = None
    param_dtype: str | None = None

    def __post_init__(self):
        if self.alpha_shape not in ("scalar", "vector"):
            raise ValueError(f"alpha_shape must be 'scalar' or 'vector', got {self.alpha_shape!r}")
        if self.gating not in ("tanh", "none"):
            raise ValueError(f"gating must be 'tanh' or 'none', got {self.gating!r}")

    def ff_width(self, hidden_size: int) -> int:
        return self.ff_intermediate_size or self.ff_mult * hidden_size


@flax.struct.dataclass
class MediaInputs:
    """What every gated block receives (DecoderLM's `block_inputs`).

    media: [B, N, R, Dv] resampled visual tokens of the N media of each sample.
    text_time: [B, T] int32, per new token the 1-based index of the latest <image> at or before it (0 = none);
      see `text_time_from_ids` (with a KV cache, it continues from the <image> count already in the cache).
    segment_ids [B, T], media_segment_ids [B, N] (packed rows, both or neither): a token sees only the media of its
      own segment (sample).
    visible: [B, T, N] bool (optional; HF IDEFICS' `image_attention_mask`): which media each token may attend to,
      instead of the mask text_time implies; a token that may attend to none gets a zero cross-attention output.
    """

    media: jax.Array
    text_time: jax.Array
    segment_ids: jax.Array | None = None
    media_segment_ids: jax.Array | None = None
    visible: jax.Array | None = None


def text_time_from_ids(input_ids: jax.Array, image_token_id: int, media_seen: jax.Array | None = None,
                       segment_ids: jax.Array | None = None) -> jax.Array:
    """text_time [B, T] = media_seen[:, None] + cumsum(input_ids == <image>). media_seen [B] is the number of
    <image> tokens before `input_ids` (already in the KV cache): new tokens without an <image> attend to the last
    image seen, as OpenFlamingo's `use_cached_media`. With segment_ids [B, T] (packed rows; the media of a row
    numbered across its samples in order) a token before its own sample's first <image> gets 0, not the previous
    sample's last image."""
    is_image = input_ids == image_token_id
    text_time = jnp.cumsum(is_image, axis=-1, dtype=jnp.int32)
    if segment_ids is not None:
        if media_seen is not None:
            raise ValueError("media_seen (a KV cache) and segment_ids (packed rows) do not go together")
        first = jnp.arange(input_ids.shape[-1]) - positions_within_segments(segment_ids)  # [B, T] segment start
        before = jnp.take_along_axis(text_time - is_image, first, axis=-1)  # <image>s of earlier samples
        return jnp.where(text_time > before, text_time, 0)
    if media_seen is not None:
        text_time = text_time + jnp.asarray(media_seen, jnp.int32).reshape(-1, 1)
    return text_time


def media_segments_from_ids(input_ids: jax.Array, image_token_id: int, segment_ids: jax.Array,
                            num_media: int) -> jax.Array:
    """[B, N] segment of each medium of a packed row: the segment of its <image> token (0 for unused slots)."""
    is_image = input_ids == image_token_id
    slot = jnp.where(is_image, jnp.cumsum(is_image, axis=-1) - 1, num_media)  # [B, T]; num_media = dropped
    rows = jnp.arange(input_ids.shape[0])[:, None]
    return jnp.zeros((input_ids.shape[0], num_media), jnp.int32).at[rows, slot].set(
        segment_ids.astype(jnp.int32), mode="drop")


def media_mask(text_time: jax.Array, num_media: int, only_attend_immediate_media: bool = True) -> jax.Array:
    """[B, T] text_time -> [B, T, N] bool: may token t attend to medium j (media_time j + 1)?"""
    media_time = jnp.arange(num_media, dtype=jnp.int32) + 1  # [N]
    if only_attend_immediate_media:
        return text_time[..., None] == media_time
    return text_time[..., None] >= media_time


class GatedCrossAttentionBlock(nn.Module):
    """`__call__(x [B, T, E], inputs: MediaInputs) -> [B, T, E]`; plugs into DecoderLM as
    `block=functools.partial(GatedCrossAttentionBlock, config)`."""

    config: GatedXAttnConfig

    @nn.compact
    def __call__(self, x: jax.Array, inputs: MediaInputs) -> jax.Array:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype or "float32"), dtype_of(cfg.param_dtype or "float32")
        e = x.shape[-1]
        media, text_time = inputs.media, inputs.text_time
        if media.ndim != 4:
            raise ValueError(f"media must be [B, N, R, Dv], got shape {tuple(media.shape)}")
        b, n, r, dv = media.shape
        norm = lambda name: make_norm(cfg.norm, cfg.norm_eps, cfg.norm_bias, dtype, param_dtype, name)  # noqa: E731
        alpha_shape = (1,) if cfg.alpha_shape == "scalar" else (e,)

        def gate(name: str) -> jax.Array:
            if cfg.gating == "none":
                return jnp.ones((), dtype)
            alpha = self.param(name, with_partitioning(nn.initializers.zeros, ("norm",)), alpha_shape, param_dtype)
            return jnp.tanh(alpha).astype(dtype)

        # Masked cross-attention: text queries, keys / values from all media tokens flattened.
        attn = MultiHeadAttention(cfg.num_heads, cfg.num_heads, cfg.head_dim, e, dtype=dtype, param_dtype=param_dtype,
                                  kernel_init=cfg.kernel_init, name="attn")
        kv = constrain(media.reshape(b, n * r, dv).astype(dtype), ("act_batch", "act_media", "act_embed"))
        q, k, v = attn.project_qkv(norm("attn_norm")(x), kv)  # [B, T, H, Dh], [B, N*R, H, Dh] x2
        if cfg.qk_norm:
            q = make_norm("rms", cfg.norm_eps, False, dtype, param_dtype, "q_norm")(q)
            k = make_norm("rms", cfg.norm_eps, False, dtype, param_dtype, "k_norm")(k)
        if inputs.visible is None:
            visible = media_mask(text_time, n, cfg.only_attend_immediate_media)  # [B, T, N]
        else:
            visible = inputs.visible.astype(bool)
        if inputs.segment_ids is not None:  # packed rows: only the media of the token's own sample
            if cfg.openflamingo_zeroing and not cfg.only_attend_immediate_media:
                raise ValueError("packed rows need a token that sees no medium to see nothing: "
                                 "openflamingo_zeroing with only_attend_immediate_media=False averages all media")
            visible &= inputs.media_segment_ids[:, None, :] == inputs.segment_ids[:, :, None]
        key_mask = jnp.repeat(visible, r, axis=-1)[:, None]  # [B, 1, T, N*R]
        out = dot_product_attention(q, k, v, mask=key_mask)  # [B, T, H, Dh]
        if cfg.openflamingo_zeroing and inputs.visible is None:
            zero = (text_time == 0) if cfg.only_attend_immediate_media else jnp.zeros_like(text_time, bool)
        else:
            zero = ~jnp.any(visible, axis=-1)  # [B, T]: sees no medium
        out = jnp.where(zero[:, :, None, None], jnp.zeros((), out.dtype), out)
        xattn = attn.project_out(out)  # [B, T, H, Dh] -> [B, T, E]
        x = x + gate("alpha_xattn") * xattn

        # Gated dense (feed-forward) branch.
        ff = MLP(e, cfg.ff_width(e), act=cfg.ff_act, gated=cfg.ff_gated, use_bias=False, dtype=dtype,
                 param_dtype=param_dtype, kernel_init=cfg.kernel_init, name="ff")
        x = x + gate("alpha_dense") * ff(norm("ff_norm")(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))
