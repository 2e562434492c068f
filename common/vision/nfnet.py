"""NFNet-F0 ... F6 (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without Normalization",
Sec. 4: Fig. 2 block, Table 1 depths / resolutions; DeepMind's `nfnets` release): the normalizer-free ResNet that
Flamingo uses as its frozen vision encoder (Alayrac et al. 2022, Sec. 2.1: NFNet-F6, "the output of the final stage is
a 2D spatial grid of features that is flattened to a 1D sequence"). Matches timm's `dm_nfnet_f0` .. `dm_nfnet_f6`
(the converted DeepMind weights).

Stem (4 scaled-WS convs 3x3: C/8 s2, C/4, C/2, C s2; C = 128) -> 4 stages of bottleneck blocks (widths 256, 512,
1536, 1536; depths F0 [1, 2, 6, 3], F_n = (n+1) x F0; stride 1, 2, 2, 2) -> final 1x1 conv to 2 x 1536 = 3072
channels -> activation -> [global average pool -> dropout -> linear classifier].

Block (pre-activation, beta = 1 / sqrt(expected variance of its input), alpha = 0.2):
  out = act(x) * beta;  shortcut = x, or conv1x1(avgpool2x2(out)) in a stage's first block
  out = conv1x1(out) -> act -> conv3x3 (stride, groups of 128 channels) -> act -> conv3x3 (groups) -> act
        -> conv1x1 -> 2 * squeeze_excite(out) (ratio 0.5, ReLU, sigmoid gate) -> stochastic depth
  x = out * skip_gain * alpha + shortcut          (skip_gain: SkipInit, initialised to 0)
The expected variance grows by alpha^2 per block and is reset to 1 + alpha^2 after each stage's first block.
act = gamma * GELU (gamma = 1.7015: keeps unit variance for unit-Gaussian inputs). Every convolution uses scaled
weight standardisation with a learnable gain: W_hat = gain * (W - mean(W)) / sqrt(N * (var(W) + eps)) (timm, eps
1e-5, the default) or gain * (W - mean(W)) / sqrt(max(N * var(W), eps)) (DeepMind's haiku code, eps 1e-4),
N = fan-in, statistics per output channel. Convolutions pad 'SAME' (TensorFlow's asymmetric padding, as timm's
`ScaledStdConv2dSame`); the shortcut pool is 2x2 / stride 2 over the valid pixels (ceil mode on odd sizes).

Shapes: B batch, H x W x C input pixels (NHWC, ImageNet-normalised float), h x w the final grid (H/32 x W/32,
rounded up), S = h * w tokens, D feature width (3072 after the final conv, 1536 for the last stage).

Param tree: {stem: {conv1..conv4}, stages_{s}: {block_0: {downsample, conv1, conv2, conv2b, conv3, se: {fc1, fc2},
skip_gain}, blocks: <blocks 1.. of the stage, leading [depth-1] axis> (scanned; `block_{i}` unrolled)},
[final_conv], [head: {kernel [D, classes], bias}]}; each conv {kernel [kh, kw, in/groups, out], gain [out],
bias [out]}. timm weights: `common.hf.vision.load_timm_nfnet` / `nfnet_rule`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any
from collections.abc import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from common.layers import Dtype, Linear, activation, dtype_of
from common.sharding import constrain, with_partitioning
from common.vision.vit import ACT_TOKENS, check_pixels, drop_path

ACT_MAP = ("act_batch", None, None, "act_embed")  # [B, H, W, C] feature maps
CONV_KERNEL_AXES = ("conv_height", "conv_width", "channels", "conv_out")

# Activation gains from DeepMind's nfnets/base.py (`nonlinearities`): gamma such that gamma * act(x) has unit
# variance for x ~ N(0, 1).
NONLINEARITY_GAMMA = {
    "gelu": 1.7015043497085571,
    "relu": 1.7139588594436646,
    "silu": 1.7881293296813965,
    "swish": 1.7881293296813965,
}

# NFNet-F0's depths; F_n multiplies them by n + 1 (Brock et al. 2021, Table 1 / DeepMind's `nfnet_params`).
F0_DEPTHS = (1, 2, 6, 3)
# Training / evaluation resolutions of the released models (train_imsize / test_imsize).
TRAIN_IMAGE_SIZE = {0: 192, 1: 224, 2: 256, 3: 320, 4: 384, 5: 416, 6: 448}
TEST_IMAGE_SIZE = {0: 256, 1: 320, 2: 352, 3: 416, 4: 512, 5: 544, 6: 576}
# Parameter counts with the 1000-class ImageNet head as published, to 0.1M (Brock et al. 2021's model table; timm's
# dm_nfnet_f{n} model cards).
PUBLISHED_PARAMS = {0: 71.5e6, 1: 132.6e6, 2: 193.8e6, 3: 254.9e6, 4: 316.1e6, 5: 377.2e6, 6: 438.4e6}

FEATURES = ("final", "last_stage")
KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # N(0, 1 / fan_in), timm's kaiming_normal


@dataclasses.dataclass(frozen=True)
class NFNetConfig:
    """NFNet hyper-parameters (defaults = NFNet-F0 without a classifier head, timm's numerics)."""

    depths: tuple[int, ...] = F0_DEPTHS
    widths: tuple[int, ...] = (256, 512, 1536, 1536)
    stem_width: int = 128
    group_width: int = 128  # channels per group of the 3x3 convolutions
    bottleneck_ratio: float = 0.5
    se_ratio: float = 0.5
    se_gain: float = 2.0
    alpha: float = 0.2
    final_conv_mult: float = 2.0  # final 1x1 conv to final_conv_mult * widths[-1] channels; 0 = none
    act: str = "gelu"
    std_conv: str = "timm"  # weight standardisation: "timm" (eps inside the variance) | "deepmind" (max(N var, eps))
    std_conv_eps: float = 1e-5  # timm 1e-5; DeepMind's haiku code 1e-4
    image_size: int = 192  # nominal input size (F0 trains at 192, evaluates at 256); any size runs
    num_channels: int = 3
    num_classes: int = 0  # 0 = no classifier head (Flamingo); 1000 for the ImageNet checkpoints
    drop_rate: float = 0.0  # dropout before the classifier (training only)
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over all blocks (training only)
    # What `NFNetOutput.tokens` flattens: "final" = after the final conv + activation (timm's forward_features,
    # what the classifier pools); "last_stage" = the last stage's output, width widths[-1] (Flamingo's features).
    features: str = "final"
    scan_blocks: bool = True  # blocks 1.. of each stage through nn.scan (compile time flat in depth)
    dtype: str = "float32"  # compute dtype (weights are standardised in float32, then cast)
    param_dtype: str = "float32"

    def __post_init__(self):
        if len(self.depths) != len(self.widths):
            raise ValueError(f"depths {self.depths} and widths {self.widths} need one entry per stage")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every stage needs at least one block, got depths {self.depths}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.std_conv not in ("timm", "deepmind"):
            raise ValueError(f"std_conv must be 'timm' or 'deepmind', got {self.std_conv!r}")
        if self.act not in NONLINEARITY_GAMMA:
            raise ValueError(f"no NF gamma for activation {self.act!r}; known: {sorted(NONLINEARITY_GAMMA)}")
        for w in self.widths:
            if self._rounded_mid(w) < self.group_width:
                raise ValueError(f"stage width {w}: bottleneck width {self._rounded_mid(w)} is below group_width "
                                 f"{self.group_width}")

    @property
    def final_width(self) -> int:
        """Channels after the final conv (3072 for the F-variants), or the last stage width without one."""
        return int(self.widths[-1] * self.final_conv_mult) if self.final_conv_mult else self.widths[-1]

    @property
    def feature_width(self) -> int:
        """D of `NFNetOutput.tokens` (Flamingo's vision width)."""
        return self.final_width if self.features == "final" else self.widths[-1]

    def _rounded_mid(self, width: int) -> int:
        v = width * self.bottleneck_ratio  # timm's make_divisible(v, 8): nearest multiple of 8, at least 0.9 v
        mid = max(8, int(v + 4) // 8 * 8)
        return mid + 8 if mid < 0.9 * v else mid

    def mid_width(self, width: int) -> int:
        """Bottleneck width of a block of output width `width`: width * bottleneck_ratio rounded to a multiple of
        8, then down to whole groups of group_width (256 -> 128, 512 -> 256, 1536 -> 768)."""
        return self._rounded_mid(width) // self.group_width * self.group_width

    def grid_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Final feature grid (h, w) for an input of height x width (default image_size): /32, rounded up."""
        height = height or self.image_size
        width = width or self.image_size
        return math.ceil(height / 32), math.ceil(width / 32)

    @property
    def num_tokens(self) -> int:
        h, w = self.grid_size()
        return h * w

    def betas_and_rates(self) -> tuple[list[list[float]], list[list[float]]]:
        """Per stage, per block: beta = 1 / sqrt(expected input variance) and the stochastic-depth rate."""
        betas, expected_var = [], 1.0
        for depth in self.depths:
            stage = []
            for b in range(depth):
                stage.append(1.0 / expected_var ** 0.5)
                if b == 0:
                    expected_var = 1.0  # the first block's shortcut conv resets the variance
                expected_var += self.alpha ** 2
            betas.append(stage)
        total = sum(self.depths)
        flat = np.linspace(0.0, self.drop_path_rate, total).tolist() if total > 1 else [0.0]
        rates, start = [], 0
        for depth in self.depths:
            rates.append(flat[start:start + depth])
            start += depth
        return betas, rates

    @classmethod
    def from_timm(cls, timm_config: Mapping[str, Any], **overrides) -> NFNetConfig:
        """From a timm checkpoint's config.json ({"architecture": "dm_nfnet_f6", "num_classes": 1000,
        "pretrained_cfg": {"input_size": [3, 448, 448], ...}}); only the dm_nfnet_f0 .. f6 architectures."""
        arch = str(timm_config.get("architecture", ""))
        prefix = "dm_nfnet_f"
        if not (arch.startswith(prefix) and arch[len(prefix):].isdigit()):
            raise ValueError(f"not a timm dm_nfnet_f0 .. f6 config: architecture {arch!r}")
        variant = int(arch[len(prefix):])
        fields: dict[str, Any] = dict(num_classes=int(timm_config.get("num_classes", 1000)))
        input_size = (timm_config.get("pretrained_cfg") or {}).get("input_size")
        if input_size:
            fields["image_size"] = int(input_size[-1])
        fields["num_channels"] = int(timm_config.get("in_chans", 3))
        fields.update(overrides)
        return nfnet_f(variant, **fields)


def nfnet_f(variant: int, **overrides) -> NFNetConfig:
    """NFNet-F{variant} (0 .. 6): depths (n+1) x [1, 2, 6, 3], widths [256, 512, 1536, 1536], final conv to 3072,
    image_size = the variant's training resolution. Without a head by default; num_classes=1000 for the ImageNet
    checkpoints (F0 71.5M ... F6 438.4M parameters with it; F6 435.3M without: Flamingo's 435M)."""
    if variant not in TRAIN_IMAGE_SIZE:
        raise ValueError(f"NFNet variant must be 0 .. 6 (F0 .. F6), got {variant!r}")
    fields: dict[str, Any] = dict(depths=tuple(d * (variant + 1) for d in F0_DEPTHS),
                                  image_size=TRAIN_IMAGE_SIZE[variant])
    fields.update(overrides)
    return NFNetConfig(**fields)


@flax.struct.dataclass
class NFNetOutput:
    """What `NFNet` returns (a pytree).

    tokens: [B, S, D] the configured features (`config.features`) flattened row-major over the h x w grid —
      what Flamingo's Perceiver Resampler reads.
    feature_map: [B, h, w, Df] after the final conv and activation (timm's `forward_features`).
    last_stage: [B, h, w, C4] the last stage's output (before the final conv).
    pooled: [B, Df] global average of feature_map.
    logits: [B, classes] with a classifier head, else None.
    Unused outputs are dead code under `jit`.
    """

    tokens: jax.Array
    feature_map: jax.Array
    last_stage: jax.Array
    pooled: jax.Array
    logits: jax.Array | None = None


def standardize_weight(kernel: jax.Array, gain: jax.Array, eps: float, mode: str = "timm") -> jax.Array:
    """Scaled weight standardisation of a [kh, kw, in, out] kernel, per output channel (fan-in N = kh * kw * in):
    timm: gain * (W - mean) / sqrt(N * (var + eps)); deepmind: gain * (W - mean) / sqrt(max(N * var, eps))."""
    fan_in = int(np.prod(kernel.shape[:-1]))
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)  # [1, 1, 1, out]
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    if mode == "timm":
        scale = gain * (fan_in ** -0.5) * jax.lax.rsqrt(var + eps)
    elif mode == "deepmind":
        scale = gain * jax.lax.rsqrt(jnp.maximum(var * fan_in, eps))
    else:
        raise ValueError(f"unknown weight standardisation {mode!r}; use 'timm' or 'deepmind'")
    return (kernel - mean) * scale


class WSConv2d(nn.Module):
    """2-D convolution with scaled weight standardisation and a learnable per-channel gain (NF-ResNets), NHWC,
    'SAME' padding: [B, H, W, Cin] -> [B, ceil(H/stride), ceil(W/stride), features]. Params: kernel
    [k, k, Cin/groups, features], gain [features] (init 1), bias [features] (init 0)."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    eps: float = 1e-5
    mode: str = "timm"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        if cin % self.groups or self.features % self.groups:
            raise ValueError(f"{self.name}: {cin} -> {self.features} channels do not split into {self.groups} groups")
        k = self.kernel_size
        kernel = self.param("kernel", with_partitioning(KERNEL_INIT, CONV_KERNEL_AXES),
                            (k, k, cin // self.groups, self.features), self.param_dtype)
        gain = self.param("gain", with_partitioning(nn.initializers.ones, ("conv_out",)), (self.features,),
                          self.param_dtype)
        bias = self.param("bias", with_partitioning(nn.initializers.zeros, ("conv_out",)), (self.features,),
                          self.param_dtype)
        w = standardize_weight(kernel.astype(jnp.float32), gain.astype(jnp.float32), self.eps, self.mode)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (self.stride, self.stride),
                                         "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=self.groups)  # [B, H', W', features]
        return y + bias.astype(self.dtype)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]: 2x2 / stride-2 mean over the pixels inside the image (timm's
    AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False); haiku's avg_pool with 'SAME' padding)."""
    _, h, w, _ = x.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    window = (1, 2, 2, 1)
    zero = np.zeros((), x.dtype)  # a concrete 0 makes this a differentiable reduce_window_sum
    total = jax.lax.reduce_window(x, zero, jax.lax.add, window, window, pad)
    count = jax.lax.reduce_window(np.ones((1, h, w, 1), x.dtype), zero, jax.lax.add, window, window, pad)
    return total / count


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x))))): [B, H, W, C] -> [B, H, W, C]; fc1 C -> C * ratio, with biases."""

    ratio: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        hidden = max(1, int(c * self.ratio))
        dense = functools.partial(Linear, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=KERNEL_INIT)
        s = jnp.mean(x, axis=(1, 2))  # [B, C]
        s = jax.nn.relu(dense(hidden, ("channels",), ("conv_out",), name="fc1")(s))  # [B, C * ratio]
        s = dense(c, ("channels",), ("conv_out",), name="fc2")(s)  # [B, C]
        return x * jax.nn.sigmoid(s)[:, None, None, :]


class NFBlock(nn.Module):
    """One NFNet bottleneck block (see the module docstring). `__call__(x, (beta, drop_rate)) -> (x, None)` has
    nn.scan's (carry, xs) -> (carry, ys) signature; beta / drop_rate are scalars (traced when scanned)."""

    config: NFNetConfig
    width: int  # output channels
    stride: int = 1
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, beta_and_rate: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        beta, rate = beta_and_rate
        conv = functools.partial(WSConv2d, eps=cfg.std_conv_eps, mode=cfg.std_conv, dtype=dtype,
                                 param_dtype=param_dtype)
        gamma, act_fn = NONLINEARITY_GAMMA[cfg.act], activation(cfg.act)
        act = lambda y: act_fn(y) * gamma  # noqa: E731
        mid = cfg.mid_width(self.width)
        groups = mid // cfg.group_width
        x = constrain(x, ACT_MAP)  # [B, H, W, Cin]

        out = act(x) * jnp.asarray(beta, dtype)
        shortcut = x
        if x.shape[-1] != self.width or self.stride != 1:
            pooled = avg_pool_2x2(out) if self.stride > 1 else out  # [B, H/s, W/s, Cin]
            shortcut = conv(self.width, 1, name="downsample")(pooled)  # [B, H/s, W/s, C]
        out = conv(mid, 1, name="conv1")(out)  # [B, H, W, M]
        out = conv(mid, 3, self.stride, groups, name="conv2")(act(out))  # [B, H/s, W/s, M]
        out = conv(mid, 3, 1, groups, name="conv2b")(act(out))
        out = conv(self.width, 1, name="conv3")(act(out))  # [B, H/s, W/s, C]
        out = cfg.se_gain * SqueezeExcite(cfg.se_ratio, dtype=dtype, param_dtype=param_dtype, name="se")(out)
        if cfg.drop_path_rate > 0 and not self.deterministic:
            out = drop_path(out, rate, self.make_rng("dropout"))
        skip_gain = self.param("skip_gain", with_partitioning(nn.initializers.zeros, ()), (), param_dtype)
        out = out * skip_gain.astype(dtype) * cfg.alpha + shortcut
        return constrain(out, ACT_MAP), None


class NFStage(nn.Module):
    """A stage: block_0 (stride, shortcut conv) then depth - 1 identical blocks, scanned (`blocks`, leading
    [depth-1] axis named 'layers') or unrolled (`block_1` ...)."""

    config: NFNetConfig
    width: int
    depth: int
    stride: int
    betas: tuple[float, ...]
    rates: tuple[float, ...]
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        block = functools.partial(NFBlock, cfg, self.width, deterministic=self.deterministic)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        x, _ = block(self.stride, name="block_0")(x, (f32(self.betas[0]), f32(self.rates[0])))
        if self.depth == 1:
            return x
        if cfg.scan_blocks:
            stack = nn.scan(NFBlock, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=0, length=self.depth - 1, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(cfg, self.width, 1, self.deterministic, name="blocks")(
                x, (f32(self.betas[1:]), f32(self.rates[1:])))  # betas / rates [depth-1]
        else:
            for i in range(1, self.depth):
                x, _ = block(1, name=f"block_{i}")(x, (f32(self.betas[i]), f32(self.rates[i])))
        return x


class NFStem(nn.Module):
    """conv3x3 s2 -> act -> conv3x3 -> act -> conv3x3 -> act -> conv3x3 s2 (widths C/8, C/4, C/2, C; C =
    stem_width): [B, H, W, 3] -> [B, H/4, W/4, C]. Params conv1 .. conv4."""

    config: NFNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        conv = functools.partial(WSConv2d, kernel_size=3, eps=cfg.std_conv_eps, mode=cfg.std_conv,
                                 dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        gamma, act_fn = NONLINEARITY_GAMMA[cfg.act], activation(cfg.act)
        c = cfg.stem_width
        for i, (width, stride) in enumerate([(c // 8, 2), (c // 4, 1), (c // 2, 1), (c, 2)]):
            if i:
                x = act_fn(x) * gamma
            x = conv(width, stride=stride, name=f"conv{i + 1}")(x)
        return constrain(x, ACT_MAP)


class NFNet(nn.Module):
    """`__call__(pixels [B, H, W, C]) -> NFNetOutput`. Fully convolutional: any input size runs (S = ceil(H/32) *
    ceil(W/32)). Dropout / stochastic depth run only with deterministic=False and a 'dropout' rng."""

    config: NFNetConfig

    @nn.compact
    def __call__(self, pixels: jax.Array, *, deterministic: bool = True) -> NFNetOutput:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        size = tuple(pixels.shape[1:3]) if pixels.ndim == 4 else (cfg.image_size, cfg.image_size)
        check_pixels(pixels, size, cfg.num_channels, "NFNet")
        conv = functools.partial(WSConv2d, eps=cfg.std_conv_eps, mode=cfg.std_conv, dtype=dtype,
                                 param_dtype=param_dtype)
        gamma, act_fn = NONLINEARITY_GAMMA[cfg.act], activation(cfg.act)
        act = lambda y: act_fn(y) * gamma  # noqa: E731
        x = constrain(pixels.astype(dtype), ACT_MAP)  # [B, H, W, 3]

        x = NFStem(cfg, name="stem")(x)  # [B, H, W, 3] -> [B, H/4, W/4, stem_width]

        # Stages: [B, H/4, W/4, 128] -> [B, H/4, W/4, 256] -> /8 512 -> /16 1536 -> [B, h, w, 1536].
        betas, rates = cfg.betas_and_rates()
        for s, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
            x = NFStage(cfg, width, depth, 1 if s == 0 else 2, tuple(betas[s]), tuple(rates[s]),
                        deterministic=deterministic, name=f"stages_{s}")(x)
        last_stage = x  # [B, h, w, C4]

        if cfg.final_conv_mult:
            x = conv(cfg.final_width, 1, name="final_conv")(x)  # [B, h, w, Df]
        feature_map = constrain(act(x), ACT_MAP)
        pooled = jnp.mean(feature_map, axis=(1, 2))  # [B, Df]
        logits = None
        if cfg.num_classes:
            h = nn.Dropout(cfg.drop_rate, deterministic=deterministic)(pooled) if cfg.drop_rate else pooled
            logits = Linear(cfg.num_classes, ("channels",), ("classes",), use_bias=True, dtype=dtype,
                            param_dtype=param_dtype, kernel_init=nn.initializers.normal(0.01), name="head")(h)
        grid = feature_map if cfg.features == "final" else last_stage
        b, h, w, d = grid.shape
        tokens = constrain(grid.reshape(b, h * w, d), ACT_TOKENS)  # [B, S, D], row-major over the grid
        return NFNetOutput(tokens=tokens, feature_map=feature_map, last_stage=last_stage, pooled=pooled,
                           logits=logits)
