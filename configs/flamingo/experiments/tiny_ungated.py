"""Ablation (paper Table 3, "w/o tanh gating"): tiny.py with y = y + xattn(y) and y = y + ffw(y), no tanh gates."""
from configs.flamingo.tiny_base import base_config, model


def get_config():
    config = base_config()
    config.model = model(every=1, gating="none")
    return config
