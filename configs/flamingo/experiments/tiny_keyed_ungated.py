"""Ablation (paper Table 3, "w/o tanh gating") on the keyed recipe: tiny_keyed.py with y = y + xattn(y) and
y = y + ffw(y), no tanh gates."""
from configs.flamingo.tiny_keyed import keyed_config


def get_config():
    return keyed_config(gating="none")
