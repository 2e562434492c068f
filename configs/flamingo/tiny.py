"""Tiny Flamingo (CPU, bundled shapes data): frozen contrastive ViT + frozen stage-0 LM + trained resampler and gated
blocks (one before every LM layer) on LAION-style captions and MMC4-style interleaved documents, accumulated.

python -m flamingo_jax.train --config configs/flamingo/tiny.py --workdir workdirs/flamingo_tiny \
    --config.init_lm.workdir=workdirs/flamingo_tiny_s0 --config.init_vision.workdir=workdirs/flamingo_tiny_vision
(`python -m flamingo_jax.reproduce` runs stage 0, this and the ablations, then the few-shot evaluation.)
"""
from configs.flamingo.tiny_base import base_config


def get_config():
    return base_config()
