"""Trainer tests share a persistent compilation cache with their subprocess runs (tests/conftest.py sets
the 8 faked devices and fast compilation for the whole suite)."""
import os
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_train_tests_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    _CREATED_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
    _CREATED_CACHE_DIR = None


def pytest_sessionfinish(session, exitstatus):
    if _CREATED_CACHE_DIR is not None:
        import shutil

        shutil.rmtree(_CREATED_CACHE_DIR, ignore_errors=True)
