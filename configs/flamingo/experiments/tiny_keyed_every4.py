"""Ablation (paper Table 3, cross-attention frequency) on the keyed recipe: tiny_keyed.py with one gated block every
4th LM layer (OpenFlamingo placement: the 4-layer tiny LM then has a single block, before its last layer)."""
from configs.flamingo.tiny_keyed import keyed_config


def get_config():
    return keyed_config(every=4)
