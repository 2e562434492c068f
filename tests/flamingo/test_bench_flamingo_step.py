"""bench/flamingo_train_step.py on its CPU stand-in: both steps run, and our param groups train exactly the parameters
OpenFlamingo's recipe trains (`requires_grad` on the resampler and the gated blocks) -- the count of each side."""
import json
import os
import subprocess
import sys
import pytest

pytestmark = pytest.mark.slow  # a bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flamingo_train_step_bench_runs_and_trains_what_open_flamingo_trains():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "flamingo_train_step.py"), "--config", "tiny",
                          "--batch", "1", "--seq", "32", "--images", "2", "--dtype", "float32", "--steps", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    steps = {r["impl"]: r for r in lines if r["bench"] == "flamingo_train_step"}
    assert set(steps) == {"jax", "pytorch"}
    assert steps["jax"]["trainable"] == steps["pytorch"]["trainable"] > 0
    assert steps["jax"]["trainable"] < steps["jax"]["params"]
    memory = next(r for r in lines if r["bench"] == "flamingo_memory_analysis")
    assert memory["temp_gb"] > 0
    for r in steps.values():
        assert r["step_s"] > 0 and r["model_flops_per_step"] > 0 and 0 < r["loss"] < 20
