"""Streaming reader for local Hugging Face checkpoint directories and the generic tensor-by-tensor
converter that fills a Flax parameter tree (optionally placing each leaf straight onto its shards).

A checkpoint directory holds `config.json` and `model.safetensors`, or a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` (read with torch when it is installed).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax
import jax
import numpy as np

Path = tuple[str, ...]


class CheckpointError(ValueError):
    """A checkpoint directory or its tensors do not match what the model expects."""


def read_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} has no config.json")
    with open(config_path) as f:
        return json.load(f)


def weight_files(path: str) -> list[tuple[str, str]]:
    """[(format, file)] in the order they should be read."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "torch")):
        index_path = os.path.join(path, index_name)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return [(fmt, os.path.join(path, name)) for name in files]
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return [("safetensors", os.path.join(path, "model.safetensors"))]
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        return [("torch", os.path.join(path, "pytorch_model.bin"))]
    raise FileNotFoundError(
        f"{path!r} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def iter_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) one tensor at a time; safetensors files are memory-mapped, so only the
    tensor being converted is resident."""
    for fmt, file in weight_files(path):
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            try:
                import torch
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(f"{file} is a PyTorch pickle: install torch to read it, or convert to safetensors") from e
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                tensor = state.pop(name)
                yield name, tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes: the param path, an index into that leaf (the layer slot of a
    stacked leaf, () for the whole leaf) and the transform applied to the tensor first."""

    path: Path
    index: tuple[int, ...] = ()
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


# A rule maps a checkpoint tensor name to its targets; [] means "known, deliberately unused" and
# None means "not mine" (the loader reports it as unexpected).
Rule = Callable[[str, np.ndarray], list[Target] | None]


def fill_params(
    tensors: Iterator[tuple[str, np.ndarray]],
    rule: Rule,
    abstract_params: Any,
    *,
    dtype: Any = None,
    shardings: Any = None,
    allow_missing: Sequence[Path] = (),
    source: str = "checkpoint",
) -> dict:
    """Streams tensors into a parameter tree shaped like `abstract_params` (ShapeDtypeStructs).

    Each leaf is assembled in one host buffer; as soon as all its slots are written it is moved to the
    device(s) (with `shardings` when given) and the host buffer is dropped, so a model never sits
    twice in host memory. Missing, unexpected and mis-shaped tensors raise CheckpointError.
    """
    flat_abstract = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_params))
    flat_shardings = flax.traverse_util.flatten_dict(flax.core.unfreeze(shardings)) if shardings is not None else {}
    buffers: dict[Path, np.ndarray] = {}
    remaining: dict[Path, int] = {}
    written: dict[Path, set] = {}
    done: dict[Path, jax.Array] = {}
    unexpected: list[str] = []

    for name, tensor in tensors:
        targets = rule(name, tensor)
        if targets is None:
            unexpected.append(name)
            continue
        for target in targets:
            if target.path not in flat_abstract:
                raise CheckpointError(f"{source}: tensor {name!r} maps to {'/'.join(target.path)}, which the model does not have")
            leaf = flat_abstract[target.path]
            value = np.asarray(target.transform(np.asarray(tensor)))
            slot_shape = leaf.shape[len(target.index):]
            if value.shape != tuple(slot_shape):
                raise CheckpointError(
                    f"{source}: tensor {name!r} -> {'/'.join(target.path)}{list(target.index)} has shape "
                    f"{value.shape} after conversion, the model expects {tuple(slot_shape)}")
            if target.path not in buffers:
                # The host buffer already has the final dtype (ml_dtypes gives numpy bfloat16).
                buffers[target.path] = np.empty(leaf.shape, dtype=np.dtype(dtype if dtype is not None else leaf.dtype))
                # A stacked leaf is written one layer slot at a time.
                remaining[target.path] = int(np.prod(leaf.shape[:len(target.index)])) if target.index else 1
                written[target.path] = set()
            if target.index in written[target.path]:
                raise CheckpointError(f"{source}: {'/'.join(target.path)}{list(target.index)} written twice (by {name!r})")
            written[target.path].add(target.index)
            if target.index:
                buffers[target.path][target.index] = value
            else:
                buffers[target.path][...] = value
            remaining[target.path] -= 1
            if remaining[target.path] == 0:  # every slot written: move the leaf to its devices
                host = buffers.pop(target.path)
                sharding = flat_shardings.get(target.path)
                done[target.path] = jax.device_put(host, sharding) if sharding is not None else jax.device_put(host)
                del host

    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:5]}")
    incomplete = sorted('/'.join(p) for p in buffers)
    missing = sorted('/'.join(p) for p in flat_abstract if p not in done and p not in buffers and p not in allow_missing)
    if incomplete or missing:
        raise CheckpointError(f"{source}: missing tensors for {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                              f"{'; incomplete stacked leaves ' + str(incomplete[:8]) if incomplete else ''}")
    return flax.traverse_util.unflatten_dict(done)


def stacked(prefix: Path, layer: int, scan: bool, inner: Path) -> tuple[Path, tuple[int, ...]]:
    """Location of layer `layer`'s leaf `inner` under `prefix`: (prefix + ('layers',) + inner, (layer,))
    when layers are scanned (stacked on a leading axis), else (prefix + (f'layers_{layer}',) + inner, ())."""
    if scan:
        return prefix + ("layers",) + inner, (layer,)
    return prefix + (f"layers_{layer}",) + inner, ()


def transpose(a: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> kernel [in, out]."""
    return np.ascontiguousarray(a.T)


def linear_to_heads(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch Linear weight [H*D, E] -> kernel [E, H, D]."""
    return lambda a: np.ascontiguousarray(a.T.reshape(a.shape[1], num_heads, head_dim))


def bias_to_heads(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """bias [H*D] -> [H, D]."""
    return lambda a: a.reshape(num_heads, head_dim)


def linear_from_heads(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch Linear weight [E, H*D] (the output projection) -> kernel [H, D, E]."""
    return lambda a: np.ascontiguousarray(a.T.reshape(num_heads, head_dim, a.shape[0]))


def config_get(config: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING) -> Any:
    """First present key among `names` (HF configs name the same field differently per family)."""
    for name in names:
        if name in config and config[name] is not None:
            return config[name]
    if default is dataclasses.MISSING:
        raise CheckpointError(f"config.json lacks {' / '.join(names)}")
    return default
