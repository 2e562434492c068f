"""Published LLaVA model configs (LLaVA-1.5, Liu et al. 2023b, "Improved Baselines with Visual Instruction Tuning",
Sec. 3 / Table 7; LLaVA-NeXT 1.6): Vicuna / Mistral LM + CLIP ViT-L/14-336 + mlp2x_gelu, as `LlavaConfig`s for
`jax.eval_shape` size checks and paper-scale runs (checkpoints carry their own config: use `load_hf`).

Parameter counts (vocabulary 32000, the original release; HF's llava-hf conversions pad it to 32064):
  LLaVA-1.5-7B  = Vicuna-7B 6,738,415,616 + CLIP-L/336 303,507,456 + projector 20,979,712 = 7,062,902,784 (7.06B)
  LLaVA-1.5-13B = Vicuna-13B 13,015,864,320 + 303,507,456 + 31,467,520 = 13,350,839,296 (13.35B)
  LLaVA-1.6-Mistral-7B (vocab 32064) = 7,242,256,384 + 303,507,456 + 20,979,712 + image_newline 4,096 = 7.57B
"""
from __future__ import annotations

from common.data.image_ops import LLAVA_NEXT_PINPOINTS
from common.lm import LMConfig
from common.vision.clip import clip_vit_l14_336
from configs.models import vicuna_7b
from llava_jax.model import LlavaConfig

# Published totals (HF model cards of the llava-hf conversions, vocabulary 32064) and our counts' tolerance.
PUBLISHED_PARAMS = {
    "llava_v1_5_7b": 7.06e9,
    "llava_v1_5_13b": 13.35e9,
    "llava_v1_6_mistral_7b": 7.57e9,
}


def vicuna_13b(**overrides) -> LMConfig:
    """Vicuna-13B v1.5 = Llama-2-13B architecture (lmsys/vicuna-13b-v1.5): 13.02B parameters."""
    return vicuna_7b(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                     intermediate_size=13824).replace(**overrides)


def mistral_7b_instruct_v02(**overrides) -> LMConfig:
    """Mistral-7B-Instruct-v0.2 (LLaVA-1.6's Mistral LM): GQA 32 / 8, rope theta 1e6, no sliding window."""
    return LMConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                    intermediate_size=14336, max_position_embeddings=32768, norm_eps=1e-5,
                    rope_theta=1000000.0).replace(**overrides)


def llava_v1_5_7b(vocab_size: int = 32000, **overrides) -> LlavaConfig:
    """liuhaotian/llava-v1.5-7b: Vicuna-7B + CLIP ViT-L/14-336 (layer -2, CLS dropped, 576 tokens) + mlp2x_gelu;
    image placeholder = the original IMAGE_TOKEN_INDEX -200 (llava-hf: 32000 with vocab_size=32064)."""
    fields = dict(text=vicuna_7b(vocab_size=vocab_size), vision=clip_vit_l14_336(), image_token_index=-200,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_type="mlp2x_gelu")
    fields.update(overrides)
    return LlavaConfig(**fields)


def llava_v1_5_13b(vocab_size: int = 32000, **overrides) -> LlavaConfig:
    """liuhaotian/llava-v1.5-13b: Vicuna-13B + CLIP ViT-L/14-336 + mlp2x_gelu (5120 wide)."""
    return llava_v1_5_7b(vocab_size, **{"text": vicuna_13b(vocab_size=vocab_size), **overrides})


def llava_v1_6_mistral_7b(vocab_size: int = 32064, **overrides) -> LlavaConfig:
    """llava-hf/llava-v1.6-mistral-7b-hf: Mistral-7B-Instruct-v0.2 + CLIP ViT-L/14-336 + mlp2x_gelu, anyres with
    the five default pinpoints (up to 2x2 crops of 336 + the base image) and a learned image_newline."""
    fields = dict(text=mistral_7b_instruct_v02(vocab_size=vocab_size), vision=clip_vit_l14_336(),
                  image_token_index=32000, image_grid_pinpoints=tuple(tuple(p) for p in LLAVA_NEXT_PINPOINTS))
    fields.update(overrides)
    return LlavaConfig(**fields)
