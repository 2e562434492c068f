"""VITA-1.5's speech codec (Fu et al. 2025, Sec. 3.1 "speech decoder"; the release's `vita_tts/decoder/ticodec`): a
TiCodec-style VQ-VAE turning 24 kHz speech into one stream of 40 Hz tokens from a single codebook of 1024 and back,
with 8 global style tokens for the voice.

  encode: wav [B, N] --conv encoder, 600x down--> [B, T, 512] --nearest code--> codes [B, T]
          (stage-2 features [B, 4T*..., 128] --GlobalTokenEncoder--> [B, 128] --8 codebooks of 16-->
          global tokens [B, 8])
  decode: codes [B, T] --codebook--> [B, T, 512] --HiFi-GAN V1 generator (+ the 128-d style after the 128-channel
          stage)--> wav [B, 600 T] in [-1, 1]

Layout is NWC ([B, time, channels]); `vita_jax.hf.load_codec(folder)` reads the release's `codec/model.json` +
`final.pt` (weight norm folded, w = g v / |v|). Stage 3.1 trains it (vita_jax.codec_train); the release ships no
trainer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LRELU_SLOPE = 0.1
RELEASE_GLOBAL_TOKENS = (473, 975, 419, 219, 565, 121, 550, 616)  # the one voice VITA-1.5 speaks with


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """The release's codec/model.json fields (defaults = VITA-1.5), plus `encoder_channels` (32 there: the encoder's
    first width, doubled per stage up to the code dimension)."""

    sampling_rate: int = 24000
    upsample_rates: tuple[int, ...] = (8, 5, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 11, 5)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    encoder_channels: int = 32
    n_codes: int = 1024
    global_code_num: int = 8
    global_feature_conv: tuple[int, ...] = (128, 64, 128, 3, 1)  # in, hidden, out, kernel, stride
    global_tokens: tuple[int, ...] = RELEASE_GLOBAL_TOKENS
    codebook_loss_lambda: float = 1.0
    commitment_loss_lambda: float = 0.25
    # spectrogram settings of the training losses (model.json's mel fields)
    segment_size: int = 24000
    n_fft: int = 1024
    hop_size: int = 240
    win_size: int = 1024
    num_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0

    def __post_init__(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.global_dim % self.global_code_num:
            raise ValueError(f"global feature {self.global_dim} does not split into {self.global_code_num} codebooks")
        stage = len(self.upsample_rates) // 2 - 1
        if self.global_feature_conv[0] != self.encoder_channels * 2 ** (stage + 1):
            raise ValueError(f"global_feature_conv[0]={self.global_feature_conv[0]} must equal the encoder's width "
                             f"after stage {stage} ({self.encoder_channels * 2 ** (stage + 1)})")
        if self.global_dim not in self.generator_channels:
            raise ValueError(f"no generator stage has {self.global_dim} channels for the global style "
                             f"(stages: {self.generator_channels})")
        if len(self.global_tokens) != self.global_code_num:
            raise ValueError(f"global_tokens has {len(self.global_tokens)} entries, expected {self.global_code_num}")

    @property
    def hop_length(self) -> int:
        """Waveform samples per token: 600 (24 kHz / 40 Hz)."""
        return math.prod(self.upsample_rates)

    @property
    def code_dim(self) -> int:
        return self.encoder_channels * 2 ** len(self.upsample_rates)

    @property
    def global_dim(self) -> int:
        return self.global_feature_conv[2]

    @property
    def generator_channels(self) -> tuple[int, ...]:
        return tuple(self.upsample_initial_channel // 2 ** (i + 1) for i in range(len(self.upsample_rates)))

    def replace(self, **changes) -> CodecConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, conf: dict, **overrides) -> CodecConfig:
        """The release's model.json -> CodecConfig (only a single code group and residual layer exist in VITA)."""
        if int(conf.get("n_code_groups", 1)) != 1 or int(conf.get("residul_layer", 1)) != 1:
            raise ValueError(f"only n_code_groups=1, residul_layer=1 codecs are supported (VITA-1.5's), got "
                             f"{conf.get('n_code_groups')}, {conf.get('residul_layer')}")
        if str(conf.get("resblock", "1")) != "1":
            raise ValueError(f"only resblock '1' (HiFi-GAN V1) is supported, got {conf.get('resblock')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls.from_fields({**{k: v for k, v in conf.items() if k in fields}, **overrides})

    @classmethod
    def from_fields(cls, fields: dict) -> CodecConfig:
        """Field values as JSON or a ConfigDict gives them (lists) -> CodecConfig (tuples); unknown names raise."""
        kw = dict(fields)
        for k in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "global_feature_conv",
                  "global_tokens"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        if "resblock_dilation_sizes" in kw:
            kw["resblock_dilation_sizes"] = tuple(tuple(int(x) for x in d) for d in kw["resblock_dilation_sizes"])
        return cls(**kw)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {**d, "resblock": "1", "n_code_groups": 1, "residul_layer": 1}


def leaky_relu(x, slope: float = LRELU_SLOPE):
    return jax.nn.leaky_relu(x, slope)


def conv1d(features: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int | None = None,
           groups: int = 1, bias: bool = True, name: str | None = None) -> nn.Conv:
    """torch Conv1d on NWC input; padding defaults to 'same' for stride 1 ((k - 1) d / 2 each side)."""
    pad = (kernel * dilation - dilation) // 2 if padding is None else padding
    return nn.Conv(features, (kernel,), strides=(stride,), padding=[(pad, pad)], kernel_dilation=(dilation,),
                   feature_group_count=groups, use_bias=bias, name=name)


class ConvTranspose1d(nn.Module):
    """torch ConvTranspose1d(in, features, kernel, stride, padding): [B, T, C] -> [B, (T - 1) s - 2 p + k, F].

    Computed as the gradient-of-conv it is: the input dilated by the stride, padded by k - 1 - p, convolved with the
    spatially flipped kernel. kernel [k, C, F] = torch weight [C, F, k].transpose(2, 0, 1)."""

    features: int
    kernel_size: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x):
        k, p = self.kernel_size, self.padding
        kernel = self.param("kernel", nn.initializers.normal(0.01), (k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jax.lax.conv_general_dilated(x, kernel[::-1].astype(x.dtype), window_strides=(1,),
                                         padding=[(k - 1 - p, k - 1 - p)], lhs_dilation=(self.stride,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias.astype(y.dtype)


class ResBlock1(nn.Module):
    """HiFi-GAN V1 residual block: for each dilation d, x += conv_1(lrelu(conv_d(lrelu(x))))."""

    channels: int
    kernel_size: int
    dilations: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, d in enumerate(self.dilations):
            h = conv1d(self.channels, self.kernel_size, dilation=d, name=f"convs1_{i}")(leaky_relu(x))
            h = conv1d(self.channels, self.kernel_size, name=f"convs2_{i}")(leaky_relu(h))
            x = x + h
        return x


class Generator(nn.Module):
    """Code embeddings [B, T, code_dim] + style [B, global_dim] -> waveform [B, T * hop] (HiFi-GAN V1, multi-receptive
    field fusion = the mean of the resblocks of a stage; the style is added after the stage with global_dim
    channels)."""

    config: CodecConfig

    @nn.compact
    def __call__(self, x, style):
        cfg = self.config
        x = conv1d(cfg.upsample_initial_channel, 7, name="conv_pre")(x)
        added = False
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.generator_channels[i]
            x = ConvTranspose1d(ch, k, u, (k - u) // 2, name=f"ups_{i}")(leaky_relu(x))  # [B, T * u, ch]
            x = sum(ResBlock1(ch, rk, rd, name=f"resblocks_{i * len(cfg.resblock_kernel_sizes) + j}")(x)
                    for j, (rk, rd) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)))
            x = x / len(cfg.resblock_kernel_sizes)
            if ch == cfg.global_dim and not added:
                x = x + style[:, None, :].astype(x.dtype)
                added = True
        x = conv1d(1, 7, name="conv_post")(leaky_relu(x))
        return jnp.tanh(x[..., 0])  # [B, T * hop]


class StyleBatchNorm(nn.Module):
    """BatchNorm1d over [B, C]: batch statistics when training, `running_mean` / `running_var` otherwise. The running
    statistics are parameters (frozen in training, filled by `codec_train.calibrate_style_norm`), so the codec stays a
    pure function of its params."""

    features: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x, use_batch_stats: bool):
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("running_mean", nn.initializers.zeros, (self.features,))
        var = self.param("running_var", nn.initializers.ones, (self.features,))
        if use_batch_stats:
            mean, var = jnp.mean(x, 0), jnp.var(x, 0)
        else:
            mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class GlobalTokenEncoder(nn.Module):
    """Stage features [B, T', C] -> style vector [B, out] (three bias-free convs, time mean, Linear, LReLU,
    BatchNorm)."""

    config: CodecConfig

    @nn.compact
    def __call__(self, x, use_batch_stats: bool = False):
        c_in, hidden, out, k, s = self.config.global_feature_conv
        pad = (k - s) // 2
        for i, ch in enumerate((hidden, hidden, out)):
            x = leaky_relu(conv1d(ch, k, stride=s, padding=pad, bias=False, name=f"conv_{i}")(x))
        x = jnp.mean(x, axis=1)  # [B, out]
        x = leaky_relu(nn.Dense(out, name="fn_0")(x))
        return StyleBatchNorm(out, name="fn_2")(x, use_batch_stats)


class Encoder(nn.Module):
    """Waveform [B, N] -> latent [B, N / hop, code_dim] and style [B, global_dim] (the generator mirrored: strided
    convs with the rates reversed, each resblock's running sum group-normalised, the style encoder after stage
    n/2 - 1)."""

    config: CodecConfig

    @nn.compact
    def __call__(self, wav, use_batch_stats: bool = False):
        cfg = self.config
        rates, kernels = cfg.upsample_rates[::-1], cfg.upsample_kernel_sizes[::-1]
        res_kernels, res_dilations = cfg.resblock_kernel_sizes[::-1], cfg.resblock_dilation_sizes[::-1]
        n = len(rates)
        x = conv1d(cfg.encoder_channels, 7, name="conv_pre")(wav[..., None])  # [B, N, C0]
        style = None
        for i, (u, k) in enumerate(zip(rates, kernels)):
            ch = cfg.encoder_channels * 2 ** (i + 1)
            x = conv1d(ch, k, stride=u, padding=(k - u) // 2, name=f"ups_{i}")(leaky_relu(x))  # [B, N_i / u, ch]
            acc = None
            for j, (rk, rd) in enumerate(zip(res_kernels, res_dilations)):
                idx = i * len(res_kernels) + j
                h = ResBlock1(ch, rk, rd, name=f"resblocks_{idx}")(x)
                acc = h if acc is None else acc + h
                acc = nn.GroupNorm(num_groups=ch // 16 if ch >= 16 else 1, epsilon=1e-6, name=f"normalize_{idx}")(acc)
            x = acc / len(res_kernels)
            if i == n // 2 - 1:
                style = GlobalTokenEncoder(cfg, name="global_encoder")(x, use_batch_stats)
        x = conv1d(cfg.code_dim, 3, name="conv_post")(jax.nn.leaky_relu(x, 0.01))  # torch's default slope here
        return x, style


def nearest_code(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """x [..., D], codebook [K, D] -> index [...] of the nearest code in L2."""
    d = (jnp.sum(x**2, -1, keepdims=True) + jnp.sum(codebook**2, -1) - 2 * x @ codebook.T)
    return jnp.argmin(d, axis=-1)


def vq_loss(x, quantized, cfg: CodecConfig):
    """Codebook (moves the codes) + commitment (moves the encoder) loss of VQ-VAE."""
    sg = jax.lax.stop_gradient
    return (cfg.codebook_loss_lambda * jnp.mean((quantized - sg(x)) ** 2)
            + cfg.commitment_loss_lambda * jnp.mean((sg(quantized) - x) ** 2))


class Codec(nn.Module):
    """The VQ-VAE: `encode`, `decode`, and `__call__` (wav -> reconstruction, the stage-3.1 forward pass)."""

    config: CodecConfig

    def setup(self):
        cfg = self.config
        init = nn.initializers.uniform(2.0 / cfg.n_codes)
        shifted = lambda key, shape: init(key, shape) - 1.0 / cfg.n_codes  # noqa: E731  U(-1/K, 1/K) as the release
        self.codebook = self.param("codebook", shifted, (cfg.n_codes, cfg.code_dim))
        self.global_codebooks = self.param("global_codebooks", shifted, (cfg.global_code_num, cfg.n_codes,
                                                                         cfg.global_dim // cfg.global_code_num))
        self.encoder = Encoder(cfg)
        self.generator = Generator(cfg)

    def _check_wav(self, wav):
        if wav.ndim != 2:
            raise ValueError(f"waveform must be [B, N] at {self.config.sampling_rate} Hz, got shape {wav.shape}")
        if wav.shape[1] % self.config.hop_length:
            raise ValueError(f"waveform length {wav.shape[1]} is not a multiple of {self.config.hop_length} samples "
                             "(one token); pad it (vita_jax.codec.pad_to_tokens)")

    def _quantize_style(self, style):
        g = self.global_codebooks  # [G, K, d]
        pieces = style.reshape(style.shape[0], g.shape[0], g.shape[2])  # [B, G, d]
        tokens = jax.vmap(nearest_code, in_axes=(1, 0), out_axes=1)(pieces, g)  # [B, G]
        return tokens, self.embed_style(tokens)

    def embed_style(self, tokens):
        """Global tokens [B, G] -> style [B, global_dim]."""
        g = self.global_codebooks
        return jnp.concatenate([g[i][tokens[:, i]] for i in range(g.shape[0])], axis=-1)

    def quantizer_inputs(self, wav, use_batch_stats: bool = True):
        """wav [B, N] -> (latents [B, T, D], their codes [B, T]) (the dead-code restarts of training)."""
        latent, _ = self.encoder(wav, use_batch_stats)
        return latent, nearest_code(latent, self.codebook)

    def encode(self, wav):
        """wav [B, N] (N a multiple of hop) -> codes [B, N / hop] int32, global tokens [B, G] int32."""
        self._check_wav(wav)
        latent, style = self.encoder(wav)
        style_tokens, _ = self._quantize_style(style)
        return nearest_code(latent, self.codebook).astype(jnp.int32), style_tokens.astype(jnp.int32)

    def decode(self, codes, global_tokens=None):
        """codes [B, T] -> wav [B, T * hop]; global_tokens [B, G] (None: the config's voice)."""
        if codes.ndim != 2:
            raise ValueError(f"codes must be [B, T], got shape {codes.shape}")
        if global_tokens is None:
            global_tokens = jnp.broadcast_to(jnp.asarray(self.config.global_tokens, jnp.int32),
                                             (codes.shape[0], self.config.global_code_num))
        return self.generator(self.codebook[codes], self.embed_style(global_tokens))

    def __call__(self, wav, use_batch_stats: bool = True):
        """Stage 3.1 forward: wav [B, N] -> (reconstruction [B, N], VQ loss, codes [B, N / hop]); straight-through
        gradients past both quantizers."""
        self._check_wav(wav)
        latent, style = self.encoder(wav, use_batch_stats)
        codes = nearest_code(latent, self.codebook)
        quantized = self.codebook[codes]
        style_tokens, style_q = self._quantize_style(style)
        loss = vq_loss(latent, quantized, self.config) + vq_loss(style, style_q, self.config)
        sg = jax.lax.stop_gradient
        quantized = latent + sg(quantized - latent)
        style_q = style + sg(style_q - style)
        return self.generator(quantized, style_q), loss, codes


def pad_to_tokens(wav: np.ndarray, hop: int = 600) -> np.ndarray:
    """Zero-pads the last axis up to a whole number of tokens."""
    extra = (-wav.shape[-1]) % hop
    return np.pad(wav, [(0, 0)] * (wav.ndim - 1) + [(0, extra)]) if extra else wav


def init_params(config: CodecConfig, rng: jax.Array, num_tokens: int = 4) -> Any:
    codec = Codec(config)
    wav = jnp.zeros((2, num_tokens * config.hop_length), jnp.float32)
    return jax.jit(codec.init)(rng, wav)["params"]
