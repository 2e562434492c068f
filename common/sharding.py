"""Logical-axis sharding: one rules table mapping logical names to the mesh axes data / fsdp / tensor.

Every parameter and main activation in this library carries logical axis names (MaxText style);
nothing else knows the mesh. `make_mesh` builds the device mesh from a config mapping, and
`logical_sharding` turns a tree of logical names into `NamedSharding`s under the rules below.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
# Parameters: `embed` is split over fsdp (ZeRO-3 style), the "wide" axes over tensor.
# Activations use the `act_*` names: batch over data x fsdp, wide axes over tensor.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameter axes
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("patch", None),
    ("position", None),
    ("channels", None),
    ("latents", None),
    # NFNet (common/vision/nfnet.py): conv kernels [kh, kw, in, out] stay replicated (a frozen encoder whose
    # channel counts start at 16, too few to split over a large fsdp axis)
    ("conv_height", None),
    ("conv_width", None),
    ("conv_out", None),
    ("classes", None),
    ("lora_rank", None),  # LoRA adapters (common.lora): A [.., in, rank], B [.., rank, out] follow their kernel
    # activation axes
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_head_dim", None),
    ("act_media", None),
)


def make_mesh(mesh_config: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh. One size may be -1: it takes the remaining devices.

    `mesh_config` is a mapping {"data": 2, "fsdp": -1, "tensor": 1} (missing axes are 1) or a
    3-sequence in MESH_AXES order.
    """
    if devices is None:
        devices = jax.devices()
    if isinstance(mesh_config, Mapping):
        unknown = set(mesh_config) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
        sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    else:
        sizes = [int(s) for s in mesh_config]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh needs {len(MESH_AXES)} sizes {MESH_AXES}, got {sizes}")
    n_devices = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n_devices % known:
            raise ValueError(f"{n_devices} devices do not divide evenly by mesh sizes {sizes}")
        sizes[sizes.index(-1)] = n_devices // known
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive (or one -1), got {sizes}")
    if math.prod(sizes) != n_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {n_devices}")

    slices = sorted({getattr(d, "slice_index", 0) or 0 for d in devices})
    if len(slices) > 1:  # multi-slice: the data axis spans the slices over DCN, fsdp / tensor stay within a slice
        if sizes[0] % len(slices):
            raise ValueError(f"the devices span {len(slices)} slices: the data axis ({sizes[0]}) must be a multiple of "
                             "it (data-parallel over DCN)")
        per_slice = [sizes[0] // len(slices), sizes[1], sizes[2]]
        device_grid = mesh_utils.create_hybrid_device_mesh(per_slice, [len(slices), 1, 1], devices=list(devices))
    else:
        try:
            device_grid = mesh_utils.create_device_mesh(sizes, devices=list(devices))
        except Exception:  # non-TPU topologies that mesh_utils cannot arrange
            device_grid = np.asarray(devices).reshape(sizes)
    # Auto axes: shardings come from our annotations and the compiler propagates the rest.
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """Logical names of one array -> PartitionSpec (a mesh axis is used at most once)."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def logical_sharding(logical_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """Tree of logical PartitionSpecs (from `nn.get_partition_spec`) -> tree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def params_sharding(abstract_variables: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """Shardings for a (possibly abstract, boxed) variable tree made by `init` / `jax.eval_shape`."""
    return logical_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Context in which `nn.with_logical_constraint` inside modules shards activations on `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def target_platform() -> str:
    """The platform of the program being traced: that of the mesh set by `activate` / `jax.set_mesh` (a TPU
    topology's when a CPU host compiles for a pod ahead of time), else the default backend's. Trace-time choices
    that depend on the hardware (which attention kernel) read this, never `jax.default_backend()` alone."""
    mesh = jax.sharding.get_abstract_mesh()
    platform = None if mesh.empty else getattr(mesh, "platform", None)
    return platform or jax.default_backend()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Annotates an activation with logical axis names (a no-op outside a mesh context)."""
    return nn.with_logical_constraint(x, tuple(logical_axes))


def with_partitioning(init_fn, logical_axes: Sequence[str | None]):
    """Parameter initializer carrying logical axis names."""
    return nn.with_logical_partitioning(init_fn, tuple(logical_axes))
