"""Streaming reader for local Hugging Face checkpoint directories and the generic tensor-by-tensor
converter that fills a Flax parameter tree (optionally placing each leaf straight onto its shards), and its
inverse: `export_tensors` / `save_tensors` write a parameter tree back under the checkpoint's tensor names.

A checkpoint directory holds `config.json` and `model.safetensors`, or a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` (read with torch when it is installed).

Saving inverts the very rules that load: a rule lists the tensor names it accepts (`rule.names`, see `named`), and
every transform is a `Gather` (it only moves or selects the checkpoint tensor's elements: transpose, reshape into
heads, slicing a fused q/k/v) that knows the checkpoint tensor's shape. Applying the forward transform to the
element indices of that shape tells where every element of every target came from, so the checkpoint tensor is
rebuilt exactly, fused tensors included, without a hand-written inverse that could drift from the loader.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

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
                raise ImportError(f"{file} is a PyTorch pickle: install torch to read it, "
                                  "or convert to safetensors") from e
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                tensor = state.pop(name)
                yield name, tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


class Gather:
    """A checkpoint-tensor transform that only moves / selects elements (transpose, reshape, slice) and knows the
    shape of the checkpoint tensor it reads: `source_shape(result_shape)`. Called like the plain function."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], source_shape: Callable[[tuple], tuple],
                 name: str = "gather"):
        self.forward, self.source_shape, self.name = forward, source_shape, name

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return self.forward(a)

    def __repr__(self) -> str:
        return f"Gather({self.name})"


identity = Gather(lambda a: a, lambda shape: tuple(shape), "identity")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes: the param path, an index into that leaf (the layer slot of a
    stacked leaf, () for the whole leaf) and the transform applied to the tensor first."""

    path: Path
    index: tuple[int, ...] = ()
    transform: Callable[[np.ndarray], np.ndarray] = identity


# A rule maps a checkpoint tensor name to its targets; [] means "known, deliberately unused" and
# None means "not mine" (the loader reports it as unexpected). A rule that can also save carries `names`: every
# tensor name it accepts for its config (names whose targets a model lacks, e.g. biases, are skipped on export).
Rule = Callable[[str, np.ndarray], list[Target] | None]


def named(rule: Rule, names) -> Rule:
    """Attaches the list of tensor names `rule` accepts (in checkpoint order), which makes it usable for saving."""
    rule.names = tuple(names)
    return rule


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
                raise CheckpointError(f"{source}: tensor {name!r} maps to {'/'.join(target.path)}, "
                                      "which the model does not have")
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
                raise CheckpointError(f"{source}: {'/'.join(target.path)}{list(target.index)} written twice "
                                      f"(by {name!r})")
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
    missing = sorted('/'.join(p) for p in flat_abstract
                     if p not in done and p not in buffers and p not in allow_missing)
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


transpose = Gather(lambda a: np.ascontiguousarray(a.T), lambda shape: tuple(shape)[::-1], "transpose")
transpose.__doc__ = "torch Linear weight [out, in] -> kernel [in, out]."


def linear_to_heads(num_heads: int, head_dim: int) -> Gather:
    """torch Linear weight [H*D, E] -> kernel [E, H, D]."""
    return Gather(lambda a: np.ascontiguousarray(a.T.reshape(a.shape[1], num_heads, head_dim)),
                  lambda s: (s[1] * s[2], s[0]), "linear_to_heads")


def bias_to_heads(num_heads: int, head_dim: int) -> Gather:
    """bias [H*D] -> [H, D]."""
    return Gather(lambda a: a.reshape(num_heads, head_dim), lambda s: (s[0] * s[1],), "bias_to_heads")


def linear_from_heads(num_heads: int, head_dim: int) -> Gather:
    """torch Linear weight [E, H*D] (the output projection) -> kernel [H, D, E]."""
    return Gather(lambda a: np.ascontiguousarray(a.T.reshape(num_heads, head_dim, a.shape[0])),
                  lambda s: (s[2], s[0] * s[1]), "linear_from_heads")


# ----------------------------------------------------------------------------------------------------------------
# Saving: the inverse of fill_params
# ----------------------------------------------------------------------------------------------------------------
def invert(targets: Sequence[Target], values: Sequence[np.ndarray], name: str = "tensor") -> np.ndarray:
    """The checkpoint tensor that `targets` (all of one name) were filled from, rebuilt from their `values`.

    Every transform is a `Gather`: run on the element indices of the checkpoint tensor's shape it gives, for each
    element of its result, the element of the checkpoint tensor it was read from. Raises CheckpointError unless the
    targets cover every element exactly once."""
    shapes = set()
    for target, value in zip(targets, values):
        source_shape = getattr(target.transform, "source_shape", None)
        if source_shape is None:
            raise CheckpointError(f"{name}: the transform of {'/'.join(target.path)} is not a Gather, "
                                  "so it cannot be inverted for saving")
        shapes.add(tuple(int(x) for x in source_shape(tuple(value.shape))))
    if len(shapes) != 1:
        raise CheckpointError(f"{name}: its targets disagree on the checkpoint shape: {sorted(shapes)}")
    shape = shapes.pop()
    if len(targets) == 1 and targets[0].transform is identity:
        return np.ascontiguousarray(values[0])
    size = int(np.prod(shape))
    index = np.arange(size, dtype=np.int32 if size < 2**31 else np.int64).reshape(shape)
    out = np.empty(size, np.result_type(*values))
    seen = np.zeros(size, bool)
    for target, value in zip(targets, values):
        where = np.asarray(target.transform(index))
        if where.shape != value.shape:
            raise CheckpointError(f"{name}: {'/'.join(target.path)} has shape {value.shape}, its transform of a "
                                  f"{shape} tensor gives {where.shape}")
        where = where.reshape(-1)
        if seen[where].any():
            raise CheckpointError(f"{name}: {'/'.join(target.path)} overlaps another target")
        seen[where] = True
        out[where] = value.reshape(-1)
    if not seen.all():
        raise CheckpointError(f"{name}: {int((~seen).sum())} of its {size} elements come from no parameter")
    return out.reshape(shape)


def export_plan(params: Any, rule: Rule, names: Sequence[str] | None = None,
                source: str = "model") -> list[tuple[str, list[Target]]]:
    """[(tensor name, targets)] for saving `params` under `rule`'s names. Names whose targets the model lacks
    (biases of a bias-free model, a tied head, ...) are skipped; raises CheckpointError when a parameter (slot) is
    claimed by no name or by two, so nothing is ever dropped or written twice."""
    if names is None:
        names = getattr(rule, "names", None)
        if names is None:
            raise CheckpointError(f"{source}: this tensor-name rule cannot save (it lists no names)")
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    used: dict[Path, set] = {}
    plan = []
    for name in names:
        targets = rule(name, None)
        if not targets:
            continue
        present = [t.path in flat for t in targets]
        if not any(present):
            continue
        if not all(present):
            raise CheckpointError(f"{source}: {name!r} maps to {[('/'.join(t.path)) for t in targets]}, "
                                  "only some of which the model has")
        for t in targets:
            slots = used.setdefault(t.path, set())
            if t.index in slots:
                raise CheckpointError(f"{source}: {'/'.join(t.path)}{list(t.index)} is claimed by two names "
                                      f"(the second: {name!r})")
            slots.add(t.index)
        plan.append((name, targets))
    missing = []
    for path, leaf in flat.items():
        slots = used.get(path, set())
        depth = max((len(i) for i in slots), default=0)
        if len(slots) != (int(np.prod(np.shape(leaf)[:depth])) if depth else 1):
            missing.append("/".join(path))
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} parameter(s) have no checkpoint name, e.g. {missing[:6]}")
    return plan


def _slot(leaf: Any, index: tuple[int, ...]) -> np.ndarray:
    return np.asarray(leaf[index] if index else leaf)


def _export_tensor(flat: dict, name: str, targets: Sequence[Target], dtype: Any) -> np.ndarray:
    """One checkpoint tensor rebuilt from the flat params (`invert`), cast to dtype when given."""
    tensor = invert(targets, [_slot(flat[t.path], t.index) for t in targets], name)
    return tensor if dtype is None else tensor.astype(np.dtype(dtype))


def export_tensors(params: Any, rule: Rule, names: Sequence[str] | None = None, *, dtype: Any = None,
                   source: str = "model") -> Iterator[tuple[str, np.ndarray]]:
    """Yields (checkpoint name, array) for every tensor of `params` under `rule`: the exact inverse of loading
    with `fill_params(..., rule, ...)`. dtype: cast on the way out (None keeps the parameters' dtype)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    for name, targets in export_plan(params, rule, names, source):
        yield name, _export_tensor(flat, name, targets, dtype)


def save_tensors(directory: str, params: Any, rule: Rule, names: Sequence[str] | None = None, *,
                 dtype: Any = None, max_shard_bytes: int = 5 * 2**30, source: str = "model") -> list[str]:
    """Writes `params` as HF safetensors under `rule`'s names: `model.safetensors`, or shards
    `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` past `max_shard_bytes`. Only one shard's
    tensors are in host memory at a time. Returns the files written."""
    from safetensors.numpy import save_file

    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    plan = export_plan(params, rule, names, source)

    def nbytes(targets):
        item = np.dtype(dtype if dtype is not None else np.result_type(*[flat[t.path].dtype for t in targets]))
        return item.itemsize * sum(int(np.prod(np.shape(flat[t.path])[len(t.index):])) for t in targets)

    shards, size = [[]], 0
    for name, targets in plan:
        n = nbytes(targets)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, targets))
        size += n
    os.makedirs(directory, exist_ok=True)
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for file, shard in zip(files, shards):
        tensors = {}
        for name, targets in shard:
            tensors[name] = np.ascontiguousarray(_export_tensor(flat, name, targets, dtype))
            weight_map[name] = file
            total += tensors[name].nbytes
        save_file(tensors, os.path.join(directory, file), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        files.append("model.safetensors.index.json")
    return files


def check_read_back(config: Any, back: Any, what: str) -> None:
    """Saving a config dataclass: `back` is what its written form reads back as; any differing field raises a
    CheckpointError naming it (`what`: e.g. 'this CLIPVisionConfig has no HF counterpart')."""
    if back != config:
        diff = [f"{f.name}: {getattr(config, f.name)!r} would load as {getattr(back, f.name)!r}"
                for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(back, f.name)]
        raise CheckpointError(f"{what}: {'; '.join(diff)}")


def config_get(config: Mapping[str, Any], *names: str, default: Any = dataclasses.MISSING) -> Any:
    """First present key among `names` (HF configs name the same field differently per family)."""
    for name in names:
        if name in config and config[name] is not None:
            return config[name]
    if default is dataclasses.MISSING:
        raise CheckpointError(f"config.json lacks {' / '.join(names)}")
    return default
