"""The training loop every family shares: a family describes itself as a `Task` (model, loss, data, eval) and
`Trainer` does the rest — mesh, sharded init or resume, one jitted train step, checkpoints, logs.

The train step (one `jax.jit`, state donated, shardings from the logical-axis rules) sums gradients over
micro-batches with `lax.scan` (token-weighted, so accumulation equals one big batch), over several datasets
with per-dataset weights (Flamingo's accumulation; `multi_dataset_mode='round_robin'` takes one dataset per
step instead), clips, applies AdamW, and skips the update when the loss or gradients are not finite.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Protocol
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from common import optimizer as optimizer_lib
from common.checkpoints import CHECKPOINTS_DIR, Checkpointer, PreemptionWatcher
from common.config_sections import get, section_fields
from common.sharding import LOGICAL_AXIS_RULES, MESH_AXES, activate, logical_sharding, logical_to_spec, make_mesh

log = logging.getLogger("common.trainer")

Batch = Mapping[str, np.ndarray]
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------------ the Task


class DataIterator(Protocol):
    """A host-local batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> Batch: ...

    def get_state(self) -> Any: ...  # JSON-able

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class DataShard:
    """Which rows of every global batch this host loads: block `index` of `count` equal blocks."""

    index: int
    count: int

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.count:
            raise ValueError(f"global batch {global_batch} does not split over {self.count} data shards")
        return global_batch // self.count


LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


@dataclasses.dataclass
class Task:
    """What a family gives the trainer.

    init_params(rng) -> params boxed with logical axis names (`nn.Partitioned`, as `module.init` makes them);
        traced under `jax.jit`, so the parameters are created already sharded.
    loss_fn(params, batch, rng) -> (mean loss, aux): params unboxed; batch one micro-batch of one dataset;
        aux a dict of scalars holding at least 'tokens' (the number of loss tokens; it weights the average over
        micro-batches). Other aux entries are averaged with the same token weights and logged.
    make_train_data(shard) -> {dataset name: DataIterator} of host-local batches (leading axis = batch).
    dataset_weights: {name: weight} for several datasets (default 1 each); the loss is sum_d w_d * loss_d.
    flops_per_example: training FLOPs (forward + backward) per example, for MFU; a float or {name: float}.
    load_pretrained(params) -> params: optional, run once on a fresh start (not on resume) after the random
        init, e.g. to copy in a pretrained LM / vision tower; must keep each array's sharding.
    make_eval_data(shard) -> iterable of host-local batches of a held-out split, scored with loss_fn.
    evaluate(params, step) -> {name: float}: optional family-specific evaluation (CIDEr, accuracy, ...).
    named_rows: {name: row index} for the optimizer's `rows` param-group setting, e.g. the tokenizer's new
        special tokens, so a config can train the embedding rows of '<image>' alone.
    update_params(params, batches, rng) -> params: optional, applied inside the jitted step after each (finite)
        optimizer update to the new params with the step's batches ({name: global batch}); for state that is
        not learnt by gradient, e.g. a VQ codebook's dead-code restarts. Frozen parameters may change here.
    batch_spec() -> {name: {field: jax.ShapeDtypeStruct}}: each dataset's global batch as the pipeline collates it
        (no data read), for compiling the step ahead of time (`common.aot`, `python -m mmlm_jax.plan`).
    What the task was built from, for whoever runs its model outside the trainer (evaluation, export, benches):
    model (the flax module), model_config (the family's config dataclass), tokenizer, lora_config (None: no
    adapters), extras (anything else a family's own tools read, by name: Flamingo's `stage`, the codec's `segment`).
    """

    init_params: Callable[[jax.Array], Any]
    loss_fn: LossFn
    make_train_data: Callable[[DataShard], Mapping[str, DataIterator]]
    dataset_weights: Mapping[str, float] | None = None
    flops_per_example: float | Mapping[str, float] = 0.0
    load_pretrained: Callable[[Any], Any] | None = None
    make_eval_data: Callable[[DataShard], Iterable[Batch]] | None = None
    evaluate: Callable[[Any, int], Mapping[str, float]] | None = None
    named_rows: Mapping[str, int] | None = None
    update_params: Callable[[Any, Mapping[str, Mapping[str, jax.Array]], jax.Array], Any] | None = None
    batch_spec: Callable[[], Mapping[str, Mapping[str, jax.ShapeDtypeStruct]]] | None = None
    model: Any = None
    model_config: Any = None
    tokenizer: Any = None
    lora_config: Any = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ state


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: steps taken, skipped ones included
    params: Any
    opt_state: Any
    nonfinite_streak: jax.Array  # int32: non-finite steps in a row, up to now
    nonfinite_total: jax.Array  # int32: non-finite (skipped) steps in all

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: a donated state may not alias)
        return cls(step=zero(), params=params, opt_state=tx.init(params), nonfinite_streak=zero(),
                   nonfinite_total=zero())


class NonFiniteError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


# ------------------------------------------------------------------------------------------------ helpers


def batch_sharding(mesh, ndim: int, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Leading (batch) axis over the `act_batch` mesh axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules))


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """The trainer's fields of a training config, typed and checked: what `TrainProgram` and `Trainer` read, and the
    one source of their defaults (`configs.trainer.trainer_config` builds every training config from them).
    `from_config(config)` reads them from a ConfigDict / dict (absent or None fields take the defaults)."""

    seed: int = 0
    total_steps: int = 1000
    batch_size: int = 16  # global, in sequences
    grad_accum_steps: int = 1  # micro-batches summed inside one step
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    eval_every: int = 0
    eval_batches: int = 0
    mesh: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})  # -1: the remaining devices
    multi_dataset_mode: str = "accumulate"  # or 'round_robin' (one dataset per step)
    max_nonfinite_in_a_row: int = 10
    peak_flops: float = 0.0  # per device, for MFU; 0 = not reported
    logical_axis_rules: tuple = LOGICAL_AXIS_RULES  # logical axis name -> mesh axis / axes / None
    # The tasks' next-token loss: "fused" with the LM head, chunked (no [B, T, V] logits; common.losses) or "logits"
    # (the head's full logits, then the cross-entropy). docs/tpu.md: what each costs in the TPU plans.
    lm_loss: str = "fused"

    def __post_init__(self):
        if self.lm_loss not in ("fused", "logits"):
            raise ValueError(f"lm_loss must be 'fused' or 'logits', got {self.lm_loss!r}")
        if self.multi_dataset_mode not in ("accumulate", "round_robin"):
            raise ValueError(f"multi_dataset_mode must be 'accumulate' or 'round_robin', got "
                             f"{self.multi_dataset_mode!r}")
        for name in ("total_steps", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.mesh) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"mesh axes are {MESH_AXES}, got {sorted(unknown)}")

    @classmethod
    def from_config(cls, config) -> TrainerSettings:
        """The trainer's fields of `config` (its other, family-specific fields are not the trainer's to check)."""
        values = {f.name: get(config, f.name) for f in dataclasses.fields(cls)}
        return cls(**section_fields(values, cls, "the trainer's config", converters={
            "mesh": lambda mesh: {axis: int(size) for axis, size in dict(mesh).items()},
            "logical_axis_rules": axis_rules_from}))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the mesh a dict, the rules a tuple of pairs)."""
        return {f.name: dict(self.mesh) if f.name == "mesh" else getattr(self, f.name)
                for f in dataclasses.fields(self)}


def axis_rules_from(rules) -> tuple[tuple[str, Any], ...]:
    """A `logical_axis_rules` table (pairs of logical name -> mesh axis, a tuple of mesh axes or None; MaxText's
    field of the same name), checked, or, when None or empty, the library's table
    (common.sharding.LOGICAL_AXIS_RULES)."""
    if not rules:
        return LOGICAL_AXIS_RULES
    out = []
    for pair in rules:
        name, axes = tuple(pair)
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        if axes is not None and not set((axes,) if isinstance(axes, str) else axes) <= set(MESH_AXES):
            raise ValueError(f"logical_axis_rules maps {name!r} to {axes!r}; mesh axes are {MESH_AXES}")
        out.append((str(name), axes))
    return tuple(out)


def host_data_shard(mesh, rules=LOGICAL_AXIS_RULES) -> DataShard:
    """The block of every global batch this process must load, from the batch sharding on `mesh`."""
    batch_shards = math.prod(mesh.shape[a] for a in _batch_mesh_axes(rules))
    sharding = batch_sharding(mesh, 1, rules)
    rows = sorted({(s.start or 0) for s in (idx[0] for idx in
                                            sharding.addressable_devices_indices_map((batch_shards,)).values())})
    if rows != list(range(rows[0], rows[0] + len(rows))):
        raise ValueError(f"this process's devices hold batch rows {rows} of {batch_shards}, not a contiguous "
                         "block; order the mesh devices by process")
    return DataShard(index=rows[0] // len(rows), count=batch_shards // len(rows))


def _batch_mesh_axes(rules=LOGICAL_AXIS_RULES) -> tuple[str, ...]:
    axes = dict(rules)["act_batch"]
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def to_host(tree: Any) -> Any:
    """Fully replicated (or addressable) arrays -> numpy, on any number of processes."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def _split_micro_batches(x: jax.Array, num: int) -> jax.Array:
    """[B, ...] -> [num, B / num, ...] with micro-batch i = rows i, i + num, ...: each device's rows stay on it."""
    if x.shape[0] % num:
        raise ValueError(f"batch of {x.shape[0]} does not split into {num} micro-batches")
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "act_batch") + (None,) * (x.ndim - 2))


def _weighted_aux_sum(aux: Mapping[str, jax.Array], tokens: jax.Array) -> dict[str, jax.Array]:
    return {k: (v if k == "tokens" else v * tokens).astype(jnp.float32) for k, v in aux.items()}


# ------------------------------------------------------------------------------------------------ the step


def make_train_step(task: Task, opt: optimizer_lib.Optimizer, seed: int, grad_accum_steps: int,
                    dataset_weights: Mapping[str, float], grad_sharding: Any = None) -> Callable:
    """train_step(state, batches {name: global batch}) -> (state, metrics), to be jitted.

    grad_sharding: the parameters' shardings; each micro-batch's gradient is constrained to them, so that its
    reduction over the batch shards is a reduce-scatter onto the parameter's shards (FSDP) rather than an
    all-reduce of the whole gradient."""
    loss_fn = task.loss_fn
    frozen_flags = [bool(f) for f in jax.tree.leaves(opt.frozen)]  # params' leaf order

    def trained_part(tree) -> list:
        """The leaves of a params-shaped tree that the optimizer trains."""
        return [x for x, f in zip(jax.tree.leaves(tree), frozen_flags, strict=True) if not f]

    def merged(trained: list, params, at_frozen: Callable):
        """A params-shaped tree: the trained leaves taken in order from `trained`, `at_frozen(p)` at the frozen ones."""
        it = iter(trained)
        leaves, treedef = jax.tree.flatten(params)
        return treedef.unflatten([at_frozen(p) if f else next(it) for p, f in zip(leaves, frozen_flags, strict=True)])

    trained_sharding = None if grad_sharding is None else trained_part(grad_sharding)

    def grad_fn(params, batch, rng):
        """(loss, aux, gradients of the trained leaves, a list). Only the trained leaves are differentiated: frozen
        ones enter the loss as constants, so no backward pass forms their gradients, not even inside a scanned
        stack (where XLA would otherwise carry a zero gradient buffer per frozen weight through the loop)."""
        def loss_of_trained(trained):
            return loss_fn(merged(trained, params, jax.lax.stop_gradient), batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_of_trained, has_aux=True)(trained_part(params))
        if "tokens" not in aux:
            raise ValueError("Task.loss_fn must return aux['tokens'] (the number of loss tokens)")
        if trained_sharding is not None:
            grads = jax.lax.with_sharding_constraint(grads, trained_sharding)
        return loss, dict(aux), grads

    def dataset_grads(params, batch, rng):
        """Token-weighted mean loss / aux / trained gradients of one dataset's batch over its micro-batches."""
        if grad_accum_steps == 1:
            loss, aux, grads = grad_fn(params, batch, rng)
            return loss, {k: v.astype(jnp.float32) for k, v in aux.items()}, grads
        micro = jax.tree.map(lambda x: _split_micro_batches(x, grad_accum_steps), batch)
        zeros = [jnp.zeros_like(p) for p in trained_part(params)]
        aux_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1])
        zero_aux = {k: jnp.zeros((), jnp.float32) for k in aux_shape}

        def body(carry, xs):
            grad_sum, loss_sum, aux_sum = carry
            micro_batch, i = xs
            loss, aux, grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, i))
            tokens = aux["tokens"].astype(jnp.float32)
            grad_sum = jax.tree.map(lambda s, g: s + g * tokens, grad_sum, grads)
            aux_sum = jax.tree.map(jnp.add, aux_sum, _weighted_aux_sum(aux, tokens))
            return (grad_sum, loss_sum + loss * tokens, aux_sum), None

        (grad_sum, loss_sum, aux_sum), _ = jax.lax.scan(
            body, (zeros, jnp.zeros((), jnp.float32), zero_aux), (micro, jnp.arange(grad_accum_steps)))
        tokens = jnp.maximum(aux_sum["tokens"], 1.0)
        aux = {k: v if k == "tokens" else v / tokens for k, v in aux_sum.items()}
        return loss_sum / tokens, aux, jax.tree.map(lambda g: g / tokens, grad_sum)

    def train_step(state: TrainState, batches: Mapping[str, Mapping[str, jax.Array]]):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        total_loss, grads, metrics = jnp.zeros((), jnp.float32), None, {}
        tokens = jnp.zeros((), jnp.float32)
        for i, name in enumerate(sorted(batches)):
            weight = float(dataset_weights.get(name, 1.0))
            loss, aux, g = dataset_grads(state.params, batches[name], jax.random.fold_in(rng, i))
            total_loss = total_loss + weight * loss
            g = jax.tree.map(lambda x: weight * x, g) if weight != 1.0 else g
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            tokens = tokens + aux["tokens"]
            if len(dataset_weights) > 1:
                metrics[f"loss/{name}"] = loss
            metrics.update({(k if len(dataset_weights) == 1 else f"{k}/{name}"): v
                            for k, v in aux.items() if k != "tokens"})
        grads = merged(grads, state.params, jnp.zeros_like)  # zeros at the frozen leaves: the optimizer drops them
        grad_norm = optax.tree.norm(opt.trained_grads(grads))  # the gradient the optimizer clips and applies
        finite = jnp.isfinite(total_loss) & jnp.isfinite(grad_norm)  # else keep params and optimizer state
        updates, new_opt_state = opt.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_params = jax.tree.map(lambda new, old, f: old if f else new, new_params, state.params, opt.frozen)
        if task.update_params is not None:
            new_params = task.update_params(new_params, batches, jax.random.fold_in(rng, len(batches)))
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        applied_updates = state.step - state.nonfinite_total
        new_state = state.replace(
            step=state.step + 1,
            params=jax.tree.map(keep, new_params, state.params),
            opt_state=jax.tree.map(keep, new_opt_state, state.opt_state),
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1))
        metrics.update(loss=total_loss, grad_norm=grad_norm, tokens=tokens, finite=finite,
                       lr=opt.schedule(applied_updates), nonfinite_streak=new_state.nonfinite_streak,
                       nonfinite_total=new_state.nonfinite_total)
        return new_state, metrics

    return train_step


def make_eval_step(task: Task) -> Callable:
    def eval_step(params, batch):
        loss, aux = task.loss_fn(params, batch, jax.random.key(0))
        tokens = aux["tokens"].astype(jnp.float32)
        return {"loss": loss * tokens, **_weighted_aux_sum(aux, tokens)}

    return eval_step


# ------------------------------------------------------------------------------------------------ logging


class MetricsLogger:
    """metrics.jsonl + TensorBoard + a progress bar (tqdm on a terminal, plain log lines otherwise); process 0."""

    def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step, self.start_time = start_step, time.time()
        self.bar = self.writer = self.file = None
        if not enabled:
            return
        self.file = open(os.path.join(workdir, METRICS_FILE), "a")
        try:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # pragma: no cover
            log.warning("tensorboardX not installed: no TensorBoard events")
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def advance(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.refresh()

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _json_scalar(v) for k, v in row.items()}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, row["step"])
            self.writer.flush()
        if self.bar is None and "loss" in row:
            done = row["step"] - self.start_step
            elapsed = time.time() - self.start_time
            eta = elapsed / max(done, 1) * (self.total_steps - row["step"])
            extras = " ".join(f"{k} {row[k]:.4g}" for k in ("lr", "grad_norm", "tokens_per_s", "mfu")
                              if isinstance(row.get(k), (int, float)))
            log.info("step %d/%d loss %.4f %s eta %s", row["step"], self.total_steps, row["loss"], extras,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
        elif self.bar is None:
            log.info("step %d: %s", row["step"], " ".join(f"{k} {v}" for k, v in row.items() if k != "step"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def _json_scalar(v):
    if isinstance(v, (np.generic, np.ndarray)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


# ------------------------------------------------------------------------------------------------ the trainer


@dataclasses.dataclass
class RunResult:
    final_step: int
    preempted: bool
    metrics: list[dict]  # the rows logged in this run


def mesh_from_config(mesh_config: Mapping[str, int], devices=None):
    """The (data, fsdp, tensor) mesh of `config.mesh` on `devices` (default: all); a mesh without a -1 axis that is
    smaller than the device list uses its first devices."""
    devices = list(jax.devices() if devices is None else devices)
    mesh_config = dict(mesh_config)
    sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
    if -1 not in sizes:
        devices = devices[:math.prod(sizes)]
    return make_mesh(mesh_config, devices)


class TrainProgram:
    """What the train step is, for `config` and `task` on `mesh`, with nothing allocated: the optimizer (param
    groups, frozen parts), the abstract train state and its shardings from the logical-axis rules, and the jitted
    step for a given set of batches. `Trainer` runs it on real devices; `common.aot` lowers the same program for a
    TPU topology ahead of time (no data, workdir or arrays needed).

    Config fields read here: seed, total_steps, batch_size, grad_accum_steps, multi_dataset_mode, optimizer,
    logical_axis_rules (default: common.sharding.LOGICAL_AXIS_RULES).
    """

    def __init__(self, config, task: Task, mesh):
        self.config, self.task, self.mesh = config, task, mesh
        self.settings = settings = TrainerSettings.from_config(config)
        self.rules = settings.logical_axis_rules
        self.total_steps = settings.total_steps
        self.grad_accum_steps = settings.grad_accum_steps
        self.mode = settings.multi_dataset_mode
        jax.config.update("jax_threefry_partitionable", True)
        # Abstract (boxed) parameters -> optimizer -> abstract state -> shardings from the logical rules.
        self.init_key = jax.random.key(settings.seed)
        abstract_params = jax.eval_shape(task.init_params, self.init_key)
        self.opt = optimizer_lib.make_optimizer(config.optimizer, abstract_params, self.total_steps,
                                                named_rows=task.named_rows)
        boxed_state = jax.eval_shape(lambda k: TrainState.create(task.init_params(k), self.opt.tx), self.init_key)
        self.state_sharding = logical_sharding(nn.get_partition_spec(boxed_state), mesh, self.rules)
        self.abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                           nn.unbox(boxed_state), self.state_sharding)
        self.param_count = optimizer_lib.count_params(self.abstract_state.params)
        self.trainable_count = self.opt.trainable_count(self.abstract_state.params)
        opt_size = optimizer_lib.state_size(self.abstract_state.opt_state)
        if opt_size != 2 * self.trainable_count:
            raise AssertionError(f"optimizer state holds {opt_size:,} floats, expected 2 x {self.trainable_count:,} "
                                 "trainable parameters")
        self.batch_shards = math.prod(mesh.shape[a] for a in _batch_mesh_axes(self.rules))
        batch_size = settings.batch_size
        if batch_size and (batch_size % self.grad_accum_steps or
                           (batch_size // self.grad_accum_steps) % self.batch_shards):
            raise ValueError(f"batch_size {batch_size} must split into grad_accum_steps={self.grad_accum_steps} "
                             f"micro-batches, each a multiple of the {self.batch_shards} batch shards of the mesh")
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def dataset_weights(self, names: Iterable[str]) -> dict[str, float]:
        return dict(self.task.dataset_weights or {name: 1.0 for name in names})

    def step_names(self, step: int, names: Iterable[str]) -> tuple[str, ...]:
        """The datasets that step `step` reads: all of them ('accumulate') or one in turn ('round_robin')."""
        names = sorted(names)
        return tuple(names) if self.mode == "accumulate" else (names[step % len(names)],)

    def jit_step(self, batches: Mapping[str, Mapping[str, Any]], dataset_names: Iterable[str]) -> Callable:
        """The jitted train step for batches shaped like `batches` ({name: {field: array or ShapeDtypeStruct}}):
        state donated, state and batch shardings from the rules, metrics replicated."""
        step = make_train_step(self.task, self.opt, self.settings.seed, self.grad_accum_steps,
                               self.dataset_weights(dataset_names), grad_sharding=self.state_sharding.params)
        in_batch_sharding = jax.tree.map(lambda x: batch_sharding(self.mesh, len(x.shape), self.rules), batches)
        return jax.jit(step, in_shardings=(self.state_sharding, in_batch_sharding),
                       out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)


class Trainer:
    """Builds mesh, state, data and the jitted step from `config` and `task`, and runs the loop.

    Config fields read here: seed, total_steps, batch_size, log_every, checkpoint_every, keep_checkpoints,
    eval_every, mesh {data, fsdp, tensor}, grad_accum_steps, multi_dataset_mode ('accumulate' |
    'round_robin'), max_nonfinite_in_a_row, peak_flops (per device; 0 = no MFU), async_checkpoints,
    logical_axis_rules (optional: the sharding rules table), optimizer {...} (see common.optimizer.make_optimizer).
    The step itself is a `TrainProgram`.
    """

    def __init__(self, config, task: Task, workdir: str, devices=None):
        self.config, self.task, self.workdir = config, task, os.path.abspath(workdir)
        self.mesh = mesh_from_config(TrainerSettings.from_config(config).mesh, devices)
        self.program = TrainProgram(config, task, self.mesh)
        self.is_main = jax.process_index() == 0
        os.makedirs(self.workdir, exist_ok=True)
        self.data_shard = host_data_shard(self.mesh, self.program.rules)
        self.checkpointer = Checkpointer(os.path.join(self.workdir, CHECKPOINTS_DIR),
                                         keep=self.settings.keep_checkpoints,
                                         async_save=self.settings.async_checkpoints)
        self._step_fns: dict[tuple[str, ...], Callable] = {}
        self._eval_fn = None

    # The step's definition lives in the program; these read it.
    settings = property(lambda self: self.program.settings)
    total_steps = property(lambda self: self.program.total_steps)
    grad_accum_steps = property(lambda self: self.program.grad_accum_steps)
    mode = property(lambda self: self.program.mode)
    opt = property(lambda self: self.program.opt)
    abstract_state = property(lambda self: self.program.abstract_state)
    state_sharding = property(lambda self: self.program.state_sharding)
    param_count = property(lambda self: self.program.param_count)
    trainable_count = property(lambda self: self.program.trainable_count)
    replicated = property(lambda self: self.program.replicated)

    # -- setup ---------------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        """Fresh sharded state: random init (jitted, created in place) then the task's pretrained weights."""
        create = lambda k: nn.unbox(TrainState.create(self.task.init_params(k), self.opt.tx))  # noqa: E731
        state = jax.jit(create, out_shardings=self.state_sharding)(self.program.init_key)
        if self.task.load_pretrained is not None:
            state = state.replace(params=self.task.load_pretrained(state.params))
        return state

    def _global_batch(self, batch: Batch) -> dict[str, jax.Array]:
        out = {}
        for k, x in batch.items():
            x = np.asarray(x)
            global_shape = (x.shape[0] * self.data_shard.count,) + x.shape[1:]
            out[k] = jax.make_array_from_process_local_data(batch_sharding(self.mesh, x.ndim, self.program.rules), x,
                                                            global_shape)
        return out

    def _step_fn(self, names: tuple[str, ...], batches) -> Callable:
        if names not in self._step_fns:
            self._step_fns[names] = self.program.jit_step(batches, self._dataset_names)
        return self._step_fns[names]

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.task.make_eval_data is not None:
            sums = None
            for batch in self.task.make_eval_data(self.data_shard):
                batch = self._global_batch(batch)
                if self._eval_fn is None:
                    self._eval_fn = jax.jit(make_eval_step(self.task), out_shardings=self.replicated)
                out = self._eval_fn(state.params, batch)
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
            if sums is not None:
                sums = to_host(sums)
                tokens = max(float(sums["tokens"]), 1.0)
                metrics.update({f"eval/{k}": float(v) / tokens for k, v in sums.items() if k != "tokens"})
                metrics["eval/tokens"] = float(sums["tokens"])
        if self.task.evaluate is not None:
            metrics.update({f"eval/{k}": float(v) for k, v in self.task.evaluate(state.params, step).items()})
        return metrics

    # -- the loop ----------------------------------------------------------------------------------

    @property
    def dataset_weights(self) -> dict[str, float]:
        return self.program.dataset_weights(self._dataset_names)

    def _examples_flops(self, names, batches) -> tuple[int, float]:
        examples, flops = 0, 0.0
        fpe = self.task.flops_per_example
        for name in names:
            n = next(iter(batches[name].values())).shape[0]
            examples += n
            flops += n * float(fpe.get(name, 0.0) if isinstance(fpe, Mapping) else fpe)
        return examples, flops

    def run(self, stop_at_step: int | None = None) -> RunResult:
        """Trains to `total_steps` (or `stop_at_step`), resuming from the latest checkpoint in the workdir."""
        settings = self.settings
        log_every = max(settings.log_every, 1)
        checkpoint_every = settings.checkpoint_every
        eval_every = settings.eval_every
        max_nonfinite = settings.max_nonfinite_in_a_row
        peak_flops = settings.peak_flops * self.mesh.size
        multi_process = jax.process_count() > 1

        iterators = dict(self.task.make_train_data(self.data_shard))
        self._dataset_names = sorted(iterators)
        latest = self.checkpointer.latest_step()
        if latest is not None:
            state, data_state = self.checkpointer.restore(latest, self.abstract_state)
            if set(data_state) != set(iterators):
                raise ValueError(f"cannot resume step {latest} in {self.checkpointer.directory}: its checkpoint "
                                 f"holds the data positions of datasets {sorted(data_state)}, the config has "
                                 f"{sorted(iterators)}; use a new workdir for another dataset mix")
            for name, it in iterators.items():
                it.set_state(data_state[name])
        else:
            state = self.init_state()
        start = int(to_host(state.step))
        if self.is_main:
            self._write_config()
            log.info("mesh %s on %d devices (%d processes); %s params, %s trainable; start at step %d of %d",
                     dict(self.mesh.shape), self.mesh.size, jax.process_count(), f"{self.param_count:,}",
                     f"{self.trainable_count:,}", start, self.total_steps)
            for line in optimizer_lib.describe_groups(self.opt, self.abstract_state.params):
                log.info("param group %s", line)

        logger = MetricsLogger(self.workdir, self.total_steps, start, enabled=self.is_main)
        rows: list[dict] = []
        last_saved = latest
        preempted = False
        end = self.total_steps if stop_at_step is None else min(stop_at_step, self.total_steps)
        window = {"tokens": 0.0, "examples": 0, "flops": 0.0, "time": time.time()}
        pending = None  # (step, device metrics, examples, flops): read one step late to keep the device busy

        def finish(step, metrics, examples, flops):
            metrics = to_host(metrics)
            window["tokens"] += float(metrics["tokens"])
            window["examples"] += examples
            window["flops"] += flops
            logger.advance(step, float(metrics["loss"]))
            if not bool(metrics["finite"]):
                log.warning("step %d: non-finite loss %s / grad norm %s: update skipped (%d in a row, %d in all)",
                            step, metrics["loss"], metrics["grad_norm"], metrics["nonfinite_streak"],
                            metrics["nonfinite_total"])
            if step % log_every == 0 or step == end:
                now = time.time()
                elapsed = max(now - window["time"], 1e-9)
                flops_per_s = window["flops"] / elapsed
                row = {"step": step, **{k: v for k, v in metrics.items() if k != "finite"},
                       "skipped": not bool(metrics["finite"]),
                       "tokens_per_s": window["tokens"] / elapsed, "examples_per_s": window["examples"] / elapsed,
                       "mfu": flops_per_s / peak_flops if peak_flops > 0 else None}
                row = {k: _json_scalar(v) for k, v in row.items()}
                logger.write(row)
                rows.append(row)
                window.update(tokens=0.0, examples=0, flops=0.0, time=now)
            if int(metrics["nonfinite_streak"]) >= max_nonfinite:
                raise NonFiniteError(f"step {step}: {int(metrics['nonfinite_streak'])} steps in a row had a "
                                     f"non-finite loss or gradient (max_nonfinite_in_a_row={max_nonfinite}); "
                                     f"stopping. Last finite checkpoint: {last_saved}")

        def save(step, state):
            nonlocal last_saved
            if last_saved == step:
                return
            data_state = {name: it.get_state() for name, it in iterators.items()}
            if self.checkpointer.save(step, state, data_state):
                last_saved = step

        # With several processes, SIGTERM belongs to JAX's preemption service (`reached_preemption` below).
        signals = (signal.SIGINT,) if multi_process else (signal.SIGTERM, signal.SIGINT)
        with activate(self.mesh, self.program.rules), PreemptionWatcher(signals) as watcher:
            try:
                for step in range(start, end):
                    names = self.program.step_names(step, self._dataset_names)
                    batches = {name: self._global_batch(next(iterators[name])) for name in names}
                    examples, flops = self._examples_flops(names, batches)
                    state, metrics = self._step_fn(names, batches)(state, batches)
                    if pending is not None:
                        finish(*pending)
                    pending = (step + 1, metrics, examples, flops)
                    done = step + 1
                    stop = watcher.requested or self.checkpointer.reached_preemption(done)
                    if multi_process and done % log_every == 0:  # all hosts agree on a local signal
                        from jax.experimental import multihost_utils

                        stop = bool(np.any(multihost_utils.process_allgather(np.array(stop))))
                    if stop or (checkpoint_every > 0 and done % checkpoint_every == 0):
                        save(done, state)
                    if eval_every > 0 and done % eval_every == 0:
                        finish(*pending)
                        pending = None
                        row = {"step": done, **self.evaluate(state, done)}
                        logger.write(row)
                        rows.append(row)
                        window["time"] = time.time()  # throughput excludes the evaluation
                    if stop:
                        preempted = True
                        log.warning("step %d: stopping after %s; checkpoint saved",
                                    done, watcher.signal_name or "a preemption notice")
                        break
                if pending is not None:
                    finish(*pending)
                    pending = None
                final = int(to_host(state.step))
                if final == self.total_steps and checkpoint_every > 0:
                    save(final, state)
            finally:
                self.checkpointer.wait()
                logger.close()
        self.state = state
        return RunResult(final_step=final, preempted=preempted, metrics=rows)

    def close(self) -> None:
        self.checkpointer.close()

    def _write_config(self) -> None:
        text = self.config.to_json_best_effort(indent=2) if hasattr(self.config, "to_json_best_effort") \
            else json.dumps(self.config, indent=2, default=str)
        path = os.path.join(self.workdir, CONFIG_FILE)
        if os.path.exists(path):
            with open(path) as f:
                if f.read() != text:
                    log.warning("config differs from the one this workdir was started with; %s is overwritten", path)
        with open(path, "w") as f:
            f.write(text)
