"""Tiny Flamingo with a names-heavier mix: the main config's captions and documents plus 'names' documents with
stage 0's episode sizes (2-6 names over 3-10 pairs), so that reading the image pays on many more tokens.

python -m flamingo_jax.reproduce --workdir DIR --recipe plain --variants tiny_names
"""
from configs.flamingo.tiny_base import base_config


def get_config():
    config = base_config()
    config.data.datasets.names = dict(source="names_documents", max_len=96, weight=1.0, max_images=10, batch_size=8,
                                      min_pairs=3, max_pairs=10, min_names=2, max_names=6)
    return config
