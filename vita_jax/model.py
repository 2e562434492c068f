"""VITA-1.5 (Fu et al. 2025, "VITA-1.5: Towards GPT-4o Level Real-Time Vision and Speech Interaction", Sec. 3.1,
Fig. 2): InternViT-300M tiles -> x0.5 -> pixel shuffle -> mlp2x_gelu projector, and the speech encoder -> CNN adapter,
both placed into a Qwen2 LM's token sequence; composed from common/ (InternViT, projector, DecoderLM) and
`vita_jax.speech_encoder`.

Placeholders follow HF semantics (as `llava_jax`): every image tile (or video frame) owns `tokens_per_tile` (256)
copies of `image_token_index` in input_ids and every audio clip `audio_token_lengths(frames)` copies of
`audio_token_index`; the release's ids -200 / -500 (one per `<image>` / `<audio>`, expanded inside the model) are the
defaults, expanded by `vita_jax.conversation`. The k-th placeholder of a sample gets the k-th feature row of that
sample's items in slot order.

Inputs (static shapes; padded slots masked):
  pixel_values [B, N, H, W, C] tiles / frames (or [B, H, W, C]; video [B, N, F, H, W, C] = N*F frames), ImageNet-
    normalised NHWC; image_mask [B, N] bool (default all True);
  input_features [B, A, T, 80] fbank frames (`common.data.audio.speech_fbank`; or [B, T, 80]);
    feature_attention_mask [B, A, T] (1 = real frame, left-aligned; HF Qwen2-Audio's name; default all real).
Param tree: {vision_tower: InternViT, projector: {linear_1, linear_2}, audio_encoder: SpeechEncoder,
  audio_adapter: {conv, norm, project}, lm: DecoderLM}.
Shapes: B batch, T tokens, N tile slots, A audio slots, E LM width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.lm import DecoderLM, KVCache, LMConfig
from common.multimodal import check_counts, concrete, scatter_features
from common.params import abstract_params as abstract
from common.params import counts_by_part
from common.projector import Projector, parse_projector_type
from common.sharding import constrain
from common.vision.intern_vit import InternViT, InternViTConfig, image_features
from vita_jax.speech_encoder import AudioAdapter, SpeechEncoder, SpeechEncoderConfig, audio_token_lengths

IMAGE_TOKEN_INDEX = -200  # vita/constants.py
AUDIO_TOKEN_INDEX = -500


@dataclasses.dataclass(frozen=True)
class VitaConfig:
    text: LMConfig
    vision: InternViTConfig
    audio: SpeechEncoderConfig
    image_token_index: int = IMAGE_TOKEN_INDEX
    audio_token_index: int = AUDIO_TOKEN_INDEX
    projector_type: str = "mlp2x_gelu"
    vision_feature_scale: float = 0.5  # InternViTVisionTower: pixel_shuffle(features * 0.5)

    def __post_init__(self):
        parse_projector_type(self.projector_type)
        if self.image_token_index == self.audio_token_index:
            raise ValueError(f"image and audio placeholders share the id {self.image_token_index}")

    @property
    def tokens_per_tile(self) -> int:
        """Feature tokens of one 448 tile: 1024 patches / (1 / 0.5)^2 = 256."""
        return int(round(self.vision.num_patches * self.vision.downsample_ratio ** 2))

    def audio_tokens(self, num_frames) -> np.ndarray | int:
        """LLM tokens of a clip of `num_frames` fbank frames (12.5 Hz)."""
        return np.asarray(audio_token_lengths(np.asarray(num_frames)))

    def replace(self, **changes) -> VitaConfig:
        return dataclasses.replace(self, **changes)


class Vita(nn.Module):
    """`apply({"params": p}, input_ids, pixel_values, attention_mask, image_mask, input_features,
    feature_attention_mask)` -> float32 logits [B, T, V] (with `cache`: (logits, cache))."""

    config: VitaConfig

    def setup(self):
        cfg = self.config
        self.vision_tower = InternViT(cfg.vision)
        self.projector = Projector(cfg.text.hidden_size, cfg.projector_type, dtype=cfg.text.dtype,
                                   param_dtype=cfg.text.param_dtype)
        self.audio_encoder = SpeechEncoder(cfg.audio)
        self.audio_adapter = AudioAdapter(cfg.text.hidden_size, cfg.audio.adapter_kernel_size,
                                          cfg.audio.adapter_norm_eps, cfg.audio.adapter_act, dtype=cfg.audio.dtype,
                                          param_dtype=cfg.audio.param_dtype)
        self.lm = DecoderLM(cfg.text)

    # ------------------------------------------------------------------------------------------------------
    def image_features(self, pixels: jax.Array, deterministic: bool = True) -> jax.Array:
        """[M, H, W, C] tiles -> [M, 256, E]: last hidden state without CLS, x0.5, pixel shuffle, projector."""
        out = self.vision_tower(pixels, deterministic=deterministic, output_hidden_states=False)
        feats = image_features(out, self.config.vision) * self.config.vision_feature_scale  # [M, 256, 4096]
        return self.projector(feats)  # [M, 256, 4096] -> [M, 256, E]

    def audio_features(self, features: jax.Array, lengths: jax.Array,
                       deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """[M, T, 80] fbank frames, lengths [M] -> ([M, N, E] 12.5 Hz tokens, token lengths [M])."""
        hidden, enc_lengths = self.audio_encoder(features, lengths, deterministic=deterministic)  # [M, T', D]
        return self.audio_adapter(hidden, enc_lengths)

    def embed(self, input_ids, pixel_values=None, image_mask=None, input_features=None, feature_attention_mask=None,
              *, deterministic: bool = True, segment_ids=None, image_segment_ids=None,
              audio_segment_ids=None) -> tuple[jax.Array, jax.Array]:
        """Token embeddings with image and audio features in their placeholders: ([B, T, E], ok [B] bool: every
        sample's placeholder counts matched, and in packed rows every placeholder took its features from a tile /
        clip of its own sample; a count mismatch with concrete inputs raises ValueError)."""
        cfg = self.config
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
        batch = ids.shape[0]
        is_image, is_audio = ids == cfg.image_token_index, ids == cfg.audio_token_index
        # Placeholder ids may lie outside the vocabulary (the release's -200 / -500): embed a harmless id there.
        x = self.lm.embed_tokens(jnp.where(is_image | is_audio, 0, ids))  # [B, T, E]
        ok = jnp.ones((batch,), bool)

        if pixel_values is None:
            self._no_inputs(is_image, "image", "pixel_values")
        else:
            pixels, image_mask = self._normalize_images(pixel_values, image_mask, batch)  # [B, N, H, W, C], [B, N]
            lengths = image_mask * cfg.tokens_per_tile  # [B, N]
            check_counts(is_image, lengths, "image", cfg.image_token_index,
                         f"Expand each <image> tile into {cfg.tokens_per_tile} placeholders "
                         "(vita_jax.conversation) and mask unused tile slots.")
            feats = self.image_features(pixels.reshape((-1,) + pixels.shape[2:]).astype(jnp.float32), deterministic)
            feats = feats.reshape(pixels.shape[:2] + feats.shape[1:])  # [B, N, 256, E]
            x, image_ok = scatter_features(x, is_image, feats, lengths, segment_ids, image_segment_ids)
            ok &= image_ok

        if input_features is None:
            self._no_inputs(is_audio, "audio", "input_features")
        else:
            features, frames = self._normalize_audio(input_features, feature_attention_mask, batch)  # [B, A, T, 80]
            flat, flat_lengths = self.audio_features(features.reshape((-1,) + features.shape[2:]),
                                                     frames.reshape(-1), deterministic)  # [B*A, N, E], [B*A]
            lengths = flat_lengths.reshape(frames.shape)  # [B, A]
            check_counts(is_audio, lengths, "audio", cfg.audio_token_index,
                         "Expand each <audio> into audio_token_lengths(frames) placeholders (vita_jax.conversation).")
            x, audio_ok = scatter_features(x, is_audio, flat.reshape(frames.shape + flat.shape[1:]), lengths,
                                           segment_ids, audio_segment_ids)
            ok &= audio_ok
        return constrain(x, ("act_batch", "act_length", "act_embed")), ok

    def __call__(self, input_ids, pixel_values=None, attention_mask=None, image_mask=None, input_features=None,
                 feature_attention_mask=None, *, position_ids=None, segment_ids=None, image_segment_ids=None,
                 audio_segment_ids=None, cache: KVCache | None = None, return_hidden: bool = False,
                 deterministic: bool = True):
        """Float32 logits [B, T, V] (with `cache`: (logits, cache)). Under jit a sample whose placeholder counts differ
        from its features is NaN (nothing can be raised there), so a loss over it fails loudly. Packed rows (several
        samples per row, `common.data.packing`): segment_ids [B, T] (0 = padding) keep attention and positions per
        sample; image_segment_ids [B, N] / audio_segment_ids [B, A] name each tile's / clip's sample."""
        x, ok = self.embed(input_ids, pixel_values, image_mask, input_features, feature_attention_mask,
                           deterministic=deterministic, segment_ids=segment_ids, image_segment_ids=image_segment_ids,
                           audio_segment_ids=audio_segment_ids)
        out = self.lm(attention_mask=attention_mask, inputs_embeds=x, position_ids=position_ids,
                      segment_ids=segment_ids, cache=cache, return_hidden=return_hidden)
        poison = lambda a: jnp.where(ok[:, None, None], a, jnp.nan).astype(a.dtype)  # noqa: E731
        if cache is None:
            return poison(out)
        return poison(out[0]), out[1]

    # ------------------------------------------------------------------------------------------------------
    def _no_inputs(self, is_placeholder, what: str, argument: str) -> None:
        counts = concrete(is_placeholder.sum(axis=1))
        if counts is not None and counts.any():
            token = self.config.image_token_index if what == "image" else self.config.audio_token_index
            raise ValueError(f"input_ids hold {what} placeholders (id {token}; per sample {counts.tolist()}) "
                             f"but no {argument} were given")

    def _normalize_images(self, pixel_values, image_mask, batch):
        """-> pixels [B, N, H, W, C], image_mask [B, N] int32 (video [B, N, F, ...] becomes N*F frame slots)."""
        pixels = jnp.asarray(pixel_values)
        if pixels.ndim == 4:
            pixels = pixels[:, None]
        frames = 1
        if pixels.ndim == 6:  # video: every frame is one tile
            frames = pixels.shape[2]
            pixels = pixels.reshape((pixels.shape[0], -1) + pixels.shape[3:])
        if pixels.ndim != 5:
            raise ValueError("pixel_values must be [B, N, H, W, C] tiles (or [B, H, W, C], or video "
                             f"[B, N, F, H, W, C]) NHWC, got shape {tuple(pixel_values.shape)}")
        if pixels.shape[0] != batch:
            raise ValueError(f"pixel_values batch {pixels.shape[0]} != input_ids batch {batch}")
        slots = pixels.shape[1]
        if image_mask is None:
            return pixels, jnp.ones((batch, slots), jnp.int32)
        image_mask = jnp.asarray(image_mask)
        if image_mask.ndim == 1:  # per-sample counts [B]
            image_mask = jnp.arange(slots // frames)[None, :] < image_mask[:, None]
        if frames > 1 and image_mask.shape == (batch, slots // frames):
            image_mask = jnp.repeat(image_mask, frames, axis=1)
        if image_mask.shape != (batch, slots):
            raise ValueError(f"image_mask must be [B, N] = {(batch, slots // frames)} (or counts [B]), "
                             f"got {image_mask.shape}")
        return pixels, image_mask.astype(jnp.int32)

    def _normalize_audio(self, input_features, feature_attention_mask, batch):
        """-> features [B, A, T, 80], frames [B, A] int32 (real frames per clip; 0 = empty slot)."""
        features = jnp.asarray(input_features)
        if features.ndim == 3:
            features = features[:, None]
            if feature_attention_mask is not None and jnp.ndim(feature_attention_mask) == 2:
                feature_attention_mask = jnp.asarray(feature_attention_mask)[:, None]
        if features.ndim != 4 or features.shape[-1] != self.config.audio.input_dim:
            raise ValueError(f"input_features must be [B, A, T, {self.config.audio.input_dim}] fbank frames (or "
                             f"[B, T, {self.config.audio.input_dim}]), got shape {tuple(input_features.shape)}")
        if features.shape[0] != batch:
            raise ValueError(f"input_features batch {features.shape[0]} != input_ids batch {batch}")
        if feature_attention_mask is None:
            frames = jnp.full(features.shape[:2], features.shape[2], jnp.int32)
        else:
            mask = jnp.asarray(feature_attention_mask)
            if mask.shape != features.shape[:3]:
                raise ValueError(f"feature_attention_mask must be [B, A, T] = {features.shape[:3]}, got {mask.shape}")
            frames = mask.astype(jnp.int32).sum(-1)
        return features, frames


def example_inputs(config: VitaConfig, batch: int = 1, length: int = 8, audio_frames: int = 16) -> tuple:
    """Arguments for `Vita.init` (shapes only; the one tile and audio slot are empty, so no placeholders needed)."""
    size = config.vision.image_size
    pixels = jnp.zeros((batch, 1, size, size, config.vision.num_channels), jnp.float32)
    features = jnp.zeros((batch, 1, audio_frames, config.audio.input_dim), jnp.float32)
    return (jnp.zeros((batch, length), jnp.int32), pixels, None, jnp.zeros((batch, 1), bool), features,
            jnp.zeros((batch, 1, audio_frames), bool))


def init_params(module: Vita, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names)."""
    return module.init(rng, *example_inputs(module.config))["params"]


def abstract_params(config: VitaConfig) -> Any:
    """Boxed ShapeDtypeStructs of every parameter (jax.eval_shape: no memory used)."""
    return abstract(Vita(config), *example_inputs(config))


def param_counts(config: VitaConfig) -> dict[str, int]:
    """Parameters per part (vision_tower, projector, audio_encoder, audio_adapter, lm) and 'total'."""
    return counts_by_part(abstract_params(config))


# Parameter groups of the training stages (regexes, full match on '/'-joined param paths: common/optimizer.py).
# The CMVN statistics are never trained. Stage 2.1 (the release has no code for it) trains the speech encoder and
# adapter on ASR with the LLM frozen; 2.2 the adapter and LLM (the released finetuneTaskNeg script: the encoder frozen).
AUDIO_ENCODER_TRAINABLE = "audio_encoder/(?!global_cmvn).*"
STAGE_TRAINABLE: dict[str, tuple[str, ...]] = {
    "0": ("lm/.*",),  # the miniature's text pre-training of its LM (a real run starts from Qwen2)
    "1.1": ("projector/.*",),
    "1.2": ("vision_tower/.*", "projector/.*", "lm/.*"),
    "1.3": ("projector/.*", "lm/.*"),
    "2.0": (AUDIO_ENCODER_TRAINABLE, "ctc_head/.*"),  # the miniature's CTC pre-training (vita_jax.ctc)
    "2.1": (AUDIO_ENCODER_TRAINABLE, "audio_adapter/.*"),
    "2.2": ("audio_adapter/.*", "projector/.*", "lm/.*"),
}


def trainable_patterns(stage: str) -> Sequence[str]:
    """The trainable parameters of VITA-1.5's training stage '1.1' .. '2.2' (Fig. 3 of the paper; '2.0' is the
    miniature's CTC pre-training of the speech encoder)."""
    stage = str(stage)
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"unknown VITA stage {stage!r}; use one of {sorted(STAGE_TRAINABLE)}")
    return STAGE_TRAINABLE[stage]
