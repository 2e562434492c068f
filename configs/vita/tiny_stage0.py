"""Tiny VITA "stage 0" (the miniature's, not the paper's): the tiny LM's own text pre-training, standing in for the
Qwen2 that VITA-1.5 starts from (an LM that reads and answers but never saw an image or heard a sound): scenes of the
bundled data written as text where the image would be, followed by their caption or a short-answer question, and
utterances of the ASR data on the line after the ASR prompt, to repeat word for word (`common.data.scene_text`);
only the LM trains. Stage 1.1 starts from this workdir."""
from configs.vita.tiny_base import base_config


def get_config():
    config = base_config("0")
    config.total_steps = 600
    config.optimizer.lr = 3e-3
    config.optimizer.warmup_steps = 20
    scene_text = lambda kind: dict(source="shapes_scene_text", kind=kind, scene_format="words", max_len=176)  # noqa: E731
    config.data.datasets = dict(captions=scene_text("captions"), vqa=scene_text("vqa"), repeat=scene_text("repeat"))
    return config
