"""The speech codec's adversaries (VITA-1.5 stage 3.1, `vita_jax/codec_train.py`): HiFi-GAN's multi-period and
multi-scale discriminators as in the release's `ticodec/models.py` (channel widths scalable for small runs), and their
LSGAN and feature-matching losses.

Shapes: waveforms [B, N]; each discriminator returns (logits [B, *], its feature maps).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vita_jax.codec import LRELU_SLOPE


def _scaled(ch: int, scale: float) -> int:
    return max(1, int(round(ch * scale)))


class PeriodDiscriminator(nn.Module):
    """The waveform folded into [N / p, p] columns, 2-D convs over time only."""

    period: int
    channel_scale: float = 1.0

    @nn.compact
    def __call__(self, wav):  # [B, N] -> (logits [B, *], feature maps)
        b, n = wav.shape
        if n % self.period:
            wav = jnp.pad(wav, ((0, 0), (0, self.period - n % self.period)), mode="reflect")
        x = wav.reshape(b, -1, self.period, 1)  # [B, N / p, p, 1]
        fmaps = []
        for i, ch in enumerate((32, 128, 512, 1024, 1024)):
            stride = 3 if i < 4 else 1
            x = nn.Conv(_scaled(ch, self.channel_scale), (5, 1), strides=(stride, 1), padding=((2, 2), (0, 0)),
                        name=f"convs_{i}")(x)
            x = jax.nn.leaky_relu(x, LRELU_SLOPE)
            fmaps.append(x)
        x = nn.Conv(1, (3, 1), padding=((1, 1), (0, 0)), name="conv_post")(x)
        fmaps.append(x)
        return x.reshape(b, -1), fmaps


class ScaleDiscriminator(nn.Module):
    channel_scale: float = 1.0
    grouped: bool = True  # HiFi-GAN's grouped convs; False: dense convs (XLA's CPU grouped convs are slow)

    @nn.compact
    def __call__(self, wav):  # [B, N] -> (logits [B, *], feature maps)
        x = wav[..., None]
        fmaps = []
        specs = ((128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16), (1024, 41, 4, 16),
                 (1024, 41, 1, 16), (1024, 5, 1, 1))
        for i, (ch, k, s, g) in enumerate(specs):
            out = _scaled(ch, self.channel_scale)
            groups = math.gcd(math.gcd(g, x.shape[-1]), out) if self.grouped else 1
            x = nn.Conv(out, (k,), strides=(s,), padding=[((k - 1) // 2, (k - 1) // 2)], feature_group_count=groups,
                        name=f"convs_{i}")(x)
            x = jax.nn.leaky_relu(x, LRELU_SLOPE)
            fmaps.append(x)
        x = nn.Conv(1, (3,), padding=[(1, 1)], name="conv_post")(x)
        fmaps.append(x)
        return x.reshape(x.shape[0], -1), fmaps


class Discriminators(nn.Module):
    """Multi-period + multi-scale (average-pooled x2, x4) discriminators -> lists of (logits, feature maps)."""

    periods: Sequence[int] = (2, 3, 5, 7, 11)
    channel_scale: float = 1.0
    num_scales: int = 3
    grouped: bool = True

    @nn.compact
    def __call__(self, wav):
        outs = [PeriodDiscriminator(p, self.channel_scale, name=f"mpd_{p}")(wav) for p in self.periods]
        x = wav
        for i in range(self.num_scales):
            if i:
                x = nn.avg_pool(x[..., None], (4,), (2,), padding=((2, 2),), count_include_pad=True)[..., 0]
            outs.append(ScaleDiscriminator(self.channel_scale, self.grouped, name=f"msd_{i}")(x))
        return outs


def discriminator_loss(real, fake) -> jax.Array:
    return sum(jnp.mean((1 - r) ** 2) + jnp.mean(f**2) for (r, _), (f, _) in zip(real, fake))


def generator_adversarial_loss(fake) -> jax.Array:
    return sum(jnp.mean((1 - f) ** 2) for f, _ in fake)


def feature_matching_loss(real, fake) -> jax.Array:
    return sum(jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f)) for (_, rs), (_, fs) in zip(real, fake)
               for r, f in zip(rs, fs))
