"""Ahead-of-time plans of a training step on a TPU slice, from any host (no TPU needed): the trainer's own jitted
step (`common.trainer.TrainProgram`: same task, loss, optimizer, frozen parts, accumulation and logical-axis
shardings) lowered from abstract state onto the devices of a TPU topology that libtpu describes, compiled, and
read back: per-chip memory, the collectives of the optimized program, compile time and an analytic step-time
bound (MaxText's `train_compile` does the same kind of ahead-of-time compilation).

Topology names: Cloud TPU's (`v4-16`, `v5p-64`: TensorCores, two per chip; `v5e-16`, `v6e-256`: chips) or
libtpu's (`v5p:4x4x2`, `v5e:4x4`: the chip grid). Multi-slice (a data axis over DCN): `--num_slices`.

The step-time bound is analytic, from the compiled program and the chip table below: compute = model FLOPs /
peak, memory = HBM traffic / HBM bandwidth (estimated: the state read and written once, the peak temporaries
written and read once), network = collective bytes on the wire / ICI bandwidth (all links of a chip); the step can
be no faster than the largest (perfect overlap), which caps MFU at compute / largest. It is a ceiling, not a
prediction of the achieved speed.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import topologies

from common.sharding import activate
from common.trainer import TrainProgram, batch_sharding, mesh_from_config

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published figures (Cloud TPU system architecture pages, per chip)."""

    name: str
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s, all links of a chip together
    cores_per_chip: int  # TensorCores per chip, as Cloud TPU counts them in a slice name (v4-8 = 4 chips)
    source: str


# Figures from the Cloud TPU documentation (cloud.google.com/tpu/docs/<version>): "BF16 peak compute per chip",
# "HBM2 capacity and bandwidth per chip", "Interchip Interconnect BW" (Gbps / 8 = GB/s).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * GB, 1228 * GB, 2400 / 8 * GB, 2, "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197e12, 16 * GB, 819 * GB, 1600 / 8 * GB, 1, "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95 * GB, 2765 * GB, 4800 / 8 * GB, 2, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918e12, 32 * GB, 1640 * GB, 3584 / 8 * GB, 1, "cloud.google.com/tpu/docs/v6e"),
}
# Chip grids of the standard slice shapes (Cloud TPU: v4 / v5p slices are 3-D tori, v5e / v6e 2-D).
_GRIDS_3D = {1: (1, 1, 1), 2: (1, 1, 2), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16),
             4096: (16, 16, 16)}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


def standard_grids(chip: str) -> dict[int, tuple[int, ...]]:
    """{chips: chip grid} of the standard slices of a chip (v4 / v5p: 3-D tori, v5e / v6e: 2-D)."""
    return _GRIDS_3D if chip in ("v4", "v5p") else _GRIDS_2D


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    chip: Chip
    grid: tuple[int, ...]  # chips along each torus axis, one slice
    num_slices: int = 1

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.grid))}"

    @property
    def chips(self) -> int:
        return math.prod(self.grid) * self.num_slices

    def devices(self) -> list:
        extra = {"num_slices": self.num_slices} if self.num_slices > 1 else {}
        if math.prod(self.grid) < 4:  # a slice smaller than one host (4 chips): the host is the slice
            extra["chips_per_host_bounds"] = tuple(self.grid) + (1,) * (3 - len(self.grid))
        desc = topologies.get_topology_desc(topology_name=self.libtpu_name, platform="tpu", **extra)
        return list(desc.devices)


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """'v5p-64' (Cloud TPU: v4 / v5p count TensorCores, v5e / v6e chips) or 'v5p:4x4x2' (libtpu: the chip grid)."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e|v5litepod)[-:](.+)", name.strip())
    if not m:
        raise ValueError(f"unknown TPU topology {name!r}: use e.g. v5p-64, v5e-16, v6e-256, v4-16 or v5p:4x4x2 "
                         f"(chips: {sorted(CHIPS)})")
    chip = CHIPS["v5e" if m.group(1) == "v5litepod" else m.group(1)]
    rest = m.group(2)
    if "x" in rest:
        grid = tuple(int(v) for v in rest.split("x"))
    else:
        count = int(rest)
        if count % chip.cores_per_chip:
            raise ValueError(f"{name}: a {chip.name} slice counts {chip.cores_per_chip} TensorCores per chip")
        chips = count // chip.cores_per_chip
        grids = standard_grids(chip.name)
        if chips not in grids:
            raise ValueError(f"{name}: no standard {chip.name} slice of {chips} chips; sizes: "
                             f"{[n * chip.cores_per_chip for n in sorted(grids)]}, or name the grid (e.g. "
                             f"{chip.name}:{'x'.join(map(str, grids[max(grids)]))})")
        grid = grids[chips]
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    return Topology(name, chip, grid, num_slices)


# ----------------------------------------------------------------------------------------------------------------
# The optimized HLO: collectives per step
# ----------------------------------------------------------------------------------------------------------------
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_OP = re.compile(r"=\s+(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CHAIN = re.compile(r'chain_id="(\d+)"')


def _bytes(dtype: str, dims: str) -> float:
    """Bytes of an HLO array type such as bf16[16,256,2560] given as ('bf16', '16,256,2560')."""
    return _DTYPE_BYTES[dtype] * math.prod(int(x) for x in dims.split(",") if x)


def _array_bytes(shape_text: str) -> list[float]:
    return [_bytes(d, dims) for d, dims in _ARRAY.findall(shape_text)]


def _group_size(line: str, devices: int) -> int:
    """Devices per replica group of a collective line: `mesh['a'=4,'b'=2] {'a'}`, `{{0,1},{2,3}}` or `[2,4]<=[8]`."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict((k.strip("'"), int(v)) for k, v in re.findall(r"('[^']+')=(\d+)", m.group(1)))
        return math.prod(sizes[name.strip().strip("'")] for name in m.group(2).split(",") if name.strip())
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"source_target_pairs=", line)
    return 2 if m else devices


def _trip_count(line: str, condition: str | None, computations: Mapping[str, list[str]]) -> int:
    """Iterations of a while loop: its known_trip_count, else the bound N of a condition `i < N` on a counter
    (how scans are lowered: the TPU compiler's text carries no trip count); 1 for any other loop."""
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    if condition is None or condition not in computations:
        return 1
    body = computations[condition]
    bounds = [int(m.group(1)) for text in body for m in [re.search(r"s32\[\][^=]*constant\((\d+)\)", text)] if m]
    compares = [text for text in body if "ROOT" in text and "compare(" in text and "direction=LT" in text]
    return bounds[0] if len(bounds) == 1 and compares else 0  # 0: not known (counted once)


def collectives(hlo_text: str, devices: int) -> dict[str, dict[str, float]]:
    """{op: {count, bytes, wire_bytes}} per step and per device in an optimized HLO module, and
    'while_loops_with_unknown_trips': loops whose trip count could not be read (their collectives count once: the
    figures are then lower bounds).

    count and bytes (the result buffer of each, per device) include the trip counts of the while loops they sit in
    (a scan over L layers runs its body's all-gathers L times). A collective that the TPU compiler splits into an
    asynchronous chain (its pieces share a `chain_id`) counts once; its reduce-scatters (an all-reduce inside an
    `all-reduce-scatter` fusion) count as reduce-scatters. wire_bytes: what each device sends on a ring over
    its replica group of n: all-gather (n-1)/n x result, reduce-scatter (n-1) x result, all-reduce 2 (n-1)/n x
    result, all-to-all (n-1)/n x result, collective-permute 1 x result.
    """
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None:
            if line.startswith("}"):
                current = None
            else:
                computations[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    callers: dict[str, list[tuple[str, int]]] = {}
    unknown_loops = 0
    for name, lines in computations.items():
        for line in lines:
            calls = _CALLS.findall(line)
            trip = _trip_count(line, dict(calls).get("condition"), computations)
            if " while(" in line and not trip:
                unknown_loops += 1
            for kind, callee in calls:
                factor = (trip or 1) if kind == "body" else 1
                callers.setdefault(callee, []).append((name, factor if kind != "condition" else 0))
            for _, names in _CALL_LISTS.findall(line):
                for callee in names.split(","):
                    callers.setdefault(callee.strip().lstrip("%"), []).append((name, 1))
    memo: dict[str, int] = {entry: 1}

    def runs(name: str) -> int:
        if name not in memo:
            memo[name] = 0  # cycle guard
            memo[name] = sum(runs(caller) * factor for caller, factor in callers.get(name, ()))
        return memo[name]

    seen_chains: dict[str, tuple[str, int, float, int]] = {}
    found: list[tuple[str, int, float, int]] = []
    for name, lines in computations.items():
        n = runs(name)
        if not n:
            continue
        for line in lines:
            m = _OP.search(line)
            if not m:
                continue
            op, shape = m.group(2), m.group(1)
            sizes = _array_bytes(shape)
            size = max(sizes) if m.group(3) else sum(sizes)  # a -start tuple holds operand and result
            group = _group_size(line, devices)
            if op == "all-reduce" and name.startswith("all-reduce-scatter"):
                # the TPU compiler's reduce-scatter: an all-reduce inside an `all-reduce-scatter` fusion, whose
                # result is each device's 1/n slice
                op, size = "reduce-scatter", size / max(group, 1)
            record = (op, n, size, group)
            chain = _CHAIN.search(line)
            if chain:
                key = f"{op}:{chain.group(1)}"
                if key not in seen_chains or seen_chains[key][1] < n:
                    seen_chains[key] = record
            else:
                found.append(record)
    found.extend(seen_chains.values())
    wire = {"all-gather": lambda g: (g - 1) / g, "reduce-scatter": lambda g: g - 1,
            "all-reduce": lambda g: 2 * (g - 1) / g, "all-to-all": lambda g: (g - 1) / g,
            "collective-permute": lambda g: 1.0}
    out = {op: {"count": 0, "bytes": 0.0, "wire_bytes": 0.0} for op in COLLECTIVES}
    for op, n, size, group in found:
        out[op]["count"] += n
        out[op]["bytes"] += n * size
        out[op]["wire_bytes"] += n * size * wire[op](max(group, 1))
    out["while_loops_with_unknown_trips"] = unknown_loops  # their bodies' collectives are counted once per run
    return out


def largest_buffers(hlo_text: str, top: int = 8) -> list[tuple[str, float]]:
    """The largest array shapes produced by instructions of the optimized HLO (shape text, bytes), largest first:
    where to look when the temporaries are large (e.g. a [B, H, T, T] attention buffer)."""
    sizes: dict[str, float] = {}
    for m in re.finditer(r"=\s+(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]", hlo_text):
        sizes[f"{m.group(1)}[{m.group(2)}]"] = _bytes(m.group(1), m.group(2))
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------
def _shard_bytes(tree: Any) -> float:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard, i.e. the first)."""
    total = 0.0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def _state_gb(program, batches) -> dict[str, float]:
    """Per-device GB of the parameters, the optimizer state and the batch, from their shardings."""
    state = program.abstract_state
    return {"params": _shard_bytes(state.params) / GB, "optimizer": _shard_bytes(state.opt_state) / GB,
            "batch": _shard_bytes(batches) / GB}


def _base_plan(program, topology: Topology, batches) -> dict[str, Any]:
    return {
        "bench": "tpu_aot_plan", "topology": topology.name, "libtpu_topology": topology.libtpu_name,
        "num_slices": topology.num_slices, "chip": topology.chip.name, "chips": topology.chips,
        "devices": program.mesh.size, "mesh": {k: int(v) for k, v in program.mesh.shape.items()},
        "params": program.param_count, "trainable": program.trainable_count,
        "global_batch": {name: next(iter(fields.values())).shape[0] for name, fields in batches.items()},
        "grad_accum_steps": program.grad_accum_steps, "hbm_gb": topology.chip.hbm_bytes / GB,
        "chip_source": topology.chip.source,
    }


def _refused_plan(program, topology: Topology, batches, message: str, compile_s: float, temporaries_gb: float):
    """The plan of a step the TPU compiler refused for want of HBM: what it asked for, in its own words."""
    state = _state_gb(program, batches)
    total = sum(state.values()) + temporaries_gb
    return {**_base_plan(program, topology, batches),
            "per_device_gb": {**state, "temporaries": temporaries_gb, "total": total},
            "fits": False, "margin_gb": topology.chip.hbm_bytes / GB - total, "compile_error": message,
            "compile_s": round(compile_s, 2), "collectives": {}, "bound_s": None, "mfu_ceiling": None}


def abstract_batches(program, batch_spec: Mapping[str, Mapping[str, jax.ShapeDtypeStruct]]):
    """Global batch specs -> ShapeDtypeStructs carrying the trainer's batch sharding."""
    return {name: {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding(program.mesh, len(x.shape),
                                                                                    program.rules))
                   for k, x in fields.items()} for name, fields in batch_spec.items()}


def plan_train_step(config, task, topology: Topology, *, keep_hlo: bool = False) -> dict[str, Any]:
    """Lowers and compiles the trainer's step for `config` / `task` on `topology`; returns the plan (JSON-able).

    `task.batch_spec()` gives each dataset's global batch as ShapeDtypeStructs; nothing is allocated.
    """
    if task.batch_spec is None:
        raise ValueError("this task has no batch_spec: it cannot be planned ahead of time")
    devices = topology.devices()
    mesh = mesh_from_config(config.mesh, devices)
    program = TrainProgram(config, task, mesh)
    spec = dict(task.batch_spec())
    names = program.step_names(0, spec)
    batches = abstract_batches(program, {name: spec[name] for name in names})
    t0 = time.perf_counter()
    with activate(mesh, program.rules):
        lowered = program.jit_step(batches, list(spec)).lower(program.abstract_state, batches)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that cannot fit its HBM
        needed = re.search(r"HLO temporaries \(([\d.]+)([GMK])\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not needed:
            raise
        return _refused_plan(program, topology, batches, str(e).splitlines()[0], time.perf_counter() - t1,
                             float(needed.group(1)) * {"G": 2**30, "M": 2**20, "K": 2**10}[needed.group(2)] / GB)
    t2 = time.perf_counter()
    memory = compiled.memory_analysis()
    hlo = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost

    chip = topology.chip
    n_dev = mesh.size
    base = _base_plan(program, topology, batches)
    args_b, out_b = float(memory.argument_size_in_bytes), float(memory.output_size_in_bytes)
    alias_b, temp_b = float(memory.alias_size_in_bytes), float(memory.temp_size_in_bytes)
    total_b = args_b + temp_b + out_b - alias_b  # donated state: outputs reuse the argument buffers
    comms = collectives(hlo, n_dev)
    unknown_loops = comms.pop("while_loops_with_unknown_trips")

    fpe = task.flops_per_example
    model_flops = sum(n * float(fpe.get(name, 0.0) if isinstance(fpe, Mapping) else fpe)
                      for name, n in base["global_batch"].items())
    compute_s = model_flops / n_dev / chip.peak_bf16_flops
    # HBM traffic, estimated: the state read and written once, the peak temporaries written and read once. (XLA's
    # own cost analysis, also reported, counts a while loop's body once: a scan over L layers is undercounted.)
    hbm_bytes = args_b + out_b + 2 * temp_b
    memory_s = hbm_bytes / chip.hbm_bandwidth
    wire = sum(c["wire_bytes"] for c in comms.values())
    network_s = wire / chip.ici_bandwidth
    bound_s = max(compute_s, memory_s, network_s)
    plan = {
        **base,
        "per_device_gb": {**_state_gb(program, batches), "arguments": args_b / GB, "temporaries": temp_b / GB,
                          "outputs_not_aliased": (out_b - alias_b) / GB, "total": total_b / GB},
        "fits": total_b <= chip.hbm_bytes,
        "margin_gb": (chip.hbm_bytes - total_b) / GB,
        "collectives": {op: {"count": int(c["count"]), "gb": c["bytes"] / GB, "wire_gb": c["wire_bytes"] / GB}
                        for op, c in comms.items() if c["count"]},
        "while_loops_with_unknown_trips": unknown_loops,
        "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
        "model_tflops_per_step": model_flops / 1e12,
        "hbm_gb_per_step_estimate": hbm_bytes / GB,
        "xla_cost_analysis": {"tflops_per_device": float(cost.get("flops", 0.0)) / 1e12,
                              "gb_accessed_per_device": float(cost.get("bytes accessed", 0.0)) / GB} if cost else None,
        "bound_s": {"compute": compute_s, "hbm": memory_s, "ici": network_s, "step": bound_s},
        "mfu_ceiling": compute_s / bound_s if bound_s > 0 else None,
    }
    if keep_hlo:
        plan["_hlo"] = hlo
    return plan
