"""Loading local Hugging Face checkpoints into this library's Flax modules, and saving them back.

`load(path)` reads `config.json`, picks the architecture by `model_type`, builds the module from the
config (never typed by hand) and streams the weights tensor by tensor into its parameter tree.
`save(path, module, params)` is its inverse: config.json from the module's config (`to_hf_config`, checked by
reading it back) and safetensors under the checkpoint's own tensor names and layouts, obtained by inverting the same
tensor-name rules the loader uses (`common.hf.checkpoint.export_tensors`), so `load(save(...))` gives identical
parameters and transformers loads the directory.
Each architecture registers an `Architecture` in `ARCHITECTURES` from its own file in this package.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.hf.checkpoint import (CheckpointError, Rule, fill_params, iter_tensors, read_config, save_tensors,
                                  weight_files)
from common.params import abstract_params
from common.sharding import params_sharding
from common.tokenizers import HFJsonTokenizer, SentencePieceTokenizer


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to build one model_type: module from the HF config dict, the tensor-name rule for that module,
    and a dummy input for `init` shape inference."""

    build: Callable[[dict, Any], nn.Module]  # (hf_config, dtype or None) -> module
    rule: Callable[[nn.Module], Rule]
    example_inputs: Callable[[nn.Module], tuple]  # args for module.init (shapes only matter)
    # Saving (optional): (module, model_type, **options) -> config.json dict, and which model_type a module is.
    to_hf_config: Callable[..., dict] | None = None
    model_type_of: Callable[[nn.Module], str | None] | None = None


ARCHITECTURES: dict[str, Architecture] = {}


def register(*model_types: str):
    def wrap(arch: Architecture) -> Architecture:
        for model_type in model_types:
            ARCHITECTURES[model_type] = arch
        return arch
    return wrap


def _ensure_registered() -> None:
    # Importing the architecture modules fills ARCHITECTURES (they import this package: imported here, not above).
    from common.hf import lm  # noqa: F401
    try:
        from common.hf import vision  # noqa: F401
    except ImportError:  # pragma: no cover - vision converters are optional at import time
        pass
    for family in ("llava_jax.hf",):  # family packages register their multimodal architectures (llava, llava_next)
        try:
            importlib.import_module(family)
        except ModuleNotFoundError as e:  # pragma: no cover - the family package is not installed
            if e.name != family.split(".")[0]:
                raise


def model_type_of(config: dict) -> str:
    model_type = config.get("model_type")
    if model_type is None:
        raise CheckpointError("config.json has no model_type")
    return model_type


def load_from_config(path: str, config: dict, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                     architecture: Architecture | None = None) -> tuple[nn.Module, dict]:
    _ensure_registered()
    if architecture is None:
        model_type = model_type_of(config)
        if model_type not in ARCHITECTURES:
            raise CheckpointError(f"unknown model_type {model_type!r} in {path}/config.json; "
                                  f"supported: {sorted(ARCHITECTURES)}")
        architecture = ARCHITECTURES[model_type]
    weight_files(path)  # fail early, before building anything, when the weights are absent
    module = architecture.build(config, dtype)
    boxed = abstract_params(module, *architecture.example_inputs(module))
    shardings = None
    if mesh is not None:
        shardings = params_sharding(boxed, mesh)
    params = fill_params(iter_tensors(path), architecture.rule(module), nn.unbox(boxed),
                         dtype=dtype, shardings=shardings, source=path)
    return module, params


def load(path: str, dtype: Any = None, mesh: jax.sharding.Mesh | None = None) -> tuple[nn.Module, dict]:
    """Loads a local HF checkpoint directory -> (module, params).

    dtype: parameter dtype (e.g. jnp.bfloat16); None keeps float32. With `mesh`, each parameter is
    placed straight onto its shards as soon as it is assembled.
    """
    return load_from_config(path, read_config(path), dtype=dtype, mesh=mesh)


def model_type_for(module: nn.Module) -> str:
    """The HF model_type a module of ours is saved as (asks every registered architecture)."""
    _ensure_registered()
    for architecture in dict.fromkeys(ARCHITECTURES.values()):  # each once, in registration order
        found = architecture.model_type_of(module) if architecture.model_type_of else None
        if found:
            return found
    raise CheckpointError(f"no registered architecture saves a {type(module).__name__}")


def save(path: str, module: nn.Module, params: Any, model_type: str | None = None, *, dtype: Any = None,
         max_shard_bytes: int = 5 * 2**30, extra_config: dict | None = None, tokenizer=None, **config_options) -> str:
    """Writes (module, params) as a Hugging Face checkpoint directory: config.json + model.safetensors (sharded past
    `max_shard_bytes`). model_type: the HF family (default: inferred from the module, e.g. llama for a Llama-layout
    DecoderLM); dtype: tensor dtype on disk (None keeps the parameters'); config_options go to the architecture's
    `to_hf_config`; extra_config entries are added to config.json; a `tokenizer` adds its files and special-token ids
    (`write_checkpoint`). Returns path."""
    _ensure_registered()
    model_type = model_type or model_type_for(module)
    architecture = ARCHITECTURES.get(model_type)
    if architecture is None or architecture.to_hf_config is None:
        raise CheckpointError(f"saving model_type {model_type!r} is not supported; supported: "
                              f"{sorted(k for k, a in ARCHITECTURES.items() if a.to_hf_config)}")
    config = {**architecture.to_hf_config(module, model_type, **config_options), **(extra_config or {})}
    return write_checkpoint(path, params, architecture.rule(module), config, dtype=dtype,
                            max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, source=f"{model_type} model")


def write_checkpoint(path: str, params: Any, rule: Rule, config: dict, *, dtype: Any = None,
                     max_shard_bytes: int = 5 * 2**30, tokenizer=None, source: str = "model") -> str:
    """What every exporter writes (`save`, and the families' `save_hf`): safetensors under `rule`'s names (sharded
    past `max_shard_bytes`; tensors in `dtype`, default the parameters'), config.json = `config` + the stored dtype
    (`dtype` / `torch_dtype`) + the tokenizer's bos / eos / pad ids, and the tokenizer's files when given."""
    leaves = jax.tree.leaves(params)
    stored = jnp.dtype(dtype) if dtype is not None else (jnp.dtype(leaves[0].dtype) if leaves else jnp.float32)
    config = {**config, "dtype": stored.name, "torch_dtype": stored.name}
    if tokenizer is not None:
        config.update({f"{k}_token_id": getattr(tokenizer, f"{k}_id") for k in ("bos", "eos", "pad")
                       if getattr(tokenizer, f"{k}_id", None) is not None})
    os.makedirs(path, exist_ok=True)
    save_tensors(path, params, rule, dtype=dtype, max_shard_bytes=max_shard_bytes, source=source)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if tokenizer is not None:
        save_tokenizer_files(tokenizer, path)
    return path


def save_tokenizer_files(tokenizer, out_dir: str) -> None:
    """The tokenizer as HF tokenizer files: tokenizer.json (a `tokenizers` tokenizer) or tokenizer.model +
    added_tokens.json (SentencePiece, `<image>` and other added tokens with their ids), and tokenizer_config.json
    with the bos / eos / pad tokens. `common.tokenizers.load_tokenizer(out_dir)` reads them back."""
    specials = {f"{k}_token": tokenizer.id_to_token(getattr(tokenizer, f"{k}_id")) for k in ("bos", "eos", "pad")
                if getattr(tokenizer, f"{k}_id", None) is not None}
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(tokenizer, HFJsonTokenizer):
        tokenizer.tok.save(os.path.join(out_dir, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials}
    elif isinstance(tokenizer, SentencePieceTokenizer):
        with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
            f.write(tokenizer.sp.serialized_model_proto())
        with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
            json.dump(dict(sorted(tokenizer._added.items(), key=lambda kv: kv[1])), f, indent=1)
        config = dict(specials)
    else:
        raise CheckpointError(f"cannot save a {type(tokenizer).__name__} as HF tokenizer files")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


__all__ = ["Architecture", "ARCHITECTURES", "CheckpointError", "load", "load_from_config", "model_type_for",
           "register", "save", "save_tokenizer_files", "write_checkpoint", "jnp"]
