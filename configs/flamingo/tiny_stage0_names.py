"""Tiny Flamingo stage 0, first part: the tiny LM on names text alone (tiny_stage0.py's names episodes, 3000
steps), where binding names to their key words forms more reliably than in the mix; it is a phase change whose step
varies with the seed (repeated names right with their own key / another key at 3000 steps: seed 0 77.3 / 17.2, seed
2 66.8 / 21.1, seeds 1 and 3 not yet bound; by 5000 steps seeds 0, 2, 3 at 82-89 / 10-21; README, "Stage 0's names
part by seed"); tiny_stage0_keyed.py continues from it on the full text mix.

python -m flamingo_jax.train --config configs/flamingo/tiny_stage0_names.py --workdir W/stage0_names
"""
from configs.flamingo.tiny_stage0 import get_config as stage0_config


def get_config():
    config = stage0_config()
    config.data.datasets = dict(names=config.data.datasets.names.to_dict())
    return config
