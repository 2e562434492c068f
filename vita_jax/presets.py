"""VITA-1.5's published sizes (Fu et al. 2025, Sec. 3.1; the release's config.json; docs/vita_release.md,
"LLM", "Vision", "Speech encoder") and a tiny configuration for CPU tests and the miniature, as `VitaConfig`s (a
released folder carries its own sizes: use `vita_jax.load_original`).

VITA-1.5 parameter counts (jax.eval_shape, tests/vita/test_vita_model.py):
  LLM Qwen2.5-7B-Instruct (vocab 152064, untied head)  7,615,616,512
  InternViT-300M-448px                                   304,012,288
  projector mlp2x_gelu 4096 -> 3584 -> 3584               27,532,288
  speech encoder (24 x 1024, relative-position terms)    357,950,464 (+ 160 CMVN statistics)
  audio adapter Conv1d(1024->2048, k5, s2), LN, Linear    17,835,520
  total                                                8,322,947,232 (the release: 4 bf16 shards, ~8.3B)
"""
from __future__ import annotations

from common.lm import LMConfig
from common.vision.intern_vit import InternViTConfig, internvit_300m_448px
from vita_jax.model import VitaConfig
from vita_jax.speech_encoder import SpeechEncoderConfig

# The miniature's speech codec (stage 3.1, configs/vita/tiny_stage3_1.py): a 128-wide HiFi-GAN V1 generator and its
# mirrored encoder, one codebook of 512, 8 style codebooks; the other CodecConfig fields are the release's.
TINY_CODEC_FIELDS = dict(upsample_initial_channel=128, encoder_channels=8, n_codes=512, global_code_num=8,
                         global_feature_conv=(32, 16, 32, 3, 1), global_tokens=(0,) * 8)

PUBLISHED_PARAMS = {  # model cards: Qwen2.5-7B "7.61B", InternViT-300M-448px "304M"; the paper: audio encoder ~350M
    "lm": 7.61e9,
    "vision_tower": 304e6,
    "audio_encoder": 350e6,
}


def qwen2_5_7b_instruct(**overrides) -> LMConfig:
    """Qwen/Qwen2.5-7B-Instruct (VITA-1.5's LLM): 28 layers, width 3584, GQA 28 / 4, SwiGLU 18944, qkv bias,
    RMSNorm 1e-6, RoPE theta 1e6, untied head."""
    fields = dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                  intermediate_size=18944, max_position_embeddings=32768, norm_eps=1e-6, rope_theta=1e6,
                  qkv_bias=True, tie_word_embeddings=False)
    fields.update(overrides)
    return LMConfig(**fields)


def vita_1_5(dtype: str = "float32", **overrides) -> VitaConfig:
    """VITA-MLLM/VITA-1.5: InternViT-300M-448px (256 tokens / tile) + mlp2x_gelu + the 24-layer speech encoder and
    CNN adapter (12.5 Hz) + Qwen2.5-7B-Instruct."""
    d = dict(dtype=dtype, param_dtype=dtype)
    fields = dict(text=qwen2_5_7b_instruct(**d), vision=internvit_300m_448px(**d), audio=SpeechEncoderConfig(**d))
    fields.update(overrides)
    return VitaConfig(**fields)


def tiny(vocab_size: int = 512, image_size: int = 56, **overrides) -> VitaConfig:
    """A VITA of the same shape at toy width for CPU runs: 2-layer InternViT (image_size / 14 patches per side,
    pixel shuffle -> (side / 2)^2 tokens per tile), 2-layer speech encoder of width 64, 2-layer Qwen2-style LM
    (GQA 4 / 2, qkv bias) of width 64."""
    text = LMConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=128, max_position_embeddings=1024, norm_eps=1e-6, rope_theta=1e6,
                    qkv_bias=True)
    vision = InternViTConfig(image_size=image_size, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=2,
                             num_heads=2)
    audio = SpeechEncoderConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                dropout_rate=0.0, positional_dropout_rate=0.0)
    fields = dict(text=text, vision=vision, audio=audio)
    fields.update(overrides)
    return VitaConfig(**fields)
