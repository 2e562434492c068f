"""Helpers for the LLaVA training / inference tests: a micro version of configs/llava/tiny_*.py (1-layer LM and
tower, width 32, 4 image tokens on 32 px images) that compiles in seconds, and a random model built from it."""
from __future__ import annotations

import os

import configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str):
    """configs/llava/<name>.py through the one loader (configs.load_config)."""
    return configs.load_config(f"llava/{name}")


def micro(config, steps: int = 4, batch: int = 4):
    """Shrinks a tiny LLaVA config: 1-layer 32-wide LM and tower, 32 px images of 16 px patches (4 tokens)."""
    config.model.text.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
    config.model.vision.update(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_layers=1,
                               num_heads=2)
    config.model.vision_feature_layer = -1
    for spec in config.data.datasets.values():
        spec.image_size = 32
        spec.max_len = spec.max_len - 5
        spec.batch_size = None
    config.total_steps = steps
    config.batch_size = batch
    config.log_every = 1
    config.checkpoint_every = steps
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    return config


def random_model(seed: int = 0):
    """(Llava, params, tokenizer) of the micro stage-2 config, random weights (no training)."""
    import flax.linen as nn
    import jax

    from llava_jax.task import make_task

    task = make_task(micro(load_config("tiny_stage2")))
    params = nn.unbox(jax.jit(task.init_params)(jax.random.key(seed)))
    return task.model, params, task.tokenizer
