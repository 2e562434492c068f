"""Where a measurement came from, for every benchmark's JSON line: the commit, the CPU model, the accelerator,
and the versions of python, jax / jaxlib / libtpu and torch (figures are only comparable with these equal)."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """{commit, cpu, cpu_count, python, jax, jaxlib, libtpu, torch, accelerator} (None where absent)."""
    accelerator = None
    try:
        import jax

        devices = jax.devices()
        accelerator = f"{len(devices)} x {devices[0].device_kind}" if devices[0].platform != "cpu" else None
    except Exception:
        pass
    return {"commit": _commit(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "jax": _version("jax"), "jaxlib": _version("jaxlib"),
            "libtpu": _version("libtpu"), "torch": _version("torch"), "accelerator": accelerator}
