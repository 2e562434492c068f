"""Tiny VITA stage 2.0 (the miniature's, not the paper's): the speech encoder pre-trained for ASR with a CTC head over
the LM's vocabulary (`vita_jax.ctc`), from stage 1.3, the global CMVN first computed from 512 training utterances;
it stands in for the ASR-trained encoder VITA-1.5 starts from. Stage 2.1 then starts from this workdir (the head is
dropped)."""
from configs.vita.tiny_base import base_config, shapes


def get_config():
    config = base_config("2.0")
    config.objective = "ctc"
    config.init_from = "workdirs/vita_tiny_s1_3"
    config.optimizer.lr = 4e-3
    config.optimizer.warmup_steps = 20
    config.data.max_audio_seconds = 6.0
    config.data.cmvn_utterances = 512
    config.data.datasets = dict(asr=shapes("asr", 184))
    return config
