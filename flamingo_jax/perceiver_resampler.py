"""Perceiver Resampler (Flamingo, Alayrac et al. 2022, Sec. 2.1 / Fig. 3 and App. A.1.1): a fixed set of R learned
latents cross-attends to the (variable-size) vision features of one image or video and returns R visual tokens.

Per layer: LayerNorm on the media and on the latents separately; queries from the latents only; keys / values from
concat(media, latents) along the token axis; residual attention, then a residual FFW (LN -> Linear -> act -> Linear,
no biases); a final LayerNorm. Optional learned per-frame time embeddings (paper, video) and per-media embeddings
(flamingo-pytorch). Configurable to match OpenFlamingo (GELU), the paper (squared ReLU) and IDEFICS (ReLU, qk norms).

Shapes: B batch, N media (images / videos) per sample, T frames, S tokens per frame, D width (the vision
encoder's), R latents, H heads, Dh head dim. Input [B, N, T, S, D] (or [B, N, S, D] for single images) -> [B, N, R, D].

Params: latents [R, D], [frame_embeddings [T_max, D]], [media_embeddings [N_max, D]],
layers_{i}: {media_norm, latents_norm, attn: {q [D, H, Dh], k, v, o [H, Dh, D]}, [q_norm, k_norm], ff_norm,
ff: {up [D, F], down [F, D]}}, final_norm.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.layers import MLP, LayerNorm, MultiHeadAttention, dot_product_attention, dtype_of
from common.sharding import constrain, with_partitioning

ACT_TOKENS = ("act_batch", "act_length", "act_embed")


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
    """Defaults = OpenFlamingo's `PerceiverResampler(dim=width)`: depth 6, 8 heads x 64, 64 latents, FF x4, GELU."""

    width: int  # D: the vision features' width (the resampler runs at it)
    depth: int = 6
    num_heads: int = 8
    head_dim: int = 64
    num_latents: int = 64
    ff_mult: int = 4  # FFW hidden width = ff_mult * width
    ff_act: str = "gelu"  # "gelu" (OpenFlamingo, exact erf), "squared_relu" (paper), "relu" (IDEFICS)
    max_frames: int | None = None  # learned time embeddings for up to this many frames (paper); None = none
    max_media: int | None = None  # learned per-media embeddings (flamingo-pytorch `media_pos_emb`); None = none
    qk_norm: bool = False  # IDEFICS `qk_layer_norms_perceiver`: LayerNorm over Dh on q and k
    norm_eps: float = 1e-5
    # Projection kernels' init (common.layers.kernel_initializer): OpenFlamingo and flamingo-pytorch keep
    # torch.nn.Linear's default, U(+-1/sqrt(fan_in)); "normal_0.02" is HF's (IDEFICS). At a tiny width 0.02 is ~3x
    # smaller, so the latents' residual (std 1) drowns the media and the output starts out nearly image-independent.
    kernel_init: str = "torch_linear"
    dtype: str = "float32"
    param_dtype: str = "float32"


class PerceiverLayer(nn.Module):
    """latents += attn(q=LN(latents), kv=concat(LN(media), LN(latents))); latents += ffw(latents)."""

    config: ResamplerConfig

    @nn.compact
    def __call__(self, media: jax.Array, latents: jax.Array) -> jax.Array:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        ln = lambda name: LayerNorm(cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)  # noqa: E731
        x = ln("media_norm")(media)  # [B', S', D]
        h = ln("latents_norm")(latents)  # [B', R, D]
        attn = MultiHeadAttention(cfg.num_heads, cfg.num_heads, cfg.head_dim, cfg.width, dtype=dtype,
                                  param_dtype=param_dtype, kernel_init=cfg.kernel_init, name="attn")
        kv_input = jnp.concatenate([x, h], axis=1)  # [B', S' + R, D]
        q, k, v = attn.project_qkv(h, kv_input)  # [B', R, H, Dh], [B', S' + R, H, Dh] x2
        if cfg.qk_norm:
            q = ln("q_norm")(q)
            k = ln("k_norm")(k)
        latents = latents + attn.project_out(dot_product_attention(q, k, v))  # [B', R, H, Dh] -> [B', R, D]
        ff = MLP(cfg.width, cfg.ff_mult * cfg.width, act=cfg.ff_act, gated=False, use_bias=False, dtype=dtype,
                 param_dtype=param_dtype, kernel_init=cfg.kernel_init, name="ff")
        latents = latents + ff(ln("ff_norm")(latents))
        return constrain(latents, ACT_TOKENS)


class PerceiverResampler(nn.Module):
    """`__call__(features [B, N, T, S, D] or [B, N, S, D]) -> [B, N, R, D]`."""

    config: ResamplerConfig

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        if features.ndim == 4:
            features = features[:, :, None]  # [B, N, S, D] -> [B, N, 1, S, D]
        if features.ndim != 5 or features.shape[-1] != cfg.width:
            raise ValueError(f"the resampler expects vision features [B, N, T, S, {cfg.width}] (or [B, N, S, "
                             f"{cfg.width}]), got shape {tuple(features.shape)}")
        b, n, t, s, d = features.shape
        x = features.astype(dtype)
        embed_init = with_partitioning(nn.initializers.normal(1.0), ("position", "embed"))
        if cfg.max_frames is not None:
            if t > cfg.max_frames:
                raise ValueError(f"{t} frames exceed the resampler's max_frames {cfg.max_frames}")
            frames = self.param("frame_embeddings", embed_init, (cfg.max_frames, d), param_dtype)  # [T_max, D]
            x = x + frames[:t].astype(dtype)[None, None, :, None, :]
        x = x.reshape(b, n, t * s, d)  # [B, N, T, S, D] -> [B, N, T*S, D] (frames concatenated)
        if cfg.max_media is not None:
            if n > cfg.max_media:
                raise ValueError(f"{n} media exceed the resampler's max_media {cfg.max_media}")
            media_embeddings = self.param("media_embeddings", embed_init, (cfg.max_media, d), param_dtype)
            x = x + media_embeddings[:n].astype(dtype)[None, :, None, :]
        x = constrain(x.reshape(b * n, t * s, d), ACT_TOKENS)  # every medium resampled independently
        latents = self.param("latents", with_partitioning(nn.initializers.normal(1.0), ("latents", "embed")),
                             (cfg.num_latents, d), param_dtype)  # [R, D]
        h = jnp.broadcast_to(latents.astype(dtype)[None], (b * n, cfg.num_latents, d))  # [B*N, R, D]
        for i in range(cfg.depth):
            h = PerceiverLayer(cfg, name=f"layers_{i}")(x, h)
        h = LayerNorm(cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, name="final_norm")(h)
        return h.reshape(b, n, cfg.num_latents, d)  # [B*N, R, D] -> [B, N, R, D]
