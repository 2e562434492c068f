"""The release's speech decoder checkpoint (`vita_tts_ckpt/decoder/`: final.pt, the state dict of
`LLM2TTSCodecAR`, + model.json for the heads) -> `vita_jax.speech_decoder.SpeechDecoder` params. Sizes come from the
tensor shapes, the heads from model.json; the Llama layers map through common.hf.lm's llama rule. Needs torch."""
from __future__ import annotations

import json
import os
import re

import flax.linen as nn
import jax
import numpy as np

from common.hf.checkpoint import CheckpointError, Target, fill_params, transpose
from common.hf.lm import lm_rule
from vita_jax.speech_decoder import SpeechDecoder, SpeechDecoderConfig, init_params


_LAYER = re.compile(r"(layers_pre_nn|layers)\.(\d+)\.(.+)")


def decoder_rule(config: SpeechDecoderConfig):
    """Tensor-name rule of LLM2TTSCodecAR's state dict (Llama layers through common.hf.lm's llama rule)."""
    nar = lm_rule(config.lm_config(config.num_layers // 2), "llama", prefix=("nar",))
    ar = lm_rule(config.lm_config(config.num_layers), "llama", prefix=("ar",))
    tops = {"embedding.weight": [Target(("embedding", "embedding"))], "norm.weight": [Target(("norm", "scale"))],
            "out_fnn.weight": [Target(("out", "kernel"), (), transpose)], "out_fnn.bias": [Target(("out", "bias"))]}

    def rule(name: str, tensor: np.ndarray):
        if name in tops:
            return tops[name]
        if name.startswith(("layers_prefix.", "rotary_emb")) or name.endswith("inv_freq"):
            return []  # the unused Freeze-Omni prefix layers; rotary buffers are recomputed
        m = _LAYER.fullmatch(name)
        if not m:
            return None
        which = nar if m.group(1) == "layers_pre_nn" else ar
        return which(f"model.layers.{m.group(2)}.{m.group(3)}", tensor)

    return rule


def config_from_state(state: dict[str, tuple], model_json=None, **overrides) -> SpeechDecoderConfig:
    """Sizes from the tensor shapes (layer counts, widths), heads from model.json (not recoverable from shapes)."""
    ar = {int(m.group(2)) for k in state if (m := _LAYER.fullmatch(k)) and m.group(1) == "layers"}
    nar = {int(m.group(2)) for k in state if (m := _LAYER.fullmatch(k)) and m.group(1) == "layers_pre_nn"}
    if not ar:
        raise CheckpointError("speech decoder checkpoint has no layers.* tensors")
    if len(nar) != len(ar) // 2:
        raise CheckpointError(f"speech decoder checkpoint has {len(ar)} AR layers but {len(nar)} NAR layers "
                              f"(expected {len(ar) // 2})")
    vocab, idim = state["embedding.weight"]
    base = SpeechDecoderConfig.from_model_json(model_json) if model_json is not None else None
    fields = dict(idim=int(idim), num_codes=int(vocab) - 4, hidden_size=int(idim), num_layers=len(ar),
                  intermediate_size=int(state["layers.0.mlp.gate_proj.weight"][0]))
    if base is None:
        if "num_heads" not in overrides:
            raise CheckpointError("the number of heads is not in the tensor shapes: pass model.json or num_heads=")
        return SpeechDecoderConfig(**{**fields, **overrides})
    for k, v in fields.items():
        if getattr(base, k) != v:
            raise CheckpointError(f"model.json says {k}={getattr(base, k)}, the checkpoint's tensors say {v}")
    return base.replace(**overrides)


def load_state(state: dict[str, np.ndarray], config: SpeechDecoderConfig, source: str = "decoder") -> dict:
    abstract = jax.eval_shape(lambda: nn.unbox(init_params(config, jax.random.key(0))))
    return fill_params(iter(state.items()), decoder_rule(config), abstract, source=source)


def load_original(folder: str, **overrides) -> tuple[SpeechDecoder, dict]:
    """The release's `vita_tts_ckpt/decoder/` (or the folder above it) -> (SpeechDecoder, params); needs torch."""
    if os.path.isdir(os.path.join(folder, "decoder")):
        folder = os.path.join(folder, "decoder")
    ckpt_path, conf_path = os.path.join(folder, "final.pt"), os.path.join(folder, "model.json")
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"{folder!r} has no final.pt (expected the release's vita_tts_ckpt/decoder folder)")
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training snapshot {'model': ..., optimizer state ...}
    state = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    model_json = None
    if os.path.isfile(conf_path):
        with open(conf_path) as f:
            model_json = json.load(f)
    config = config_from_state({k: v.shape for k, v in state.items()}, model_json, **overrides)
    return SpeechDecoder(config), load_state(state, config, source=ckpt_path)

