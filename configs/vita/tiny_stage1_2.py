"""Tiny VITA stage 1.2, vision understanding: vision tower + projector + LLM on shapes captions and conversations,
from stage 1.1 (`init_from`)."""
from configs.vita.tiny_base import base_config, shapes


def get_config():
    config = base_config("1.2")
    config.init_from = "workdirs/vita_tiny_s1_1"
    config.optimizer.lr = 5e-4
    config.data.datasets = dict(captions=shapes("captions", 208), conversations=shapes("conversations", 240))
    return config
