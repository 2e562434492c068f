"""Tiny Flamingo stage 0, first part: the tiny LM on names text alone (tiny_stage0.py's names episodes, 3000
steps), where binding names to their key words forms more reliably than in the mix (repeated names right 70-90% of
the time with their own key, 12-27% with another: 69.9 / 16.4 and 71.5 / 26.6 in the reproduction's seeds 0 and 1,
84-90 / 12-18 in earlier scratch runs); tiny_stage0_keyed.py continues from it on the full text mix.

python -m flamingo_jax.train --config configs/flamingo/tiny_stage0_names.py --workdir W/stage0_names
"""
from configs.flamingo.tiny_stage0 import get_config as stage0_config


def get_config():
    config = stage0_config()
    config.data.datasets = dict(names=config.data.datasets.names.to_dict())
    return config
