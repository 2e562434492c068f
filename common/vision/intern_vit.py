"""InternViT vision tower (Chen et al. 2024, "InternVL: Scaling up Vision Foundation Models", Sec. 3.1; the
InternViT-300M-448px encoder of VITA-1.5, docs/vita.md), matching HF transformers'
`InternVLVisionModel` and the original `intern_vit_6b` remote code, plus InternVL's pixel-shuffle downsampler.

Embeddings (patch conv with bias, CLS, learned positions) -> L pre-norm layers with layer scale
(x + lambda_1 * attn(norm1(x)); x + lambda_2 * mlp(norm2(x))), LayerNorm or RMSNorm, optional RMS qk-norm over
the full width, optional qkv bias, exact-GELU MLP; no final norm unless HF's use_mean_pooling is False.
Input pixels are NHWC [B, H, W, C] float32, already ImageNet-normalised.

Param tree: {embeddings: {patch_embedding: {kernel [P*P*C, D], bias [D]}, class_embedding [D],
position_embedding [T, D]}, encoder: {layers: {ln1, attn: {q, k, v, o}, [q_norm, k_norm], ln2, mlp: {up, down},
lambda_1, lambda_2}} (leading [L] axis when scanned; `layers_0`.. when not), [final_norm: {scale, bias}]}.
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping

import flax.linen as nn
import jax

from common.layers import LayerNorm, dtype_of
from common.vision.vit import ViTEmbeddings, ViTEncoder, VisionOutput, as_pair, check_pixels


@dataclasses.dataclass(frozen=True)
class InternViTConfig:
    """InternViT hyper-parameters (defaults = InternViT-300M-448px)."""

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    act: str = "gelu"  # exact erf GELU
    norm_type: str = "layer_norm"  # "layer_norm" | "rms_norm"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6
    layer_scale_init: float = 0.1
    use_position_embeddings: bool = True
    final_norm: bool = False  # HF InternVLVisionModel with use_mean_pooling=False: LayerNorm after the encoder
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over layers (only when not deterministic)
    # InternVL feature pipeline (used by `image_features`, not by the tower itself)
    feature_layer: int = -1  # InternVL `select_layer` / HF `vision_feature_layer`: -1 = last_hidden_state
    downsample_ratio: float = 0.5
    ps_version: str = "v2"  # "v2" (InternVL 1.5+, HF) or "v1" (no final transpose)
    scan_layers: bool = True
    remat_policy: str = "none"  # common.layers.REMAT_POLICIES: none | full | dots | dots_no_batch
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def num_patches(self) -> int:
        h, w = as_pair(self.image_size)
        p, q = as_pair(self.patch_size)
        return (h // p) * (w // q)

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **overrides) -> InternViTConfig:
        """From an HF config dict: `internvl_vision` (transformers' InternVLVisionConfig), `intern_vit_6b` (the
        original InternViT remote-code config) or `internvl` / `internvl_chat` (reads `vision_config`)."""
        model_type = hf_config.get("model_type")
        top = dict(hf_config)
        if model_type in ("internvl", "internvl_chat"):
            vision = dict(hf_config.get("vision_config") or {})
            model_type = vision.get("model_type", "internvl_vision" if model_type == "internvl" else "intern_vit_6b")
        else:
            vision = top
        image_size = as_pair(vision.get("image_size", 448))
        patch_size = as_pair(vision.get("patch_size", 14))
        if image_size[0] != image_size[1] or patch_size[0] != patch_size[1]:
            raise ValueError(f"InternViT expects square image and patch sizes, got {image_size} / {patch_size}")
        common = dict(
            image_size=image_size[0],
            patch_size=patch_size[0],
            num_channels=vision.get("num_channels", 3),
            hidden_size=vision.get("hidden_size", 1024),
            intermediate_size=vision.get("intermediate_size", 4096),
            num_layers=vision.get("num_hidden_layers", 24),
            num_heads=vision.get("num_attention_heads", 16),
            act=vision.get("hidden_act", "gelu"),
            layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        )
        if model_type == "internvl_vision":
            fields = dict(
                common,
                norm_type=vision.get("norm_type", "layer_norm"),
                qkv_bias=vision.get("attention_bias", False),
                qk_norm=vision.get("use_qk_norm", False),
                qk_norm_eps=1e-6,  # HF builds q_norm / k_norm with the RMSNorm default eps
                layer_scale_init=vision.get("layer_scale_init_value", 0.1),
                use_position_embeddings=vision.get("use_absolute_position_embeddings", True),
                final_norm=not vision.get("use_mean_pooling", True),
            )
        elif model_type == "intern_vit_6b":
            fields = dict(
                common,
                norm_type=vision.get("norm_type", "rms_norm"),
                qkv_bias=vision.get("qkv_bias", False),
                qk_norm=vision.get("qk_normalization", False),
                qk_norm_eps=vision.get("layer_norm_eps", 1e-6),
                layer_scale_init=vision.get("initializer_factor", 0.1),
                drop_path_rate=vision.get("drop_path_rate", 0.0),
            )
        else:
            raise ValueError(f"not an InternViT config: model_type {model_type!r}")
        if "downsample_ratio" in top:
            fields["downsample_ratio"] = top["downsample_ratio"]
        if "ps_version" in top:
            fields["ps_version"] = top["ps_version"]
        for key in ("select_layer", "vision_feature_layer"):
            if isinstance(top.get(key), int):
                fields["feature_layer"] = top[key]
        fields.update(overrides)
        return cls(**fields)


def internvit_300m_448px(**overrides) -> InternViTConfig:
    """OpenGVLab/InternViT-300M-448px (VITA-1.5's vision encoder): 24 layers, width 1024, 16 heads, MLP 4096,
    patch 14, 448px -> 1024 patches, LayerNorm, qkv bias, no qk-norm, layer scale, drop_path_rate 0.1 (training
    only); 304,012,288 parameters (the model card rounds to 304M)."""
    fields = dict(image_size=448, patch_size=14, hidden_size=1024, intermediate_size=4096, num_layers=24,
                  num_heads=16, act="gelu", norm_type="layer_norm", layer_norm_eps=1e-6, qkv_bias=True,
                  qk_norm=False, layer_scale_init=0.1, drop_path_rate=0.1)
    fields.update(overrides)
    return InternViTConfig(**fields)


class InternViT(nn.Module):
    """`__call__(pixels [B, H, W, C]) -> VisionOutput` (pooled / image_embeds are None; see common/vision/vit.py).
    Stochastic depth runs only with deterministic=False and a 'dropout' rng."""

    config: InternViTConfig

    @nn.compact
    def __call__(self, pixels: jax.Array, *, deterministic: bool = True,
                 output_hidden_states: bool = True) -> VisionOutput:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        norms = {"layer_norm": "layer", "rms_norm": "rms"}
        if cfg.norm_type not in norms:
            raise ValueError(f"unknown norm_type {cfg.norm_type!r}; use 'layer_norm' or 'rms_norm'")
        check_pixels(pixels, as_pair(cfg.image_size), cfg.num_channels, "InternViT")
        x = ViTEmbeddings(cfg.hidden_size, as_pair(cfg.image_size), as_pair(cfg.patch_size), patch_bias=True,
                          use_position_embeddings=cfg.use_position_embeddings, dtype=dtype, param_dtype=param_dtype,
                          name="embeddings")(pixels)  # [B, T, D]
        layer_kwargs = dict(hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                            intermediate_size=cfg.intermediate_size, act=cfg.act, norm=norms[cfg.norm_type],
                            norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias, out_bias=True, qk_norm=cfg.qk_norm,
                            qk_norm_eps=cfg.qk_norm_eps, layer_scale=cfg.layer_scale_init, dtype=dtype,
                            param_dtype=param_dtype)
        last, hidden_states = ViTEncoder(cfg.num_layers, layer_kwargs, drop_path_rate=cfg.drop_path_rate,
                                         scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy,
                                         name="encoder")(
            x, deterministic=deterministic, output_hidden_states=output_hidden_states)  # [B, T, D], [L+1, B, T, D]
        if cfg.final_norm:
            last = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="final_norm")(last)
        return VisionOutput(last_hidden_state=last, hidden_states=hidden_states)


def pixel_shuffle(x: jax.Array, scale_factor: float = 0.5, version: str = "v2") -> jax.Array:
    """InternVL's pixel shuffle, exactly as `InternVLChatModel.pixel_shuffle` / HF `InternVLModel.pixel_shuffle`:
    [B, A, Bw, C] -> [B, A*s, Bw*s, C/s^2] (s = scale_factor; 0.5 merges each 2x2 neighbourhood into the channel
    axis). 'v1' omits the final transpose (InternVL 1.0)."""
    if x.ndim != 4:
        raise ValueError(f"pixel_shuffle expects [batch, height, width, channels], got shape {tuple(x.shape)}")
    n, a, b, c = x.shape
    new_b, new_a, new_c1, new_c2 = b * scale_factor, a * scale_factor, c / scale_factor, c / scale_factor ** 2
    for name, v in (("width", new_b), ("height", new_a), ("channels", new_c1), ("channels", new_c2)):
        if abs(v - round(v)) > 1e-9:
            raise ValueError(f"pixel_shuffle with scale {scale_factor}: {name} of shape {tuple(x.shape)} "
                             "does not divide")
    if version not in ("v1", "v2"):
        raise ValueError(f"unknown pixel shuffle version {version!r}; use 'v1' or 'v2'")
    x = x.reshape(n, a, round(new_b), round(new_c1))  # [B, A, Bw*s, C/s]
    x = x.transpose(0, 2, 1, 3)  # [B, Bw*s, A, C/s]
    x = x.reshape(n, round(new_b), round(new_a), round(new_c2))  # [B, Bw*s, A*s, C/s^2]
    if version == "v2":
        x = x.transpose(0, 2, 1, 3)  # [B, A*s, Bw*s, C/s^2]
    return x


def select_features(output: VisionOutput, feature_layer: int = -1, strategy: str = "default") -> jax.Array:
    """InternVL's selection: feature_layer -1 -> last_hidden_state, else hidden_states[feature_layer]; strategy
    'default' drops CLS ([B, N, D]), 'full' keeps it ([B, T, D])."""
    if feature_layer == -1:
        feats = output.last_hidden_state
    else:
        if output.hidden_states is None:
            raise ValueError("feature_layer != -1 needs hidden states: call the tower with output_hidden_states=True")
        n = output.hidden_states.shape[0]
        if not -n <= feature_layer < n:
            raise ValueError(f"feature layer {feature_layer} out of range for {n} hidden states")
        feats = output.hidden_states[feature_layer]
    if strategy == "default":
        return feats[:, 1:]
    if strategy == "full":
        return feats
    raise ValueError(f"unknown vision feature select strategy {strategy!r}; use 'default' or 'full'")


def image_features(output: VisionOutput, config: InternViTConfig, feature_layer: int | None = None) -> jax.Array:
    """Tower output -> downsampled patch tokens, as InternVL / VITA feed the projector:
    select layer (default config.feature_layer), drop CLS -> [B, N, D] -> grid [B, h, w, D] -> pixel shuffle
    -> [B, N*s^2, D/s^2]
    (InternViT-300M-448px: [B, 1024, 1024] -> [B, 32, 32, 1024] -> [B, 256, 4096])."""
    layer = config.feature_layer if feature_layer is None else feature_layer
    feats = select_features(output, layer, "default")  # [B, N, D]
    b, n, d = feats.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    grid = feats.reshape(b, side, side, d)  # [B, h, w, D]
    shuffled = pixel_shuffle(grid, config.downsample_ratio, config.ps_version)  # [B, h*s, w*s, D/s^2]
    return shuffled.reshape(b, -1, shuffled.shape[-1])  # [B, N*s^2, D/s^2]
