"""Hugging Face decoder LMs <-> `common.lm.DecoderLM`: config translation and tensor-name rules for
model_type llama, mistral, qwen2 (one layout), mpt and gpt_neox, both ways (`config_from_hf` / `config_to_hf`; the
rules list their names, so `common.hf.save` writes a DecoderLM as a checkpoint of its family).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from common.hf import Architecture, register
from common.hf.checkpoint import (CheckpointError, Gather, Target, bias_to_heads, identity,
                                  linear_from_heads, linear_to_heads, named, transpose)
from common.lm import DecoderLM, LMConfig, layer_param_location


def _dtype_name(dtype: Any) -> str:
    return "float32" if dtype is None else jnp.dtype(dtype).name


def _rope_settings(hf: dict) -> tuple[float, tuple, float]:
    """(theta, scaling items, partial rotary factor) from transformers v5 `rope_parameters` or the
    legacy `rope_theta` / `rope_scaling` / `rotary_pct` fields that checkpoints on the Hub carry."""
    params = dict(hf.get("rope_parameters") or {})
    legacy_scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0))))
    partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))))
    scaling = {k: v for k, v in {**legacy_scaling, **params}.items()
               if k not in ("rope_theta", "partial_rotary_factor")}
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    if scaling.get("rope_type", "default") == "default":
        scaling = {}
    return theta, tuple(sorted(scaling.items())), partial


def config_from_hf(hf: dict, dtype: Any = None, **overrides) -> LMConfig:
    """Translate an HF config.json dict of a supported decoder LM into LMConfig."""
    try:
        cfg = _config_from_hf(hf, dtype)
    except KeyError as e:
        raise CheckpointError(f"config.json of model_type {hf.get('model_type')!r} lacks the field {e}") from None
    return cfg.replace(**overrides) if overrides else cfg


def _config_from_hf(hf: dict, dtype: Any) -> LMConfig:
    model_type = hf.get("model_type")
    common = dict(dtype=_dtype_name(dtype), param_dtype=_dtype_name(dtype))
    if model_type in ("llama", "mistral", "qwen2"):
        theta, scaling, partial = _rope_settings(hf)
        sliding = None
        if model_type == "mistral":
            sliding = hf.get("sliding_window")
        elif model_type == "qwen2" and hf.get("use_sliding_window"):
            raise CheckpointError("qwen2 with use_sliding_window=True (per-layer windows) is not supported")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise CheckpointError(f"{model_type} with hidden_act {hf.get('hidden_act')!r} is not supported")
        cfg = LMConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            norm="rms", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp_act="silu", mlp_gated=True,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qkv_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
            out_bias=bool(hf.get("attention_bias", False)), sliding_window=sliding,
            position="rope", rope_theta=theta, rope_scaling=scaling, rotary_pct=partial,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), **common)
    elif model_type == "mpt":
        attn = dict(hf.get("attn_config") or {})
        if not attn.get("alibi", True):
            raise CheckpointError("mpt without alibi (learned positions) is not supported")
        if attn.get("qk_ln"):
            raise CheckpointError("mpt with qk_ln is not supported")
        d_model, n_heads = hf["d_model"], hf["n_heads"]
        scale = attn.get("softmax_scale")
        if scale is not None and not math.isclose(scale, 1 / math.sqrt(d_model / n_heads)):
            raise CheckpointError(f"mpt softmax_scale {scale} is not supported")
        cfg = LMConfig(
            vocab_size=hf["vocab_size"], hidden_size=d_model, num_layers=hf["n_layers"], num_heads=n_heads,
            intermediate_size=int(hf.get("expansion_ratio", 4) * d_model),
            max_position_embeddings=hf.get("max_seq_len", 2048), norm="layer",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), norm_bias=not hf.get("no_bias", True),
            mlp_act="gelu", mlp_gated=False, mlp_bias=not hf.get("no_bias", True),
            qkv_bias=not hf.get("no_bias", True), out_bias=not hf.get("no_bias", True),
            clip_qkv=attn.get("clip_qkv"), position="alibi", alibi_bias_max=float(attn.get("alibi_bias_max", 8)),
            tie_word_embeddings=True, **common)
    elif model_type == "gpt_neox":
        theta, scaling, partial = _rope_settings({**hf, "rotary_pct": hf.get("rotary_pct", 0.25)})
        cfg = LMConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048), norm="layer",
            norm_eps=float(hf.get("layer_norm_eps", 1e-5)), norm_bias=True,
            mlp_act=hf.get("hidden_act", "gelu"), mlp_gated=False, mlp_bias=True,
            qkv_bias=bool(hf.get("attention_bias", True)), out_bias=bool(hf.get("attention_bias", True)),
            position="rope", rope_theta=theta, rope_scaling=scaling, rotary_pct=partial,
            parallel_residual=bool(hf.get("use_parallel_residual", True)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), **common)
    else:
        raise CheckpointError(f"model_type {model_type!r} is not a supported decoder LM")
    return cfg


def lm_rule(config: LMConfig, model_type: str, prefix: tuple[str, ...] = (), block_every: int | None = None,
            hf_prefix: str = ""):
    """Tensor-name rule for one HF decoder LM. `prefix` is where the LM sits in our tree (e.g. ('lm',)),
    `hf_prefix` strips a leading name (e.g. 'language_model.') used by multimodal checkpoints."""
    h, k, d, e = config.num_heads, config.kv_heads, config.dim_per_head, config.hidden_size

    def at_layer(i: int, inner: tuple[str, ...], transform=identity) -> Target:
        path, index = layer_param_location(config, i, block_every)
        return Target(prefix + path + inner, index, transform)

    def top(inner: tuple[str, ...], transform=identity) -> Target:
        return Target(prefix + inner, (), transform)

    llama_layer = {
        "self_attn.q_proj.weight": (("attn", "q", "kernel"), linear_to_heads(h, d)),
        "self_attn.k_proj.weight": (("attn", "k", "kernel"), linear_to_heads(k, d)),
        "self_attn.v_proj.weight": (("attn", "v", "kernel"), linear_to_heads(k, d)),
        "self_attn.q_proj.bias": (("attn", "q", "bias"), bias_to_heads(h, d)),
        "self_attn.k_proj.bias": (("attn", "k", "bias"), bias_to_heads(k, d)),
        "self_attn.v_proj.bias": (("attn", "v", "bias"), bias_to_heads(k, d)),
        "self_attn.o_proj.weight": (("attn", "o", "kernel"), linear_from_heads(h, d)),
        "self_attn.o_proj.bias": (("attn", "o", "bias"), None),
        "mlp.gate_proj.weight": (("mlp", "gate", "kernel"), transpose),
        "mlp.up_proj.weight": (("mlp", "up", "kernel"), transpose),
        "mlp.down_proj.weight": (("mlp", "down", "kernel"), transpose),
        "mlp.gate_proj.bias": (("mlp", "gate", "bias"), None),
        "mlp.up_proj.bias": (("mlp", "up", "bias"), None),
        "mlp.down_proj.bias": (("mlp", "down", "bias"), None),
        "input_layernorm.weight": (("attn_norm", "scale"), None),
        "post_attention_layernorm.weight": (("mlp_norm", "scale"), None),
    }
    neox_layer = {
        "input_layernorm.weight": (("attn_norm", "scale"), None),
        "input_layernorm.bias": (("attn_norm", "bias"), None),
        "post_attention_layernorm.weight": (("mlp_norm", "scale"), None),
        "post_attention_layernorm.bias": (("mlp_norm", "bias"), None),
        "attention.dense.weight": (("attn", "o", "kernel"), linear_from_heads(h, d)),
        "attention.dense.bias": (("attn", "o", "bias"), None),
        "mlp.dense_h_to_4h.weight": (("mlp", "up", "kernel"), transpose),
        "mlp.dense_h_to_4h.bias": (("mlp", "up", "bias"), None),
        "mlp.dense_4h_to_h.weight": (("mlp", "down", "kernel"), transpose),
        "mlp.dense_4h_to_h.bias": (("mlp", "down", "bias"), None),
    }
    mpt_layer = {
        "norm_1.weight": (("attn_norm", "scale"), None),
        "norm_1.bias": (("attn_norm", "bias"), None),
        "norm_2.weight": (("mlp_norm", "scale"), None),
        "norm_2.bias": (("mlp_norm", "bias"), None),
        "attn.out_proj.weight": (("attn", "o", "kernel"), linear_from_heads(h, d)),
        "ffn.up_proj.weight": (("mlp", "up", "kernel"), transpose),
        "ffn.down_proj.weight": (("mlp", "down", "kernel"), transpose),
    }

    fused: tuple[str, ...] = ()  # per-layer names of fused q/k/v tensors
    if model_type in ("llama", "mistral", "qwen2"):
        layer_re, layer_map = re.compile(r"model\.layers\.(\d+)\.(.+)"), llama_layer
        tops = {"model.embed_tokens.weight": ("embed", "embedding"), "model.norm.weight": ("final_norm", "scale")}
        head_name = "lm_head.weight"
    elif model_type == "gpt_neox":
        layer_re, layer_map = re.compile(r"gpt_neox\.layers\.(\d+)\.(.+)"), neox_layer
        tops = {"gpt_neox.embed_in.weight": ("embed", "embedding"),
                "gpt_neox.final_layer_norm.weight": ("final_norm", "scale"),
                "gpt_neox.final_layer_norm.bias": ("final_norm", "bias")}
        head_name = "embed_out.weight"
        fused = ("attention.query_key_value.weight", "attention.query_key_value.bias")
    elif model_type == "mpt":
        layer_re, layer_map = re.compile(r"transformer\.blocks\.(\d+)\.(.+)"), mpt_layer
        tops = {"transformer.wte.weight": ("embed", "embedding"), "transformer.norm_f.weight": ("final_norm", "scale"),
                "transformer.norm_f.bias": ("final_norm", "bias")}
        head_name = "lm_head.weight"
        fused = ("attn.Wqkv.weight",)
    else:
        raise CheckpointError(f"model_type {model_type!r} is not a supported decoder LM")
    # the layer regex as a format string ("model.layers.{}.{}"), for listing the names
    layer_name = layer_re.pattern.replace(r"(\d+)", "{}").replace(r"(.+)", "{}").replace("\\", "")

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if hf_prefix:
            if not name.startswith(hf_prefix):
                return None
            name = name[len(hf_prefix):]
        if name.endswith("rotary_emb.inv_freq") or name.endswith(".attention.bias") or name.endswith(".masked_bias"):
            return []  # buffers recomputed from the config
        if name in tops:
            return [top(tops[name])]
        if name == head_name:
            return [] if config.tie_word_embeddings else [top(("lm_head", "kernel"), transpose)]
        match = layer_re.fullmatch(name)
        if not match:
            return None
        i, rest = int(match.group(1)), match.group(2)
        if rest in layer_map:
            inner, transform = layer_map[rest]
            return [at_layer(i, inner, transform or identity)]
        if model_type == "gpt_neox" and rest.startswith("attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight [H*3*D, E] or bias [H*3*D], per head (q, k, v)
            def part(j, kind=kind):
                if kind == "weight":
                    return Gather(lambda a: np.ascontiguousarray(a.reshape(h, 3, d, e)[:, j].transpose(2, 0, 1)),
                                  lambda s: (h * 3 * d, e), "neox_qkv_weight")
                return Gather(lambda a: a.reshape(h, 3, d)[:, j], lambda s: (h * 3 * d,), "neox_qkv_bias")
            return [at_layer(i, ("attn", name_, kind if kind == "bias" else "kernel"), part(j))
                    for j, name_ in enumerate("qkv")]
        if model_type == "mpt" and rest == "attn.Wqkv.weight":  # [3*E, E]: q, k, v chunks
            return [at_layer(i, ("attn", name_, "kernel"),
                             Gather(lambda a, j=j: np.ascontiguousarray(a[j * e:(j + 1) * e].T.reshape(e, h, d)),
                                    lambda s: (3 * e, e), "mpt_wqkv"))
                    for j, name_ in enumerate("qkv")]
        return None

    per_layer = (*layer_map, *fused)
    names = [*tops, *(layer_name.format(i, rest) for i in range(config.num_layers) for rest in per_layer), head_name]
    return named(rule, [hf_prefix + n for n in names])


# ----------------------------------------------------------------------------------------------------------------
# LMConfig -> HF config (the inverse of config_from_hf)
# ----------------------------------------------------------------------------------------------------------------
ARCHITECTURE_NAMES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "mpt": "MptForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}


def infer_model_type(config: LMConfig) -> str:
    """The HF family whose layout `config` has: mpt (ALiBi), gpt_neox (LayerNorm + rotary), mistral (sliding
    window), qwen2 (q/k/v biases only), else llama."""
    if config.position == "alibi":
        return "mpt"
    if config.norm == "layer":
        return "gpt_neox"
    if config.sliding_window is not None:
        return "mistral"
    if config.qkv_bias and not config.out_bias and not config.mlp_bias:
        return "qwen2"
    return "llama"


def _rope_fields(config: LMConfig) -> dict:
    """rope_theta / rope_scaling (the legacy fields, transformers 4.x) and rope_parameters (transformers 5)."""
    scaling = dict(config.rope_scaling)
    params = {"rope_type": scaling.pop("rope_type", "default"), "rope_theta": float(config.rope_theta), **scaling}
    if config.rotary_pct != 1.0:
        params["partial_rotary_factor"] = float(config.rotary_pct)
    legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return {"rope_theta": float(config.rope_theta), "rope_parameters": params,
            "rope_scaling": legacy if legacy["rope_type"] != "default" else None}


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x) == int(x) else x  # transformers' strict configs want ints for whole numbers


_NOT_HF = ("dtype", "param_dtype", "scan_layers", "remat_policy")


def comparable(config: LMConfig) -> dict:
    """The fields of `config` an HF config determines (compute / layout settings dropped, defaults resolved, fields
    without effect for the config's norm / position type left out)."""
    d = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_HF}
    d.update(num_kv_heads=config.kv_heads, head_dim=config.dim_per_head, rope_theta=float(config.rope_theta),
             rope_scaling=tuple(sorted(config.rope_scaling)), rotary_pct=float(config.rotary_pct))
    if config.norm == "rms":
        d.pop("norm_bias")
    if config.position == "alibi":
        for k in ("rope_theta", "rope_scaling", "rotary_pct"):
            d.pop(k)
    else:
        d.pop("alibi_bias_max")
    if d.get("mlp_act") == "swish":
        d["mlp_act"] = "silu"
    return d


def config_to_hf(config: LMConfig, model_type: str | None = None) -> dict:
    """LMConfig -> the config.json dict of an HF model_type (default `infer_model_type`). Raises CheckpointError
    when that family cannot express the config: the result is read back with `config_from_hf` and must give the
    same model."""
    model_type = model_type or infer_model_type(config)
    c = config
    if model_type in ("llama", "mistral", "qwen2"):
        hf = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                  num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
                  max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps,
                  hidden_act="silu", tie_word_embeddings=c.tie_word_embeddings, **_rope_fields(c))
        if c.head_dim is not None:
            hf["head_dim"] = c.head_dim
        if model_type == "llama":
            hf.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
        elif model_type == "mistral":
            hf.update(sliding_window=c.sliding_window)
        else:
            hf.update(use_sliding_window=False, sliding_window=None)
        problems = {"llama": [(c.qkv_bias != c.out_bias, "q/k/v and output biases differ"),
                              (c.sliding_window is not None, "a sliding window")],
                    "mistral": [(c.qkv_bias or c.out_bias or c.mlp_bias, "biases")],
                    "qwen2": [(not c.qkv_bias or c.out_bias or c.mlp_bias, "other biases than q/k/v"),
                              (c.sliding_window is not None, "a sliding window")]}[model_type]
        problems.append((c.norm != "rms" or not c.mlp_gated or c.position != "rope", "not the Llama layout"))
    elif model_type == "gpt_neox":
        hf = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                  num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                  max_position_embeddings=c.max_position_embeddings, layer_norm_eps=c.norm_eps, hidden_act=c.mlp_act,
                  attention_bias=c.qkv_bias, use_parallel_residual=c.parallel_residual,
                  tie_word_embeddings=c.tie_word_embeddings, rotary_pct=float(c.rotary_pct),
                  rotary_emb_base=float(c.rope_theta), **_rope_fields(c))
        hf["rope_parameters"]["partial_rotary_factor"] = float(c.rotary_pct)  # GPT-NeoX's default is 0.25
        problems = [(c.qkv_bias != c.out_bias, "q/k/v and output biases differ"),
                    (c.kv_heads != c.num_heads, "grouped-query attention")]
    elif model_type == "mpt":
        ratio = c.intermediate_size / c.hidden_size
        hf = dict(vocab_size=c.vocab_size, d_model=c.hidden_size, n_heads=c.num_heads, n_layers=c.num_layers,
                  expansion_ratio=_int_if_whole(ratio), max_seq_len=c.max_position_embeddings,
                  layer_norm_epsilon=c.norm_eps, no_bias=not c.qkv_bias,
                  attn_config=dict(alibi=True, alibi_bias_max=_int_if_whole(c.alibi_bias_max), clip_qkv=c.clip_qkv,
                                   qk_ln=False, softmax_scale=None), tie_word_embeddings=True)
        problems = [(c.kv_heads != c.num_heads, "grouped-query attention")]
    else:
        raise CheckpointError(f"model_type {model_type!r} is not a supported decoder LM; "
                              f"known: {sorted(ARCHITECTURE_NAMES)}")
    hf = {"model_type": model_type, "architectures": [ARCHITECTURE_NAMES[model_type]], **hf}
    reasons = [why for bad, why in problems if bad]
    if not reasons:
        back = comparable(config_from_hf(hf))
        ours = comparable(config)
        reasons = [f"{k}: {ours.get(k)!r} would load as {back.get(k)!r}" for k in sorted(set(ours) | set(back))
                   if ours.get(k) != back.get(k)]
    if reasons:
        raise CheckpointError(f"this LMConfig has no {model_type} counterpart: {'; '.join(reasons)}")
    return hf


def _build(hf: dict, dtype: Any) -> DecoderLM:
    return DecoderLM(config_from_hf(hf, dtype))


for _model_type in ("llama", "mistral", "qwen2", "mpt", "gpt_neox"):
    register(_model_type)(Architecture(
        build=_build,
        rule=lambda module, mt=_model_type: lm_rule(module.config, mt),
        example_inputs=lambda module: (jnp.zeros((1, 8), jnp.int32),),
        to_hf_config=lambda module, model_type: config_to_hf(module.config, model_type),
        model_type_of=lambda module: infer_model_type(module.config) if type(module) is DecoderLM else None,
    ))
