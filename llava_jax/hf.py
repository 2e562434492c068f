"""Checkpoint loading for LLaVA: HF `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` directories
(model_type `llava`, `llava_next`; registered in `common.hf.ARCHITECTURES`) and the original haotian-liu/LLaVA
release layout (an LM directory, a stage-1 `mm_projector.bin`, a CLIP vision tower directory).

Tensor names accepted from HF checkpoints (both layouts transformers has written):
  hub / save_pretrained: language_model.model.*, language_model.lm_head.weight, vision_tower.[vision_model.]*,
                         multi_modal_projector.linear_{1,2}.*, image_newline
  v5 module names:       model.language_model.*, lm_head.weight, model.vision_tower.*, model.multi_modal_projector.*,
                         model.image_newline
They are renamed to the plain LM / CLIP names and handed to `common.hf.lm.lm_rule` / `common.hf.vision.clip_rule`.

`save_hf(out_dir, module, params, tokenizer)` is the inverse: config.json of `LlavaForConditionalGeneration` /
`LlavaNextForConditionalGeneration` (`llava_config_to_hf`, text_config / vision_config from `common.hf.lm` /
`common.hf.vision`) and model.safetensors in the hub layout above, from the same rules inverted
(`common.hf.save`), plus the tokenizer files. transformers loads the directory, and so does `load_hf`, to the
identical parameters.

A LLaVA lives in one of three places, and `load_model(path)` -> (Llava, params, tokenizer, template) reads each:
  * a training workdir of ours (config.json + checkpoints/ + tokenizer.json; `load_workdir`): LoRA adapters merged
    (LLaVA-1.5's LoRA variant, Liu et al. 2023b Appendix: the original's separate "merge_lora_weights" step is this);
  * an HF LLaVA / LLaVA-NeXT folder (`load_hf` + its tokenizer, `<image>` added; the template from config.json's
    `conversation_template`);
  * a msgpack folder (llava_config.json + llava_params.msgpack + tokenizer; `save_msgpack`), for what HF LLaVA cannot
    express (LLaVA-1's linear projector, the original's placeholder id -200).
`export(workdir, out_dir)` writes a workdir's merged parameters as an HF folder (`save_hf`; every family has this
`export`, `python -m mmlm_jax.export` on the command line), or format="msgpack".
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common.hf
from common.data.image_ops import LLAVA_NEXT_PINPOINTS
from common.hf import Architecture, load_from_config, register
from common.hf.checkpoint import (CheckpointError, Rule, Target, fill_params, identity, iter_tensors, named,
                                  read_config, transpose)
from common.hf.lm import comparable, config_from_hf, config_to_hf, infer_model_type, lm_rule
from common.hf.vision import clip_config_to_hf, clip_rule
from common.projector import parse_projector_type
from common.checkpoints import CHECKPOINTS_DIR
from common.lm import LMConfig
from common.sharding import params_sharding
from common.task_utils import load_trained
from common.tokenizers import load_tokenizer, save_tokenizer
from common.vision.clip import CLIPVisionConfig, clip_vit_l14_336
from llava_jax.data import load_saved_tokenizer
from llava_jax.model import Llava, LlavaConfig, abstract_params, example_inputs
from llava_jax.task import make_task

# transformers' defaults for the fields hub configs leave out of `text_config` (they store only non-defaults).
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-6, sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6),
}
# Original-release model types -> the LM family they wrap.
ORIGINAL_LM_TYPES = {"llava_llama": "llama", "llava": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2",
                     "llava_qwen2": "qwen2", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}


def _dtype_name(dtype: Any) -> str:
    return "float32" if dtype is None else jnp.dtype(dtype).name


def text_config_from_hf(text: dict, dtype: Any = None, tie: bool | None = None):
    text = dict(text)
    model_type = text.setdefault("model_type", "llama")
    text = {**TEXT_DEFAULTS.get(model_type, {}), **text}
    if tie is not None:
        text["tie_word_embeddings"] = tie
    return config_from_hf(text, dtype)


def vision_config_from_hf(vision: dict | None, dtype: Any = None) -> CLIPVisionConfig:
    name = _dtype_name(dtype)
    if not vision:  # LlavaConfig's default tower: CLIP ViT-L/14-336
        return clip_vit_l14_336(dtype=name, param_dtype=name)
    vision = dict(vision)
    model_type = vision.setdefault("model_type", "clip_vision_model")
    if model_type not in ("clip_vision_model", "clip"):
        raise CheckpointError(f"vision tower model_type {model_type!r} is not supported (CLIP only)")
    return CLIPVisionConfig.from_hf(vision, dtype=name, param_dtype=name, projection_dim=None)


def llava_config_from_hf(hf: dict, dtype: Any = None) -> LlavaConfig:
    """HF `LlavaConfig` / `LlavaNextConfig` dict (config.json) -> LlavaConfig."""
    model_type = hf.get("model_type")
    if model_type not in ("llava", "llava_next"):
        raise CheckpointError(f"not a LLaVA config: model_type {model_type!r}")
    text = text_config_from_hf(hf.get("text_config") or {}, dtype,
                               tie=bool(hf.get("tie_word_embeddings", False)) or None)
    layer = hf.get("vision_feature_layer", -2)
    pinpoints = None
    if model_type == "llava_next":
        pinpoints = tuple(tuple(int(v) for v in p) for p in (hf.get("image_grid_pinpoints") or LLAVA_NEXT_PINPOINTS))
    return LlavaConfig(
        text=text, vision=vision_config_from_hf(hf.get("vision_config"), dtype),
        image_token_index=int(hf.get("image_token_index", hf.get("image_token_id", 32000))),
        vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_type="mlp2x_gelu", projector_act=hf.get("projector_hidden_act", "gelu"),
        projector_bias=bool(hf.get("multimodal_projector_bias", True)), image_grid_pinpoints=pinpoints)


def _lm_name(name: str) -> str | None:
    """A LLaVA checkpoint's LM tensor name -> the plain LM name (`model.layers...`, `lm_head.weight`)."""
    for prefix, plain in (("language_model.model.", "model."), ("model.language_model.", "model."),
                          ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
        if name.startswith(prefix):
            return plain + name[len(prefix):]
    return None


def projector_rule(config: LlavaConfig, naming: str = "hf") -> Rule:
    """HF `multi_modal_projector.linear_{i}` or the original `mm_projector.{2(i-1)}` / `mm_projector` (linear)."""
    depth, _ = parse_projector_type(config.projector_type)

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if naming == "hf":
            m = re.fullmatch(r"(?:model\.)?multi_modal_projector\.linear_(\d+)\.(weight|bias)", name)
            index = int(m.group(1)) if m else None
        else:
            m = re.fullmatch(r"(?:model\.)?mm_projector\.(?:(\d+)\.)?(weight|bias)", name)
            if m and m.group(1) is None and depth != 1:
                raise CheckpointError(f"{name}: a single-Linear projector in a checkpoint for {config.projector_type}")
            index = None if not m else (1 if m.group(1) is None else int(m.group(1)) // 2 + 1)
        if not m:
            return None
        if index > depth:
            raise CheckpointError(f"{name}: projector layer {index} but {config.projector_type} has {depth}")
        kind = m.group(2)
        return [Target(("projector", f"linear_{index}", "kernel" if kind == "weight" else "bias"), (),
                       transpose if kind == "weight" else identity)]

    if naming == "hf":
        names = [f"multi_modal_projector.linear_{i}.{kind}" for i in range(1, depth + 1) for kind in ("weight", "bias")]
    else:
        names = [f"model.mm_projector.{2 * i}.{kind}" if depth > 1 else f"model.mm_projector.{kind}"
                 for i in range(depth) for kind in ("weight", "bias")]
    return named(rule, names)


def llava_rule(config: LlavaConfig) -> Rule:
    """Tensor-name rule of an HF LLaVA / LLaVA-NeXT checkpoint -> the `Llava` param tree. Its `names` (for saving)
    are the hub layout that every transformers version reads: language_model.model.*, language_model.lm_head.weight,
    vision_tower.vision_model.*, multi_modal_projector.*, image_newline."""
    lm = lm_rule(config.text, _lm_model_type(config), prefix=("lm",))
    vision_rules = [clip_rule(config.vision, ("vision_tower",), p) for p in ("model.vision_tower.", "vision_tower.")]
    projector = projector_rule(config, "hf")

    def rule(name: str, tensor: np.ndarray) -> list[Target] | None:
        if name in ("image_newline", "model.image_newline"):
            return [Target(("image_newline",))] if config.anyres else None
        lm_name = _lm_name(name)
        if lm_name is not None:
            return lm(lm_name, tensor)
        for vision in vision_rules:
            targets = vision(name, tensor)
            if targets is not None:
                return targets
        return projector(name, tensor)

    names = ["language_model." + n for n in lm.names]  # model.* / lm_head.weight -> language_model.model.* / ...
    names += [*vision_rules[1].names, *projector.names] + (["image_newline"] if config.anyres else [])
    return named(rule, names)


def _lm_model_type(config: LlavaConfig) -> str:
    # The LM rule only distinguishes the Llama-layout families from MPT / GPT-NeoX; llama covers mistral / qwen2.
    return "llama" if config.text.position == "rope" and config.text.mlp_gated else "unsupported"


def _build(hf: dict, dtype: Any) -> Llava:
    return Llava(llava_config_from_hf(hf, dtype))


def infer_text_model_type(config: LlavaConfig) -> str:
    """The HF family of the LLM (text_config.model_type): mistral with a sliding window, qwen2 with q/k/v biases
    only, else llama (our LMConfig does not record the family; Vicuna is a llama)."""
    return infer_model_type(config.text)


def llava_config_to_hf(config: LlavaConfig, text_model_type: str | None = None) -> dict:
    """LlavaConfig -> config.json dict of `LlavaForConditionalGeneration` (model_type llava) or, with image grid
    pinpoints, `LlavaNextForConditionalGeneration` (llava_next); the inverse of `llava_config_from_hf` (checked:
    reading the result back gives the same model). Raises CheckpointError for what HF LLaVA cannot express: a
    projector other than a two-layer MLP (LLaVA-1's `linear`), or a placeholder id outside the vocabulary (the
    original release's -200)."""
    depth, type_act = parse_projector_type(config.projector_type)
    if depth != 2:
        raise CheckpointError(f"HF LLaVA's projector is linear_1 -> act -> linear_2; projector_type "
                              f"{config.projector_type!r} has no HF counterpart (export it with format='msgpack')")
    if not 0 <= config.image_token_index < config.text.vocab_size:
        raise CheckpointError(f"image_token_index {config.image_token_index} is not a token of the vocabulary "
                              f"[0, {config.text.vocab_size}): HF LLaVA embeds the placeholder ids")
    text = config_to_hf(config.text, text_model_type or infer_text_model_type(config))
    text.pop("architectures")
    vision = clip_config_to_hf(config.vision)
    vision.pop("architectures")
    layer = config.vision_feature_layer
    hf = dict(model_type="llava_next" if config.anyres else "llava",
              architectures=["LlavaNextForConditionalGeneration" if config.anyres else "LlavaForConditionalGeneration"],
              text_config=text, vision_config=vision, image_token_index=int(config.image_token_index),
              vision_feature_layer=layer if isinstance(layer, int) else list(layer),
              vision_feature_select_strategy="full" if config.keeps_cls else "default",
              projector_hidden_act=config.projector_act or type_act or "gelu",
              multimodal_projector_bias=bool(config.projector_bias),
              tie_word_embeddings=bool(config.text.tie_word_embeddings), image_seq_length=config.tokens_per_crop)
    if config.anyres:
        hf["image_grid_pinpoints"] = [list(map(int, p)) for p in config.image_grid_pinpoints]
    back = llava_config_from_hf(hf)
    ours_fields = (config.image_token_index, config.feature_layers, config.keeps_cls, config.projector_bias,
                   config.projector_act or type_act or "gelu", config.image_grid_pinpoints, config.vision.num_patches)
    back_fields = (back.image_token_index, back.feature_layers, back.keeps_cls, back.projector_bias,
                   back.projector_act, back.image_grid_pinpoints, back.vision.num_patches)
    if ours_fields != back_fields or comparable(back.text) != comparable(config.text):
        raise CheckpointError(f"LlavaConfig does not survive the HF config: {ours_fields} -> {back_fields}")
    return hf


def _to_hf_config(module: Llava, model_type: str, text_model_type: str | None = None) -> dict:
    hf = llava_config_to_hf(module.config, text_model_type)
    if model_type != hf["model_type"]:
        raise CheckpointError(f"a {'LLaVA-NeXT' if module.config.anyres else 'LLaVA'} model saves as model_type "
                              f"{hf['model_type']!r}, not {model_type!r}")
    return hf


ARCHITECTURE = register("llava", "llava_next")(Architecture(
    build=_build, rule=lambda module: llava_rule(module.config),
    example_inputs=lambda module: example_inputs(module.config), to_hf_config=_to_hf_config,
    model_type_of=lambda module: ("llava_next" if module.config.anyres else "llava") if isinstance(module, Llava)
    else None))


def load_hf(path: str, dtype: Any = None, mesh: jax.sharding.Mesh | None = None) -> tuple[Llava, dict]:
    """Local HF LLaVA / LLaVA-NeXT checkpoint directory -> (Llava module, params). dtype: parameter dtype (None =
    float32); with `mesh`, every parameter lands directly on its shards."""
    config = read_config(path)
    if config.get("model_type") not in ("llava", "llava_next"):
        raise CheckpointError(f"{path}: model_type {config.get('model_type')!r} is not llava / llava_next")
    return load_from_config(path, config, dtype=dtype, mesh=mesh, architecture=ARCHITECTURE)


def save_hf(out_dir: str, module: Llava, params, tokenizer=None, *, text_model_type: str | None = None,
            dtype: Any = None, template: str | None = None, max_shard_bytes: int = 5 * 2**30) -> str:
    """(Llava, plain params) -> an HF LLaVA / LLaVA-NeXT checkpoint directory: config.json, model.safetensors
    (sharded past `max_shard_bytes`; tensors in `dtype`, default the parameters'), the tokenizer's files and
    special-token ids (when given) and, when given, the conversation `template` (an extra config.json field that
    `load_model` reads). Params must hold no LoRA adapters: merge them first
    (`common.lora.merge_in_tree`); anything without a tensor name raises. Returns out_dir."""
    extra = {"conversation_template": template} if template else {}
    return common.hf.save(out_dir, module, params, dtype=dtype, max_shard_bytes=max_shard_bytes, extra_config=extra,
                          tokenizer=tokenizer, text_model_type=text_model_type)


# ----------------------------------------------------------------------------------------------------------------
# The original haotian-liu/LLaVA release layout
# ----------------------------------------------------------------------------------------------------------------
def _torch_file(file: str) -> Iterator[tuple[str, np.ndarray]]:
    if file.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    import torch
    state = torch.load(file, map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        yield name, (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()


def original_config(lm_config: dict, vision_config: dict, dtype: Any = None, **overrides) -> LlavaConfig:
    """Config of an original LLaVA release: the LM config.json (model_type llava_llama / llava_mistral / ..., with
    the mm_* fields) and the CLIP tower's config.json. Keyword overrides win over the mm_* fields."""
    lm_type = ORIGINAL_LM_TYPES.get(lm_config.get("model_type", "llama"))
    if lm_type is None:
        raise CheckpointError(f"original LLaVA LM model_type {lm_config.get('model_type')!r} is not supported; "
                              f"known: {sorted(ORIGINAL_LM_TYPES)}")
    if lm_config.get("mm_use_im_start_end"):
        raise CheckpointError("mm_use_im_start_end=True (LLaVA-1 <im_start>/<im_end> tokens) is not supported")
    select = lm_config.get("mm_vision_select_feature", "patch")
    pinpoints = None
    if "anyres" in str(lm_config.get("image_aspect_ratio", "")) or \
            "spatial" in str(lm_config.get("mm_patch_merge_type", "flat")):
        pinpoints = tuple(tuple(p) for p in lm_config.get("image_grid_pinpoints") or ())
        if lm_config.get("mm_patch_merge_type", "spatial_unpad") != "spatial_unpad":
            raise CheckpointError(f"mm_patch_merge_type {lm_config['mm_patch_merge_type']!r} is not supported")
    fields = dict(
        text=text_config_from_hf({**lm_config, "model_type": lm_type}, dtype),
        vision=vision_config_from_hf(vision_config, dtype), image_token_index=-200,
        vision_feature_layer=lm_config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy={"patch": "default", "cls_patch": "full"}.get(select, select),
        projector_type=lm_config.get("mm_projector_type", "linear"), image_grid_pinpoints=pinpoints or None)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return LlavaConfig(**fields)


def load_original(lm_dir: str, mm_projector_bin: str | None = None, vision_tower_dir: str | None = None, *,
                  dtype: Any = None, mesh: jax.sharding.Mesh | None = None, **config_overrides) -> tuple[Llava, dict]:
    """The original LLaVA release -> (Llava, params).

    lm_dir: LM weights + config.json (model.layers.*, model.embed_tokens.weight, model.norm.weight, lm_head.weight;
      stage-2 checkpoints also hold model.mm_projector.* and, for NeXT, model.image_newline; a tower saved inside it
      as model.vision_tower.vision_tower.* is used when vision_tower_dir is None).
    mm_projector_bin: stage-1 output with keys model.mm_projector.{0,2}.weight/bias (mlp2x_gelu) or
      model.mm_projector.weight/bias (linear); it wins over a projector stored in lm_dir.
    vision_tower_dir: HF CLIP checkpoint (openai/clip-vit-large-patch14-336).
    config_overrides: LlavaConfig fields (projector_type, vision_feature_layer, vision_feature_select_strategy,
      image_token_index [-200 by default, the original IMAGE_TOKEN_INDEX], image_grid_pinpoints).
    """
    lm_config = read_config(lm_dir)
    vision_hf = read_config(vision_tower_dir) if vision_tower_dir else None
    if vision_hf is None and not lm_config.get("mm_vision_tower"):
        raise CheckpointError("pass vision_tower_dir (the CLIP checkpoint the LLaVA release was trained with)")
    config = original_config(lm_config, vision_hf or {}, dtype, **config_overrides)
    if mm_projector_bin is not None and not os.path.isfile(mm_projector_bin):
        raise FileNotFoundError(f"mm_projector file {mm_projector_bin!r} does not exist")
    module = Llava(config)
    lm = lm_rule(config.text, "llama", prefix=("lm",))
    projector = projector_rule(config, "original")
    vision = clip_rule(config.vision, ("vision_tower",))
    inner_vision = clip_rule(config.vision, ("vision_tower",), "model.vision_tower.vision_tower.")

    def from_lm_dir(name, tensor):
        if "mm_projector" in name:
            return [] if mm_projector_bin else projector(name, tensor)
        if name == "model.image_newline":
            return [Target(("image_newline",))] if config.anyres else None
        if name.startswith("model.vision_tower."):
            return [] if vision_tower_dir else inner_vision(name, tensor)
        return lm(name, tensor)

    def tensors():  # names tagged with their source, so the rule knows which file a tensor came from
        yield from ((f"lm:{n}", t) for n, t in iter_tensors(lm_dir))
        if mm_projector_bin:
            yield from ((f"projector:{n}", t) for n, t in _torch_file(mm_projector_bin))
        if vision_tower_dir:
            yield from ((f"vision:{n}", t) for n, t in iter_tensors(vision_tower_dir))

    def rule(tagged: str, tensor: np.ndarray) -> list[Target] | None:
        source, name = tagged.split(":", 1)
        if source == "lm":
            return from_lm_dir(name, tensor)
        if source == "projector":  # any prefix before mm_projector (model., base_model.model., ...)
            return projector("mm_projector." + name.split("mm_projector.", 1)[1], tensor) \
                if "mm_projector." in name else None
        return vision(name, tensor)

    boxed = abstract_params(config)
    shardings = params_sharding(boxed, mesh) if mesh is not None else None
    params = fill_params(tensors(), rule, nn.unbox(boxed), dtype=dtype, shardings=shardings,
                         source=f"original LLaVA ({lm_dir})")
    return module, params


# ----------------------------------------------------------------------------------------------------------------
# Where a trained LLaVA lives: a workdir, an HF folder, a msgpack folder
# ----------------------------------------------------------------------------------------------------------------
MSGPACK_CONFIG = "llava_config.json"
MSGPACK_PARAMS = "llava_params.msgpack"


def load_workdir(workdir: str, step: int | None = None):
    """Training workdir -> (Llava, merged params (numpy), tokenizer, template, training config)."""
    module, params, tokenizer, config = load_trained(workdir, make_task, step)
    template = config.data.get("template", "vicuna_v1")
    if template == "plain":  # a stage-1 model is queried with the stage-2 template
        template = "vicuna_v1"
    return module, params, tokenizer, template, config


def export(workdir: str, out_dir: str, step: int | None = None, *, dtype: Any = None, format: str = "hf",
           text_model_type: str | None = None) -> str:
    """Workdir (LoRA merged) -> a plain checkpoint folder. format "hf": an HF LLaVA / LLaVA-NeXT folder (`save_hf`,
    with the workdir's template; dtype: tensor dtype on disk; text_model_type: the LLM's HF family, default
    inferred); "msgpack": `save_msgpack`. Returns out_dir."""
    if format not in ("hf", "msgpack"):
        raise ValueError(f"unknown export format {format!r}; use 'hf' or 'msgpack'")
    module, params, tokenizer, template, _ = load_workdir(workdir, step)
    if format == "msgpack":
        return save_msgpack(out_dir, module, params, tokenizer, template)
    return save_hf(out_dir, module, params, tokenizer, template=template, dtype=dtype,
                   text_model_type=text_model_type)


def save_msgpack(out_dir: str, module: Llava, params, tokenizer, template: str = "vicuna_v1") -> str:
    """Our own folder format: llava_config.json (the LlavaConfig and the template) + llava_params.msgpack + the
    tokenizer. Returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, MSGPACK_CONFIG), "w") as f:
        json.dump({"llava_config": dataclasses.asdict(module.config), "template": template}, f, indent=1)
    with open(os.path.join(out_dir, MSGPACK_PARAMS), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    save_tokenizer(tokenizer, out_dir)
    return out_dir


def _llava_config_from_json(d: dict) -> LlavaConfig:
    d = dict(d)
    text = dict(d.pop("text"))
    if text.get("rope_scaling") is not None:
        text["rope_scaling"] = tuple(tuple(x) for x in text["rope_scaling"])
    vision = CLIPVisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vision").items()})
    for k in ("vision_feature_layer", "image_grid_pinpoints"):
        if isinstance(d.get(k), list):
            d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
    return LlavaConfig(text=LMConfig(**text), vision=vision, **d)


def load_msgpack(out_dir: str):
    """A `save_msgpack` folder -> (Llava, params, tokenizer, template)."""
    with open(os.path.join(out_dir, MSGPACK_CONFIG)) as f:
        meta = json.load(f)
    with open(os.path.join(out_dir, MSGPACK_PARAMS), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    return (Llava(_llava_config_from_json(meta["llava_config"])), params, load_saved_tokenizer(out_dir),
            meta.get("template", "vicuna_v1"))


def load_model(path: str, template: str | None = None):
    """A training workdir, an HF LLaVA folder or a msgpack folder -> (Llava, params, tokenizer, template)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, MSGPACK_CONFIG)):
        module, params, tokenizer, saved_template = load_msgpack(path)
    elif os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        module, params, tokenizer, saved_template, _ = load_workdir(path)
    elif os.path.isfile(os.path.join(path, "config.json")):
        module, params = load_hf(path)
        tokenizer = load_tokenizer(path)
        tokenizer.add_family_tokens("llava")
        saved_template = read_config(path).get("conversation_template") or "vicuna_v1"
    else:
        raise FileNotFoundError(f"{path}: not a training workdir ({CHECKPOINTS_DIR}/), a msgpack folder "
                                f"({MSGPACK_CONFIG}) or an HF LLaVA checkpoint (config.json)")
    return module, params, tokenizer, template or saved_template
