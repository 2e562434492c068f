"""Tiny Flamingo "stage 0": the tiny LM's own text-only pretraining, standing in for the paper's frozen,
text-pretrained Chinchilla LM. It reads text-only versions of the bundled data, where every image is replaced by
words: 'names' episodes laid out token for token as Flamingo's names documents, with the shape word standing
exactly where Flamingo's <image> will ("circle|This is a dax.|<|endofchunk|>|star|This is a wug.|<|endofchunk|>|
circle|This is a dax.|<|endofchunk|>", each piece tokenized on its own, so "This" is the same token as after
<image>; the names are made up per episode, so predicting a repeated one is in-context learning in text), captions,
and "{scene} Question:{q} Short answer:{a}". No image and no <image> token is ever seen.

The names episodes have 2-6 names over 3-10 pairs, at a constant learning rate: with 2-3 names over 3-8 pairs (and a
cosine decay) the LM settled for a key-blind shortcut (guess a frequent name from the context: 57% of repeated names
right with the true shape word, 44% with a wrong one), and a frozen LM that never reads the key leaves a Flamingo
nothing to put the image into. With more names that shortcut pays less, and binding names to their keys forms after
about 2000 steps (a phase change, as induction heads do).

python -m flamingo_jax.train --config configs/flamingo/tiny_stage0.py --workdir workdirs/flamingo_tiny_s0
"""
from configs.flamingo.tiny_base import base_config


def get_config():
    config = base_config()
    config.stage = "lm"
    config.total_steps = 3000
    config.batch_size = 16
    config.data.datasets = dict(
        names=dict(source="names_text", max_len=80, weight=1.0, min_pairs=3, max_pairs=10, min_names=2, max_names=6,
                   batch_size=16),
        captions=dict(source="captions_text", max_len=32, weight=0.3, batch_size=4),
        vqa=dict(source="vqa_text", max_len=48, weight=0.3, batch_size=4),
    )
    config.optimizer = dict(lr=3e-3, schedule="constant", warmup_steps=30, b1=0.9, b2=0.95,
                            weight_decay=0.0, clip_norm=1.0, param_groups=())
    return config
