"""Helpers every family's training task shares: copying a pretrained
(or earlier-stage) parameter tree into a fresh one by path and shape (`graft`), reading a training workdir's
latest parameters (`restore_params`) and its config (`restore_config`), the LoRA settings of a config, and the
two functions a multimodal LM task gives the trainer: its parameter initialiser (`init_params_fn`, adapters
included) and its next-token loss on the answer tokens (`lm_loss_fn`, fused with the LM head)."""
from __future__ import annotations

import json
import logging
import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import lora as lora_lib
from common.checkpoints import CHECKPOINTS_DIR, Checkpointer
from common.config_sections import config_section
from common.lm import LMConfig, head_kernel
from common.losses import next_token_loss, shifted_next_token_loss
from common.tokenizers import SAVED_TOKENIZER_FILE, save_tokenizer
from common.trainer import CONFIG_FILE

log = logging.getLogger("common.task_utils")


def keep_tokenizer(tokenizer, workdir: str | None) -> None:
    """Saves the run's tokenizer into its workdir at the first start (process 0; `common.tokenizers.save_tokenizer`),
    where every family's `build_tokenizer` reads it back on resume."""
    if workdir and not os.path.isfile(os.path.join(workdir, SAVED_TOKENIZER_FILE)) and jax.process_index() == 0:
        save_tokenizer(tokenizer, workdir)


def lora_config_from(config, prefix: str = "lm/") -> lora_lib.LoraConfig | None:
    """config.lora {rank (0 = off), alpha, targets} -> LoraConfig for the LLM under `prefix`, or None."""
    return config_section(config, "lora", lora_lib.LoraSettings).lora_config(prefix)


def init_params_fn(model: nn.Module, example_inputs: tuple, lora_config: lora_lib.LoraConfig | None = None,
                   extra_params=None):
    """rng -> the model's random (boxed) parameters for `model.init(rng, *example_inputs)`, plus `extra_params(rng)`
    (parameters outside the model, e.g. VITA's CTC head) and, with `lora_config`, the adapters under params['lora']
    (`common.lora`)."""

    def init_params(rng):
        params = dict(model.init(rng, *example_inputs)["params"])
        if extra_params is not None:
            params.update(extra_params(jax.random.fold_in(rng, 2)))
        if lora_config is not None:
            params["lora"] = lora_lib.init(params, lora_config, jax.random.fold_in(rng, 1))
        return params

    return init_params


def lm_loss_fn(model: nn.Module, lm_config: LMConfig, model_inputs=None,
               lora_config: lora_lib.LoraConfig | None = None, dropout: bool = False, lm_path: str = "lm",
               fused: bool = True):
    """The trainer's `loss_fn` of a (multimodal) LM: `model.apply(params, batch['input_ids'], **model_inputs(batch))`
    to its final hidden states [B, T, E], then the mean next-token cross-entropy on the tokens of
    batch['loss_mask'], fused with the LM head (`common.losses`: no [B, T, V] logits are formed). Position t predicts
    input_ids[t + 1] (loss_mask marks the ids that count: the answers), or batch['targets'][t] when the batch
    carries its targets already shifted (the text LM task's token windows; loss_mask then marks the targets).
    lm_path: where the DecoderLM's parameters sit in the tree ('' = the root); LoRA adapters are merged in first;
    dropout: the model runs with deterministic=False and the step's rng. fused=False: the model's full float32 logits
    [B, T, V], then the same cross-entropy (config `lm_loss: logits`)."""

    def loss_fn(params, batch, rng):
        params = lora_lib.merge_in_tree(params, lora_config)
        ids = batch["input_ids"]
        inputs = model_inputs(batch) if model_inputs is not None else {}
        stochastic = dict(deterministic=False, rngs={"dropout": rng}) if dropout else {}
        # [B, T, E] final hidden states (fused) or [B, T, V] logits
        out = model.apply({"params": params}, ids, **inputs, **stochastic, return_hidden=fused)
        kernel = head_kernel(params[lm_path] if lm_path else params, lm_config) if fused else None  # [E, V]
        if "targets" in batch:
            return next_token_loss(out, batch["targets"], batch["loss_mask"], kernel=kernel)
        return shifted_next_token_loss(out, ids, batch["loss_mask"], kernel=kernel)

    return loss_fn


def load_trained(workdir: str, make_task, step: int | None = None, config=None):
    """A training workdir -> (model, params, tokenizer, config), the one way every family loads what it trained: the
    family's task rebuilt by `make_task(config, workdir)` from the workdir's config.json (or `config`) and its saved
    tokenizer, and the checkpoint's parameters (latest, or `step`; host numpy arrays) with any LoRA adapters merged."""
    config = restore_config(workdir) if config is None else config
    task = make_task(config, workdir)
    params = lora_lib.merge_in_tree(restore_params(workdir, step), task.lora_config)
    return task.model, params, task.tokenizer, config


def _flat(tree) -> dict[str, object]:
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def graft(params, source, prefix: str = "", exclude=(), what: str = "checkpoint", strict: bool = False) -> dict:
    """Copies every leaf of `source` (a param tree) whose path (prefixed) and shape match `params`, onto the
    sharding of the leaf it replaces. Returns the new tree; logs what was copied and what was not. `strict`: every
    leaf of `source` (not excluded) must find its place, else a ValueError naming the misfits (a frozen part left at
    its random init would go unnoticed)."""
    dst = _flat(params)
    src = _flat(source)
    excluded = [re.compile(p) for p in exclude]
    copied, skipped = 0, []
    for path, value in src.items():
        full = prefix + path
        if any(r.fullmatch(full) for r in excluded):
            continue
        if full not in dst:
            skipped.append(f"{full} (not in the model)")
            continue
        old = dst[full]
        if tuple(np.shape(value)) != tuple(old.shape):
            skipped.append(f"{full} {np.shape(value)} != {old.shape}")
            continue
        sharding = getattr(old, "sharding", None)
        new = jnp.asarray(value, old.dtype)
        dst[full] = jax.device_put(new, sharding) if sharding is not None else new
        copied += 1
    if copied == 0:
        raise ValueError(f"nothing copied from {what}: no matching parameter paths / shapes ({skipped[:5]})")
    if strict and skipped:
        raise ValueError(f"{len(skipped)} tensors of {what} have no place of their shape in the model, e.g. "
                         f"{skipped[:4]}")
    log.info("copied %d tensors from %s; not copied: %d %s", copied, what, len(skipped), skipped[:8])
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in dst.items()})


def restore_config(workdir: str):
    """The training config a workdir was run with (its config.json, written by the trainer) as a ConfigDict."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE} (not a training workdir?)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, step: int | None = None):
    """Host (numpy) params of a training workdir's checkpoint (latest by default), without its optimizer state
    (`common.checkpoints.Checkpointer.restore_params`)."""
    root = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {root})")
    checkpointer = Checkpointer(root, async_save=False)
    try:
        return checkpointer.restore_params(step)
    finally:
        checkpointer.close()
