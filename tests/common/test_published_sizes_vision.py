"""Published vision-tower sizes: parameter counts of our configs (jax.eval_shape, nothing allocated) against the
published figures and against transformers' own classes built on the meta device.

Published: CLIP ViT-L/14 image encoder ~304M (CLIP paper / LLaVA-1.5; the 336px tower has 303.5M without the
visual projection, the position table being the only difference from 224px); InternViT-300M-448px 304M
(OpenGVLab model card, "Params (M): 304")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.vision.clip import CLIPVisionTransformer, clip_vit_l14, clip_vit_l14_336
from common.vision.intern_vit import InternViT, internvit_300m_448px

PUBLISHED = {
    "clip_vit_l14_336": 303.5e6,
    "internvit_300m_448px": 304e6,
}


def count_params(module, image_size: int) -> int:
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def test_clip_vit_l14_336_size():
    cfg = clip_vit_l14_336()
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.patch_size, cfg.image_size) == (
        24, 1024, 16, 4096, 14, 336)
    assert cfg.num_patches == 576
    n = count_params(CLIPVisionTransformer(cfg), 336)
    assert abs(n - PUBLISHED["clip_vit_l14_336"]) <= 0.005 * PUBLISHED["clip_vit_l14_336"], n
    assert n == 303_507_456
    # With CLIPModel's visual_projection (1024 -> 768, no bias) and at 224px (OpenFlamingo's tower).
    assert count_params(CLIPVisionTransformer(clip_vit_l14_336(projection_dim=768)), 336) == n + 1024 * 768
    assert count_params(CLIPVisionTransformer(clip_vit_l14()), 224) == n - (577 - 257) * 1024


def test_internvit_300m_size():
    cfg = internvit_300m_448px()
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.patch_size, cfg.image_size) == (
        24, 1024, 16, 4096, 14, 448)
    assert cfg.num_patches == 1024 and cfg.qkv_bias and not cfg.qk_norm and cfg.norm_type == "layer_norm"
    n = count_params(InternViT(cfg), 448)
    assert abs(n - PUBLISHED["internvit_300m_448px"]) <= 0.005 * PUBLISHED["internvit_300m_448px"], n
    assert n == 304_012_288


def test_sizes_match_transformers_classes():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
            patch_size=14))
        ivit = transformers.InternVLVisionModel(transformers.InternVLVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=448,
            patch_size=14, attention_bias=True, norm_type="layer_norm", use_qk_norm=False, use_mean_pooling=True))
    assert sum(p.numel() for p in clip.parameters()) == count_params(CLIPVisionTransformer(clip_vit_l14_336()), 336)
    assert sum(p.numel() for p in ivit.parameters()) == count_params(InternViT(internvit_300m_448px()), 448)
