"""Parameter-tree utilities: shapes without memory, counts, and a fast host-side random init.

`random_params` fills the shapes of `module.init` with numpy random numbers instead of running the
initialisers under XLA (whose threefry programs take seconds to compile on a CPU): tests and CPU
experiments get parameters in milliseconds. Norm scales are drawn around 1 and biases around 0, so a
swapped or dropped tensor cannot hide behind init values of exactly 1 and 0.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def abstract_params(module: nn.Module, *args, **kwargs) -> Any:
    """ShapeDtypeStructs of `module.init(rng, *args, **kwargs)["params"]`, boxed with their logical axis names
    (`nn.unbox` for plain shapes), without allocating memory. Every family's `abstract_params(config)` is this with
    the family's example inputs."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]


def count(params: Any) -> int:
    """Scalars in a parameter tree (arrays, ShapeDtypeStructs, boxed or not)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))


def counts_by_part(params: Any) -> dict[str, int]:
    """{top-level name: scalars} of a parameter tree, plus 'total': what every family's `param_counts` returns."""
    counts = {name: count(part) for name, part in nn.unbox(params).items()}
    counts["total"] = sum(counts.values())
    return counts


def random_params(module: nn.Module, *args, seed: int = 0, stddev: float = 0.02, **kwargs) -> Any:
    """Random parameters with the structure of `module.init(...)["params"]`, drawn with numpy."""
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(nn.unbox(abstract_params(module, *args, **kwargs)))
    out = {}
    for path, leaf in flat.items():
        name = path[-1]
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "scale":
            value = 1.0 + 0.1 * noise
        elif name == "bias":
            value = 0.1 * noise
        else:
            value = stddev * noise
        out[path] = jnp.asarray(value, dtype=leaf.dtype)
    return flax.traverse_util.unflatten_dict(out)
