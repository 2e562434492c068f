"""Two processes x 2 CPU devices (jax.distributed, each host loading only its rows of the global batch) train
exactly like one process x 4 devices: same per-step losses."""
import socket
import subprocess

import chex
import numpy as np
from train_testlib import read_metrics, run_command, step_losses, subprocess_env, tiny_flags, train_command
import pytest

pytestmark = pytest.mark.slow  # multi-process

MESH_FLAGS = ("--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    flags = [*tiny_flags(total_steps=4, checkpoint_every=2), *MESH_FLAGS]
    single = run_command(train_command(tmp_path / "single", *flags), env=subprocess_env(4))
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    workers = [subprocess.Popen(
        train_command(tmp_path / "multi", *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"),
        env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[1])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, stderr in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    assert "(2 processes)" in outputs[0]

    single_losses = step_losses(read_metrics(tmp_path / "single"))
    multi_losses = step_losses(read_metrics(tmp_path / "multi"))  # written by process 0 only
    assert sorted(multi_losses) == [1, 2, 3, 4]
    chex.assert_trees_all_close(np.asarray([multi_losses[s] for s in range(1, 5)]),
                                np.asarray([single_losses[s] for s in range(1, 5)]), rtol=1e-5)
    # each host wrote its own data-iterator state next to the shared train state
    data_dir = tmp_path / "multi" / "checkpoints" / "4" / "data"
    assert sorted(p.name for p in data_dir.glob("data_state.*")) == [
        "data_state.process_0_of_2.json", "data_state.process_1_of_2.json"]
