"""CLIP ViT vision tower (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", Sec. 2.4; HF transformers' `CLIPVisionModel`): the frozen image encoder of OpenFlamingo and
LLaVA (ViT-L/14, 336px in LLaVA-1.5 -> 576 patch tokens; docs/llava.md).

Embeddings (patch conv without bias, CLS, learned positions) -> pre_layrnorm -> L pre-LN layers with
quick_gelu MLPs -> post_layernorm on the CLS token (pooled) -> optional visual_projection (image_embeds).
Input pixels are NHWC [B, H, W, C] float32, already CLIP-normalised.

Param tree: {embeddings: {patch_embedding: {kernel [P*P*C, D]}, class_embedding [D], position_embedding [T, D]},
pre_layrnorm: {scale, bias}, encoder: {layers: {ln1, attn: {q, k, v, o}, ln2, mlp: {up, down}}} (each leaf with
a leading [L] axis when scanned; `layers_0`.. when not), post_layernorm: {scale, bias},
[visual_projection: {kernel [D, P_proj]}]}.
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.layers import LayerNorm, Linear, dtype_of
from common.vision.vit import ViTEmbeddings, ViTEncoder, VisionOutput, as_pair, check_pixels


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """CLIP vision tower hyper-parameters (defaults = HF CLIPVisionConfig, i.e. ViT-B/32 224px)."""

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None  # visual_projection width; None = no projection (CLIPVisionModel)
    scan_layers: bool = True
    remat_policy: str = "none"  # common.layers.REMAT_POLICIES: none | full | dots | dots_no_batch
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @property
    def num_patches(self) -> int:
        h, w = as_pair(self.image_size)
        ph, pw = as_pair(self.patch_size)
        return (h // ph) * (w // pw)

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **overrides) -> CLIPVisionConfig:
        """From an HF config dict: model_type `clip` (reads `vision_config`; the projection is kept) or
        `clip_vision_model` (projection only for the `CLIPVisionModelWithProjection` architecture).
        Missing keys take HF's CLIPVisionConfig defaults (old checkpoints store only non-defaults)."""
        model_type = hf_config.get("model_type")
        if model_type == "clip":
            vision = dict(hf_config.get("vision_config") or {})
            projection = hf_config.get("projection_dim", vision.get("projection_dim", 512))
        elif model_type in ("clip_vision_model", None):
            vision = dict(hf_config)
            with_projection = "CLIPVisionModelWithProjection" in (hf_config.get("architectures") or [])
            projection = hf_config.get("projection_dim", 512) if with_projection else None
        else:
            raise ValueError(f"not a CLIP config: model_type {model_type!r}")
        image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 32)
        if as_pair(image_size)[0] != as_pair(image_size)[1] or as_pair(patch_size)[0] != as_pair(patch_size)[1]:
            raise ValueError(f"CLIP expects square image and patch sizes, got {image_size} / {patch_size}")
        fields = dict(
            image_size=as_pair(image_size)[0],
            patch_size=as_pair(patch_size)[0],
            num_channels=vision.get("num_channels", 3),
            hidden_size=vision.get("hidden_size", 768),
            intermediate_size=vision.get("intermediate_size", 3072),
            num_layers=vision.get("num_hidden_layers", 12),
            num_heads=vision.get("num_attention_heads", 12),
            act=vision.get("hidden_act", "quick_gelu"),
            layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
            projection_dim=projection,
        )
        fields.update(overrides)
        return cls(**fields)


def clip_vit_l14_336(**overrides) -> CLIPVisionConfig:
    """openai/clip-vit-large-patch14-336 vision tower (LLaVA-1.5): 24 layers, width 1024, 16 heads, MLP 4096,
    patch 14, 336px -> 576 patches; 303,507,456 parameters without visual_projection (+786,432 with it)."""
    fields = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_layers=24,
                  num_heads=16, act="quick_gelu", layer_norm_eps=1e-5)
    fields.update(overrides)
    return CLIPVisionConfig(**fields)


def clip_vit_l14(**overrides) -> CLIPVisionConfig:
    """openai/clip-vit-large-patch14 vision tower (OpenFlamingo): as ViT-L/14-336 but 224px (256 patches)."""
    return clip_vit_l14_336(**{"image_size": 224, **overrides})


def matmul_flops_per_image(config: CLIPVisionConfig) -> float:
    """Forward FLOPs of one image through the tower's matmuls (patch embedding, attention projections, scores and
    values, MLP, the projection if any), a multiply-add counted as 2, as `common.lm.matmul_flops_per_token`."""
    s, e, i = config.num_patches + 1, config.hidden_size, config.intermediate_size  # tokens incl. CLS
    ph, pw = as_pair(config.patch_size)
    layer = 2 * s * 4 * e * e + 2 * s * 2 * e * i + 2 * 2 * s * s * e
    patches = 2 * config.num_patches * ph * pw * config.num_channels * e
    projection = 2 * e * config.projection_dim if config.projection_dim else 0
    return float(config.num_layers * layer + patches + projection)


class CLIPVisionTransformer(nn.Module):
    """`__call__(pixels [B, H, W, C]) -> VisionOutput` (see common/vision/vit.py)."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array, *, deterministic: bool = True,
                 output_hidden_states: bool = True) -> VisionOutput:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        check_pixels(pixels, as_pair(cfg.image_size), cfg.num_channels, "CLIP vision tower")
        ln = lambda name: LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)  # noqa: E731
        x = ViTEmbeddings(cfg.hidden_size, as_pair(cfg.image_size), as_pair(cfg.patch_size), patch_bias=False,
                          dtype=dtype, param_dtype=param_dtype, name="embeddings")(pixels)  # [B, T, D]
        x = ln("pre_layrnorm")(x)
        layer_kwargs = dict(hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                            intermediate_size=cfg.intermediate_size, act=cfg.act, norm="layer",
                            norm_eps=cfg.layer_norm_eps, qkv_bias=True, out_bias=True, dtype=dtype,
                            param_dtype=param_dtype)
        last, hidden_states = ViTEncoder(cfg.num_layers, layer_kwargs, scan_layers=cfg.scan_layers,
                                         remat_policy=cfg.remat_policy, name="encoder")(
            x, deterministic=deterministic, output_hidden_states=output_hidden_states)  # [B, T, D], [L+1, B, T, D]
        post_ln = ln("post_layernorm")
        pooled = post_ln(last[:, 0])  # [B, D]
        post_norm_tokens = post_ln(last)  # [B, T, D]
        image_embeds = None
        if cfg.projection_dim is not None:
            image_embeds = Linear(cfg.projection_dim, ("embed",), ("mlp",), dtype=dtype, param_dtype=param_dtype,
                                  name="visual_projection")(pooled)  # [B, P_proj]
        return VisionOutput(last_hidden_state=last, hidden_states=hidden_states, pooled=pooled,
                            image_embeds=image_embeds, post_norm_tokens=post_norm_tokens)


def select_features(output: VisionOutput, feature_layer: int | Sequence[int] = -2,
                    strategy: str = "default") -> jax.Array:
    """LLaVA's feature selection: hidden_states[feature_layer] ([B, T, D]; a list of layers is concatenated on
    the feature axis as HF Llava does), then strategy 'default' / 'patch' drops CLS -> [B, N, D*], 'full' /
    'cls_patch' keeps it -> [B, T, D*]."""
    if output.hidden_states is None:
        raise ValueError("select_features needs hidden states: call the tower with output_hidden_states=True")
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    n = output.hidden_states.shape[0]
    for layer in layers:
        if not -n <= layer < n:
            raise ValueError(f"feature layer {layer} out of range for {n} hidden states")
    feats = jnp.concatenate([output.hidden_states[layer] for layer in layers], axis=-1)
    if strategy in ("default", "patch"):
        return feats[:, 1:]
    if strategy in ("full", "cls_patch"):
        return feats
    raise ValueError(f"unknown vision feature select strategy {strategy!r}; "
                     "use 'default'/'patch' or 'full'/'cls_patch'")
