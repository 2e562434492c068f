"""Flamingo tests: 8 faked CPU devices (the sharding test) and fast, unoptimised XLA compilation — the models are
tiny and compile time dominates. Set before JAX starts its backend (harmless if it already has)."""
import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
