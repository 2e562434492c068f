"""SIGTERM / SIGINT (a TPU preemption notice, Ctrl-C) during `python -m common.train`: the current step is saved,
the process exits 0, and the same command resumes from that step."""
import os
import signal
import subprocess
import time

import pytest
from train_testlib import read_metrics, run_command, subprocess_env, tiny_flags, train_command

from common.checkpoints import Checkpointer, PreemptionWatcher

pytestmark = pytest.mark.slow  # trainings in subprocesses


def _wait_for_rows(workdir, process, count, timeout=180):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"trainer exited early: {process.communicate()[1][-3000:]}")
        if os.path.exists(path) and len(read_metrics(workdir)) >= count:
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError("trainer produced no metrics in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_current_step_and_exits_zero(tmp_path, signum):
    workdir = tmp_path / "run"
    flags = tiny_flags(total_steps=100000)
    process = subprocess.Popen(train_command(workdir, *flags), env=subprocess_env(1), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_rows(workdir, process, count=3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    saved = Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    last_logged = max(row["step"] for row in read_metrics(workdir))
    assert saved == [last_logged] and last_logged >= 3, (saved, last_logged)
    assert signal.Signals(signum).name in stderr
    if signum != signal.SIGTERM:
        return
    # The same command resumes from the saved step (here with a nearer end, to finish quickly).
    resumed = run_command(train_command(workdir, *flags, f"--config.total_steps={last_logged + 2}"),
                          env=subprocess_env(1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [row["step"] for row in read_metrics(workdir)]
    assert steps[-2:] == [last_logged + 1, last_logged + 2]
    assert f"start at step {last_logged}" in resumed.stderr


def test_watcher_turns_signals_into_a_flag_and_restores_handlers():
    previous = signal.getsignal(signal.SIGINT)
    with PreemptionWatcher() as watcher:
        assert not watcher.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert watcher.requested and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C is not ignored
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is previous
