"""Tiny Flamingo, keyed recipe: the main mix (tiny.py) plus 8 'names' documents per step in which half of the pairs
name their key with the shape word instead of an image (`text_keys=0.5`), on the keyed stage 0
(tiny_stage0_names.py then tiny_stage0_keyed.py), 3000 steps; of the input embedding only the <image> /
<|endofchunk|> rows train (OpenFlamingo's gradient mask; training every row cost the frozen LM its binding and the
link then took 3000-6000 steps). The recipe under which the tiny model can read the query image in the names task
and names accuracy rises with shots, but not dependably: the link forms or not by chance (on the earlier stage-0
parts by 2000 steps; with fresh seeds 0 and 1 not by 3000; README, "Miniature reproduction").

python -m flamingo_jax.train --config configs/flamingo/tiny_keyed.py --workdir W/keyed \
    --config.init_lm.workdir=W/stage0 --config.init_vision.workdir=W/vision
(`python -m flamingo_jax.reproduce` runs the whole recipe, the ablations tiny_keyed_ungated / tiny_keyed_every4 and
the few-shot evaluation.)
"""
from configs.flamingo.tiny_base import base_config, model


def keyed_config(every: int = 1, gating: str = "tanh", block_position: int | None = None):
    config = base_config()
    config.model = model(every=every, gating=gating)
    config.model.block_position = block_position
    config.total_steps = 3000
    config.data.datasets.names = dict(source="names_documents", max_len=96, weight=1.0, max_images=10, batch_size=8,
                                      min_pairs=3, max_pairs=10, min_names=2, max_names=6, text_keys=0.5)
    return config


def get_config():
    return keyed_config()
