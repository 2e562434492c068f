"""Transformer building blocks shared by every family: linear maps, norms, MLPs, rotary / ALiBi
positions and multi-head (grouped-query) attention, all carrying logical axis names for sharding.

Shapes: B batch, T query length, S key length, E embed width, H query heads, K key/value heads,
D head dim, F MLP width.
"""
from __future__ import annotations

import functools
import math
from typing import Any
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.sharding import constrain, with_partitioning

Dtype = Any
default_kernel_init = nn.initializers.normal(stddev=0.02)
KERNEL_INITS = ("normal_0.02", "torch_linear")


# Named rematerialisation policies, shared by every stacked module (LM layers, vision towers, speech encoder).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute elementwise ops
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls only
}


def check_remat_policy(name: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; known: {sorted(REMAT_POLICIES)}")


def remat(module_cls, policy: str, scan_layers: bool, static_argnums=()):
    """`module_cls` under the named policy ('none': unchanged). Under nn.scan CSE is harmless, so allowed."""
    check_remat_policy(policy)
    if policy == "none":
        return module_cls
    return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=not scan_layers,
                    static_argnums=static_argnums)


def kernel_initializer(scheme: str, n_in: int = 1, n_out: int = 1) -> Callable:
    """A kernel initializer by name, for a kernel whose first `n_in` axes are contracted and last `n_out` produced:
    'normal_0.02' (HF transformers' initializer_range) or 'torch_linear' (torch.nn.Linear's default,
    kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which OpenFlamingo and flamingo-pytorch keep for
    their resampler and gated blocks; at small widths it is several times larger than 0.02)."""
    if scheme == "normal_0.02":
        return default_kernel_init
    if scheme == "torch_linear":
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(n_in)),
                                                out_axis=tuple(range(n_in, n_in + n_out)))
    raise ValueError(f"unknown kernel init {scheme!r}; known: {KERNEL_INITS}")


@jax.custom_jvp
def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, torch's default, as `jax.nn.gelu(x, approximate=False)`, but differentiated through one
    saved tensor (its derivative, [..., F]) instead of the four [..., F] intermediates (erfc, exp, products) that
    autodiff of the erf formula keeps for the backward pass."""
    return jax.nn.gelu(x, approximate=False)


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return x * cdf, (cdf + x * pdf) * dx


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": gelu_exact,  # exact erf GELU (torch default)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP
    "relu": jax.nn.relu,
    "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),  # Flamingo's resampler / xattn FFW
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dtype_of(name: str | Dtype) -> Dtype:
    """'float32' / 'bfloat16' / 'float16' (or a dtype) -> jnp dtype."""
    if isinstance(name, str):
        try:
            return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
        except KeyError:
            raise ValueError(f"unsupported dtype {name!r}; use float32, bfloat16 or float16") from None
    return name


def row_major_transpose(a: jax.Array) -> jax.Array:
    """[N, X] -> [X, N]. Compiled for the CPU the transpose is materialised (behind an optimization barrier) so
    that a weight-gradient product `row_major_transpose(x) @ dy` stays a canonical [X, N] x [N, Y] matmul:
    left to itself XLA:CPU folds the transpose into the dot, then transposes the (wider) output gradient
    instead and runs the dot outside its fast YNNPACK path. Compiled for a GPU or TPU (which take transposed
    operands natively) it is a plain `a.T`. The choice is made when the program is lowered, for the platform it
    is compiled for (`lax.platform_dependent`), not by the host: a CPU host compiling for a TPU gets the TPU form."""
    return jax.lax.platform_dependent(a, cpu=lambda x: jax.lax.optimization_barrier(x.T), default=lambda x: x.T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """x [..., *I] contracted with kernel [*I, *O] over the n_in trailing axes of x -> [..., *O].

    The same product as `jax.lax.dot_general`, with a backward pass that
    - computes the weight gradient as x^T dy over the flattened tokens (`row_major_transpose`): on the CPU the
      100M-Llama train step ran 1.26x faster this way than under dot_general's own autodiff (README, Benchmarks);
    - keeps only what it needs: no input x when the kernel takes no gradient (a frozen LM keeps none of its matmul
      inputs for weight gradients it never forms), no kernel when x takes none.
    """
    return _dense_forward(x, kernel, n_in)


def _dense_forward(x, kernel, n_in):
    contract = tuple(range(x.ndim - n_in, x.ndim))
    return jax.lax.dot_general(x, kernel, ((contract, tuple(range(n_in))), ((), ())))


def _dense_fwd(x, kernel, n_in):
    # symbolic_zeros: `perturbed` says which inputs carry a gradient. Inputs of two dtypes are both kept, so that
    # the backward pass knows them.
    both = x.value.dtype != kernel.value.dtype
    y = _dense_forward(x.value, kernel.value, n_in)
    return y, (x.value if kernel.perturbed or both else None, kernel.value if x.perturbed or both else None)


def _dense_bwd(n_in, residuals, dy):
    x, kernel = residuals
    if x is not None:  # x [..., *I]: the kernel is [*I, *O] with O the trailing axes of dy past x's batch axes
        batch_axes = x.ndim - n_in
        kernel_shape, x_shape = x.shape[batch_axes:] + dy.shape[batch_axes:], x.shape
    else:  # kernel [*I, *O]: x is dy's batch axes + I
        batch_axes = dy.ndim - (kernel.ndim - n_in)
        kernel_shape, x_shape = kernel.shape, dy.shape[:batch_axes] + kernel.shape[:n_in]
    x_dtype = (x if x is not None else kernel).dtype
    kernel_dtype = (kernel if kernel is not None else x).dtype
    size_in = math.prod(kernel_shape[:n_in])
    dy2 = dy.reshape(-1, math.prod(kernel_shape[n_in:])).astype(x_dtype)  # [N, O]
    d_kernel = d_x = None
    if x is not None:
        x2 = x.reshape(-1, size_in)  # [N, I]
        d_kernel = jnp.dot(row_major_transpose(x2), dy2, preferred_element_type=jnp.float32)  # [I, O]
        d_kernel = d_kernel.reshape(kernel_shape).astype(kernel_dtype)
    if kernel is not None:
        kernel2 = kernel.reshape(size_in, -1)  # [I, O]
        d_x = jnp.dot(dy2, kernel2.T, preferred_element_type=jnp.float32)  # [N, I]
        d_x = d_x.reshape(x_shape).astype(x_dtype)
    return d_x, d_kernel


dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)


class Linear(nn.Module):
    """y = x W (+ b) over the last `len(in_axes)` input axes; W carries logical names in_axes + out_axes."""

    features: Sequence[int] | int
    in_axes: Sequence[str]
    out_axes: Sequence[str]
    n_in: int = 1  # how many trailing input axes are contracted
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable | str = default_kernel_init  # an initializer or a `kernel_initializer` scheme name

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[x.ndim - self.n_in:]
        init = self.kernel_init
        if isinstance(init, str):
            init = kernel_initializer(init, self.n_in, len(features))
        kernel = self.param(
            "kernel",
            with_partitioning(init, tuple(self.in_axes) + tuple(self.out_axes)),
            in_shape + features,
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        y = dense(x, kernel, self.n_in)  # [..., *I] -> [..., *features]
        if self.use_bias:
            bias = self.param("bias", with_partitioning(nn.initializers.zeros, tuple(self.out_axes)), features,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


# Norms with their own backward pass: they keep their input (in its own dtype) and the per-row statistics, and
# recompute the normalised values, where autodiff of the float32 formula keeps several float32 copies of every
# normalised activation ([B, T, E] each; in bf16 training 2x the input's own size per copy).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float, dtype: Dtype) -> jax.Array:
    """LayerNorm over the last axis computed in float32: ((x - mean) / sqrt(var + eps)) * scale (+ bias), cast to
    `dtype`. x [..., E], scale / bias [E]."""
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)  # [..., 1]
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + eps)  # [..., 1]
    y = (x32 - mean) * rstd * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype), (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, dtype, residuals, dy):
    x, mean, rstd, scale, bias = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd  # [..., E]
    dy32 = dy.astype(jnp.float32)
    batch_axes = tuple(range(dy.ndim - 1))
    d_scale = jnp.sum(dy32 * xhat, axis=batch_axes).astype(scale.dtype)
    d_bias = None if bias is None else jnp.sum(dy32, axis=batch_axes).astype(bias.dtype)
    dxhat = dy32 * scale.astype(jnp.float32)
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype: Dtype) -> jax.Array:
    """RMSNorm as in Llama / Qwen2: x / sqrt(mean(x^2) + eps) in float32, cast to `dtype`, times scale (in dtype)."""
    return _rms_norm_fwd(x, scale, eps, dtype)[0]


def _rms_norm_fwd(x, scale, eps, dtype):
    x32 = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)  # [..., 1]
    y = ((x32 * rstd).astype(dtype) * scale.astype(dtype)).astype(dtype)
    return y, (x, rstd, scale)


def _rms_norm_bwd(eps, dtype, residuals, dy):
    x, rstd, scale = residuals
    xhat = x.astype(jnp.float32) * rstd  # [..., E]
    dy32 = dy.astype(jnp.float32)
    d_scale = jnp.sum(dy32 * xhat.astype(dtype).astype(jnp.float32), axis=tuple(range(dy.ndim - 1)))
    dxhat = dy32 * scale.astype(dtype).astype(jnp.float32)
    dx = rstd * (dxhat - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class RMSNorm(nn.Module):
    """RMSNorm as in Llama / Qwen2: normalise in float32, cast back, then scale (`rms_norm`)."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", with_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                           self.param_dtype)
        return rms_norm(x, scale, self.eps, self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (optionally without bias, as in MPT; `layer_norm`)."""

    eps: float = 1e-5
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", with_partitioning(nn.initializers.ones, ("norm",)), (width,), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", with_partitioning(nn.initializers.zeros, ("norm",)), (width,), self.param_dtype)
        return layer_norm(x, scale, bias, self.eps, self.dtype)


def make_norm(kind: str, eps: float, use_bias: bool, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
    if kind == "rms":
        return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
    if kind == "layer":
        return LayerNorm(eps=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"unknown norm {kind!r}; use 'rms' or 'layer'")


class MLP(nn.Module):
    """Feed-forward block: gated (SwiGLU: down(act(gate(x)) * up(x))) or plain (down(act(up(x))))."""

    hidden_size: int
    intermediate_size: int
    act: str = "silu"
    gated: bool = True
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: str = "normal_0.02"  # a `kernel_initializer` scheme

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda f, i, o, name: Linear(f, i, o, use_bias=self.use_bias, dtype=self.dtype,  # noqa: E731
                                             param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)
        act = activation(self.act)
        up = dense(self.intermediate_size, ("embed",), ("mlp",), "up")(x)  # [B, T, E] -> [B, T, F]
        if self.gated:
            gate = dense(self.intermediate_size, ("embed",), ("mlp",), "gate")(x)
            h = act(gate) * up
        else:
            h = act(up)
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return dense(self.hidden_size, ("mlp",), ("embed",), "down")(h)  # [B, T, F] -> [B, T, E]


# ----------------------------------------------------------------------------------------------
# Positions: rotary (RoPE, with linear / llama3 scaling, partial rotary) and ALiBi.

def rope_inverse_frequencies(rotary_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies [rotary_dim // 2] for RoPE, as transformers' `ROPE_INIT_FUNCTIONS` compute them."""
    inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling["low_freq_factor"])
        high_freq_factor = float(scaling["high_freq_factor"])
        old_context_len = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return np.where(is_medium, smoothed, inv_freq_llama).astype(np.float32)
    raise NotImplementedError(f"rope scaling type {rope_type!r} is not supported (default, linear, llama3 are)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates the first 2*len(inv_freq) dims of x [B, T, H, D] by angle positions[b, t] * inv_freq
    (rotate-half convention of Llama / GPT-NeoX); the rest of the head passes through (partial rotary)."""
    rotary_dim = 2 * inv_freq.shape[0]
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]  # [B, T, D_r/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D_r]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    x_rot = x_rot * cos + rotated_half * sin
    return jnp.concatenate([x_rot, x_pass], axis=-1) if x_pass.shape[-1] else x_rot


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> np.ndarray:
    """Per-head ALiBi slopes [H] in MPT's ordering (also for non-power-of-two head counts)."""
    n_pow2 = 2 ** math.ceil(math.log2(num_heads))
    base = np.arange(1, n_pow2 + 1, dtype=np.float32) * (alibi_bias_max / n_pow2)
    slopes = 1.0 / np.power(2.0, base)
    if n_pow2 != num_heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Attention.

def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                          bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Softmax attention with grouped-query heads.

    query [B, T, H, D], key / value [B, S, K, D] with H % K == 0, mask bool broadcastable to [B, H, T, S]
    (True = may attend), bias float broadcastable to [B, H, T, S]. Logits and softmax in float32.
    Returns [B, T, H, D].
    """
    b, t, h, d = query.shape
    s, k_heads = key.shape[1], key.shape[2]
    if h % k_heads:
        raise ValueError(f"query heads {h} must be a multiple of key/value heads {k_heads}")
    groups = h // k_heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # Scale the [B, T, H, D] queries rather than the [B, H, T, S] logits (exact for power-of-two scales).
    query = query * jnp.asarray(scale, query.dtype)
    if groups == 1:  # plain multi-head: 4-D contractions, no group axis for XLA to lay out
        logits = jnp.einsum("bthd,bshd->bhts", query, key, preferred_element_type=jnp.float32)  # [B, H, T, S]
    else:
        q = query.reshape(b, t, k_heads, groups, d)
        logits = jnp.einsum("btkgd,bskd->bkgts", q, key, preferred_element_type=jnp.float32)  # [B,K,G,T,S]
        logits = logits.reshape(b, h, t, s)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)  # [B, H, T, S]
    if groups == 1:
        return jnp.einsum("bhts,bshd->bthd", weights, value)
    weights = weights.reshape(b, k_heads, groups, t, s)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, value)
    return out.reshape(b, t, h, d)


def causal_dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                                 bias: jax.Array | None = None, scale: float | None = None,
                                 block_size: int = 64, segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal self-attention (query t attends keys 0..t, T == S), computed in query blocks of `block_size` that
    each see only the keys up to their last query: the fully masked upper-right blocks of the [T, S] logits are
    never formed (about half the work and memory of the masked full softmax), with the same result as
    `dot_product_attention` under a causal mask up to float rounding.

    segment_ids [B, T] int (optional; packed rows): query t attends key s <= t only when both carry the same id.
    Padding (id 0) is then a segment of its own that no real token sees. Each block's mask is built from the ids
    ([B, 1, Tb, end]); no [T, S] mask exists at once.

    query [B, T, H, D], key / value [B, T, K, D], bias float broadcastable to [B, H, T, S]. Returns [B, T, H, D].
    """
    t = query.shape[1]
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if key.shape[1] != t:
        raise ValueError(f"causal attention needs as many keys as queries, got {key.shape[1]} and {t}")
    if segment_ids is not None and segment_ids.shape != (query.shape[0], t):
        raise ValueError(f"segment_ids must be [B, T] = {(query.shape[0], t)}, got {segment_ids.shape}")
    if bias is not None:
        bias = jnp.asarray(bias)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    outs = []
    for start in range(0, t, block_size):
        end = min(start + block_size, t)
        mask = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])[None, None]  # [1, 1, Tb, end]
        if segment_ids is not None:  # [B, 1, Tb, end]: and the same segment
            mask = mask & same_segment(segment_ids[:, start:end], segment_ids[:, :end])
        block_bias = None
        if bias is not None:
            block_bias = bias[..., :end] if bias.shape[-1] > 1 else bias
            block_bias = block_bias[..., start:end, :] if block_bias.shape[-2] > 1 else block_bias
        outs.append(dot_product_attention(query[:, start:end], key[:, :end], value[:, :end], mask=mask,
                                          bias=block_bias, scale=scale))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def same_segment(query_ids: jax.Array, key_ids: jax.Array) -> jax.Array:
    """Segment ids of queries [B, T] and keys [B, S] -> bool [B, 1, T, S]: True where both are in one segment."""
    return query_ids[:, None, :, None] == key_ids[:, None, None, :]


def positions_within_segments(segment_ids: jax.Array) -> jax.Array:
    """[B, T] segment ids -> [B, T] int32 positions that restart at 0 wherever the id changes (each packed sample
    counts from 0; RoPE then sees every sample as if it ran alone). Segments are contiguous runs of one id."""
    length = segment_ids.shape[-1]
    slots = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones(segment_ids.shape[:-1] + (1,), bool),
                              segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)  # [B, T]
    first = jax.lax.cummax(jnp.where(starts, slots, 0), axis=segment_ids.ndim - 1)  # [B, T]: its segment's start
    return slots - first


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q / k / v / o projections, optional GQA, qkv clipping, and
    optional key/value inputs different from the queries (cross-attention).

    Projection kernels: q [E, H, D], k / v [E_kv, K, D], o [H, D, E].
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_features: int
    qkv_bias: bool = False
    out_bias: bool = False
    clip_qkv: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: str = "normal_0.02"  # a `kernel_initializer` scheme

    def setup(self):
        proj = lambda heads, axes: Linear((heads, self.head_dim), ("embed",), axes, use_bias=self.qkv_bias,  # noqa: E731
                                          dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        self.q = proj(self.num_heads, ("heads", "head_dim"))
        self.k = proj(self.num_kv_heads, ("kv_heads", "head_dim"))
        self.v = proj(self.num_kv_heads, ("kv_heads", "head_dim"))
        self.o = Linear(self.out_features, ("heads", "head_dim"), ("embed",), n_in=2, use_bias=self.out_bias,
                        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)

    def project_qkv(self, x_q: jax.Array, x_kv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        q = self.q(x_q)  # [B, T, E] -> [B, T, H, D]
        k = self.k(x_kv)  # [B, S, E_kv] -> [B, S, K, D]
        v = self.v(x_kv)  # [B, S, E_kv] -> [B, S, K, D]
        if self.clip_qkv is not None:
            q, k, v = (jnp.clip(a, -self.clip_qkv, self.clip_qkv) for a in (q, k, v))
        q = constrain(q, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        k = constrain(k, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        v = constrain(v, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        return q, k, v

    def project_out(self, attended: jax.Array) -> jax.Array:
        return self.o(attended)  # [B, T, H, D] -> [B, T, E]

    def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *, mask: jax.Array | None = None,
                 bias: jax.Array | None = None) -> jax.Array:
        """Plain (non-cached) attention: self-attention when x_kv is None, else cross-attention."""
        q, k, v = self.project_qkv(x_q, x_q if x_kv is None else x_kv)
        return self.project_out(dot_product_attention(q, k, v, mask=mask, bias=bias))
