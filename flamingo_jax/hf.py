"""Checkpoint conversion for Flamingo reproductions: IDEFICS v1 (HF `IdeficsForVisionText2Text`, a Flamingo
reproduction) and OpenFlamingo releases (`checkpoint.pt` with the trained resampler / gated blocks / embeddings + the
base LM's and CLIP's HF directories). Tensor-name rules reuse common/hf (lm_rule, clip_rule, fill_params).

Both torch layouts of the resampler and the gated block map here: OpenFlamingo / flamingo-pytorch (`to_q`, fused
`to_kv`, `to_out`, FFW as nn.Sequential) and IDEFICS (`q_proj` / `k_proj` / `v_proj` / `o_proj`, qk norms, SwiGLU).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.hf import write_checkpoint
from common.hf.checkpoint import (CheckpointError, Gather, Path, Target, fill_params, identity, iter_tensors,
                                  linear_from_heads, linear_to_heads, named, read_config, transpose)
from common.hf.lm import comparable, config_from_hf, lm_rule
from common.hf.vision import clip_rule
from common.sharding import params_sharding
from common.task_utils import load_trained
from common.vision.clip import CLIPVisionConfig
from flamingo_jax.gated_cross_attention import GatedXAttnConfig
from flamingo_jax.model import Flamingo, FlamingoConfig, abstract_params, block_param_location
from flamingo_jax.perceiver_resampler import ResamplerConfig
from flamingo_jax.task import make_task

Rule = Callable[[str, np.ndarray], "list[Target] | None"]


def _kv_half(heads: int, head_dim: int, half: int) -> Callable[[np.ndarray], np.ndarray]:
    """Fused torch `to_kv` weight [2*H*Dh, Dv] -> the k (half 0) or v (half 1) kernel [Dv, H, Dh]."""
    inner = heads * head_dim
    return lambda a: linear_to_heads(heads, head_dim)(a[half * inner:(half + 1) * inner])


# ------------------------------------------------------------------------------------------------------------------
# Resampler and gated block: torch name (relative to the module) -> (our inner path, transform).

def resampler_names(cfg: ResamplerConfig, naming: str) -> tuple[re.Pattern, dict, dict]:
    """(layer regex, per-layer map, top map) for naming 'open_flamingo' (also flamingo-pytorch) or 'idefics'."""
    h, d = cfg.num_heads, cfg.head_dim
    to_heads, from_heads = linear_to_heads(h, d), linear_from_heads(h, d)
    if naming == "open_flamingo":
        layer_re = re.compile(r"layers\.(\d+)\.(.+)")
        layer = {
            "0.norm_media.weight": (("media_norm", "scale"), None), "0.norm_media.bias": (("media_norm", "bias"), None),
            "0.norm_latents.weight": (("latents_norm", "scale"), None),
            "0.norm_latents.bias": (("latents_norm", "bias"), None),
            "0.to_q.weight": (("attn", "q", "kernel"), to_heads),
            "0.to_kv.weight": [(("attn", "k", "kernel"), _kv_half(h, d, 0)),
                               (("attn", "v", "kernel"), _kv_half(h, d, 1))],
            "0.to_out.weight": (("attn", "o", "kernel"), from_heads),
            "1.0.weight": (("ff_norm", "scale"), None), "1.0.bias": (("ff_norm", "bias"), None),
            "1.1.weight": (("ff", "up", "kernel"), transpose), "1.3.weight": (("ff", "down", "kernel"), transpose),
        }
        top = {"latents": (("latents",), None), "norm.weight": (("final_norm", "scale"), None),
               "norm.bias": (("final_norm", "bias"), None), "frame_embs": (("frame_embeddings",), None),
               "media_time_embs": (("media_embeddings",), lambda a: a.reshape(a.shape[0], -1)),  # [N, 1, D] -> [N, D]
               "media_pos_emb": (("media_embeddings",), lambda a: a.reshape(a.shape[0], -1))}  # flamingo-pytorch
    elif naming == "idefics":
        layer_re = re.compile(r"blocks\.(\d+)\.(.+)")
        layer = {
            "0.context_layer_norm.weight": (("media_norm", "scale"), None),
            "0.context_layer_norm.bias": (("media_norm", "bias"), None),
            "0.latents_layer_norm.weight": (("latents_norm", "scale"), None),
            "0.latents_layer_norm.bias": (("latents_norm", "bias"), None),
            "0.q_layer_norm.weight": (("q_norm", "scale"), None), "0.q_layer_norm.bias": (("q_norm", "bias"), None),
            "0.k_layer_norm.weight": (("k_norm", "scale"), None), "0.k_layer_norm.bias": (("k_norm", "bias"), None),
            "0.q_proj.weight": (("attn", "q", "kernel"), to_heads),
            "0.k_proj.weight": (("attn", "k", "kernel"), to_heads),
            "0.v_proj.weight": (("attn", "v", "kernel"), to_heads),
            "0.output_proj.weight": (("attn", "o", "kernel"), from_heads),
            "1.ln.weight": (("ff_norm", "scale"), None), "1.ln.bias": (("ff_norm", "bias"), None),
            "1.fc.weight": (("ff", "up", "kernel"), transpose),
            "1.c_proj.weight": (("ff", "down", "kernel"), transpose),
        }
        top = {"latents": (("latents",), None), "layer_norm.weight": (("final_norm", "scale"), None),
               "layer_norm.bias": (("final_norm", "bias"), None)}
    else:
        raise ValueError(f"unknown resampler naming {naming!r}")
    return layer_re, layer, top


def resampler_rule(cfg: ResamplerConfig, naming: str, prefix: Path = ("resampler",), hf_prefix: str = "") -> Rule:
    """Rule for a torch Perceiver Resampler's tensors (names after `hf_prefix`) into our params under `prefix`."""
    layer_re, layer, top = resampler_names(cfg, naming)

    def targets(entry, path_prefix: Path) -> list[Target]:
        entries = entry if isinstance(entry, list) else [entry]
        return [Target(path_prefix + inner, (), transform or identity) for inner, transform in entries]

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if not name.startswith(hf_prefix):
            return None
        name = name[len(hf_prefix):]
        if name in top:
            return targets(top[name], prefix)
        match = layer_re.fullmatch(name)
        if match and match.group(2) in layer:
            return targets(layer[match.group(2)], prefix + (f"layers_{match.group(1)}",))
        return None

    layer_name = "blocks.{}.{}" if naming == "idefics" else "layers.{}.{}"
    names = [hf_prefix + layer_name.format(i, inner) for i in range(cfg.depth) for inner in layer]
    return named(rule, names + [hf_prefix + inner for inner in top])


def block_names(cfg: GatedXAttnConfig, naming: str) -> dict:
    """Per-block map (torch name -> (our inner path, transform)) for 'open_flamingo' (flamingo-pytorch) or 'idefics'."""
    h, d = cfg.num_heads, cfg.head_dim
    to_heads, from_heads = linear_to_heads(h, d), linear_from_heads(h, d)
    # alphas: torch [1] (OpenFlamingo; IDEFICS alpha_type 'float') or [1, 1, E] (IDEFICS 'vector') -> [1] / [E]
    torch_alpha = (lambda s: (1, 1) + tuple(s)) if naming == "idefics" and cfg.alpha_shape == "vector" else tuple
    flat = Gather(lambda a: a.reshape(-1), torch_alpha, "alpha")
    if naming == "open_flamingo":
        return {
            "attn.norm.weight": (("attn_norm", "scale"), None), "attn.norm.bias": (("attn_norm", "bias"), None),
            "attn.to_q.weight": (("attn", "q", "kernel"), to_heads),
            "attn.to_kv.weight": [(("attn", "k", "kernel"), _kv_half(h, d, 0)),
                                  (("attn", "v", "kernel"), _kv_half(h, d, 1))],
            "attn.to_out.weight": (("attn", "o", "kernel"), from_heads),
            "attn_gate": (("alpha_xattn",), flat), "ff_gate": (("alpha_dense",), flat),
            "ff.0.weight": (("ff_norm", "scale"), None), "ff.0.bias": (("ff_norm", "bias"), None),
            "ff.1.weight": (("ff", "up", "kernel"), transpose), "ff.3.weight": (("ff", "down", "kernel"), transpose),
        }
    if naming == "idefics":
        return {
            "cross_attn.q_proj.weight": (("attn", "q", "kernel"), to_heads),
            "cross_attn.k_proj.weight": (("attn", "k", "kernel"), to_heads),
            "cross_attn.v_proj.weight": (("attn", "v", "kernel"), to_heads),
            "cross_attn.o_proj.weight": (("attn", "o", "kernel"), from_heads),
            "cross_attn.q_layer_norm.weight": (("q_norm", "scale"), None),
            "cross_attn.k_layer_norm.weight": (("k_norm", "scale"), None),
            "cross_attn.rotary_emb.inv_freq": [],  # buffer, unused by cross-attention
            "mlp.gate_proj.weight": (("ff", "gate", "kernel"), transpose),
            "mlp.up_proj.weight": (("ff", "up", "kernel"), transpose),
            "mlp.down_proj.weight": (("ff", "down", "kernel"), transpose),
            "input_layernorm.weight": (("attn_norm", "scale"), None),
            "post_attention_layernorm.weight": (("ff_norm", "scale"), None),
            "alpha_cross_attn": (("alpha_xattn",), flat), "alpha_dense": (("alpha_dense",), flat),
        }
    raise ValueError(f"unknown gated block naming {naming!r}")


def block_targets(config: FlamingoConfig, naming: str, index: int, name: str) -> list[Target] | None:
    """Targets of tensor `name` (relative to one torch gated block) of gated block `index` in our tree."""
    entry = block_names(config.xattn, naming).get(name)
    if entry is None:
        return None
    path, leaf_index = block_param_location(config, index)
    entries = entry if isinstance(entry, list) else [entry]
    return [Target(path + inner, leaf_index, transform or identity) for inner, transform in entries]


def torch_params(rule: Rule, state_dict: dict, abstract: Any) -> dict:
    """Fills a parameter tree (shaped like `abstract`, e.g. `nn.unbox(module.init(...)['params'])`) from a torch
    state_dict through `rule` (used by the parity tests for single modules)."""
    tensors = ((k, v.detach().float().cpu().numpy()) for k, v in state_dict.items())
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    return fill_params(tensors, rule, shapes, source="state_dict")


# ------------------------------------------------------------------------------------------------------------------
# IDEFICS v1

def idefics_config(hf: dict, dtype: Any = None, image_token_id: int | None = None,
                   scan_layers: bool = True) -> FlamingoConfig:
    """FlamingoConfig from an IDEFICS config.json dict (model_type 'idefics')."""
    if hf.get("model_type") != "idefics":
        raise CheckpointError(f"not an IDEFICS config: model_type {hf.get('model_type')!r}")
    vision = dict(hf.get("vision_config") or {})
    perceiver = dict(hf.get("perceiver_config") or {})
    vocab, extra = hf.get("vocab_size", 32000), hf.get("additional_vocab_size", 0)
    interval = hf.get("cross_layer_interval", 1)
    if hf.get("num_hidden_layers", 32) % interval:
        raise CheckpointError(f"num_hidden_layers {hf.get('num_hidden_layers')} is not a multiple of "
                              f"cross_layer_interval {interval}")
    llama = {k: v for k, v in hf.items() if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "max_position_embeddings", "rms_norm_eps",
                                                  "hidden_act", "tie_word_embeddings", "rope_parameters",
                                                  "rope_theta", "rope_scaling")}
    llama.update(model_type="llama", vocab_size=vocab + extra)
    lm = config_from_hf(llama, dtype, scan_layers=scan_layers)
    name = lm.dtype
    width = vision.get("embed_dim", vision.get("hidden_size", 768))
    vis = CLIPVisionConfig(
        image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 14),
        num_channels=vision.get("num_channels", 3), hidden_size=width,
        intermediate_size=vision.get("intermediate_size", 5120), num_layers=vision.get("num_hidden_layers", 32),
        num_heads=vision.get("num_attention_heads", 16), act=vision.get("hidden_act", "gelu"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-5), projection_dim=None, scan_layers=scan_layers,
        dtype=name, param_dtype=name)
    resampler = None
    if hf.get("use_resampler", False):
        resampler = ResamplerConfig(
            width=width, depth=perceiver.get("resampler_depth", 6), num_heads=perceiver.get("resampler_n_heads", 16),
            head_dim=perceiver.get("resampler_head_dim", 96), num_latents=perceiver.get("resampler_n_latents", 64),
            ff_mult=4, ff_act="relu", qk_norm=bool(perceiver.get("qk_layer_norms_perceiver", False)),
            norm_eps=1e-5, kernel_init="normal_0.02", dtype=name, param_dtype=name)  # HF's _init_weights
    xattn = GatedXAttnConfig(
        num_heads=lm.num_heads, head_dim=lm.hidden_size // lm.num_heads, ff_intermediate_size=lm.intermediate_size,
        ff_act=lm.mlp_act, ff_gated=True, norm="rms", norm_eps=lm.norm_eps, norm_bias=False,
        qk_norm=bool(hf.get("qk_layer_norms", False)),
        alpha_shape="vector" if hf.get("alpha_type") == "vector" else "scalar",
        only_attend_immediate_media=True, kernel_init="normal_0.02", dtype=name, param_dtype=name)
    if image_token_id is None:  # the IDEFICS tokenizer appends <fake_token_around_image> then <image>
        image_token_id = vocab + 1 if extra >= 2 else hf.get("image_token_id", vocab - 1)
    return FlamingoConfig(lm=lm, xattn=xattn, resampler=resampler, vision=vis, image_token_id=image_token_id,
                          cross_attn_every=interval, block_position=0, vision_features="last_hidden_state")


def _merge_decoupled(tensors: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """IDEFICS' decoupled embedding / head: `X.weight` [V, E] + `X.additional_*.weight` [A, E] -> one [V+A, E]."""
    pairs = {"model.embed_tokens.weight": "model.embed_tokens.additional_embedding.weight",
             "lm_head.weight": "lm_head.additional_fc.weight"}
    extras = {v: k for k, v in pairs.items()}
    held: dict[str, np.ndarray] = {}
    for name, tensor in tensors:
        if name in pairs or name in extras:
            held[name] = tensor
            base = name if name in pairs else extras[name]
            if base in held and pairs[base] in held:
                yield base, np.concatenate([held.pop(base), held.pop(pairs[base])], axis=0)
            continue
        yield name, tensor
    for base in pairs:  # no additional vocabulary
        if base in held and pairs[base] not in held:
            yield base, held.pop(base)
    if held:
        raise CheckpointError(f"decoupled embedding without its base weight: {sorted(held)}")


def idefics_rule(config: FlamingoConfig) -> Rule:
    """IDEFICS v1 tensor names -> our Flamingo tree (the decoupled embedding merged first: `_merge_decoupled`). Its
    `names` (for saving) are those of one embedding / head of the whole vocabulary (additional_vocab_size 0)."""
    lm = lm_rule(config.lm, "llama", prefix=("lm",), block_every=config.cross_attn_every)
    vision = clip_rule(config.vision, prefix=("vision",), hf_prefix="model.")  # model.vision_model.*
    resampler = resampler_rule(config.resampler, "idefics", hf_prefix="model.perceiver_resampler.") \
        if config.resampler is not None else (lambda name, tensor: None)
    block_re = re.compile(r"model\.gated_cross_attn_layers\.(\d+)\.(.+)")

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if name.startswith("model.vision_model."):
            return vision(name, tensor)
        if name.startswith("model.perceiver_resampler."):
            return resampler(name, tensor)
        match = block_re.fullmatch(name)
        if match:
            return block_targets(config, "idefics", int(match.group(1)), match.group(2))
        return lm(name, tensor)

    blocks = [f"model.gated_cross_attn_layers.{i}.{inner}" for i in range(config.num_blocks)
              for inner in block_names(config.xattn, "idefics")]
    vision_names = [n for n in vision.names if n.startswith("model.vision_model.")]
    return named(rule, [*lm.names, *vision_names, *getattr(resampler, "names", ()), *blocks])


# Fields of the sub-configs that an IDEFICS config.json does not hold: compute and layout settings, and the
# initialiser of the projections (a trained model's weights are what they are).
_NOT_IDEFICS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl", "attention_block_size",
                "kernel_init")


def _comparable(config: FlamingoConfig) -> dict:
    def fields(sub):
        return None if sub is None else {k: v for k, v in dataclasses.asdict(sub).items() if k not in _NOT_IDEFICS}

    xattn = fields(config.xattn)
    xattn["ff_intermediate_size"] = config.xattn.ff_intermediate_size or config.xattn.ff_mult * config.lm.hidden_size
    xattn.pop("ff_mult")  # the width it gives is compared above
    return dict(lm=comparable(config.lm), xattn=xattn, resampler=fields(config.resampler),
                vision=fields(config.vision), image_token_id=config.image_token_id,
                cross_attn_every=config.cross_attn_every, block_position=config.position,
                vision_features=config.vision_features, media_width=config.media_width)


def idefics_config_to_hf(config: FlamingoConfig) -> dict:
    """FlamingoConfig -> an IDEFICS v1 config.json dict (one embedding of the whole vocabulary: additional_vocab_size
    0, the <image> id stored as image_token_id). Raises CheckpointError naming every setting IDEFICS cannot express
    (an OpenFlamingo-style block, a GELU resampler, ...): the dict is read back with `idefics_config` and must give
    the same model."""
    lm, x, r, v = config.lm, config.xattn, config.resampler, config.vision
    if not isinstance(v, CLIPVisionConfig):
        raise CheckpointError(f"IDEFICS has a CLIP vision tower; this Flamingo has {type(v).__name__}")
    hf = dict(model_type="idefics", architectures=["IdeficsForVisionText2Text"], vocab_size=lm.vocab_size,
              additional_vocab_size=0, hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
              num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads,
              max_position_embeddings=lm.max_position_embeddings, rms_norm_eps=lm.norm_eps, hidden_act="silu",
              tie_word_embeddings=lm.tie_word_embeddings, rope_theta=float(lm.rope_theta),
              cross_layer_interval=config.cross_attn_every, qk_layer_norms=x.qk_norm,
              alpha_type="vector" if x.alpha_shape == "vector" else "float", use_resampler=r is not None,
              image_token_id=config.image_token_id,
              vision_config=dict(embed_dim=v.hidden_size, image_size=v.image_size, patch_size=v.patch_size,
                                 num_channels=v.num_channels, intermediate_size=v.intermediate_size,
                                 num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads, hidden_act=v.act,
                                 layer_norm_eps=v.layer_norm_eps),
              perceiver_config=dict(use_resampler=r is not None))
    if r is not None:
        hf["perceiver_config"].update(resampler_depth=r.depth, resampler_n_heads=r.num_heads,
                                      resampler_head_dim=r.head_dim, resampler_n_latents=r.num_latents,
                                      qk_layer_norms_perceiver=r.qk_norm)
    back = idefics_config(hf, lm.dtype, config.image_token_id, lm.scan_layers)
    ours, theirs = _comparable(config), _comparable(back)
    reasons = []
    for key in ours:
        if isinstance(ours[key], dict) and isinstance(theirs[key], dict):
            reasons += [f"{key}.{k}: {ours[key].get(k)!r} (IDEFICS: {theirs[key].get(k)!r})"
                        for k in sorted(set(ours[key]) | set(theirs[key])) if ours[key].get(k) != theirs[key].get(k)]
        elif ours[key] != theirs[key]:
            reasons.append(f"{key}: {ours[key]!r} (IDEFICS: {theirs[key]!r})")
    if reasons:
        raise CheckpointError(f"this Flamingo has no IDEFICS counterpart: {'; '.join(reasons)}")
    return hf


def load_hf(path: str, dtype: Any = None, mesh: jax.sharding.Mesh | None = None, image_token_id: int | None = None,
            scan_layers: bool = True) -> tuple[Flamingo, dict]:
    """Loads a local IDEFICS v1 checkpoint directory (HF `IdeficsForVisionText2Text`) -> (Flamingo, params).

    IDEFICS conventions: vision tokens = the ViT's last hidden state (CLS included, no post-LN), resampler FFW
    ReLU, gated blocks with RMSNorm / SwiGLU / optional qk RMS norms placed before layer i with
    i % cross_layer_interval == 0, decoupled extra vocabulary concatenated after the base one.
    image_token_id defaults to vocab_size + 1 (IDEFICS' tokenizer: <fake_token_around_image>, then <image>).
    IDEFICS' processor also stops a token from seeing an image after an end-of-document token: pass
    `text_time=idefics_text_time(...)` to reproduce that.
    """
    hf = read_config(path)
    config = idefics_config(hf, dtype, image_token_id, scan_layers)
    model = Flamingo(config)
    boxed = abstract_params(model.config)
    shardings = None
    if mesh is not None:
        shardings = params_sharding(boxed, mesh)
    params = fill_params(_merge_decoupled(iter_tensors(path)), idefics_rule(config), nn.unbox(boxed), dtype=dtype,
                         shardings=shardings, source=path)
    return model, params


def save_hf(out_dir: str, module: Flamingo, params, tokenizer=None, *, dtype: Any = None,
            max_shard_bytes: int = 5 * 2**30) -> str:
    """(Flamingo, plain params) -> an IDEFICS v1 checkpoint directory that transformers'
    `IdeficsForVisionText2Text.from_pretrained` and our `load_hf` read: config.json (`idefics_config_to_hf`, which
    refuses a Flamingo IDEFICS cannot express), model.safetensors (sharded past `max_shard_bytes`; tensors in `dtype`,
    default the parameters'), and the tokenizer's files when given. Every parameter must have a tensor name, else a
    CheckpointError names the ones without. Returns out_dir."""
    return write_checkpoint(out_dir, params, idefics_rule(module.config), idefics_config_to_hf(module.config),
                            dtype=dtype, max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, source="IDEFICS model")


def idefics_text_time(input_ids: Any, image_token_id: int, eos_token_id: int | None = None) -> Any:
    """text_time as IDEFICS' processor builds `image_attention_mask`: the 1-based index of the latest <image>, but 0
    for tokens after an end-of-document token (until the next <image>)."""
    ids = jnp.asarray(input_ids)
    is_image = ids == image_token_id
    count = jnp.cumsum(is_image, axis=-1, dtype=jnp.int32)
    if eos_token_id is None:
        return count
    pos = jnp.arange(ids.shape[-1])
    last_image = jax.lax.cummax(jnp.where(is_image, pos, -1), axis=ids.ndim - 1)
    eos_before = jnp.pad((ids == eos_token_id)[..., :-1], ((0, 0), (1, 0)))  # an eos strictly before the token
    last_eos = jax.lax.cummax(jnp.where(eos_before, pos, -1), axis=ids.ndim - 1)
    return jnp.where(last_eos > last_image, 0, count)


# ------------------------------------------------------------------------------------------------------------------
# OpenFlamingo

DECODER_LAYERS = {"mpt": "transformer.blocks", "gpt_neox": "gpt_neox.layers", "llama": "model.layers",
                  "mistral": "model.layers", "qwen2": "model.layers"}
EMBEDDING = {"mpt": "transformer.wte.weight", "gpt_neox": "gpt_neox.embed_in.weight",
             "llama": "model.embed_tokens.weight",
             "mistral": "model.embed_tokens.weight", "qwen2": "model.embed_tokens.weight"}
LM_HEAD = {"mpt": "lm_head.weight", "gpt_neox": "embed_out.weight", "llama": "lm_head.weight",
           "mistral": "lm_head.weight", "qwen2": "lm_head.weight"}


def open_flamingo_config(lm_hf: dict, clip_hf: dict, cross_attn_every: int, vocab_size: int,
                         image_token_id: int, dtype: Any = None, vision_features: str = "patches",
                         scan_layers: bool = True) -> FlamingoConfig:
    """OpenFlamingo's model: CLIP tower, `PerceiverResampler(dim=vis width)` and `GatedCrossAttentionBlock(dim=LM
    width, dim_visual=vis width)` with their defaults, blocks before layer i with (i + 1) % every == 0."""
    lm = config_from_hf(lm_hf, dtype, vocab_size=vocab_size, scan_layers=scan_layers)
    vis = CLIPVisionConfig.from_hf(clip_hf, projection_dim=None, scan_layers=scan_layers, dtype=lm.dtype,
                                   param_dtype=lm.param_dtype)
    resampler = ResamplerConfig(width=vis.hidden_size, dtype=lm.dtype, param_dtype=lm.param_dtype)
    return FlamingoConfig(lm=lm, xattn=GatedXAttnConfig(dtype=lm.dtype, param_dtype=lm.param_dtype),
                          resampler=resampler, vision=vis, image_token_id=image_token_id,
                          cross_attn_every=cross_attn_every, vision_features=vision_features)


def _resize_rows(rows: int) -> Callable[[np.ndarray], np.ndarray]:
    """An embedding / head [V_old, E] resized to `rows` as transformers' resize_token_embeddings: truncated, or
    extended with the mean of the old rows (the released models shrink, 50432 -> 50280)."""
    def resize(a: np.ndarray) -> np.ndarray:
        if a.shape[0] >= rows:
            return a[:rows]
        return np.concatenate([a, np.repeat(a.mean(axis=0, keepdims=True), rows - a.shape[0], axis=0)], axis=0)
    return resize


def _open_flamingo_state(checkpoint_pt: str) -> dict[str, np.ndarray]:
    import torch
    state = torch.load(checkpoint_pt, map_location="cpu", mmap=True, weights_only=True)
    if "model_state_dict" in state:  # a training checkpoint rather than the released weights
        state = state["model_state_dict"]
    out = {}
    for name, tensor in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        out[name] = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    return out


def load_open_flamingo(checkpoint_pt: str, lm_dir: str, clip_dir: str, *, cross_attn_every: int | None = None,
                       image_token_id: int | None = None, vocab_size: int | None = None, dtype: Any = None,
                       vision_features: str = "patches", mesh: jax.sharding.Mesh | None = None,
                       scan_layers: bool = True) -> tuple[Flamingo, dict]:
    """Loads an OpenFlamingo release -> (Flamingo, params).

    checkpoint_pt: OpenFlamingo's `checkpoint.pt` (perceiver.*, lang_encoder.gated_cross_attn_layers.* or
      lang_encoder.<layers>.<i>.gated_cross_attn_layer.*, the resized LM input embedding; a full state_dict also
      works: decoder_layer.* override the base LM, old_decoder_blocks.* / vision_encoder.* are ignored).
    lm_dir, clip_dir: HF directories of the base LM (mpt / gpt_neox / llama family) and of CLIP (the vision tower).
    cross_attn_every: inferred from which layers have gated blocks when None.
    vocab_size: the resized vocabulary (default: rows of the checkpoint's embedding, else the base LM's).
    image_token_id: default vocab_size - 2 (OpenFlamingo adds <|endofchunk|>, <image>, then <PAD>; true for the
      three releases, whose tokenizers have no pad token) — pass the tokenizer's id when in doubt.
    vision_features: 'patches' = open_clip's `output_tokens` of the versions OpenFlamingo trained with (ln_post only
      on the pooled CLS); 'post_norm_patches' for newer open_clip, which applies ln_post to every token.
    """
    lm_hf, clip_hf = read_config(lm_dir), read_config(clip_dir)
    model_type = lm_hf.get("model_type")
    if model_type not in DECODER_LAYERS:
        raise CheckpointError(f"base LM model_type {model_type!r} is not supported; "
                              f"supported: {sorted(DECODER_LAYERS)}")
    layers_name, embed_name, head_name = DECODER_LAYERS[model_type], EMBEDDING[model_type], LM_HEAD[model_type]
    state = _open_flamingo_state(checkpoint_pt)

    # Canonical names: "block.<i>.<rest>" for gated blocks (layer index i), base-LM names for LM tensors.
    blocks: dict[tuple[int, str], np.ndarray] = {}
    lm_override: dict[str, np.ndarray] = {}
    resampler_state: dict[str, np.ndarray] = {}
    wrapped = re.compile(re.escape(layers_name) + r"\.(\d+)\.(gated_cross_attn_layer|decoder_layer)\.(.+)")
    listed = re.compile(r"gated_cross_attn_layers\.(\d+)\.(.+)")
    for name, tensor in state.items():
        if name.startswith("perceiver."):
            resampler_state[name] = tensor
        elif name.startswith("vision_encoder."):
            continue  # the CLIP tower comes from clip_dir
        elif name.startswith("lang_encoder."):
            inner = name[len("lang_encoder."):]
            if inner.startswith("old_decoder_blocks."):
                continue  # the same modules as <layers>.<i>.decoder_layer
            m = listed.fullmatch(inner)
            if m:
                blocks.setdefault((int(m.group(1)), m.group(2)), tensor)
                continue
            m = wrapped.fullmatch(inner)
            if m and m.group(2) == "gated_cross_attn_layer":
                blocks.setdefault((int(m.group(1)), m.group(3)), tensor)
            elif m:
                lm_override[f"{layers_name}.{m.group(1)}.{m.group(3)}"] = tensor
            else:
                lm_override[inner] = tensor
        else:
            raise CheckpointError(f"{checkpoint_pt}: unexpected tensor {name!r}")
    if not blocks:
        raise CheckpointError(f"{checkpoint_pt} holds no gated cross-attention weights")
    block_layers = sorted({i for i, _ in blocks})
    every = cross_attn_every or block_layers[0] + 1
    expected = [i for i in range(lm_hf.get("num_hidden_layers", lm_hf.get("n_layers", 0))) if (i + 1) % every == 0]
    if block_layers != expected:
        raise CheckpointError(f"{checkpoint_pt}: gated blocks at layers {block_layers}, expected {expected} for "
                              f"cross_attn_every={every}")
    if vocab_size is None:
        vocab_size = lm_override[embed_name].shape[0] if embed_name in lm_override else config_from_hf(lm_hf).vocab_size
    if image_token_id is None:
        image_token_id = vocab_size - 2
    config = open_flamingo_config(lm_hf, clip_hf, every, vocab_size, image_token_id, dtype, vision_features,
                                  scan_layers)
    model = Flamingo(config)

    lm_base_rule = lm_rule(config.lm, model_type, prefix=("lm",), block_every=every)
    clip = clip_rule(config.vision, prefix=("vision",))
    resampler = resampler_rule(config.resampler, "open_flamingo", hf_prefix="perceiver.")
    resize = _resize_rows(vocab_size)

    def lm_tensor_rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        targets = lm_base_rule(name, tensor)
        if targets and name in (embed_name, head_name) and tensor.shape[0] != vocab_size:
            targets = [Target(t.path, t.index, lambda a, f=t.transform: f(resize(a))) for t in targets]
        return targets

    def stream() -> Iterator[tuple[str, np.ndarray]]:
        for name, tensor in iter_tensors(lm_dir):
            if name not in lm_override:
                yield "lm::" + name, tensor
        for name, tensor in lm_override.items():
            yield "lm::" + name, tensor
        for name, tensor in iter_tensors(clip_dir):
            yield "clip::" + name, tensor
        yield from resampler_state.items()
        for (i, rest), tensor in blocks.items():
            yield f"block::{i}::{rest}", tensor

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if name.startswith("lm::"):
            return lm_tensor_rule(name[4:], tensor)
        if name.startswith("clip::"):
            return clip(name[6:], tensor)
        if name.startswith("block::"):
            _, i, rest = name.split("::")
            return block_targets(config, "open_flamingo", int(i) // every, rest)
        return resampler(name, tensor)

    boxed = abstract_params(model.config)
    shardings = None
    if mesh is not None:
        shardings = params_sharding(boxed, mesh)
    params = fill_params(stream(), rule, nn.unbox(boxed), dtype=dtype, shardings=shardings, source=checkpoint_pt)
    return model, params


def open_clip_style_encoder(hf_clip_vision_model):
    """A torch module with `.visual` as open_clip builds it with `output_tokens=True` (forward -> (pooled, patch
    tokens)) around a transformers `CLIPVisionModel`: the vision encoder OpenFlamingo's PyTorch `Flamingo` expects,
    for building that reference model without open_clip (parity tests, bench/flamingo_train_step.py). Needs torch."""
    import torch

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = hf_clip_vision_model

        def forward(self, x):
            hidden = self.clip(pixel_values=x).last_hidden_state  # [B, 1 + S, Dv]
            return hidden[:, 0], hidden[:, 1:]

    encoder = torch.nn.Module()
    encoder.visual = Visual()
    return encoder


def export(workdir: str, out_dir: str, step: int | None = None, *, dtype: Any = None) -> str:
    """A training workdir's Flamingo (latest or `step`) -> an IDEFICS v1 folder (`save_hf`, with the workdir's
    tokenizer); a Flamingo IDEFICS cannot express is refused, naming the settings. Returns out_dir."""
    module, params, tokenizer, config = load_trained(workdir, make_task, step)
    if not isinstance(module, Flamingo):
        raise ValueError(f"{workdir} trained stage {config.get('stage')!r}, not a Flamingo: nothing to export as "
                         "IDEFICS")
    return save_hf(out_dir, module, params, tokenizer, dtype=dtype)
