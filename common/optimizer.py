"""The optimizer built from a config: warmup + cosine / linear / constant learning-rate schedules, AdamW, and
per-parameter groups chosen by regex (learning-rate multiplier, weight-decay multiplier, frozen, trained rows).

Parameters are named by their '/'-joined path ("decoder/layers/attn/q/kernel"). `param_groups` is a sequence
of (regex, settings) pairs; the first regex that `re.fullmatch`es a path gives that parameter its settings:
  lr_mult (float, default 1), wd_mult (float, default 1; 0 = no weight decay), frozen (bool, default False),
  rows (a sequence of row indices, or of names the caller resolves through `named_rows`, e.g. a tokenizer's new
  special tokens; default all): train only these rows (axis 0) of the matched parameters, the rest frozen.
Frozen parameters get `optax.set_to_zero` inside an `optax.multi_transform`, so they carry no optimizer
state at all; a `rows` group's AdamW runs on the gathered rows alone. The state holds exactly
2 x (trainable parameter count) floats (AdamW's mu and nu). The gradient of the untrained rows is zeroed before
the global-norm clipping (OpenFlamingo masks its input-embedding gradient to the <image> / <|endofchunk|> rows
before `clip_grad_norm_`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FROZEN = "frozen"
DEFAULT_GROUP = "default"
SCHEDULES = ("cosine", "linear", "constant")


def path_name(path) -> str:
    """A jax key path -> 'a/b/c'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def param_names(params: Any) -> Any:
    """Tree of '/'-joined path names with the structure of `params` (boxed parameters are unboxed first)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), nn.unbox(params))


# ------------------------------------------------------------------------------------------------ schedules


def make_schedule(lr: float, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
                  end_lr_ratio: float = 0.0, decay_steps: int | None = None) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then `schedule` down to `lr * end_lr_ratio` at step
    `decay_steps` (default `total_steps`); constant holds `lr` after warmup."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
    decay_steps = total_steps if decay_steps is None else decay_steps
    warmup_steps = int(warmup_steps)
    remaining = max(int(decay_steps) - warmup_steps, 1)
    end_lr = lr * end_lr_ratio
    if schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, remaining, alpha=end_lr_ratio)
    elif schedule == "linear":
        main = optax.linear_schedule(lr, end_lr, remaining)
    else:
        main = optax.constant_schedule(lr)
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


# ------------------------------------------------------------------------------------------------ groups


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    pattern: str
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    frozen: bool = False
    rows: tuple[int, ...] | None = None  # train only these rows (axis 0); None = all


def parse_param_groups(groups: Sequence[Any] | None, named_rows: Mapping[str, int] | None = None
                       ) -> list[ParamGroup]:
    """[(regex, {lr_mult, wd_mult, frozen, rows}), ...] (settings may be a dict / ConfigDict, or None = frozen,
    big_vision style) -> [ParamGroup]. String entries of `rows` are looked up in `named_rows`."""
    parsed = []
    for entry in groups or ():
        if isinstance(entry, ParamGroup):
            parsed.append(entry)
            continue
        pattern, settings = entry
        if settings is None:
            parsed.append(ParamGroup(pattern, frozen=True))
            continue
        settings = dict(settings)
        unknown = set(settings) - {"lr_mult", "wd_mult", "frozen", "rows"}
        if unknown:
            raise ValueError(f"param group {pattern!r}: unknown settings {sorted(unknown)}; "
                             "use lr_mult, wd_mult, frozen, rows")
        re.compile(pattern)
        rows = settings.get("rows")
        if rows is not None:
            rows = tuple(_row_index(pattern, r, named_rows) for r in rows)
            if not rows or len(set(rows)) != len(rows):
                raise ValueError(f"param group {pattern!r}: rows must be distinct and non-empty, got {rows}")
        parsed.append(ParamGroup(pattern, float(settings.get("lr_mult", 1.0)), float(settings.get("wd_mult", 1.0)),
                                 bool(settings.get("frozen", False)), rows))
    return parsed


def _row_index(pattern: str, row: Any, named_rows: Mapping[str, int] | None) -> int:
    if isinstance(row, str):
        if not named_rows or row not in named_rows:
            raise ValueError(f"param group {pattern!r}: row {row!r} is not a known name "
                             f"(known: {sorted(named_rows or {})})")
        return int(named_rows[row])
    return int(row)


def group_labels(params: Any, groups: Sequence[ParamGroup]) -> Any:
    """Tree of group labels: FROZEN, 'group_<i>' (the first matching pattern) or DEFAULT_GROUP."""
    compiled = [re.compile(g.pattern) for g in groups]

    def label(name: str) -> str:
        for i, (group, regex) in enumerate(zip(groups, compiled)):
            if regex.fullmatch(name):
                return FROZEN if group.frozen else f"group_{i}"
        return DEFAULT_GROUP

    return jax.tree.map(label, param_names(params))


def frozen_mask(labels: Any) -> Any:
    """Tree of bools: True where the parameter is frozen."""
    return jax.tree.map(lambda label: label == FROZEN, labels)


def _check_rows(params: Any, labels: Any, groups: Sequence[ParamGroup]) -> None:
    for name, label, x in zip(jax.tree.leaves(param_names(params)), jax.tree.leaves(labels),
                              jax.tree.leaves(params)):
        rows = _group_rows(label, groups)
        if rows is not None and (not x.shape or not all(0 <= r < x.shape[0] for r in rows)):
            raise ValueError(f"{name} {tuple(x.shape)}: rows {rows} out of range of its first axis")


def _group_of(label: str, groups: Sequence[ParamGroup]) -> ParamGroup | None:
    """The ParamGroup behind a 'group_<i>' label (None for FROZEN / DEFAULT_GROUP)."""
    return groups[int(label.split("_")[1])] if label.startswith("group_") else None


def _group_rows(label: str, groups: Sequence[ParamGroup]) -> tuple[int, ...] | None:
    group = _group_of(label, groups)
    return group.rows if group is not None else None


def _has_rows(groups: Sequence[ParamGroup]) -> bool:
    return any(g.rows is not None for g in groups)


def _trained_size(x: Any, rows: tuple[int, ...] | None) -> int:
    """Scalars of `x` that train: all of them, or those of the rows a `rows` group trains."""
    return int(np.prod(x.shape)) if rows is None else len(rows) * int(np.prod(x.shape[1:]))


def _scatter_rows(like: jax.Array, values: jax.Array, rows) -> jax.Array:
    """Zeros shaped like `like` with `values` in rows `rows` (axis 0)."""
    return jnp.zeros_like(like).at[jnp.asarray(rows)].set(values)


def zero_untrained_rows(labels: Any, groups: Sequence[ParamGroup]) -> optax.GradientTransformation:
    """Stateless: zeroes the gradient of the rows a `rows` group does not train (before clipping)."""

    def update(updates, state, params=None):
        del params
        return trained_rows_only(updates, labels, groups), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def trained_rows_only(grads: Any, labels: Any, groups: Sequence[ParamGroup]) -> Any:
    """grads with the rows a `rows` group does not train set to zero (other leaves unchanged)."""
    def keep(g, label):
        rows = _group_rows(label, groups)
        return g if rows is None else _scatter_rows(g, g[jnp.asarray(rows)], rows)

    return jax.tree.map(keep, grads, labels)


def on_rows(inner: optax.GradientTransformation, rows: tuple[int, ...]) -> optax.GradientTransformation:
    """`inner` run on rows `rows` (axis 0) of every leaf alone: its state holds those rows only, and the update of
    every other row is exactly zero (no weight decay either)."""
    index = np.asarray(rows)

    def take(tree):  # boxed (logically partitioned) leaves are unboxed: the rows' state is small, replicated
        return jax.tree.map(lambda x: nn.unbox(x)[index], tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))

    def init(params):
        return inner.init(take(params))

    def update(updates, state, params=None):
        new, state = inner.update(take(updates), state, None if params is None else take(params))
        return jax.tree.map(lambda u, n: _scatter_rows(u, n, index), updates, new), state

    return optax.GradientTransformation(init, update)


def count_params(params: Any, mask: Any | None = None) -> int:
    """Number of scalars in `params` (only where `mask` is True, if given)."""
    leaves = jax.tree.leaves(params)
    keep = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
    return int(sum(int(np.prod(x.shape)) for x, k in zip(leaves, keep) if k))


def state_size(opt_state: Any) -> int:
    """Number of floating-point scalars in an optimizer state (step counters excluded)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(opt_state)
                   if jnp.issubdtype(x.dtype, jnp.floating)))


# ------------------------------------------------------------------------------------------------ optimizer


@dataclasses.dataclass
class Optimizer:
    """The optax transformation plus what the trainer needs to know about it."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule  # the base learning rate (before group multipliers)
    labels: Any  # tree of group labels, structure of the params
    frozen: Any  # tree of bools, structure of the params
    groups: list[ParamGroup]

    def trained_grads(self, grads: Any) -> Any:
        """The part of `grads` the optimizer uses (what it clips and applies): the untrained rows of a `rows` group
        zeroed. Frozen parameters' gradients are already zero under the trainer's stop_gradient."""
        if not _has_rows(self.groups):
            return grads
        return trained_rows_only(grads, self.labels, self.groups)

    def trainable_count(self, params: Any) -> int:
        """Trained scalars: every non-frozen parameter, only its trained rows in a `rows` group."""
        total = 0
        for label, x in zip(jax.tree.leaves(self.labels), jax.tree.leaves(params)):
            if label == FROZEN:
                continue
            total += _trained_size(x, _group_rows(label, self.groups))
        return total


def make_optimizer(optimizer_config: Mapping[str, Any], params: Any, total_steps: int,
                   named_rows: Mapping[str, int] | None = None) -> Optimizer:
    """AdamW with global-norm clipping and per-group lr / wd multipliers and freezing, from a config mapping:

      lr, schedule ('cosine' | 'linear' | 'constant'), warmup_steps, end_lr_ratio, decay_steps (None = total),
      b1, b2, eps, weight_decay, clip_norm (0 = off), param_groups ((regex, settings), ...).

    `params` may be abstract (ShapeDtypeStructs) or boxed; only its structure, shapes and names are used.
    `named_rows` resolves names in a group's `rows` (e.g. {"<image>": 50277}).
    """
    cfg = dict(optimizer_config)
    schedule = make_schedule(float(cfg.get("lr", 1e-3)), total_steps, cfg.get("schedule", "cosine"),
                             int(cfg.get("warmup_steps", 0)), float(cfg.get("end_lr_ratio", 0.0)),
                             cfg.get("decay_steps"))
    groups = parse_param_groups(cfg.get("param_groups"), named_rows)
    labels = group_labels(params, groups)
    _check_rows(params, labels, groups)
    used = set(jax.tree.leaves(labels))
    settings = {DEFAULT_GROUP: ParamGroup(".*")} | {f"group_{i}": g for i, g in enumerate(groups) if not g.frozen}
    weight_decay = float(cfg.get("weight_decay", 0.0))

    def group_tx(group: ParamGroup) -> optax.GradientTransformation:
        parts = [optax.scale_by_adam(b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                                     eps=float(cfg.get("eps", 1e-8)))]
        if weight_decay * group.wd_mult:
            parts.append(optax.add_decayed_weights(weight_decay * group.wd_mult))
        lr_mult = group.lr_mult
        parts.append(optax.scale_by_learning_rate(schedule if lr_mult == 1.0 else (lambda s: lr_mult * schedule(s))))
        return optax.chain(*parts) if group.rows is None else on_rows(optax.chain(*parts), group.rows)

    transforms: dict[str, optax.GradientTransformation] = {
        label: group_tx(group) for label, group in settings.items() if label in used}
    if FROZEN in used:
        transforms[FROZEN] = optax.set_to_zero()
    chain = []
    if _has_rows(groups):
        chain.append(zero_untrained_rows(labels, groups))
    clip_norm = float(cfg.get("clip_norm", 0.0))
    if clip_norm > 0:
        chain.append(optax.clip_by_global_norm(clip_norm))
    chain.append(optax.multi_transform(transforms, labels))
    return Optimizer(optax.chain(*chain), schedule, labels, frozen_mask(labels), groups)


def describe_groups(opt: Optimizer, params: Any) -> list[str]:
    """One line per group: label, settings, parameter count (for the start-of-run log)."""
    counts: dict[str, int] = {}
    trained: dict[str, int] = {}  # a rows group: the scalars of its trained rows
    for label, x in zip(jax.tree.leaves(opt.labels), jax.tree.leaves(params)):
        counts[label] = counts.get(label, 0) + int(np.prod(x.shape))
        rows = _group_rows(label, opt.groups)
        if rows is not None:
            trained[label] = trained.get(label, 0) + _trained_size(x, rows)
    lines = []
    for label in sorted(counts):
        g = _group_of(label, opt.groups)
        if g is not None:
            what = (f"{g.pattern!r} lr_mult={g.lr_mult} wd_mult={g.wd_mult}"
                    + (f" rows={list(g.rows)}" if g.rows else ""))
        else:
            what = "frozen" if label == FROZEN else "unmatched: lr_mult=1.0 wd_mult=1.0"
        count = f"{trained[label]:,} of {counts[label]:,}" if label in trained else f"{counts[label]:,}"
        lines.append(f"{label}: {what}: {count} params")
    return lines

