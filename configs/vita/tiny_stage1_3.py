"""Tiny VITA stage 1.3, vision SFT: projector + LLM on shapes VQA and conversations, from stage 1.2, with the text-only
repeat data of stage 1.2."""
from configs.vita.tiny_base import base_config, repeat_text, shapes


def get_config():
    config = base_config("1.3")
    config.init_from = "workdirs/vita_tiny_s1_2"
    config.optimizer.lr = 5e-4
    config.data.datasets = dict(vqa=shapes("vqa", 184), conversations=shapes("conversations", 248),
                                repeat=repeat_text())
    return config
