"""Hugging Face vision towers -> `common.vision`: config translation and tensor-name rules for model_type
`clip` (vision tower + visual_projection of a full CLIPModel; the text tower is ignored), `clip_vision_model`
(CLIPVisionModel / CLIPVisionModelWithProjection), `internvl_vision` (transformers' InternVLVisionModel) and
`intern_vit_6b` (the original InternViT remote-code release, e.g. OpenGVLab/InternViT-300M-448px); and timm's
NFNet-F checkpoints (`dm_nfnet_f0` .. `f6`, no HF model_type: `load_timm_nfnet` / `nfnet_rule`).

`clip_rule` / `internvit_rule` take `prefix` (where the tower sits in a bigger tree, e.g. ('vision_tower',))
and `hf_prefix` (a leading tensor-name part to strip, e.g. 'vision_tower.' in LLaVA checkpoints), so the
LLaVA / VITA loaders can reuse them for towers embedded in multimodal checkpoints.
A CLIP tower also saves back (`common.hf.save` as clip_vision_model: `clip_config_to_hf` + `clip_rule`'s names).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.hf import Architecture, register
from common.hf.checkpoint import (CheckpointError, Gather, Path, Rule, Target, bias_to_heads, check_read_back,
                                  fill_params, identity, iter_tensors, linear_from_heads, linear_to_heads, named,
                                  read_config, stacked, transpose)
from common.sharding import params_sharding
from common.vision.clip import CLIPVisionConfig, CLIPVisionTransformer
from common.vision.intern_vit import InternViT, InternViTConfig
from common.vision.nfnet import NFNet, NFNetConfig
from common.vision.vit import as_pair, conv_weight_to_patch_kernel


def _dtype_name(dtype: Any) -> str:
    return "float32" if dtype is None else jnp.dtype(dtype).name


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
    `logit_scale` are known and ignored; `visual_projection.weight` is loaded when the config has a projection.
    Its `names` (for saving) are the classic ones, with `vision_model.`, which every transformers version reads."""
    h, d = config.num_heads, config.hidden_size // config.num_heads
    patch, channels = config.patch_size, config.num_channels
    patch_kernel = Gather(conv_weight_to_patch_kernel, lambda s: (s[1], channels, patch, patch), "conv_to_patch_kernel")
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
        "embeddings.patch_embedding.weight": (("embeddings", "patch_embedding", "kernel"), patch_kernel),
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
            return [Target(prefix + inner, (), transform or identity)]
        match = layer_re.fullmatch(name)
        if match and match.group(2) in layer_map:
            inner, transform = layer_map[match.group(2)]
            return _layer_targets(prefix, config.scan_layers, int(match.group(1)), inner, transform or identity)
        return None

    names = ["vision_model." + n for n in tops if n.startswith("embeddings.")]
    names += ["vision_model.pre_layrnorm.weight", "vision_model.pre_layrnorm.bias"]
    names += [f"vision_model.encoder.layers.{i}.{rest}" for i in range(config.num_layers) for rest in layer_map]
    names += ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias", "visual_projection.weight"]
    return named(rule, [hf_prefix + n for n in names])


def clip_config_to_hf(config: CLIPVisionConfig) -> dict:
    """CLIPVisionConfig -> config.json dict of a CLIPVisionModel (CLIPVisionModelWithProjection with a projection);
    read back with `CLIPVisionConfig.from_hf`, it gives the same tower (checked)."""
    hf = dict(model_type="clip_vision_model",
              architectures=["CLIPVisionModelWithProjection" if config.projection_dim else "CLIPVisionModel"],
              hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
              num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads, image_size=config.image_size,
              patch_size=config.patch_size, num_channels=config.num_channels, hidden_act=config.act,
              layer_norm_eps=config.layer_norm_eps)
    if config.projection_dim:
        hf["projection_dim"] = config.projection_dim
    keep = {k: getattr(config, k) for k in ("scan_layers", "remat_policy", "dtype", "param_dtype")}
    check_read_back(config, CLIPVisionConfig.from_hf(hf, **keep), "this CLIPVisionConfig has no HF counterpart")
    return hf


def _build_clip(hf: dict, dtype: Any) -> CLIPVisionTransformer:
    name = _dtype_name(dtype)
    return CLIPVisionTransformer(CLIPVisionConfig.from_hf(hf, dtype=name, param_dtype=name))


def _image_example(module: CLIPVisionTransformer | InternViT) -> tuple:
    """One NHWC image of the tower's configured size, for shape inference."""
    size = as_pair(module.config.image_size)
    return (jnp.zeros((1, size[0], size[1], module.config.num_channels), jnp.float32),)


register("clip", "clip_vision_model")(Architecture(
    build=_build_clip, rule=lambda module: clip_rule(module.config), example_inputs=_image_example,
    to_hf_config=lambda module, model_type: clip_config_to_hf(module.config) if model_type == "clip_vision_model"
    else _no_full_clip(),
    model_type_of=lambda module: "clip_vision_model" if isinstance(module, CLIPVisionTransformer) else None))


def _no_full_clip():
    raise CheckpointError("a vision tower saves as clip_vision_model (a full CLIPModel needs its text tower)")


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

    patch, channels = config.patch_size, config.num_channels
    patch_kernel = Gather(conv_weight_to_patch_kernel, lambda s: (s[1], channels, patch, patch), "conv_to_patch_kernel")
    class_embedding = Gather(lambda a: a.reshape(-1), lambda s: (1, 1) + tuple(s), "class_embedding")  # [1, 1, D]
    position_embedding = Gather(lambda a: a.reshape(-1, a.shape[-1]), lambda s: (1,) + tuple(s),
                                "position_embedding")  # [1, T, D] -> [T, D]

    def transform_for(inner: Path):
        if inner[-1] == "kernel" and inner[:2] in (("attn", "q"), ("attn", "k"), ("attn", "v")):
            return linear_to_heads(h, d)
        if inner[-1] == "bias" and inner[:2] in (("attn", "q"), ("attn", "k"), ("attn", "v")):
            return bias_to_heads(h, d)
        if inner == ("attn", "o", "kernel"):
            return linear_from_heads(h, d)
        if inner == ("embeddings", "patch_embedding", "kernel"):
            return patch_kernel
        if inner[-1] == "kernel":
            return transpose
        if inner[-1] == "class_embedding":
            return class_embedding
        if inner[-1] == "position_embedding":
            return position_embedding
        return identity

    def qkv_part(kind: str, j: int) -> Gather:
        """The fused qkv weight [3E, E] / bias [3E] of the original naming -> q, k or v (j = 0, 1, 2)."""
        if kind == "weight":
            return Gather(lambda a: np.ascontiguousarray(a[j * e:(j + 1) * e].T.reshape(e, h, d)),
                          lambda s: (3 * e, e), f"qkv_weight_{j}")
        return Gather(lambda a: a[j * e:(j + 1) * e].reshape(h, d), lambda s: (3 * e,), f"qkv_bias_{j}")

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
            leaf = "kernel" if kind == "weight" else "bias"
            return [t for j, proj in enumerate("qkv")
                    for t in _layer_targets(prefix, config.scan_layers, i, ("attn", proj, leaf), qkv_part(kind, j))]
        return None

    per_layer = list(layer_map) + (["attn.qkv.weight", "attn.qkv.bias"] if naming == "original" else [])
    layer_name = "encoder.layers.{}.{}" if naming == "original" else "encoder.layer.{}.{}"
    names = list(tops) + [layer_name.format(i, rest) for i in range(config.num_layers) for rest in per_layer]
    return named(rule, [hf_prefix + n for n in names])


def internvit_config_to_original(config: InternViTConfig) -> dict:
    """InternViTConfig -> the original InternViT remote-code config dict (model_type `intern_vit_6b`, as the
    InternViT-300M-448px folder and VITA-1.5's `vision_config` hold it). Read back with `InternViTConfig.from_hf` it
    gives the same tower (checked; a CheckpointError names what it cannot express)."""
    hf = dict(model_type="intern_vit_6b", architectures=["InternVisionModel"], image_size=config.image_size,
              patch_size=config.patch_size, num_channels=config.num_channels, hidden_size=config.hidden_size,
              intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
              num_attention_heads=config.num_heads, hidden_act=config.act, layer_norm_eps=config.layer_norm_eps,
              norm_type=config.norm_type, qkv_bias=config.qkv_bias, qk_normalization=config.qk_norm,
              initializer_factor=config.layer_scale_init, drop_path_rate=config.drop_path_rate)
    keep = {k: getattr(config, k) for k in ("feature_layer", "downsample_ratio", "ps_version", "scan_layers",
                                            "remat_policy", "dtype", "param_dtype")}
    check_read_back(config, InternViTConfig.from_hf(hf, **keep),
                    "this InternViTConfig has no original (intern_vit_6b) counterpart")
    return hf


def _build_internvit(hf: dict, dtype: Any) -> InternViT:
    name = _dtype_name(dtype)
    return InternViT(InternViTConfig.from_hf(hf, dtype=name, param_dtype=name))



register("internvl_vision")(Architecture(
    build=_build_internvit, rule=lambda module: internvit_rule(module.config, "hf"),
    example_inputs=_image_example))
register("intern_vit_6b")(Architecture(
    build=_build_internvit, rule=lambda module: internvit_rule(module.config, "original"),
    example_inputs=_image_example))


# ----------------------------------------------------------------------------------------------
# NFNet (timm's dm_nfnet_f0 .. f6: DeepMind's NFNet-F weights converted to PyTorch)

def _conv_weight_to_hwio(a: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [out, in/groups, kh, kw] -> kernel [kh, kw, in/groups, out]."""
    return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))


def _conv_1x1_to_kernel(a: np.ndarray) -> np.ndarray:
    """torch 1x1 Conv2d weight [out, in, 1, 1] (SE's fc layers) -> Linear kernel [in, out]."""
    return np.ascontiguousarray(a[:, :, 0, 0].T)


_NFNET_CONV_LEAVES = {"weight": ("kernel", _conv_weight_to_hwio), "bias": ("bias", identity),
                      "gain": ("gain", lambda a: a.reshape(-1))}  # gain [out, 1, 1, 1] -> [out]


def nfnet_block_location(config: NFNetConfig, stage: int, block: int) -> tuple[Path, tuple[int, ...]]:
    """(path, leaf index) of block `block` of stage `stage`: ('stages_s', 'block_0'), () for a stage's first block;
    ('stages_s', 'blocks'), (block - 1,) for the others when scanned, else ('stages_s', f'block_{block}'), ()."""
    if not (0 <= stage < len(config.depths) and 0 <= block < config.depths[stage]):
        raise CheckpointError(f"NFNet block stages.{stage}.{block} does not exist for depths {config.depths}")
    if block == 0:
        return (f"stages_{stage}", "block_0"), ()
    if config.scan_blocks:
        return (f"stages_{stage}", "blocks"), (block - 1,)
    return (f"stages_{stage}", f"block_{block}"), ()


def nfnet_rule(config: NFNetConfig, prefix: Path = (), timm_prefix: str = "") -> Rule:
    """Tensor-name rule for timm's NormFreeNet `dm_nfnet_f*` state dict: stem.conv{1-4}.{weight,bias,gain},
    stages.{s}.{b}.{conv1,conv2,conv2b,conv3,downsample.conv}.*, stages.{s}.{b}.attn_last.fc{1,2}.*,
    stages.{s}.{b}.skipinit_gain, final_conv.*, head.fc.*. `head.fc.*` is known and ignored when the config has
    no classifier (num_classes=0), `final_conv.*` when it has no final conv."""
    stem_re = re.compile(r"stem\.conv([1-4])\.(weight|bias|gain)")
    block_re = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")
    conv_re = re.compile(r"(conv1|conv2|conv2b|conv3|downsample\.conv)\.(weight|bias|gain)")
    se_re = re.compile(r"attn_last\.(fc1|fc2)\.(weight|bias)")

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        name = _strip(name, timm_prefix)
        if name is None:
            return None
        match = stem_re.fullmatch(name)
        if match:
            leaf, transform = _NFNET_CONV_LEAVES[match.group(2)]
            return [Target(prefix + ("stem", f"conv{match.group(1)}", leaf), (), transform)]
        match = block_re.fullmatch(name)
        if match:
            path, index = nfnet_block_location(config, int(match.group(1)), int(match.group(2)))
            rest = match.group(3)
            if rest == "skipinit_gain":
                return [Target(prefix + path + ("skip_gain",), index, lambda a: a.reshape(()))]
            conv = conv_re.fullmatch(rest)
            if conv:
                leaf, transform = _NFNET_CONV_LEAVES[conv.group(2)]
                module = "downsample" if conv.group(1) == "downsample.conv" else conv.group(1)
                return [Target(prefix + path + (module, leaf), index, transform)]
            se = se_re.fullmatch(rest)
            if se:
                leaf, transform = ("kernel", _conv_1x1_to_kernel) if se.group(2) == "weight" else ("bias", identity)
                return [Target(prefix + path + ("se", se.group(1), leaf), index, transform)]
            return None
        if name.startswith("final_conv."):
            kind = name[len("final_conv."):]
            if kind not in _NFNET_CONV_LEAVES:
                return None
            if not config.final_conv_mult:
                return []
            leaf, transform = _NFNET_CONV_LEAVES[kind]
            return [Target(prefix + ("final_conv", leaf), (), transform)]
        if name in ("head.fc.weight", "head.fc.bias"):
            if not config.num_classes:
                return []  # the ImageNet classifier: not part of a headless encoder (Flamingo)
            return [Target(prefix + ("head", "kernel" if name.endswith("weight") else "bias"), (),
                           transpose if name.endswith("weight") else identity)]
        return None

    return rule


def _timm_tensors(path: str):
    """(name, array) pairs from a timm checkpoint: a directory (HF hub layout: model.safetensors or
    pytorch_model.bin) or one weights file (.safetensors, or a torch .pth / .bin / .pt)."""
    if os.path.isdir(path):
        yield from iter_tensors(path)
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"timm checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    import torch

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    for name in list(state):
        tensor = state.pop(name)
        yield name, tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def convert_timm_nfnet(tensors, config: NFNetConfig, dtype: Any = None, mesh=None, prefix: Path = (),
                       abstract: Any = None) -> dict:
    """timm `dm_nfnet_f*` tensors -> NFNet params (streamed leaf by leaf, like `common.hf.load`).

    tensors: a state dict (name -> torch tensor or array) or an iterator of (name, array) pairs. prefix places the
    encoder inside a bigger tree (e.g. ('vision',) of a Flamingo; pass that model's `abstract` params, boxed, then).
    """
    if isinstance(tensors, dict):
        tensors = ((name, _to_numpy(value)) for name, value in tensors.items())
    if abstract is None:
        module = NFNet(config)
        size = config.image_size
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size,
                                                                                    config.num_channels))))["params"]
    shardings = None
    if mesh is not None:
        shardings = params_sharding(abstract, mesh)
    return fill_params(tensors, nfnet_rule(config, prefix), nn.unbox(abstract), dtype=dtype, shardings=shardings,
                       source="timm NFNet")


def load_timm_nfnet(path: str, config: NFNetConfig | None = None, dtype: Any = None, mesh=None,
                    **overrides) -> tuple[NFNet, dict]:
    """A timm NFNet checkpoint (`timm/dm_nfnet_f6.dm_in1k` directory with config.json, or a .pth / .safetensors
    file with `config` given) -> (NFNet module, params). overrides go to NFNetConfig.from_timm (e.g.
    num_classes=0 to drop the classifier, features='last_stage' for Flamingo)."""
    if config is None:
        if not os.path.isdir(path):
            raise CheckpointError(f"{path!r} is a single weights file: pass config=nfnet_f(n, ...)")
        config = NFNetConfig.from_timm(read_config(path), **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=_dtype_name(dtype), param_dtype=_dtype_name(dtype))
    return NFNet(config), convert_timm_nfnet(_timm_tensors(path), config, dtype=dtype, mesh=mesh)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    return np.asarray(value)
