"""Shared test setup: deterministic, offline, float32 CPU; helpers to build tiny HF checkpoints."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Eight fake CPU devices for the sharding tests (must be set before jax initialises its backend);
# single-device tests simply run on the first one.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

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
