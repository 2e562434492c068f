"""The training configs (`configs/<family>/<name>.py`, each with `get_config([arg])`) and the one way to load them:
`load_config("llava/tiny_stage1")` (also "configs/llava/tiny_stage1.py", "llava.tiny_stage1", an argument after a
colon: "vita/stage_7b:2.2", or any .py file path), with `--config.a.b=value` style overrides applied by
`apply_overrides`. Every CLI that takes a config (train through ml_collections' config flags; eval, reproduce and
the benches through `split_config_overrides`) accepts those overrides. This package imports nothing of the library.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OVERRIDE_PREFIX = "--config."


def load_config(spec: str, overrides: Mapping[str, Any] | Iterable[str] = ()):
    """A config by name or file path (see the module docstring), with `overrides` applied: {"a.b": value} or
    ["a.b=value", ...] (values parsed as Python literals where they parse, else kept as strings)."""
    name, _, arg = spec.partition(":")
    if name.endswith(".py") and os.path.isfile(name):
        module_spec = importlib.util.spec_from_file_location(
            "config_" + os.path.splitext(os.path.basename(name))[0], name)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        dotted = name[:-3] if name.endswith(".py") else name
        dotted = dotted.replace(os.sep, ".").replace("/", ".")
        dotted = dotted[len("configs."):] if dotted.startswith("configs.") else dotted
        module = importlib.import_module("configs." + dotted)
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    return config


def apply_overrides(config, overrides: Mapping[str, Any] | Iterable[str]) -> None:
    """Sets dotted fields of a ConfigDict: {"a.b": value} or ["a.b=value", ...]; an unknown parent raises."""
    items = overrides.items() if isinstance(overrides, Mapping) else (_parse(o) for o in overrides)
    for dotted, value in items:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise KeyError(f"config override {dotted!r}: no field {part!r}")
            node = node[part]
        with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
            node[leaf] = value


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv without the `--config.a.b=value` arguments, ["a.b=value", ...]) for argparse CLIs."""
    rest, overrides = [], []
    for item in argv:
        (overrides.append(item[len(OVERRIDE_PREFIX):]) if item.startswith(OVERRIDE_PREFIX) and "=" in item
         else rest.append(item))
    return rest, overrides


def _parse(override: str) -> tuple[str, Any]:
    dotted, sep, text = override.partition("=")
    if not sep:
        raise ValueError(f"config override {override!r} is not field=value")
    try:
        return dotted, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return dotted, text

