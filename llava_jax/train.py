"""LLaVA training entry point (Liu et al. 2023, Sec. 4.2: stage 1 feature alignment, stage 2 visual instruction
tuning; configs/llava/): `python -m llava_jax.train --config configs/llava/<name>.py --workdir DIR [--config.x=y]`.
Running it again with the same workdir resumes; `--config.init_from=OTHER_WORKDIR` starts from another run's params.
"""
from __future__ import annotations

from common.train import run
from llava_jax.task import make_task


def _make_task(config, workdir):
    return make_task(config, workdir)


def main() -> None:
    run(_make_task)


if __name__ == "__main__":
    main()
