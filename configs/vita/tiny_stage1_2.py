"""Tiny VITA stage 1.2, vision understanding: vision tower + projector + LLM on shapes captions and conversations,
from stage 1.1 (`init_from`), with text-only repeat data that keeps the copy skill stage 2.1 relies on."""
from configs.vita.tiny_base import base_config, repeat_text, shapes


def get_config():
    config = base_config("1.2")
    config.init_from = "workdirs/vita_tiny_s1_1"
    config.optimizer.lr = 5e-4
    config.data.datasets = dict(captions=shapes("captions", 216), conversations=shapes("conversations", 248),
                                repeat=repeat_text())
    return config
