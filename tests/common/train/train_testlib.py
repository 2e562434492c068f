"""Helpers of the trainer tests: a tiny LM config, running the trainer in-process or as `python -m common.train`,
and reading metrics.jsonl."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from common.lm_task import make_task
from common.trainer import Trainer
from configs.lm import tiny

REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[3])  # tests/common/train/ -> the repository
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def tiny_test_config(**overrides):
    """configs/lm/tiny.py shrunk to width 32, seq 32, batch 8, 6 steps, logging every step, no checkpoints;
    `overrides` are dotted config paths ("optimizer.lr") -> values."""
    config = tiny.get_config()
    config.total_steps = 6
    config.batch_size = 8
    config.log_every = 1
    config.checkpoint_every = 0
    config.eval_every = 0
    config.eval_batches = 2
    config.model.update(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    config.data.update(seq_len=32, num_sentences=2000)
    config.optimizer.update(warmup_steps=2)
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def require_devices(n: int) -> None:
    if jax.device_count() < n:
        pytest.skip(f"needs {n} devices (XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts)")


def run_trainer(config, workdir, stop_at_step=None, task=None):
    """Runs a Trainer in-process; returns (RunResult, Trainer) with trainer.state the final state."""
    trainer = Trainer(config, task or make_task(config), str(workdir))
    try:
        result = trainer.run(stop_at_step=stop_at_step)
    finally:
        trainer.close()
    return result, trainer


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def step_losses(rows) -> dict[int, float]:
    """{step: loss} of training rows; a step logged twice (redone after a resume) keeps its last value."""
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def to_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def train_command(workdir, *flags: str) -> list[str]:
    return [sys.executable, "-m", "common.train", "--config", os.path.join(REPO_ROOT, "configs/lm/tiny.py"),
            "--workdir", str(workdir), *flags]


def tiny_flags(**overrides) -> list[str]:
    """Command-line flags equal to tiny_test_config(**overrides)."""
    values = {"total_steps": 6, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "eval_every": 0,
              "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
              "model.intermediate_size": 64, "model.max_position_embeddings": 64, "data.seq_len": 32,
              "data.num_sentences": 2000, "optimizer.warmup_steps": 2}
    values.update(overrides)
    return [f"--config.{k}={v}" for k, v in values.items()]


def subprocess_env(device_count: int, **extra) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count} {FAST_XLA_FLAGS}"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_command(cmd, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
