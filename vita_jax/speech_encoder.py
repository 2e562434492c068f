"""VITA-1.5's speech encoder and audio adapter (Fu et al. 2025, "VITA-1.5", Sec. 3.1 "Audio Modality": a 24-block
transformer encoder of ~350M parameters on 80-bin fbank, 4x conv downsampling to 25 Hz, then a 2x CNN adapter to
12.5 Hz tokens in the LLM's width), as the release's "whale" encoder computes it
(`vita/model/multimodal_encoder/whale/`, upstream commit 35d064a of the VITA repository; docs/vita.md).

Per utterance of T fbank frames (100 Hz):
  global CMVN (x - mean) * istd                                                        [B, T, 80]
  Conv2dSubsampling4: conv 3x3 s2 + ReLU, conv 3x3 s2 + ReLU (NHWC), flatten channel-major, Linear
                                                                                       [B, T', D], T' = ((T-1)//2-1)//2
  input block: Linear, LayerNorm, Dropout, ReLU; x * sqrt(D); absolute interleaved sin/cos table `pos_emb` [T', D]
  L pre-LN layers: x + MHA(LN(x)), x + FFN(LN(x)) (ReLU, biases); attention scores
      ((q + pos_bias_u) k^T + (q + pos_bias_v) (pos_emb W_pos)^T) / sqrt(d)   (Transformer-XL terms, no rel_shift:
      the release removed it, so the "relative" term depends on the key's absolute index)
  final LayerNorm                                                                      [B, T', D]
Adapter (`CNNSubsampling`): zero padded frames, right-pad k-1, Conv1d(D -> 2D, k, stride 2), LayerNorm(eps 1e-3),
  GELU, Linear(2D -> E)                                                                [B, ceil(T'/2), E]

Attention masks (`chunk_mode`): "full" (padding only: the release's inference, and the vLLM port's), "static"
(chunks of `chunk_size` frames seeing `left_chunks` chunks back, -1 = all: streaming), "dynamic" (WeNet's dynamic
chunk training: a random chunk size per call, only when not deterministic; evaluation then uses full attention,
whereas the release samples a chunk size even in eval - a quirk we do not copy).

Params: {global_cmvn_mean [80], global_cmvn_istd [80] (statistics, never trained: stop_gradient), conv_0, conv_1,
subsampling_out, input_linear, input_norm, layers: {attn_norm, self_attn: {proj: {q, k, v, o}, pos, pos_bias_u [H, d],
pos_bias_v [H, d]}, ffn_norm, up, down} (leading [L] axis when scanned), final_norm}; adapter {conv, norm, project}.
Shapes: B batch, T fbank frames, T' encoder frames (25 Hz), N adapter tokens (12.5 Hz), D width, E LM width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.layers import (LayerNorm, Linear, MultiHeadAttention, activation, check_remat_policy, dot_product_attention,
                           dtype_of, remat)
from common.sharding import constrain, with_partitioning

CHUNK_MODES = ("full", "static", "dynamic")


@dataclasses.dataclass(frozen=True)
class SpeechEncoderConfig:
    """Defaults = VITA-1.5's audio encoder (web_demo/vllm_tools/.../config.json `audio_config`)."""

    input_dim: int = 80  # fbank bins
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5
    max_positions: int = 5000  # rows of the sinusoid table: at most 5000 encoder frames (200 s)
    dropout_rate: float = 0.1  # after the input block's LayerNorm, after attention and FFN (training only)
    positional_dropout_rate: float = 0.1  # on x * sqrt(D) and on pos_emb (training only)
    attention_dropout_rate: float = 0.0
    chunk_mode: str = "full"  # "full" | "static" | "dynamic"
    chunk_size: int = 0  # static: encoder frames per chunk
    left_chunks: int = -1  # static: chunks seen to the left (-1 = all)
    # adapter (`adpter`: CNNSubsampling with LayerNorm and GELU)
    adapter_kernel_size: int = 5
    adapter_norm_eps: float = 1e-3
    adapter_act: str = "gelu"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.chunk_mode not in CHUNK_MODES:
            raise ValueError(f"unknown chunk_mode {self.chunk_mode!r}; use one of {CHUNK_MODES}")
        if self.chunk_mode == "static" and self.chunk_size < 1:
            raise ValueError(f"chunk_mode 'static' needs chunk_size >= 1, got {self.chunk_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        check_remat_policy(self.remat_policy)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def subsampled_bins(self) -> int:
        """F': frequency bins left after the two stride-2 convs (19 for 80)."""
        return ((self.input_dim - 1) // 2 - 1) // 2

    def replace(self, **changes) -> SpeechEncoderConfig:
        return dataclasses.replace(self, **changes)


def encoder_lengths(num_frames):
    """fbank frames -> encoder frames after Conv2dSubsampling4 (the release's mask[:, :, 2::2][:, :, 2::2])."""
    t1 = jnp.maximum((jnp.asarray(num_frames) - 1) // 2, 0)
    return jnp.maximum((t1 - 1) // 2, 0)


def adapter_lengths(num_encoder_frames):
    """encoder frames -> adapter tokens (mask[:, :, 0::2]: ceil(T'/2))."""
    return (jnp.asarray(num_encoder_frames) + 1) // 2


def audio_token_lengths(num_frames):
    """fbank frames -> LLM tokens, the release's `len(ones(T)[2::2][2::2][0::2])` (1 s of audio -> 12)."""
    return adapter_lengths(encoder_lengths(num_frames))


def sinusoid_table(length: int, width: int) -> np.ndarray:
    """[length, width] float32, sin at even and cos at odd columns (PositionalEncoding.pe, computed in float32)."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, width, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / width)))
    table = np.zeros((length, width), np.float32)
    table[:, 0::2] = np.sin(position * div_term)
    table[:, 1::2] = np.cos(position * div_term)
    return table


def chunk_attention_mask(length: int, chunk_size, left_chunks) -> jax.Array:
    """[T, T] bool: query i sees keys in its own chunk and `left_chunks` chunks before it (-1 = all), as WeNet's
    `subsequent_chunk_mask`; chunk_size / left_chunks may be traced."""
    pos = jnp.arange(length)
    q_chunk, k_chunk = pos[:, None] // chunk_size, pos[None, :] // chunk_size
    visible = k_chunk <= q_chunk
    return visible & ((left_chunks < 0) | (k_chunk >= q_chunk - left_chunks))


def dynamic_chunk_params(rng: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """WeNet's dynamic chunk sampling (add_optional_chunk_mask with use_dynamic_chunk and dynamic left chunks):
    chunk = randint(1, T); above T // 2 it is the whole utterance, else chunk % 25 + 1 with randint(0, (T-1)//chunk)
    chunks of left context."""
    size_rng, left_rng = jax.random.split(rng)
    chunk = jax.random.randint(size_rng, (), 1, max(length, 2))
    full = chunk > length // 2
    chunk = jnp.where(full, length, chunk % 25 + 1)
    max_left = jnp.maximum((length - 1) // chunk, 1)
    left = jnp.where(full, -1, jax.random.randint(left_rng, (), 0, 1 << 30) % max_left)
    return chunk, left


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with the release's Transformer-XL bias terms (and no rel_shift).
    x [B, T, D], pos_emb [T, D], mask [B, 1, T, T] bool -> [B, T, D]."""

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, pos_emb, mask, deterministic: bool = True):
        h, d = self.num_heads, self.head_dim
        width = h * d
        attention = MultiHeadAttention(h, h, d, width, qkv_bias=True, out_bias=True, dtype=self.dtype,
                                       param_dtype=self.param_dtype, name="proj")
        q, k, v = attention.project_qkv(x, x)  # [B, T, H, d] each
        p = Linear((h, d), ("embed",), ("heads", "head_dim"), dtype=self.dtype, param_dtype=self.param_dtype,
                   name="pos")(pos_emb)  # [T, D] -> [T, H, d]
        xavier = nn.initializers.xavier_uniform()
        bias_u = self.param("pos_bias_u", with_partitioning(xavier, ("heads", "head_dim")), (h, d), self.param_dtype)
        bias_v = self.param("pos_bias_v", with_partitioning(xavier, ("heads", "head_dim")), (h, d), self.param_dtype)
        scale = 1.0 / math.sqrt(d)
        # matrix_bd: (q + pos_bias_v) p^T, added to the content scores as a [B, H, T, T] bias
        position_scores = jnp.einsum("bthd,shd->bhts", q + bias_v.astype(q.dtype), p,
                                     preferred_element_type=jnp.float32) * scale
        weights_dropout = 0.0 if deterministic else self.dropout_rate
        if weights_dropout:
            raise NotImplementedError("attention dropout > 0 is not supported (the release trains with 0.0)")
        # matrix_ac: (q + pos_bias_u) k^T
        attended = dot_product_attention(q + bias_u.astype(q.dtype), k, v, mask=mask, bias=position_scores)
        return attention.project_out(attended)  # [B, T, H, d] -> [B, T, D]


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + Dropout(MHA(LN(x))); x + Dropout(FFN(LN(x))), FFN = w2(ReLU(w1 x))."""

    config: SpeechEncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, pos_emb, mask):
        cfg, deterministic = self.config, self.deterministic
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        norm = lambda name: LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)  # noqa: E731
        dense = lambda f, i, o, name: Linear(f, i, o, use_bias=True, dtype=dtype, param_dtype=param_dtype,  # noqa: E731
                                             name=name)
        drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        attended = RelPositionAttention(cfg.num_heads, cfg.head_dim, cfg.attention_dropout_rate, dtype, param_dtype,
                                        name="self_attn")(norm("attn_norm")(x), pos_emb, mask, deterministic)
        x = x + drop(attended)
        h = dense(cfg.intermediate_size, ("embed",), ("mlp",), "up")(norm("ffn_norm")(x))  # [B, T', D] -> [B, T', F]
        h = constrain(jax.nn.relu(h), ("act_batch", "act_length", "act_mlp"))
        x = x + drop(dense(cfg.hidden_size, ("mlp",), ("embed",), "down")(h))  # [B, T', F] -> [B, T', D]
        return constrain(x, ("act_batch", "act_length", "act_embed")), None


class SpeechEncoder(nn.Module):
    """`__call__(features [B, T, 80], lengths [B] fbank frames)` -> (hidden [B, T', D], encoder lengths [B])."""

    config: SpeechEncoderConfig

    @nn.compact
    def __call__(self, features: jax.Array, lengths: jax.Array | None = None, *, deterministic: bool = True):
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        if features.ndim != 3 or features.shape[-1] != cfg.input_dim:
            raise ValueError(f"speech features must be [B, T, {cfg.input_dim}] fbank frames, got {features.shape}")
        batch, frames = features.shape[:2]
        if frames < 7:
            raise ValueError(f"{frames} fbank frames are too few for the 4x conv subsampling (at least 7)")
        if lengths is None:
            lengths = jnp.full((batch,), frames, jnp.int32)

        # global CMVN: dataset statistics carried as parameters, never trained
        mean = self.param("global_cmvn_mean", with_partitioning(nn.initializers.zeros, ("norm",)), (cfg.input_dim,),
                          jnp.float32)
        istd = self.param("global_cmvn_istd", with_partitioning(nn.initializers.ones, ("norm",)), (cfg.input_dim,),
                          jnp.float32)
        x = (features.astype(jnp.float32) - jax.lax.stop_gradient(mean)) * jax.lax.stop_gradient(istd)

        # Conv2dSubsampling4: [B, T, F, 1] -> [B, T', F', D] -> channel-major flatten [B, T', D * F'] -> [B, T', D]
        conv = lambda features_out, name: nn.Conv(  # noqa: E731
            features_out, (3, 3), strides=(2, 2), padding="VALID", dtype=dtype, param_dtype=param_dtype,
            kernel_init=with_partitioning(nn.initializers.lecun_normal(),
                                          ("conv_height", "conv_width", "channels", "conv_out")),
            bias_init=with_partitioning(nn.initializers.zeros, ("conv_out",)), name=name)
        x = jax.nn.relu(conv(cfg.hidden_size, "conv_0")(x[..., None].astype(dtype)))
        x = jax.nn.relu(conv(cfg.hidden_size, "conv_1")(x))  # [B, T', F', D]
        t_out = x.shape[1]
        x = x.transpose(0, 1, 3, 2).reshape(batch, t_out, cfg.hidden_size * cfg.subsampled_bins)
        x = Linear(cfg.hidden_size, ("mlp",), ("embed",), use_bias=True, dtype=dtype, param_dtype=param_dtype,
                   name="subsampling_out")(x)  # [B, T', D * F'] -> [B, T', D]
        enc_lengths = encoder_lengths(lengths)

        # input block (`embed`: Linear, LayerNorm, Dropout, ReLU), then RelPositionalEncoding
        x = Linear(cfg.hidden_size, ("embed",), ("mlp",), use_bias=True, dtype=dtype, param_dtype=param_dtype,
                   name="input_linear")(x)
        x = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="input_norm")(x)
        x = jax.nn.relu(nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x))
        if t_out > cfg.max_positions:
            raise ValueError(f"{t_out} encoder frames exceed max_positions {cfg.max_positions} "
                             f"({cfg.max_positions * 0.04:.0f} s of audio)")
        pos_drop = nn.Dropout(cfg.positional_dropout_rate, deterministic=deterministic)
        x = pos_drop(x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype))
        pos_emb = pos_drop(jnp.asarray(sinusoid_table(t_out, cfg.hidden_size), dtype))  # [T', D]
        x = constrain(x, ("act_batch", "act_length", "act_embed"))

        key_valid = jnp.arange(t_out)[None, :] < enc_lengths[:, None]  # [B, T']
        mask = key_valid[:, None, None, :]  # [B, 1, 1, T']
        if cfg.chunk_mode == "static":
            mask = mask & chunk_attention_mask(t_out, cfg.chunk_size, cfg.left_chunks)[None, None]
        elif cfg.chunk_mode == "dynamic" and not deterministic:
            chunk, left = dynamic_chunk_params(self.make_rng("dropout"), t_out)
            mask = mask & chunk_attention_mask(t_out, chunk, left)[None, None]

        layer_cls = remat(EncoderLayer, cfg.remat_policy, cfg.scan_layers)
        if cfg.scan_layers:
            x, _ = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                           in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                           metadata_params={nn.PARTITION_NAME: "layers"})(cfg, deterministic, name="layers")(
                x, pos_emb, mask)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, pos_emb, mask)
        x = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="final_norm")(x)
        return x, enc_lengths


class AudioAdapter(nn.Module):
    """The release's `CNNSubsampling` adapter: [B, T', D] encoder frames (+ lengths [B]) -> ([B, N, E], lengths [B]),
    N = ceil(T'/2) (12.5 Hz)."""

    out_features: int
    kernel_size: int = 5
    norm_eps: float = 1e-3
    act: str = "gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        dtype, param_dtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        width = x.shape[-1]
        valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, T']
        x = jnp.where(valid[..., None], x, 0).astype(dtype)  # the release zeroes batch padding first
        x = jnp.pad(x, ((0, 0), (0, self.kernel_size - 1), (0, 0)))  # ConstantPad1d((0, k - 1))
        x = nn.Conv(2 * width, (self.kernel_size,), strides=(2,), padding="VALID", dtype=dtype,
                    param_dtype=param_dtype,
                    kernel_init=with_partitioning(nn.initializers.lecun_normal(), ("conv_width", "embed", "mlp")),
                    bias_init=with_partitioning(nn.initializers.zeros, ("mlp",)), name="conv")(x)  # [B, N, 2D]
        x = LayerNorm(self.norm_eps, dtype=dtype, param_dtype=param_dtype, name="norm")(x)
        x = activation(self.act)(x)
        x = Linear(self.out_features, ("mlp",), ("embed",), use_bias=True, dtype=dtype, param_dtype=param_dtype,
                   name="project")(x)  # [B, N, 2D] -> [B, N, E]
        return constrain(x, ("act_batch", "act_length", "act_embed")), adapter_lengths(lengths)
