"""VITA-1.5 training entry point (stages 1.1 .. 3.2; configs/vita/):
`python -m vita_jax.train --config configs/vita/<name>.py --workdir DIR [--config.x=y]`. Running it again with the
same workdir resumes; `--config.init_from=PREVIOUS_STAGE_WORKDIR` starts from the previous stage's params. A config's
`stage` picks the task: 3.1 the codec (vita_jax.codec_train), 3.2 the speech decoders (vita_jax.speech_train),
anything else the VITA model (vita_jax.task).
"""
from __future__ import annotations

from common.train import run
from vita_jax import codec_train, speech_train, task


def make_task_for(config, workdir=None, tokenizer=None):
    """The task of the config's stage; `tokenizer` (the model stages and 3.2) replaces the config's (planning)."""
    stage = str(config.get("stage", "") or "")
    if stage == "3.1":
        return codec_train.make_task(config, workdir=workdir)
    if stage == "3.2":
        return speech_train.make_task(config, workdir=workdir, tokenizer=tokenizer)
    return task.make_task(config, workdir=workdir, tokenizer=tokenizer)


def _make_task(config, workdir):
    return make_task_for(config, workdir)


def main() -> None:
    run(_make_task)


if __name__ == "__main__":
    main()
