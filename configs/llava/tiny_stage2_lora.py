"""Tiny LLaVA stage 2 with LoRA: rank 8, alpha 16 adapters on every linear layer of the tiny LM (base frozen), the
projector trained alongside, the rest as tiny_stage2.py.

python -m llava_jax.train --config configs/llava/tiny_stage2_lora.py --workdir workdirs/llava_tiny_lora \
    --config.init_from=workdirs/llava_tiny_s1
"""
from configs.llava.tiny_stage2 import get_config as stage2_config


def get_config():
    config = stage2_config()
    config.lora = dict(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    config.optimizer.lr = 2e-3
    config.optimizer.param_groups = ((r"lora/.*", dict()), (r"projector/.*", dict()), (r".*", dict(frozen=True)))
    return config
