"""Tiny VITA stage 2.2, audio SFT with non-awakening interaction: adapter + projector + LLM on spoken (☞) and typed
(☜) questions about shapes scenes, and noise utterances answered with ☟ alone, from stage 2.1."""
from configs.vita.tiny_base import base_config, shapes


def get_config():
    config = base_config("2.2")
    config.init_from = "workdirs/vita_tiny_s2_1"
    config.optimizer.lr = 5e-4
    config.data.datasets = dict(spoken_qa=shapes("spoken_qa", 224), asr=shapes("asr", 184, weight=0.3))
    return config
