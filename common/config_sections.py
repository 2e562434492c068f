"""Typed access to training configs: a config (ml_collections ConfigDict, FrozenConfigDict or dict) is read into
frozen dataclasses, section by section, instead of through chains of `.get(...) or {}`.

`config_section(config, "init_lm", InitLM)` gives `config.init_lm` as an `InitLM`: absent or None fields take the
dataclass's defaults, each value is converted to its field's type (the default's type; lists become tuples,
ConfigDicts plain dicts), and a field the dataclass does not have is an error that names the section and its
fields, so a typo in `--config.init_lm.hfdir=...` fails at the start of a run instead of being ignored.
`common.trainer.TrainerSettings` reads the trainer's top-level fields the same way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

T = TypeVar("T")


def plain(x):
    """ConfigDict / FrozenConfigDict / tuples of them -> plain dicts / tuples."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return tuple(plain(v) for v in x)
    return x


def get(config, name: str, default=None):
    """config.name, or `default` when the config lacks it or holds None there."""
    try:
        value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _converted(value, default):
    """`value` as the type of `default` (bool / int / float / str / tuple / dict; other defaults: plain value)."""
    value = plain(value)
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, (int, float, str)):
        return type(default)(value)
    if isinstance(default, tuple):
        return tuple(value)
    if isinstance(default, dict):
        return dict(value)
    return value


def section_fields(values: Mapping | None, cls: type, what: str, strict: bool = True,
                   converters: Mapping[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
    """The fields of `cls` found in `values` (None values dropped), converted to their fields' types (`converters`
    by field name first). strict: a key `cls` has no field for raises ValueError naming `what` and the fields."""
    values = {k: v for k, v in (plain(values) or {}).items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if strict and unknown:
        raise ValueError(f"{what} has no field {', '.join(map(repr, unknown))}; its fields are {sorted(fields)}")
    out = {}
    for name, value in values.items():
        if name not in fields:
            continue
        if converters and name in converters:
            out[name] = converters[name](value)
            continue
        default = _default_of(fields[name])
        out[name] = plain(value) if default is dataclasses.MISSING else _converted(value, default)
    return out


def config_section(config, name: str, cls: type[T]) -> T:
    """config.<name> as a `cls` (a dataclass whose fields all have defaults): see the module docstring."""
    return cls(**section_fields(get(config, name, {}), cls, f"config.{name}"))


def has_section(config, name: str) -> bool:
    """Whether config.<name> is set to a non-empty section (some features are on when their section is given)."""
    return bool(plain(get(config, name, {})))
