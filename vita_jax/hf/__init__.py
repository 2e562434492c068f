"""VITA's checkpoint conversion, all of it: the released VITA-1.5 layout (VITA-MLLM/VITA-1.5; docs/vita_release.md,
"The release folder") into `vita_jax.Vita` (`load_original`, here), and the speech-out parts of `vita_tts_ckpt/`:
the codec (`load_codec` / `save_codec`, `vita_jax.hf.codec`) and the NAR + AR speech decoder (`load_speech_decoder`,
`vita_jax.hf.speech_decoder`).

model_dir holds config.json (model_type `vita-Qwen2`: the Qwen2 LM's fields plus mm_* fields) and
model-0000{1..4}-of-00004.safetensors (+ index) with
  model.embed_tokens / model.layers.{i}.* / model.norm / lm_head          -> lm            (common.hf.lm.lm_rule)
  model.vision_tower.vision_tower.*  (InternViT remote-code names)         -> vision_tower  (common.hf.vision)
  model.mm_projector.{0,2}.{weight,bias}                                   -> projector
  model.audio_encoder.encoder.* / model.audio_encoder.adpter.*             -> audio_encoder / audio_adapter
and the audio-encoder folder (`audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning/`, or `mm_audio_encoder` when it
names a local folder): train.yaml (encoder sizes, chunk settings), global_cmvn (JSON statistics) and final.pt (the
same `encoder.*` / `adpter.*` names; read only when the safetensors hold no audio encoder, as the released
from_pretrained lets the fine-tuned safetensors win).

Sizes come from the files: the LM from config.json; the vision tower from `vision_config` / a local
`mm_vision_tower` folder's config.json, else from the tensor shapes (heads = width / 64, InternViT-300M's);
the speech encoder from train.yaml, else from the shapes (heads from pos_bias_u [H, d]).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.hf import write_checkpoint
from common.hf.checkpoint import (CheckpointError, Gather, Rule, Target, bias_to_heads, check_read_back, fill_params,
                                  identity, iter_tensors, linear_from_heads, linear_to_heads, named, read_config,
                                  stacked, transpose, weight_files)
from common.hf.lm import config_from_hf, config_to_hf, lm_rule
from common.hf.vision import internvit_config_to_original, internvit_rule
from common.sharding import params_sharding
from common.task_utils import load_trained
from common.vision.intern_vit import InternViTConfig, internvit_300m_448px
from vita_jax.hf.codec import load_original as load_codec, save_original as save_codec
from vita_jax.hf.speech_decoder import load_original as load_speech_decoder
from vita_jax.model import AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX, Vita, VitaConfig, abstract_params
from vita_jax.speech_encoder import SpeechEncoderConfig

AUDIO_PREFIX = "model.audio_encoder."
VISION_PREFIX = "model.vision_tower.vision_tower."
AUDIO_DIR_NAME = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"


def _dtype_name(dtype: Any) -> str:
    return "float32" if dtype is None else jnp.dtype(dtype).name


# ----------------------------------------------------------------------------------------------------------------
# Speech encoder + adapter
# ----------------------------------------------------------------------------------------------------------------
conv2d_to_hwio = Gather(lambda a: np.ascontiguousarray(a.transpose(2, 3, 1, 0)),
                        lambda s: (s[3], s[2], s[0], s[1]), "conv2d_to_hwio")  # [O, I, kh, kw] -> [kh, kw, I, O]
conv1d_to_wio = Gather(lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)),
                       lambda s: (s[2], s[1], s[0]), "conv1d_to_wio")  # [O, I, k] -> [k, I, O]

_SPEECH_TOPS = {
    "encoder.global_cmvn.mean": ("global_cmvn_mean",), "encoder.global_cmvn.istd": ("global_cmvn_istd",),
    "encoder.enc.0.core.conv.0.weight": ("conv_0", "kernel"), "encoder.enc.0.core.conv.0.bias": ("conv_0", "bias"),
    "encoder.enc.0.core.conv.2.weight": ("conv_1", "kernel"), "encoder.enc.0.core.conv.2.bias": ("conv_1", "bias"),
    "encoder.enc.0.core.out.0.weight": ("subsampling_out", "kernel"),
    "encoder.enc.0.core.out.0.bias": ("subsampling_out", "bias"),
    "encoder.enc.1.embed.0.weight": ("input_linear", "kernel"), "encoder.enc.1.embed.0.bias": ("input_linear", "bias"),
    "encoder.enc.1.embed.1.weight": ("input_norm", "scale"), "encoder.enc.1.embed.1.bias": ("input_norm", "bias"),
    "encoder.enc.1.after_norm.weight": ("final_norm", "scale"), "encoder.enc.1.after_norm.bias": ("final_norm", "bias"),
}
_SPEECH_LAYER = {
    "self_attn.linear_q.weight": ("self_attn", "proj", "q", "kernel"),
    "self_attn.linear_k.weight": ("self_attn", "proj", "k", "kernel"),
    "self_attn.linear_v.weight": ("self_attn", "proj", "v", "kernel"),
    "self_attn.linear_q.bias": ("self_attn", "proj", "q", "bias"),
    "self_attn.linear_k.bias": ("self_attn", "proj", "k", "bias"),
    "self_attn.linear_v.bias": ("self_attn", "proj", "v", "bias"),
    "self_attn.linear_out.weight": ("self_attn", "proj", "o", "kernel"),
    "self_attn.linear_out.bias": ("self_attn", "proj", "o", "bias"),
    "self_attn.linear_pos.weight": ("self_attn", "pos", "kernel"),
    "self_attn.pos_bias_u": ("self_attn", "pos_bias_u"), "self_attn.pos_bias_v": ("self_attn", "pos_bias_v"),
    "feed_forward.w_1.weight": ("up", "kernel"), "feed_forward.w_1.bias": ("up", "bias"),
    "feed_forward.w_2.weight": ("down", "kernel"), "feed_forward.w_2.bias": ("down", "bias"),
    "norm1.weight": ("attn_norm", "scale"), "norm1.bias": ("attn_norm", "bias"),
    "norm2.weight": ("ffn_norm", "scale"), "norm2.bias": ("ffn_norm", "bias"),
}
_ADAPTER = {
    "adpter.conv1d2.weight": ("conv", "kernel"), "adpter.conv1d2.bias": ("conv", "bias"),
    "adpter.bn2.weight": ("norm", "scale"), "adpter.bn2.bias": ("norm", "bias"),
    "adpter.project.weight": ("project", "kernel"), "adpter.project.bias": ("project", "bias"),
}
_SPEECH_LAYER_RE = re.compile(r"encoder\.enc\.1\.encoders\.(\d+)\.(.+)")


def speech_rule(config: SpeechEncoderConfig, prefix=("audio_encoder",), adapter_prefix=("audio_adapter",),
                hf_prefix: str = "") -> Rule:
    """Tensor-name rule for the release's audio encoder + adapter (`encoder.*`, `adpter.*` after `hf_prefix`)."""
    h, d = config.num_heads, config.head_dim

    def transform(inner):
        if inner[:2] == ("self_attn", "proj") and inner[-1] == "kernel":
            return linear_from_heads(h, d) if inner[2] == "o" else linear_to_heads(h, d)
        if inner[:2] == ("self_attn", "proj") and inner[-1] == "bias" and inner[2] != "o":
            return bias_to_heads(h, d)
        if inner == ("self_attn", "pos", "kernel"):
            return linear_to_heads(h, d)
        if inner[0] in ("conv_0", "conv_1") and inner[-1] == "kernel":
            return conv2d_to_hwio
        if inner == ("conv", "kernel"):
            return conv1d_to_wio
        return transpose if inner[-1] == "kernel" else identity

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if hf_prefix:
            if not name.startswith(hf_prefix):
                return None
            name = name[len(hf_prefix):]
        if name in _SPEECH_TOPS:
            inner = _SPEECH_TOPS[name]
            return [Target(prefix + inner, (), transform(inner))]
        if name in _ADAPTER:
            inner = _ADAPTER[name]
            return [Target(adapter_prefix + inner, (), transform(inner))]
        match = _SPEECH_LAYER_RE.fullmatch(name)
        if match and match.group(2) in _SPEECH_LAYER:
            inner = _SPEECH_LAYER[match.group(2)]
            path, index = stacked(prefix, int(match.group(1)), config.scan_layers, inner)
            return [Target(path, index, transform(inner))]
        return None

    layers = [f"encoder.enc.1.encoders.{i}.{rest}" for i in range(config.num_layers) for rest in _SPEECH_LAYER]
    return named(rule, [hf_prefix + n for n in [*_SPEECH_TOPS, *layers, *_ADAPTER]])


def load_cmvn_json(path: str) -> tuple[np.ndarray, np.ndarray]:
    """global_cmvn JSON {mean_stat, var_stat, frame_num} -> (mean [80], istd [80]) as whale/cmvn.py computes them."""
    with open(path) as f:
        stats = json.load(f)
    count = float(stats["frame_num"])
    mean = np.asarray(stats["mean_stat"], np.float64) / count
    var = np.maximum(np.asarray(stats["var_stat"], np.float64) / count - mean * mean, 1e-20)
    return mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32)


def _norm_keys(d: dict | None) -> dict:
    return {str(k).replace("-", "_"): v for k, v in (d or {}).items()}


# What the release's code uses for a key that train.yaml leaves out (commit 35d064a): the whale encoder fills its
# overview / para conf from argparse defaults (module/encoder/encoder.py: add_encoder_args; component/transformer.py and
# component/subsampling.py: add_arguments) and the adapter's model_conf from audioEncoder's keyword defaults
# (init_model.py). Keys with '-' written as '_'.
RELEASE_YAML_DEFAULTS = {
    "overview_conf": {"encoder_layer_config": "tdnn-dtc", "encoder_input_dim": 256},
    "subsampling": {"subsampling_rate": 4, "subsampling_input_dim": 256, "subsampling_dropout_rate": 0.1},
    "transformer": {
        "transformer_attention_dim": 256, "transformer_attention_heads": 4, "transformer_linear_units": 1024,
        "transformer_num_blocks": 6, "transformer_dropout_rate": 0.1, "transformer_attention_dropout_rate": 0.0,
        "transformer_positional_dropout_rate": 0.1, "transformer_pos_enc_class": "abs-enc",
        "transformer_normalize_before": True, "transformer_concat_after": False, "transformer_chunk_size": -1,
        "transformer_left_chunks": -1, "transformer_dynamic_chunks": True},
    "model_conf": {"adpter_type": "cnn", "kernel_size": 3, "activation_func": "relu", "norm": "batch"},
}


def _with_release_defaults(section: str, given: dict, missing: list[str]) -> dict:
    """`given` (keys normalised) completed with the release's defaults; records which keys were missing."""
    defaults = RELEASE_YAML_DEFAULTS[section]
    missing.extend(f"{section}.{k}={defaults[k]!r}" for k in defaults if k not in given)
    return {**defaults, **given}


def _yaml_bool(value) -> bool:
    """The release parses these flags with strtobool ('true' / 'false' / '1' / '0' ...) or takes YAML booleans."""
    if isinstance(value, str):
        return value.strip().lower() in ("y", "yes", "t", "true", "on", "1")
    return bool(value)


def speech_config_from_yaml(conf: dict, **overrides) -> SpeechEncoderConfig:
    """The audio folder's train.yaml (encoder_conf.{overview_conf, para_conf}, model_conf) -> SpeechEncoderConfig.

    A key the file leaves out takes the value the release's code gives it (RELEASE_YAML_DEFAULTS: e.g. dynamic chunks
    on, a ReLU adapter), with a warning naming every such key; a value we do not implement raises CheckpointError."""
    missing: list[str] = []
    enc = conf.get("encoder_conf") or {}
    overview = _with_release_defaults("overview_conf", _norm_keys(enc.get("overview_conf")), missing)
    layers = overview["encoder_layer_config"]
    if layers.split("-") != ["subsampling", "transformer"]:
        raise CheckpointError(f"audio encoder layer config {layers!r} is not supported (subsampling-transformer)")
    para = {k: _norm_keys(v) for k, v in (enc.get("para_conf") or {}).items()}
    tr = _with_release_defaults("transformer", para.get("transformer", {}), missing)
    sub = _with_release_defaults("subsampling", para.get("subsampling", {}), missing)
    model = _with_release_defaults("model_conf", _norm_keys(conf.get("model_conf")), missing)
    if missing:
        warnings.warn("the audio encoder's train.yaml lacks " + ", ".join(missing) + "; using the release code's "
                      "defaults shown", stacklevel=2)
    if tr["transformer_pos_enc_class"] != "rel-enc":
        raise CheckpointError(f"pos_enc_class {tr['transformer_pos_enc_class']!r} is not supported (rel-enc)")
    if not _yaml_bool(tr["transformer_normalize_before"]) or _yaml_bool(tr["transformer_concat_after"]):
        raise CheckpointError("only normalize_before=True, concat_after=False audio encoders are supported")
    if int(sub["subsampling_rate"]) != 4:
        raise CheckpointError(f"subsampling rate {sub['subsampling_rate']} is not supported (4)")
    if model["adpter_type"] != "subsampling" or model["norm"] != "layer":
        raise CheckpointError(f"audio adapter {model['adpter_type']!r} with {model['norm']!r} norm is not supported "
                              "(VITA-1.5's 'subsampling' adapter with LayerNorm)")
    if model["activation_func"] not in ("relu", "gelu"):
        raise CheckpointError(f"audio adapter activation {model['activation_func']!r} is not supported (relu, gelu)")
    # The fbank width the network is built for is the subsampling's input dim (the release ignores input_dim there).
    input_dim = int(sub["subsampling_input_dim"])
    if int(overview["encoder_input_dim"]) != input_dim:
        raise CheckpointError(f"encoder-input-dim {overview['encoder_input_dim']} != subsampling-input-dim "
                              f"{input_dim} (the release refuses this config)")
    chunk, left = int(tr["transformer_chunk_size"]), int(tr["transformer_left_chunks"])
    dynamic = _yaml_bool(tr["transformer_dynamic_chunks"])
    mode = "dynamic" if dynamic else ("static" if chunk > 0 else "full")
    fields = dict(
        input_dim=input_dim,
        hidden_size=int(tr["transformer_attention_dim"]),
        num_layers=int(tr["transformer_num_blocks"]),
        num_heads=int(tr["transformer_attention_heads"]),
        intermediate_size=int(tr["transformer_linear_units"]),
        dropout_rate=float(tr["transformer_dropout_rate"]),
        positional_dropout_rate=float(tr["transformer_positional_dropout_rate"]),
        attention_dropout_rate=float(tr["transformer_attention_dropout_rate"]),
        chunk_mode=mode, chunk_size=max(chunk, 0), left_chunks=left,
        adapter_kernel_size=int(model["kernel_size"]), adapter_act=model["activation_func"])
    fields.update(overrides)
    return SpeechEncoderConfig(**fields)


def speech_config_from_shapes(shapes: dict[str, tuple], **overrides) -> SpeechEncoderConfig:
    """Sizes from tensor shapes (names without the `model.audio_encoder.` prefix)."""
    try:
        hidden = shapes["encoder.enc.1.after_norm.weight"][0]
        heads = shapes["encoder.enc.1.encoders.0.self_attn.pos_bias_u"][0]
        ffn = shapes["encoder.enc.1.encoders.0.feed_forward.w_1.weight"][0]
        kernel = shapes["adpter.conv1d2.weight"][2]
        sub_in = shapes["encoder.enc.0.core.out.0.weight"][1]
    except KeyError as e:
        raise CheckpointError(f"audio encoder tensors lack {e}") from None
    layers = 1 + max(int(m.group(1)) for n in shapes if (m := _SPEECH_LAYER_RE.fullmatch(n)))
    bins = sub_in // hidden
    input_dim = shapes.get("encoder.global_cmvn.mean", (None,))[0]
    if input_dim is None:  # invert F' = ((F - 1) // 2 - 1) // 2
        input_dim = next(f for f in range(7, 1024) if ((f - 1) // 2 - 1) // 2 == bins)
    fields = dict(input_dim=int(input_dim), hidden_size=int(hidden), num_layers=layers, num_heads=int(heads),
                  intermediate_size=int(ffn), adapter_kernel_size=int(kernel))
    fields.update(overrides)
    return SpeechEncoderConfig(**fields)


def vision_config_from_shapes(shapes: dict[str, tuple], **overrides) -> InternViTConfig:
    """InternViT sizes from tensor shapes (names after `model.vision_tower.vision_tower.`), InternViT-300M defaults
    for what shapes do not tell (heads = width / 64, LayerNorm eps 1e-6)."""
    try:
        hidden = shapes["embeddings.class_embedding"][-1]
        patch = shapes["embeddings.patch_embedding.weight"][-1]
        positions = int(np.prod(shapes["embeddings.position_embedding"][:-1]))
        ffn = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as e:
        raise CheckpointError(f"vision tower tensors lack {e}") from None
    layers = 1 + max(int(m.group(1)) for n in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", n)))
    side = int(round(math.sqrt(positions - 1)))
    fields = dict(hidden_size=int(hidden), num_heads=int(hidden) // 64, intermediate_size=int(ffn), num_layers=layers,
                  patch_size=int(patch), image_size=side * int(patch),
                  qkv_bias="encoder.layers.0.attn.qkv.bias" in shapes,
                  qk_norm="encoder.layers.0.attn.q_norm.weight" in shapes)
    fields.update(overrides)
    return internvit_300m_448px(**fields)


def _shapes(directory: str) -> dict[str, tuple]:
    """Tensor name -> shape from the safetensors headers (nothing is read)."""
    from safetensors import safe_open

    out = {}
    for fmt, file in weight_files(directory):
        if fmt != "safetensors":
            raise CheckpointError(f"{file}: VITA checkpoints are safetensors")
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                out[name] = tuple(f.get_slice(name).get_shape())
    return out


def _torch_state(path: str) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path} is a PyTorch pickle: install torch to read it") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    for name, t in state.items():
        yield name, t.float().numpy()


def _local_dir(model_dir: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    for candidate in (value, os.path.join(model_dir, value), os.path.join(model_dir, os.path.basename(value))):
        if os.path.isdir(candidate):
            return candidate
    return None


def original_config(model_dir: str, *, audio_dir: str | None = None, vision_tower_dir: str | None = None,
                    dtype: Any = None, shapes: dict | None = None, **overrides) -> VitaConfig:
    """config.json (+ train.yaml, + tensor shapes) -> VitaConfig. overrides: VitaConfig fields."""
    hf = read_config(model_dir)
    name = _dtype_name(dtype)
    shapes = _shapes(model_dir) if shapes is None else shapes
    text_hf = dict(hf.get("text_config") or hf)
    if text_hf.get("model_type") not in ("vita-Qwen2", "qwen2", None):
        raise CheckpointError(f"not a VITA-1.5 checkpoint: model_type {text_hf.get('model_type')!r}")
    text = config_from_hf({**text_hf, "model_type": "qwen2"}, dtype)
    if hf.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise CheckpointError(f"mm_projector_type {hf['mm_projector_type']!r} is not supported (mlp2x_gelu)")

    vision_dir = vision_tower_dir or _local_dir(model_dir, hf.get("mm_vision_tower"))
    vision_shapes = {n[len(VISION_PREFIX):]: s for n, s in shapes.items() if n.startswith(VISION_PREFIX)}
    if hf.get("vision_config"):
        vision = InternViTConfig.from_hf(hf["vision_config"], dtype=name, param_dtype=name)
    elif vision_dir and os.path.isfile(os.path.join(vision_dir, "config.json")):
        vision = InternViTConfig.from_hf(read_config(vision_dir), dtype=name, param_dtype=name)
    elif vision_shapes:
        vision = vision_config_from_shapes(vision_shapes, dtype=name, param_dtype=name)
    else:
        raise CheckpointError(f"{model_dir}: no vision tower tensors ({VISION_PREFIX}*) and no vision_tower_dir")
    vision = dataclasses.replace(vision, downsample_ratio=float(hf.get("downsample_ratio", 0.5)), feature_layer=-1)

    audio_dir = audio_dir or _find_audio_dir(model_dir, hf)
    yaml_path = os.path.join(audio_dir, "train.yaml") if audio_dir else None
    audio_shapes = {n[len(AUDIO_PREFIX):]: s for n, s in shapes.items() if n.startswith(AUDIO_PREFIX)}
    if yaml_path and os.path.isfile(yaml_path):
        import yaml

        with open(yaml_path) as f:
            audio = speech_config_from_yaml(yaml.safe_load(f), dtype=name, param_dtype=name)
    elif audio_shapes:
        audio = speech_config_from_shapes(audio_shapes, dtype=name, param_dtype=name)
    elif audio_dir and os.path.isfile(os.path.join(audio_dir, "final.pt")):
        audio = speech_config_from_shapes({n: tuple(t.shape) for n, t in _torch_state(
            os.path.join(audio_dir, "final.pt"))}, dtype=name, param_dtype=name)
    else:
        raise CheckpointError(f"{model_dir}: no audio encoder tensors ({AUDIO_PREFIX}*) and no audio folder with "
                              "train.yaml / final.pt")
    fields = dict(text=text, vision=vision, audio=audio, image_token_index=IMAGE_TOKEN_INDEX,
                  audio_token_index=AUDIO_TOKEN_INDEX)
    fields.update(overrides)
    return VitaConfig(**fields)


def _find_audio_dir(model_dir: str, hf: dict) -> str | None:
    for candidate in (_local_dir(model_dir, hf.get("mm_audio_encoder")), os.path.join(model_dir, AUDIO_DIR_NAME)):
        if candidate and os.path.isdir(candidate):
            return candidate
    return None


def release_rule(config: VitaConfig) -> Rule:
    """Tensor names of the release's safetensors -> our Vita tree: the Qwen2 LM (`model.*`, `lm_head`), the InternViT
    tower (remote-code names under model.vision_tower.vision_tower.), the projector (model.mm_projector.{0,2}) and the
    audio encoder + adapter (model.audio_encoder.encoder.* / adpter.*). Its `names` make it save too."""
    lm = lm_rule(config.text, "qwen2", prefix=("lm",))
    vision = internvit_rule(config.vision, "original", ("vision_tower",), VISION_PREFIX)
    audio = speech_rule(config.audio, hf_prefix=AUDIO_PREFIX)
    projector = {f"model.mm_projector.{i}.{leaf}": ("projector", f"linear_{j}",
                                                    "kernel" if leaf == "weight" else "bias")
                 for i, j in ((0, 1), (2, 2)) for leaf in ("weight", "bias")}

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if name in projector:
            path = projector[name]
            return [Target(path, (), transpose if path[-1] == "kernel" else identity)]
        if name.startswith(VISION_PREFIX):
            return vision(name, tensor)
        if name.startswith(AUDIO_PREFIX):
            return audio(name, tensor)
        return lm(name, tensor)

    return named(rule, [*lm.names, *vision.names, *projector, *audio.names])


def speech_config_to_yaml(config: SpeechEncoderConfig) -> dict:
    """SpeechEncoderConfig -> the audio folder's train.yaml dict (the release's keys, every one written). Read back
    with `speech_config_from_yaml` it gives the same encoder (checked; a CheckpointError names what the release's
    format cannot hold, e.g. a LayerNorm eps other than its fixed 1e-5)."""
    c = config
    chunk = c.chunk_size if c.chunk_mode == "static" else -1
    conf = {
        "input_dim": c.input_dim,
        "encoder_conf": {
            "overview_conf": {"encoder-input-dim": c.input_dim, "encoder-output-dim": c.hidden_size,
                              "encoder-layer-config": "subsampling-transformer"},
            "para_conf": {
                "subsampling": {"subsampling-rate": 4, "subsampling-input-dim": c.input_dim,
                                "subsampling-output-dim": c.hidden_size, "subsampling-dropout-rate": c.dropout_rate},
                "transformer": {
                    "transformer-input-dim": c.hidden_size, "transformer-output-dim": c.hidden_size,
                    "transformer-attention-dim": c.hidden_size, "transformer-attention-heads": c.num_heads,
                    "transformer-linear-units": c.intermediate_size, "transformer-num-blocks": c.num_layers,
                    "transformer-dropout-rate": c.dropout_rate,
                    "transformer-attention-dropout-rate": c.attention_dropout_rate,
                    "transformer-positional-dropout-rate": c.positional_dropout_rate,
                    "transformer-input-layer": "linear", "transformer-pos-enc-class": "rel-enc",
                    "transformer-normalize-before": True, "transformer-concat-after": False,
                    "transformer-positionwise-layer-type": "linear", "transformer-chunk_size": chunk,
                    "transformer-left_chunks": c.left_chunks if c.chunk_mode == "static" else -1,
                    "transformer-dynamic-chunks": c.chunk_mode == "dynamic"}}},
        "model_conf": {"enc_out_dim": c.hidden_size, "kernel_size": c.adapter_kernel_size,
                       "adpter_type": "subsampling", "activation_func": c.adapter_act, "norm": "layer"},
    }
    keep = {k: getattr(c, k) for k in ("scan_layers", "remat_policy", "dtype", "param_dtype")}
    check_read_back(config, speech_config_from_yaml(conf, **keep), "this audio encoder has no train.yaml counterpart")
    return conf


def save_original(out_dir: str, module: Vita, params, tokenizer=None, *, dtype: Any = None,
                  max_shard_bytes: int = 5 * 2**30) -> str:
    """(Vita, plain params) -> a folder in the released VITA-1.5 layout that `load_original` (and the release's own
    code) reads: config.json (model_type vita-Qwen2: the Qwen2 fields, mm_* fields, the InternViT `vision_config`,
    `mm_audio_encoder` naming the audio folder), safetensors under the release's tensor names (sharded past
    `max_shard_bytes`; tensors in `dtype`, default the parameters'), the audio folder with train.yaml
    (`speech_config_to_yaml`) and the encoder's CMVN as its global_cmvn JSON, and the tokenizer's files when given.
    Written by inverting the loader's own rules: every parameter has a name, or a CheckpointError names it. LoRA
    adapters must be merged first (`common.lora.merge_in_tree`). Returns out_dir."""
    cfg = module.config
    if (cfg.image_token_index, cfg.audio_token_index) != (IMAGE_TOKEN_INDEX, AUDIO_TOKEN_INDEX):
        raise CheckpointError(f"the release's placeholders are image {IMAGE_TOKEN_INDEX} / audio {AUDIO_TOKEN_INDEX}; "
                              f"this model uses {cfg.image_token_index} / {cfg.audio_token_index}")
    if cfg.vision.feature_layer != -1:
        raise CheckpointError(f"the release reads the tower's last layer; this model reads layer "
                              f"{cfg.vision.feature_layer}")
    yaml_conf = speech_config_to_yaml(cfg.audio)
    vision_hf = internvit_config_to_original(cfg.vision)
    text_hf = config_to_hf(cfg.text, "qwen2")
    hf = {**text_hf, "model_type": "vita-Qwen2", "architectures": ["VITAQwen2ForCausalLM"],
          "mm_projector_type": "mlp2x_gelu",
          "mm_vision_tower": "OpenGVLab/InternViT-300M-448px",
          "mm_hidden_size": int(cfg.vision.hidden_size / cfg.vision.downsample_ratio ** 2),
          "downsample_ratio": cfg.vision.downsample_ratio, "vision_config": vision_hf,
          "mm_audio_encoder": AUDIO_DIR_NAME, "image_aspect_ratio": "square"}
    write_checkpoint(out_dir, params, release_rule(cfg), hf, dtype=dtype, max_shard_bytes=max_shard_bytes,
                     tokenizer=tokenizer, source="VITA-1.5 model")
    import yaml

    audio_dir = os.path.join(out_dir, AUDIO_DIR_NAME)
    os.makedirs(audio_dir, exist_ok=True)
    with open(os.path.join(audio_dir, "train.yaml"), "w") as f:
        yaml.safe_dump(yaml_conf, f, sort_keys=False)
    encoder = params["audio_encoder"]
    mean = np.asarray(encoder["global_cmvn_mean"], np.float64)
    istd = np.asarray(encoder["global_cmvn_istd"], np.float64)
    with open(os.path.join(audio_dir, "global_cmvn"), "w") as f:  # WeNet's JSON: sums over frame_num frames
        json.dump({"mean_stat": mean.tolist(), "var_stat": (1.0 / istd ** 2 + mean ** 2).tolist(), "frame_num": 1}, f)
    return out_dir


def load_original(model_dir: str, *, audio_dir: str | None = None, vision_tower_dir: str | None = None,
                  dtype: Any = None, mesh: jax.sharding.Mesh | None = None, **overrides) -> tuple[Vita, dict]:
    """The released VITA-1.5 folder -> (Vita, params). See the module docstring for the layout.

    audio_dir: the audio-encoder folder (default: `mm_audio_encoder` if local, else model_dir/AUDIO_DIR_NAME);
    its global_cmvn JSON is used when the safetensors lack the CMVN buffers, its final.pt when they lack the encoder.
    vision_tower_dir: an InternViT checkpoint (intern_vit_6b names), used when the safetensors lack the tower.
    mesh: place every parameter straight onto its shards. overrides: VitaConfig fields."""
    hf = read_config(model_dir)
    shapes = _shapes(model_dir)
    audio_dir = audio_dir or _find_audio_dir(model_dir, hf)
    config = original_config(model_dir, audio_dir=audio_dir, vision_tower_dir=vision_tower_dir, dtype=dtype,
                             shapes=shapes, **overrides)
    module = Vita(config)
    audio_plain = speech_rule(config.audio)
    has_audio = any(n.startswith(AUDIO_PREFIX + "encoder.enc.") for n in shapes)
    has_cmvn = AUDIO_PREFIX + "encoder.global_cmvn.mean" in shapes
    has_vision = any(n.startswith(VISION_PREFIX) for n in shapes)
    if not has_vision and not vision_tower_dir:
        raise CheckpointError(f"{model_dir} holds no vision tower: pass vision_tower_dir "
                              "(OpenGVLab/InternViT-300M-448px)")
    final_pt = os.path.join(audio_dir, "final.pt") if audio_dir else None
    if not has_audio and not (final_pt and os.path.isfile(final_pt)):
        raise CheckpointError(f"{model_dir} holds no audio encoder and no audio folder with final.pt was found")
    cmvn_json = os.path.join(audio_dir, "global_cmvn") if audio_dir else None
    from_model_dir = release_rule(config)

    def tensors():
        yield from ((f"model:{n}", t) for n, t in iter_tensors(model_dir))
        cmvn_done = has_cmvn
        if not has_audio:  # the encoder of the audio folder (final.pt), as build_audio_encoder loads it
            for n, t in _torch_state(final_pt):
                cmvn_done |= "global_cmvn" in n
                yield f"final_pt:{n}", t
        if not cmvn_done:
            if not (cmvn_json and os.path.isfile(cmvn_json)):
                raise CheckpointError(f"{model_dir}: no CMVN statistics (encoder.global_cmvn buffers, or a "
                                      "global_cmvn JSON in the audio folder)")
            mean, istd = load_cmvn_json(cmvn_json)
            yield "final_pt:encoder.global_cmvn.mean", mean
            yield "final_pt:encoder.global_cmvn.istd", istd
        if not has_vision:
            yield from ((f"vision:{n}", t) for n, t in iter_tensors(vision_tower_dir))

    vision_plain = internvit_rule(config.vision, "original", ("vision_tower",))

    def rule(tagged: str, tensor: np.ndarray) -> list[Target] | None:
        source, name = tagged.split(":", 1)
        if source == "model":
            return from_model_dir(name, tensor)
        if source == "final_pt":
            return audio_plain(name, tensor)
        return vision_plain(name, tensor)

    boxed = abstract_params(module.config)
    shardings = params_sharding(boxed, mesh) if mesh is not None else None
    params = fill_params(tensors(), rule, nn.unbox(boxed), dtype=dtype, shardings=shardings,
                         source=f"VITA-1.5 ({model_dir})")
    return module, params



__all__ = ["AUDIO_DIR_NAME", "AUDIO_PREFIX", "RELEASE_YAML_DEFAULTS", "VISION_PREFIX", "export", "load_cmvn_json",
           "load_codec", "load_original", "load_speech_decoder", "original_config", "release_rule", "save_codec",
           "save_original",
           "speech_config_from_shapes", "speech_config_from_yaml", "speech_config_to_yaml", "speech_rule",
           "vision_config_from_shapes"]


def export(workdir: str, out_dir: str, step: int | None = None, *, dtype: Any = None) -> str:
    """A training workdir's VITA (latest or `step`; LoRA merged) -> a folder in the released VITA-1.5 layout
    (`save_original`, with the workdir's tokenizer). Returns out_dir."""
    from vita_jax.task import make_task  # the task loads release folders through this module

    module, params, tokenizer, _ = load_trained(workdir, make_task, step)
    return save_original(out_dir, module, params, tokenizer, dtype=dtype)
