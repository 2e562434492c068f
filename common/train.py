"""Command-line training entry: `python -m common.train --config configs/lm/tiny.py --workdir DIR
[--config.x=y ...]` trains the LM core; each family's `<family>.train` calls `run(make_task)` the same way.

Running the same command again with the same workdir resumes from the latest checkpoint. On several hosts
(a TPU pod: the same command on every worker) `jax.distributed` is initialised first; see `--distributed`.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import jax
from absl import app, flags
from ml_collections import config_flags

from common.lm_task import make_task
from common.trainer import Trainer

FLAGS = flags.FLAGS
if "config" not in FLAGS:  # the module may be both __main__ and imported by a family's train module
    config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, config.json.")
    flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"],
                      "Call jax.distributed.initialize: 'true' (auto-detects TPU pods, SLURM, ...), 'false', or "
                      "'auto' = when --coordinator_address / JAX_COORDINATOR_ADDRESS or a multi-process launcher "
                      "environment is present.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else JAX_COORDINATOR_ADDRESS).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (else JAX_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None, "This process's index (else JAX_PROCESS_ID).")

_LAUNCHER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def maybe_initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                                 num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Initialises `jax.distributed` when asked or when the environment says several processes run."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if mode == "false":
        return False
    multi_launcher = any(int(os.environ.get(v, "1")) > 1 for v in _LAUNCHER_SIZE_VARS)
    tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if mode == "true" or coordinator_address or multi_launcher or tpu_pod:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    return False


class _QuietLibraries(logging.Filter):
    """Drops INFO lines from orbax (a dozen per checkpoint); its warnings and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def train(config, workdir: str, make_task: Callable):
    """Builds the task (`make_task(config, workdir)`: every family's `make_task`) and the trainer from `config` and
    runs to completion (or preemption)."""
    trainer = Trainer(config, make_task(config, workdir), workdir)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    if jax.process_index() == 0:
        logging.info("finished at step %d%s", result.final_step, " (preempted)" if result.preempted else "")
    return result


def run(make_task: Callable) -> None:
    """The `main` of every `<family>.train` module: parse flags, init distributed, train (the workdir of
    --workdir passed to `make_task(config, workdir)`), exit 0."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if FLAGS.config is None or FLAGS.workdir is None:
            raise app.UsageError("--config and --workdir are required")
        logging.getLogger().setLevel(logging.INFO)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
        maybe_initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)
        train(FLAGS.config, FLAGS.workdir, make_task)
        sys.exit(0)

    app.run(main)


def _make_lm_task(config, workdir):
    return make_task(config, workdir)


if __name__ == "__main__":
    run(_make_lm_task)
