"""Ablation on the keyed recipe: tiny_keyed.py with a single gated block before the LM's first layer (every 4th
layer in IDEFICS' placement, i % 4 == 0; tiny_keyed_every4.py has OpenFlamingo's, before the last layer). Tests
where the block must write: the frozen stage-0 LM reads its key words at the first layer's input."""
from configs.flamingo.tiny_keyed import keyed_config


def get_config():
    return keyed_config(every=4, block_position=0)
