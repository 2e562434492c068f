"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1): W' = W + (alpha / r) A B
on chosen linear layers, A [in, r] (Kaiming-uniform, as PEFT) and B [r, out] zero-initialised, so training starts
from the base model exactly. Used by LLaVA-1.5's LoRA variant (r=128, alpha=256 on every linear layer of the LM)
and available to any family's `common.lm` decoder.

No copy of the model: the adapters are extra parameters in their own subtree, and `merge(params, lora, config)`
adds the low-rank products to the base kernels inside the loss (a param-tree transform at apply time). The base
parameters are then frozen through the optimizer's param groups (`optax.set_to_zero`, no optimizer state) and
receive no gradient; `merge` is also the export: merged params are a plain checkpoint of the base architecture.

Kernels of `common.lm` (scanned layers add a leading layer axis L):
  attn/q, attn/k, attn/v  [L, E, H, D]    in = 1 axis (E), out = 2 axes
  attn/o                  [L, H, D, E]    in = 2 axes, out = 1
  mlp/gate, mlp/up, mlp/down [L, in, out] in = 1, out = 1
A target is (regex on the '/'-joined path, number of input axes, number of output axes); the axes before them are
batch axes (the scanned layer axis) and get one adapter each.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from collections.abc import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (regex, input axes, output axes) for common.lm's decoder (any layer stacking).
LM_TARGETS: dict[str, tuple[str, int, int]] = {
    "q": (r"(.*/)?attn/q/kernel", 1, 2),
    "k": (r"(.*/)?attn/k/kernel", 1, 2),
    "v": (r"(.*/)?attn/v/kernel", 1, 2),
    "o": (r"(.*/)?attn/o/kernel", 2, 1),
    "gate": (r"(.*/)?mlp/gate/kernel", 1, 1),
    "up": (r"(.*/)?mlp/up/kernel", 1, 1),
    "down": (r"(.*/)?mlp/down/kernel", 1, 1),
}
ALL_LINEAR = tuple(LM_TARGETS)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_LINEAR  # names of LM_TARGETS
    prefix: str = ""  # only paths under this prefix (e.g. "lm/": the LLM of a LLaVA, not its vision tower)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def compiled(self) -> list[tuple[re.Pattern, int, int]]:
        unknown = set(self.targets) - set(LM_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; known: {sorted(LM_TARGETS)}")
        return [(re.compile(re.escape(self.prefix) + LM_TARGETS[t][0]), LM_TARGETS[t][1], LM_TARGETS[t][2])
                for t in self.targets]


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """A training config's `lora` section: rank 0 = no adapters; alpha 0 = 2 x rank (LLaVA-1.5's LoRA script: r 128,
    alpha 256); targets: names of LM_TARGETS (empty = ALL_LINEAR)."""

    rank: int = 0
    alpha: float = 0.0
    targets: tuple[str, ...] = ()

    def lora_config(self, prefix: str) -> LoraConfig | None:
        """The adapters of the LM under `prefix`, or None when the rank is 0."""
        if not self.rank:
            return None
        return LoraConfig(rank=self.rank, alpha=self.alpha or 2.0 * self.rank, targets=self.targets or ALL_LINEAR,
                          prefix=prefix)


def _flat(params) -> dict[str, Any]:
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def _unflat(flat: dict[str, Any]) -> dict:
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def targets(params, config: LoraConfig) -> dict[str, tuple[int, int]]:
    """'/'-path of every adapted kernel -> (batch axes, input axes)."""
    out = {}
    for path, leaf in _flat(params).items():
        for regex, n_in, n_out in config.compiled():
            if regex.fullmatch(path):
                n_batch = len(leaf.shape) - n_in - n_out
                if n_batch < 0:
                    raise ValueError(f"LoRA target {path} has shape {leaf.shape}: fewer than {n_in}+{n_out} axes")
                out[path] = (n_batch, n_in)
                break
    if not out:
        raise ValueError(f"no parameter matches the LoRA targets {config.targets} under prefix {config.prefix!r}")
    return out


def _split_shape(shape, n_batch: int, n_in: int):
    batch, rest = tuple(shape[:n_batch]), tuple(shape[n_batch:])
    return batch, int(np.prod(rest[:n_in])), int(np.prod(rest[n_in:]))


def init(params, config: LoraConfig, rng: jax.Array | int = 0) -> dict:
    """Adapters {path...: {"a": [*batch, in, r], "b": [*batch, r, out] zeros}} for the targeted kernels of `params`
    (concrete or abstract). A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0. Kernels
    boxed with logical axis names (`nn.LogicallyPartitioned`) give their adapters names too: the batch axes', the
    first input axis's on A, the first output axis's on B, `lora_rank` (replicated) between, so that A, B and the
    product A B are sharded as the kernel is (fsdp over its `embed` side, tensor over its wide side)."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    flat = _flat(params)
    out = {}
    for i, (path, (n_batch, n_in)) in enumerate(sorted(targets(nn.unbox(params), config).items())):
        leaf = nn.unbox(flat[path])
        batch, fan_in, fan_out = _split_shape(leaf.shape, n_batch, n_in)
        bound = 1.0 / math.sqrt(fan_in)
        dtype = leaf.dtype
        a = jax.random.uniform(jax.random.fold_in(rng, i), batch + (fan_in, config.rank), dtype, -bound, bound)
        b = jnp.zeros(batch + (config.rank, fan_out), dtype)
        names = getattr(flat[path], "names", None)
        if names is not None:  # [*batch, in..., out...] -> A [*batch, in[0], rank], B [*batch, rank, out[0]]
            a = nn.LogicallyPartitioned(a, tuple(names[:n_batch]) + (names[n_batch], "lora_rank"))
            b = nn.LogicallyPartitioned(b, tuple(names[:n_batch]) + ("lora_rank", names[n_batch + n_in]))
        out[path + "/a"], out[path + "/b"] = a, b
    return _unflat(out)


def delta(a: jax.Array, b: jax.Array, shape, scale: float) -> jax.Array:
    """scale * A @ B reshaped to the kernel's shape (batch axes kept)."""
    return (scale * jnp.einsum("...ir,...ro->...io", a, b)).reshape(shape)


def merge(params, lora: dict, config: LoraConfig) -> dict:
    """Base params with every adapted kernel replaced by W + scale * A B (the rest shared, not copied)."""
    flat = _flat(params)
    adapters = _flat(lora)
    for path in {k.rsplit("/", 1)[0] for k in adapters}:
        if path not in flat:
            raise KeyError(f"LoRA adapter for {path}, which is not a parameter of the model")
        w = flat[path]
        flat[path] = (w + delta(adapters[path + "/a"], adapters[path + "/b"], w.shape, config.scale)).astype(w.dtype)
    return _unflat(flat)


def split(params, key: str = "lora") -> tuple[dict, dict | None]:
    """params {..., key: adapters} -> (base params, adapters or None)."""
    params = dict(params)
    return params, params.pop(key, None)


def merge_in_tree(params, config: LoraConfig | None, key: str = "lora") -> dict:
    """Params holding their adapters under `key` -> merged plain params (no `key`); unchanged without adapters."""
    base, lora = split(params, key)
    if lora is None or config is None:
        return base
    return merge(base, lora, config)


def trainable_patterns(key: str = "lora") -> Sequence[str]:
    """Optimizer param-group regexes of the adapters (everything else frozen: see common.optimizer)."""
    return (f"{key}/.*",)


def count(lora: dict) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lora)))
