"""Shared pre-LN Vision Transformer core (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", Sec. 3.1):
patchify, one encoder layer with optional layer scale / qk-norm / stochastic depth, and the layer stack
(`nn.scan` or unrolled, under a named remat policy) returning every layer's hidden state.

CLIP's vision tower (common/vision/clip.py) and InternViT (common/vision/intern_vit.py) are thin wrappers
around `ViTEncoder`; they differ only in embeddings, norms, layer scale and final norms.

Shapes: B batch, H / W image height / width, C channels, P patch size, N = (H/P)*(W/P) patches,
T = N + 1 tokens (CLS first), D width, L layers.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from common.layers import MLP, Dtype, Linear, MultiHeadAttention, RMSNorm, dot_product_attention, make_norm, remat
from common.sharding import constrain, with_partitioning

ACT_TOKENS = ("act_batch", "act_length", "act_embed")


@flax.struct.dataclass
class VisionOutput:
    """What a vision tower returns (a pytree, so it passes through `jit`).

    last_hidden_state: [B, T, D] the tower's final tokens (after its final norm, if it has one).
    hidden_states: [L+1, B, T, D] like HF's `hidden_states` tuple: index 0 is the input of layer 0
      (the embeddings, after CLIP's pre_layrnorm), index i the output of layer i; None when not requested.
    pooled: [B, D] CLS token after the pooling norm (CLIP's post_layernorm), or None.
    image_embeds: [B, P_proj] CLIP's `visual_projection(pooled)` when the tower has a projection, else None.
    post_norm_tokens: [B, T, D] CLIP's post_layernorm applied to every token (what newer open_clip returns as
      `tokens` with output_tokens=True, which OpenFlamingo feeds its resampler), else None. Dead code under `jit`
      when unused.
    """

    last_hidden_state: jax.Array
    hidden_states: jax.Array | None = None
    pooled: jax.Array | None = None
    image_embeds: jax.Array | None = None
    post_norm_tokens: jax.Array | None = None


def check_pixels(pixels: jax.Array, image_size: tuple[int, int], num_channels: int, name: str) -> None:
    """Raises a clear ValueError unless pixels is NHWC [B, image_size[0], image_size[1], num_channels]."""
    shape = tuple(pixels.shape)
    if len(shape) != 4:
        raise ValueError(f"{name} expects pixels of rank 4 [batch, height, width, channels] (NHWC), got shape {shape}")
    if shape[-1] != num_channels:
        hint = " (looks like NCHW: transpose to NHWC)" if shape[1] == num_channels else ""
        raise ValueError(f"{name} expects {num_channels} channels in the last axis (NHWC), got shape {shape}{hint}")
    if tuple(shape[1:3]) != tuple(image_size):
        raise ValueError(f"{name} expects images of {image_size[0]}x{image_size[1]} pixels, got "
                         f"{shape[1]}x{shape[2]} (shape {shape}); resize first")
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
        raise ValueError(f"{name} expects normalised floating-point pixels, got dtype {pixels.dtype}")


def patchify(pixels: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, N, P*P*C] non-overlapping patches, row-major over the patch grid, each patch
    flattened in (row, column, channel) order (the order `conv_weight_to_patch_kernel` assumes)."""
    b, h, w, c = pixels.shape
    ph, pw = patch
    x = pixels.reshape(b, h // ph, ph, w // pw, pw, c)  # [B, h, P, w, P, C]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, P, P, C]
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)  # [B, N, P*P*C]


def drop_path(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
    """Stochastic depth (timm's DropPath, scale_by_keep=True): zero a sample's residual branch with
    probability `rate`, scale the survivors by 1/(1-rate)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.maximum(keep, 1e-12).astype(x.dtype), jnp.zeros_like(x))


class ViTEncoderLayer(nn.Module):
    """x = x + ls1 * attn(norm1(x)); x = x + ls2 * mlp(norm2(x)). Param names: ln1, attn{q,k,v,o},
    [q_norm, k_norm], ln2, mlp{up, down}, [lambda_1, lambda_2].

    `__call__(x, drop_rate) -> (x, x or None)` has the (carry, xs) -> (carry, ys) signature of nn.scan.
    """

    hidden_size: int
    num_heads: int
    intermediate_size: int
    act: str
    norm: str = "layer"  # "layer" | "rms"
    norm_eps: float = 1e-5
    qkv_bias: bool = True
    out_bias: bool = True
    qk_norm: bool = False  # RMSNorm over the full width of q and k (before the head split), as InternViT-6B
    qk_norm_eps: float = 1e-6
    layer_scale: float | None = None  # init of lambda_1 / lambda_2; None = no layer scale (CLIP)
    use_drop_path: bool = False  # static: whether any layer has a non-zero stochastic-depth rate
    deterministic: bool = True
    output_hidden_states: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        d = self.hidden_size
        if d % self.num_heads:
            raise ValueError(f"hidden_size {d} must be divisible by num_heads {self.num_heads}")
        head_dim = d // self.num_heads
        norm = lambda name: make_norm(self.norm, self.norm_eps, True, self.dtype, self.param_dtype, name)  # noqa: E731
        x = constrain(x, ACT_TOKENS)  # [B, T, D]

        # Attention branch.
        h = norm("ln1")(x)
        attn = MultiHeadAttention(self.num_heads, self.num_heads, head_dim, d, qkv_bias=self.qkv_bias,
                                  out_bias=self.out_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
        q, k, v = attn.project_qkv(h, h)  # each [B, T, H, Dh]
        if self.qk_norm:
            b, t = q.shape[:2]
            q = RMSNorm(self.qk_norm_eps, self.dtype, self.param_dtype, name="q_norm")(
                q.reshape(b, t, d)).reshape(b, t, self.num_heads, head_dim)
            k = RMSNorm(self.qk_norm_eps, self.dtype, self.param_dtype, name="k_norm")(
                k.reshape(b, t, d)).reshape(b, t, self.num_heads, head_dim)
        h = attn.project_out(dot_product_attention(q, k, v))  # [B, T, H, Dh] -> [B, T, D]
        h = self._scale_and_drop(h, "lambda_1", drop_rate)
        x = x + h

        # MLP branch.
        h = norm("ln2")(x)
        h = MLP(d, self.intermediate_size, act=self.act, gated=False, use_bias=True, dtype=self.dtype,
                param_dtype=self.param_dtype, name="mlp")(h)  # [B, T, D] -> [B, T, F] -> [B, T, D]
        h = self._scale_and_drop(h, "lambda_2", drop_rate)
        x = constrain(x + h, ACT_TOKENS)
        return x, (x if self.output_hidden_states else None)

    def _scale_and_drop(self, h: jax.Array, name: str, drop_rate: jax.Array) -> jax.Array:
        if self.layer_scale is not None:
            init = lambda key, shape, dtype: jnp.full(shape, self.layer_scale, dtype)  # noqa: E731
            scale = self.param(name, with_partitioning(init, ("norm",)), (self.hidden_size,), self.param_dtype)
            h = h * scale.astype(h.dtype)
        if self.use_drop_path and not self.deterministic:
            h = drop_path(h, drop_rate, self.make_rng("dropout"))
        return h


class ViTEncoder(nn.Module):
    """L `ViTEncoderLayer`s, stacked with `nn.scan` (params under `layers` with a leading [L] axis named
    'layers') or unrolled (params under `layers_0` ... `layers_{L-1}`), optionally rematerialised.

    Returns (last [B, T, D], hidden_states [L+1, B, T, D] or None) where hidden_states[0] is the input.
    """

    num_layers: int
    layer_kwargs: dict  # ViTEncoderLayer fields other than deterministic / output_hidden_states / use_drop_path
    drop_path_rate: float = 0.0  # rates linearly spaced 0 .. drop_path_rate over the layers (timm / InternViT)
    scan_layers: bool = True
    remat_policy: str = "none"  # a common.layers.REMAT_POLICIES name, as the LM core's

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True, output_hidden_states: bool = True):
        x = constrain(x, ACT_TOKENS)  # [B, T, D]
        layer_cls: Any = ViTEncoderLayer
        layer_cls = remat(layer_cls, self.remat_policy, self.scan_layers)
        kwargs = dict(self.layer_kwargs, deterministic=deterministic, output_hidden_states=output_hidden_states,
                      use_drop_path=self.drop_path_rate > 0)
        rates = jnp.linspace(0.0, self.drop_path_rate, self.num_layers, dtype=jnp.float32)  # [L]
        if self.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=0, length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            last, per_layer = stack(**kwargs, name="layers")(x, rates)  # per_layer [L, B, T, D]
        else:
            last, outs = x, []
            for i in range(self.num_layers):
                last, out = layer_cls(**kwargs, name=f"layers_{i}")(last, rates[i])
                outs.append(out)
            per_layer = jnp.stack(outs) if output_hidden_states else None
        hidden_states = jnp.concatenate([x[None], per_layer], axis=0) if output_hidden_states else None
        return last, hidden_states


class ViTEmbeddings(nn.Module):
    """Patch embedding (Conv2d with kernel = stride = P, expressed as one Linear over flattened patches),
    CLS token prepended, learned absolute position embeddings added: [B, H, W, C] -> [B, T, D].

    Params: patch_embedding{kernel [P*P*C, D], bias [D] if patch_bias}, class_embedding [D],
    position_embedding [T, D] (if use_position_embeddings). HF's conv weight [D, C, P, P] maps via
    `conv_weight_to_patch_kernel`.
    """

    hidden_size: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    patch_bias: bool = False
    use_position_embeddings: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        d = self.hidden_size
        patches = patchify(pixels.astype(self.dtype), self.patch_size)  # [B, H, W, C] -> [B, N, P*P*C]
        b, n, fan_in = patches.shape
        x = Linear(d, ("patch",), ("embed",), use_bias=self.patch_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(1.0 / math.sqrt(fan_in)),
                   name="patch_embedding")(patches)  # [B, N, D]
        x = constrain(x, ACT_TOKENS)
        cls = self.param("class_embedding", with_partitioning(nn.initializers.normal(0.02), ("embed",)), (d,),
                         self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1)  # [B, T, D]
        if self.use_position_embeddings:
            expected = (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1]) + 1
            pos_init = with_partitioning(nn.initializers.normal(0.02), ("position", "embed"))
            pos = self.param("position_embedding", pos_init, (expected, d), self.param_dtype)  # [T, D]
            x = x + pos.astype(self.dtype)[None]
        return constrain(x, ACT_TOKENS)


def conv_weight_to_patch_kernel(w):
    """torch Conv2d weight [D, C, P, P] -> patch kernel [P*P*C, D] matching `patchify`'s (row, col, channel) order."""
    d = w.shape[0]
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(-1, d))


def as_pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)
