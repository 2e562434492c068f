"""Loading a LLaVA for inference from any of the three places one lives, and exporting plain checkpoints (LLaVA-1.5's
LoRA variant, Liu et al. 2023b Appendix, is merged into the base weights here: the original's "merge_lora_weights"
step that users found confusing is one call).

`load_model(path)` -> (Llava, params, tokenizer, template):
  * a training workdir of ours: config.json + checkpoints/<step>/state (+ tokenizer.json); LoRA adapters merged;
  * an HF LLaVA / LLaVA-NeXT dir (config.json with model_type llava / llava_next, e.g. written by `export`):
    `llava_jax.load_hf` + its tokenizer, `<image>` added; the template is config.json's `conversation_template`;
  * a msgpack export dir (`export(..., format="msgpack")`): llava_config.json + llava_params.msgpack + tokenizer.
`export(workdir, out_dir)` writes the merged params of a workdir (a plain checkpoint with no adapters) as a standard
Hugging Face checkpoint directory (`llava_jax.hf.save_hf`): transformers' LlavaForConditionalGeneration loads it, so
do `load_model` and `llava_jax.chat --checkpoint`. format="msgpack" keeps our own format, for what HF LLaVA cannot
express (LLaVA-1's linear projector, the original's placeholder id -200).
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax
import jax
import numpy as np

from common.checkpoints import CHECKPOINTS_DIR
from common.lm import LMConfig
from common.task_utils import load_trained
from common.tokenizers import save_tokenizer
from common.vision.clip import CLIPVisionConfig
from llava_jax import data as data_lib
from llava_jax.model import Llava, LlavaConfig
from llava_jax.task import make_task

EXPORT_CONFIG = "llava_config.json"
EXPORT_PARAMS = "llava_params.msgpack"


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def load_workdir(workdir: str, step: int | None = None):
    """Training workdir -> (Llava, merged params (numpy), tokenizer, template, training config)."""
    module, params, tokenizer, config = load_trained(workdir, make_task, step)
    template = config.data.get("template", "vicuna_v1")
    if template == "plain":  # a stage-1 model is queried with the stage-2 template
        template = "vicuna_v1"
    return module, params, tokenizer, template, config


def export(workdir: str, out_dir: str, step: int | None = None, *, format: str = "hf", dtype=None,
           text_model_type: str | None = None) -> str:
    """Workdir (LoRA merged) -> plain checkpoint dir. format "hf": an HF LLaVA / LLaVA-NeXT directory
    (`llava_jax.hf.save_hf`; dtype: tensor dtype on disk, text_model_type: the LLM's HF family, default inferred);
    "msgpack": our own llava_config.json + llava_params.msgpack. Returns out_dir."""
    module, params, tokenizer, template, config = load_workdir(workdir, step)
    if format == "hf":
        from llava_jax.hf import save_hf

        return save_hf(out_dir, module, params, tokenizer, template=template, dtype=dtype,
                       text_model_type=text_model_type)
    if format != "msgpack":
        raise ValueError(f"unknown export format {format!r}; use 'hf' or 'msgpack'")
    save(out_dir, module, params, tokenizer, template)
    return out_dir


def save(out_dir: str, module: Llava, params, tokenizer, template: str = "vicuna_v1") -> None:
    """Our own export format (llava_config.json + llava_params.msgpack + tokenizer); `export` writes HF by default."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = dataclasses.asdict(module.config)
    with open(os.path.join(out_dir, EXPORT_CONFIG), "w") as f:
        json.dump({"llava_config": cfg, "template": template}, f, indent=1)
    with open(os.path.join(out_dir, EXPORT_PARAMS), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    save_tokenizer(tokenizer, out_dir)


def _config_from_dict(d: dict):
    d = dict(d)
    text = dict(d.pop("text"))
    if text.get("rope_scaling") is not None:
        text["rope_scaling"] = tuple(tuple(x) for x in text["rope_scaling"])
    vision = CLIPVisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vision").items()})
    for k in ("vision_feature_layer", "image_grid_pinpoints"):
        if isinstance(d.get(k), list):
            d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
    return LlavaConfig(text=LMConfig(**text), vision=vision, **d)


def load_export(out_dir: str):
    meta = _read_json(os.path.join(out_dir, EXPORT_CONFIG))
    cfg = _config_from_dict(meta["llava_config"])
    with open(os.path.join(out_dir, EXPORT_PARAMS), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    return Llava(cfg), params, data_lib.load_saved_tokenizer(out_dir), meta.get("template", "vicuna_v1")


def load_model(path: str, template: str | None = None):
    """Workdir, export dir or HF LLaVA dir -> (Llava, params, tokenizer, template)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, EXPORT_CONFIG)):
        module, params, tok, tmpl = load_export(path)
    elif os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        module, params, tok, tmpl, _ = load_workdir(path)
    elif os.path.isfile(os.path.join(path, "config.json")):
        from common.tokenizers import load_tokenizer
        from llava_jax.hf import load_hf

        module, params = load_hf(path)
        tok = load_tokenizer(path)
        tok.add_family_tokens("llava")
        tmpl = _read_json(os.path.join(path, "config.json")).get("conversation_template") or "vicuna_v1"
    else:
        raise FileNotFoundError(f"{path}: not a training workdir (checkpoints/), an export dir ({EXPORT_CONFIG}) "
                                "or an HF LLaVA checkpoint (config.json)")
    return module, params, tok, template or tmpl
