"""Tiny VITA stage 2.1, audio alignment (no public code in the release): the speech encoder + adapter on ASR of the
bundled espeak speech, the LLM frozen, from stage 1.3. For LibriSpeech set
`--config.data.datasets='{"asr": {"source": "librispeech", "root": "/data/LibriSpeech/train-clean-100",
"max_len": 256}}'` (and --config.data.max_audio_seconds=35)."""
from configs.vita.tiny_base import base_config, shapes


def get_config():
    config = base_config("2.1")
    config.init_from = "workdirs/vita_tiny_s1_3"
    config.optimizer.lr = 3e-3
    config.data.datasets = dict(asr=shapes("asr", 184))
    return config
