"""Tiny VITA stage 1.1, vision alignment: the projector only, on shapes captions.

python -m vita_jax.train --config configs/vita/tiny_stage1_1.py --workdir workdirs/vita_tiny_s1_1
"""
from configs.vita.tiny_base import base_config, shapes


def get_config():
    config = base_config("1.1")
    config.data.datasets = dict(captions=shapes("captions", 216))
    return config
