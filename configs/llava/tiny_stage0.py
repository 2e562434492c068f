"""Tiny LLaVA "stage 0": the tiny LM's own text pretraining, standing in for Vicuna (a chat LM that never saw an
image but can read): scenes of the bundled data written as text ("Scene: large red circle top left; ...") followed
by their caption (plain) or a short-answer question (vicuna_v1), all text; only the LM trains. Its checkpoint (LM + the
frozen random tower) seeds stage 1 and stage 2.

python -m llava_jax.train --config configs/llava/tiny_stage0.py --workdir workdirs/llava_tiny_s0
"""
from configs.llava.tiny_base import base_config


def get_config():
    config = base_config()
    config.total_steps = 800
    config.batch_size = 16
    config.data.text_only = True
    config.data.datasets = dict(
        captions=dict(source="shapes_scene_text", kind="captions", max_len=72, template="plain"),
        vqa=dict(source="shapes_scene_text", kind="vqa", max_len=88),
    )
    config.optimizer = dict(lr=3e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.95,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"lm/.*", dict()), (r".*", dict(frozen=True))))
    return config
