"""Shared test setup: deterministic, offline, float32 CPU; helpers to build tiny HF checkpoints."""
import os
import re
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CPU backend only: with the [tpu] extra installed (libtpu, for the ahead-of-time TPU compilation tests),
# jax would otherwise probe for a TPU at start-up. TPU topologies for compilation still come from libtpu.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu locks /tmp/libtpu_lockfile against a second process using the TPU chips; compiling for a topology uses
# none, and the xdist workers (and a planning run beside the tests) each load libtpu.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Set before jax initialises its backend: unoptimised XLA backend compilation — the test programs are tiny and
# compiled again and again, so compile time dominates (3-4x faster this way).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
# One persistent XLA compilation cache for the whole run (xdist workers and the subprocesses of the CLI, notebook
# and reproduction tests inherit it): the same tiny programs are compiled by many tests. It lives under the system
# temp directory, keyed by program and flags, and only ever saves compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mmlm_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import sys  # noqa: E402

import chex  # noqa: E402

# Eight fake CPU devices for the sharding tests (single-device tests simply run on the first one), through chex,
# before any JAX operation; a device count already in XLA_FLAGS is kept.
_count = re.search(r"xla_force_host_platform_device_count=(\d+)", _flags)
chex.set_n_cpu_devices(int(_count.group(1)) if _count else 8)

# The shared core's tests (tests/common) hold helpers and oracles the families' tests reuse (e.g. the vision parity
# test's real images and InternViT renaming): importable from every test folder, as tests/ itself is.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))

import pytest  # noqa: E402


@pytest.fixture
def save_hf(tmp_path):
    """save_hf(model) -> directory holding its config.json and model.safetensors."""
    counter = iter(range(10**6))

    def save(model, **kwargs):
        path = tmp_path / f"ckpt{next(counter)}"
        model.save_pretrained(path, **kwargs)
        return str(path)

    return save
