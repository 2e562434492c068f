"""VITA-1.5 training entry point (stages 1.1 .. 2.2; configs/vita/):
`python -m vita_jax.train --config configs/vita/<name>.py --workdir DIR [--config.x=y]`. Running it again with the
same workdir resumes; `--config.init_from=PREVIOUS_STAGE_WORKDIR` starts from the previous stage's params.
"""
from __future__ import annotations

from absl import flags

from common.train import run

FLAGS = flags.FLAGS


def _make_task(config):
    from vita_jax.task import make_task

    return make_task(config, workdir=FLAGS.workdir)


def main() -> None:
    run(_make_task)


if __name__ == "__main__":
    main()
