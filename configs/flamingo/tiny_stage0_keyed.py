"""Tiny Flamingo stage 0, second part: 1000 steps of tiny_stage0.py's text mix continued from tiny_stage0_names.py
(`init_lm.workdir`), with `caption_keys`: each caption starts with the word its image alone determines (the shape
of a single object, else the number of objects), tokenized on its own where Flamingo's <image> will stand, so the
frozen LM learns to read that position.

python -m flamingo_jax.train --config configs/flamingo/tiny_stage0_keyed.py --workdir W/stage0 \
    --config.init_lm.workdir=W/stage0_names
"""
from configs.flamingo.tiny_stage0 import get_config as stage0_config


def get_config():
    config = stage0_config()
    config.total_steps = 1000
    config.data.datasets.captions.caption_keys = True
    return config
