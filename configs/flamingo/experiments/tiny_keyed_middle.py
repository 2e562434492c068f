"""Ablation (paper Table 3, cross-attention frequency, "single in middle") on the keyed recipe: tiny_keyed.py with one
gated block in the middle of the 4-layer LM (before layer 2)."""
from configs.flamingo.tiny_keyed import keyed_config


def get_config():
    return keyed_config(every=4, block_position=2)
