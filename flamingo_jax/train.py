"""Flamingo training entry point (Alayrac et al. 2022, Sec. 2.4; OpenFlamingo's recipe):

python -m flamingo_jax.train --config configs/flamingo/tiny.py --workdir DIR [--config.x=y ...]

Same flags, resume and multi-host behaviour as `common.train`; the task is `flamingo_jax.task.make_task`.
"""
from common import train as common_train
from flamingo_jax.task import make_task


def _make_task(config, workdir):
    return make_task(config, workdir)


if __name__ == "__main__":
    common_train.run(_make_task)
