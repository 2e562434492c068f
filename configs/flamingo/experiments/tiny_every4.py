"""Ablation (paper Table 3, cross-attention frequency): tiny.py with one gated block every 4th LM layer (OpenFlamingo
placement: before layer i with (i + 1) % 4 == 0; the 4-layer tiny LM then has a single block, before its last layer)."""
from configs.flamingo.tiny_base import base_config, model


def get_config():
    config = base_config()
    config.model = model(every=4)
    return config
