"""Hugging Face vision towers -> `common.vision`: config translation and tensor-name rules for model_type
`clip` (vision tower + visual_projection of a full CLIPModel; the text tower is ignored), `clip_vision_model`
(CLIPVisionModel / CLIPVisionModelWithProjection), `internvl_vision` (transformers' InternVLVisionModel) and
`intern_vit_6b` (the original InternViT remote-code release, e.g. OpenGVLab/InternViT-300M-448px).

`clip_rule` / `internvit_rule` take `prefix` (where the tower sits in a bigger tree, e.g. ('vision_tower',))
and `hf_prefix` (a leading tensor-name part to strip, e.g. 'vision_tower.' in LLaVA checkpoints), so the
LLaVA / VITA loaders can reuse them for towers embedded in multimodal checkpoints.
"""
from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from common.hf import Architecture, register
from common.hf.checkpoint import (Path, Rule, Target, bias_to_heads, linear_from_heads, linear_to_heads, stacked,
                                  transpose)
from common.vision.clip import CLIPVisionConfig, CLIPVisionTransformer
from common.vision.intern_vit import InternViT, InternViTConfig
from common.vision.vit import as_pair, conv_weight_to_patch_kernel


def _dtype_name(dtype: Any) -> str:
    return "float32" if dtype is None else jnp.dtype(dtype).name


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _strip(name: str, hf_prefix: str) -> str | None:
    if hf_prefix:
        if not name.startswith(hf_prefix):
            return None
        name = name[len(hf_prefix):]
    return name


def _layer_targets(prefix: Path, scan: bool, i: int, inner: Path, transform) -> list[Target]:
    path, index = stacked(prefix + ("encoder",), i, scan, inner)
    return [Target(path, index, transform)]


# ----------------------------------------------------------------------------------------------
# CLIP

def clip_rule(config: CLIPVisionConfig, prefix: Path = (), hf_prefix: str = "") -> Rule:
    """Tensor-name rule for a CLIP vision tower. Accepts names with or without the `vision_model.` part
    (transformers v5 saves a bare CLIPVisionModel without it); `text_model.*`, `text_projection.weight` and
    `logit_scale` are known and ignored; `visual_projection.weight` is loaded when the config has a projection."""
    h, d = config.num_heads, config.hidden_size // config.num_heads
    layer_re = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
    layer_map = {
        "layer_norm1.weight": (("ln1", "scale"), None), "layer_norm1.bias": (("ln1", "bias"), None),
        "layer_norm2.weight": (("ln2", "scale"), None), "layer_norm2.bias": (("ln2", "bias"), None),
        "self_attn.q_proj.weight": (("attn", "q", "kernel"), linear_to_heads(h, d)),
        "self_attn.k_proj.weight": (("attn", "k", "kernel"), linear_to_heads(h, d)),
        "self_attn.v_proj.weight": (("attn", "v", "kernel"), linear_to_heads(h, d)),
        "self_attn.q_proj.bias": (("attn", "q", "bias"), bias_to_heads(h, d)),
        "self_attn.k_proj.bias": (("attn", "k", "bias"), bias_to_heads(h, d)),
        "self_attn.v_proj.bias": (("attn", "v", "bias"), bias_to_heads(h, d)),
        "self_attn.out_proj.weight": (("attn", "o", "kernel"), linear_from_heads(h, d)),
        "self_attn.out_proj.bias": (("attn", "o", "bias"), None),
        "mlp.fc1.weight": (("mlp", "up", "kernel"), transpose), "mlp.fc1.bias": (("mlp", "up", "bias"), None),
        "mlp.fc2.weight": (("mlp", "down", "kernel"), transpose), "mlp.fc2.bias": (("mlp", "down", "bias"), None),
    }
    tops = {
        "embeddings.class_embedding": (("embeddings", "class_embedding"), None),
        "embeddings.patch_embedding.weight": (("embeddings", "patch_embedding", "kernel"), conv_weight_to_patch_kernel),
        "embeddings.position_embedding.weight": (("embeddings", "position_embedding"), None),
        "pre_layrnorm.weight": (("pre_layrnorm", "scale"), None), "pre_layrnorm.bias": (("pre_layrnorm", "bias"), None),
        "post_layernorm.weight": (("post_layernorm", "scale"), None),
        "post_layernorm.bias": (("post_layernorm", "bias"), None),
    }

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        name = _strip(name, hf_prefix)
        if name is None:
            return None
        if name.startswith("text_model.") or name in ("text_projection.weight", "logit_scale"):
            return []  # the text tower of a full CLIPModel
        if name == "visual_projection.weight":
            if config.projection_dim is None:
                return []
            return [Target(prefix + ("visual_projection", "kernel"), (), transpose)]
        if name.startswith("vision_model."):
            name = name[len("vision_model."):]
        if name.endswith("embeddings.position_ids"):
            return []  # buffer (older checkpoints persisted it)
        if name in tops:
            inner, transform = tops[name]
            return [Target(prefix + inner, (), transform or _identity)]
        match = layer_re.fullmatch(name)
        if match and match.group(2) in layer_map:
            inner, transform = layer_map[match.group(2)]
            return _layer_targets(prefix, config.scan_layers, int(match.group(1)), inner, transform or _identity)
        return None

    return rule


def _build_clip(hf: dict, dtype: Any) -> CLIPVisionTransformer:
    name = _dtype_name(dtype)
    return CLIPVisionTransformer(CLIPVisionConfig.from_hf(hf, dtype=name, param_dtype=name))


def _image_example(module: CLIPVisionTransformer | InternViT) -> tuple:
    """One NHWC image of the tower's configured size, for shape inference."""
    size = as_pair(module.config.image_size)
    return (jnp.zeros((1, size[0], size[1], module.config.num_channels), jnp.float32),)


register("clip", "clip_vision_model")(Architecture(
    build=_build_clip, rule=lambda module: clip_rule(module.config), example_inputs=_image_example))


# ----------------------------------------------------------------------------------------------
# InternViT

def internvit_rule(config: InternViTConfig, naming: str = "hf", prefix: Path = (), hf_prefix: str = "") -> Rule:
    """Tensor-name rule for InternViT. naming 'hf' = transformers' InternVLVisionModel
    (`encoder.layer.{i}.attention.q_proj` ...), 'original' = the InternViT remote code
    (`encoder.layers.{i}.attn.qkv` fused, `ls1` / `ls2`, `norm1` / `norm2`)."""
    h, d, e = config.num_heads, config.hidden_size // config.num_heads, config.hidden_size
    if naming == "hf":
        layer_re = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
        layer_map = {
            "layernorm_before.weight": ("ln1", "scale"), "layernorm_before.bias": ("ln1", "bias"),
            "layernorm_after.weight": ("ln2", "scale"), "layernorm_after.bias": ("ln2", "bias"),
            "attention.q_proj.weight": ("attn", "q", "kernel"), "attention.k_proj.weight": ("attn", "k", "kernel"),
            "attention.v_proj.weight": ("attn", "v", "kernel"), "attention.q_proj.bias": ("attn", "q", "bias"),
            "attention.k_proj.bias": ("attn", "k", "bias"), "attention.v_proj.bias": ("attn", "v", "bias"),
            "attention.projection_layer.weight": ("attn", "o", "kernel"),
            "attention.projection_layer.bias": ("attn", "o", "bias"),
            "attention.q_norm.weight": ("q_norm", "scale"), "attention.k_norm.weight": ("k_norm", "scale"),
            "mlp.fc1.weight": ("mlp", "up", "kernel"), "mlp.fc1.bias": ("mlp", "up", "bias"),
            "mlp.fc2.weight": ("mlp", "down", "kernel"), "mlp.fc2.bias": ("mlp", "down", "bias"),
            "lambda_1": ("lambda_1",), "lambda_2": ("lambda_2",),
        }
        tops = {
            "embeddings.cls_token": ("embeddings", "class_embedding"),
            "embeddings.position_embeddings": ("embeddings", "position_embedding"),
            "embeddings.patch_embeddings.projection.weight": ("embeddings", "patch_embedding", "kernel"),
            "embeddings.patch_embeddings.projection.bias": ("embeddings", "patch_embedding", "bias"),
            "layernorm.weight": ("final_norm", "scale"), "layernorm.bias": ("final_norm", "bias"),
        }
        ignored = ("embeddings.mask_token",)  # only used for masked image modelling (bool_masked_pos)
    elif naming == "original":
        layer_re = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
        layer_map = {
            "norm1.weight": ("ln1", "scale"), "norm1.bias": ("ln1", "bias"),
            "norm2.weight": ("ln2", "scale"), "norm2.bias": ("ln2", "bias"),
            "attn.proj.weight": ("attn", "o", "kernel"), "attn.proj.bias": ("attn", "o", "bias"),
            "attn.q_norm.weight": ("q_norm", "scale"), "attn.k_norm.weight": ("k_norm", "scale"),
            "mlp.fc1.weight": ("mlp", "up", "kernel"), "mlp.fc1.bias": ("mlp", "up", "bias"),
            "mlp.fc2.weight": ("mlp", "down", "kernel"), "mlp.fc2.bias": ("mlp", "down", "bias"),
            "ls1": ("lambda_1",), "ls2": ("lambda_2",),
        }
        tops = {
            "embeddings.class_embedding": ("embeddings", "class_embedding"),
            "embeddings.position_embedding": ("embeddings", "position_embedding"),
            "embeddings.patch_embedding.weight": ("embeddings", "patch_embedding", "kernel"),
            "embeddings.patch_embedding.bias": ("embeddings", "patch_embedding", "bias"),
        }
        ignored = ()
    else:
        raise ValueError(f"unknown InternViT naming {naming!r}; use 'hf' or 'original'")

    def transform_for(inner: Path):
        if inner[-1] == "kernel" and inner[:2] in (("attn", "q"), ("attn", "k"), ("attn", "v")):
            return linear_to_heads(h, d)
        if inner[-1] == "bias" and inner[:2] in (("attn", "q"), ("attn", "k"), ("attn", "v")):
            return bias_to_heads(h, d)
        if inner == ("attn", "o", "kernel"):
            return linear_from_heads(h, d)
        if inner == ("embeddings", "patch_embedding", "kernel"):
            return conv_weight_to_patch_kernel
        if inner[-1] == "kernel":
            return transpose
        if inner[-1] == "class_embedding":
            return lambda a: a.reshape(-1)  # [1, 1, D] -> [D]
        if inner[-1] == "position_embedding":
            return lambda a: a.reshape(-1, a.shape[-1])  # [1, T, D] -> [T, D]
        return _identity

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        name = _strip(name, hf_prefix)
        if name is None:
            return None
        if name in ignored:
            return []
        if name in tops:
            inner = tops[name]
            return [Target(prefix + inner, (), transform_for(inner))]
        match = layer_re.fullmatch(name)
        if not match:
            return None
        i, rest = int(match.group(1)), match.group(2)
        if rest in layer_map:
            inner = layer_map[rest]
            return _layer_targets(prefix, config.scan_layers, i, inner, transform_for(inner))
        if naming == "original" and rest in ("attn.qkv.weight", "attn.qkv.bias"):  # [3E, E] / [3E]: q, k, v
            kind = rest.rsplit(".", 1)[1]
            if kind == "weight":
                part = lambda j: (lambda a: np.ascontiguousarray(a[j * e:(j + 1) * e].T.reshape(e, h, d)))  # noqa: E731
            else:
                part = lambda j: (lambda a: a[j * e:(j + 1) * e].reshape(h, d))  # noqa: E731
            leaf = "kernel" if kind == "weight" else "bias"
            return [t for j, proj in enumerate("qkv")
                    for t in _layer_targets(prefix, config.scan_layers, i, ("attn", proj, leaf), part(j))]
        return None

    return rule


def _build_internvit(hf: dict, dtype: Any) -> InternViT:
    name = _dtype_name(dtype)
    return InternViT(InternViTConfig.from_hf(hf, dtype=name, param_dtype=name))



register("internvl_vision")(Architecture(
    build=_build_internvit, rule=lambda module: internvit_rule(module.config, "hf"),
    example_inputs=_image_example))
register("intern_vit_6b")(Architecture(
    build=_build_internvit, rule=lambda module: internvit_rule(module.config, "original"),
    example_inputs=_image_example))
