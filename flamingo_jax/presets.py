"""Model configurations of the published Flamingo models (Alayrac et al. 2022, App. B.1 "Models" table) and of the
OpenFlamingo releases (Awadalla et al. 2023; model cards), with their parameter counts from `jax.eval_shape`.

Paper: Flamingo-3B = Chinchilla-style 1.4B LM (24 layers, width 2048, 16 heads, vocab 32000) + NFNet-F6 (435M,
common/vision/nfnet.py; feature width 1536) + resampler (6 layers, 16 heads x 128, 64 latents, squared ReLU) + one
GATED XATTN-DENSE per layer (16 heads x 128, squared ReLU). Flamingo-9B: 7B LM, a block every 4th layer.
OpenFlamingo: CLIP ViT-L/14 + MPT-1B (every layer) / RedPajama-INCITE-3B (every 2nd) / MPT-7B (every 4th), default
resampler and blocks.

The LM stand-ins use this library's LM core: the paper's Chinchilla LMs (Transformer-XL relative positions, not
released) are modelled with RoPE, which has no parameters; see tests/flamingo/test_configs.py for the counts. The paper
presets carry the NFNet-F6 encoder (with_vision=False drops it: then pass its 1536-wide features as
`vision_features`); its weights: `common.hf.vision.load_timm_nfnet` (timm's ImageNet dm_nfnet_f6 — Flamingo's own
contrastively trained F6 was not released).
"""
from __future__ import annotations

from common.lm import LMConfig
from common.vision.clip import clip_vit_l14
from common.vision.nfnet import NFNetConfig, nfnet_f
from flamingo_jax.gated_cross_attention import GatedXAttnConfig
from flamingo_jax.model import FlamingoConfig
from flamingo_jax.perceiver_resampler import ResamplerConfig

OPEN_FLAMINGO_VOCAB = 50280  # gpt-neox-20b tokenizer (50277) + <|endofchunk|>, <image>, <PAD>; embeddings resized to it
OPEN_FLAMINGO_IMAGE_TOKEN = 50278  # the second added token


def flamingo_nfnet_f6(**overrides) -> NFNetConfig:
    """The paper's frozen vision encoder: NFNet-F6 without the classifier (435.3M parameters, the paper's 435M, with
    the final 1x1 conv to 3072 channels that timm's / DeepMind's checkpoints carry), feeding the resampler "the output
    of the final stage" (Sec. 2.1): the last stage's 1536-wide grid, flattened. 320 x 320 inputs -> 10 x 10 = 100
    tokens per image."""
    return nfnet_f(6, **{"image_size": 320, "features": "last_stage", "num_classes": 0, **overrides})


def _paper_flamingo(lm: LMConfig, every: int, with_vision: bool) -> FlamingoConfig:
    vision = flamingo_nfnet_f6() if with_vision else None
    resampler = ResamplerConfig(width=1536, depth=6, num_heads=16, head_dim=128, num_latents=64, ff_mult=4,
                                ff_act="squared_relu", max_frames=8)
    xattn = GatedXAttnConfig(num_heads=lm.num_heads, head_dim=128, ff_mult=4, ff_act="squared_relu")
    return FlamingoConfig(lm=lm, xattn=xattn, resampler=resampler, vision=vision,
                          vision_width=None if with_vision else 1536,
                          image_token_id=lm.vocab_size - 1, cross_attn_every=every,
                          vision_features="feature_map")


def chinchilla_lm(layers: int, width: int, heads: int, vocab: int = 32000, **overrides) -> LMConfig:
    """A Chinchilla-style LM: pre-norm RMSNorm, FFW 4x width (GELU), untied embeddings, head size 128."""
    fields = dict(vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads, head_dim=128,
                  intermediate_size=4 * width, norm="rms", mlp_act="gelu", mlp_gated=False, tie_word_embeddings=False)
    fields.update(overrides)
    return LMConfig(**fields)


def flamingo_3b(with_vision: bool = True) -> FlamingoConfig:
    """Paper Flamingo-3B: 3.2B parameters (LM 1.4B, NFNet-F6 435M, resampler 194M, xattn 1.2B, every layer)."""
    return _paper_flamingo(chinchilla_lm(24, 2048, 16), every=1, with_vision=with_vision)


def flamingo_9b(with_vision: bool = True) -> FlamingoConfig:
    """Paper Flamingo-9B: 7B LM, a block every 4th layer, 1.6B trainable. The LM depth is not legible in our
    sources; 32 layers of width 4096 is the one that gives both a ~7B LM and ~1.6B trainable (8 blocks)."""
    return _paper_flamingo(chinchilla_lm(32, 4096, 32), every=4, with_vision=with_vision)


def flamingo_80b(with_vision: bool = True) -> FlamingoConfig:
    """Paper Flamingo-80B: Chinchilla-70B (80 layers, width 8192, 64 heads) with a block every 7th layer: 11 groups
    of 7 layers with a block each, then a plain tail of 3 layers."""
    return _paper_flamingo(chinchilla_lm(80, 8192, 64), every=7, with_vision=with_vision)


def _open_flamingo(lm: LMConfig, every: int) -> FlamingoConfig:
    vision = clip_vit_l14()
    return FlamingoConfig(lm=lm, xattn=GatedXAttnConfig(), resampler=ResamplerConfig(width=vision.hidden_size),
                          vision=vision, image_token_id=OPEN_FLAMINGO_IMAGE_TOKEN, cross_attn_every=every,
                          vision_features="patches")


def mpt_lm(layers: int, width: int, heads: int, vocab: int = OPEN_FLAMINGO_VOCAB) -> LMConfig:
    """MPT (ALiBi, LayerNorm without bias, GELU FFW 4x, no biases, tied embeddings)."""
    return LMConfig(vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads,
                    intermediate_size=4 * width, norm="layer", norm_eps=1e-5, norm_bias=False, mlp_act="gelu",
                    mlp_gated=False, position="alibi", tie_word_embeddings=True)


def open_flamingo_3b() -> FlamingoConfig:
    """OpenFlamingo-3B-vitl-mpt1b: CLIP ViT-L/14 + MPT-1B (anas-awadalla/mpt-1b-redpajama-200b: 24 layers, width
    2048, 16 heads), a block every layer. MPT-1B's remote-code `mosaic_gpt` also has qk LayerNorms (~0.2M
    parameters, not modelled by the LM core)."""
    return _open_flamingo(mpt_lm(24, 2048, 16), every=1)


def open_flamingo_4b() -> FlamingoConfig:
    """OpenFlamingo-4B-vitl-rpj3b: CLIP ViT-L/14 + RedPajama-INCITE-Base-3B-v1 (gpt_neox: 32 layers, width 2560,
    32 heads, partial rotary 0.25, parallel residual, untied head), a block every 2nd layer."""
    lm = LMConfig(vocab_size=OPEN_FLAMINGO_VOCAB, hidden_size=2560, num_layers=32, num_heads=32,
                  intermediate_size=10240, norm="layer", norm_eps=1e-5, mlp_act="gelu", mlp_gated=False, mlp_bias=True,
                  qkv_bias=True, out_bias=True, rotary_pct=0.25, parallel_residual=True, tie_word_embeddings=False)
    return _open_flamingo(lm, every=2)


def open_flamingo_9b() -> FlamingoConfig:
    """OpenFlamingo-9B-vitl-mpt7b: CLIP ViT-L/14 + MPT-7B (32 layers, width 4096, 32 heads), every 4th layer."""
    return _open_flamingo(mpt_lm(32, 4096, 32), every=4)


CONFIGS = {"flamingo-3b": flamingo_3b, "flamingo-9b": flamingo_9b, "flamingo-80b": flamingo_80b,
           "open-flamingo-3b": open_flamingo_3b, "open-flamingo-4b": open_flamingo_4b,
           "open-flamingo-9b": open_flamingo_9b}
