"""VITA-1.5 (Fu et al. 2025, "VITA-1.5: Towards GPT-4o Level Real-Time Vision and Speech Interaction") on the shared
core: InternViT tiles + speech encoder / adapter placed into a Qwen2 LM. Modules: model (Vita, VitaConfig, training
stage param groups), speech_encoder (the release's "whale" encoder and CNN adapter), hf (load_original: the released
VITA-1.5 folder), presets (vita_1_5 and tiny sizes)."""
from vita_jax.hf import load_original as _load
from vita_jax.model import (AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX, Vita, VitaConfig, abstract_params, example_inputs,
                            init_params, param_counts, trainable_patterns)
from vita_jax.speech_encoder import AudioAdapter, SpeechEncoder, SpeechEncoderConfig, audio_token_lengths


def load_original(model_dir, **kwargs):
    """The released VITA-1.5 folder -> (Vita, params). See vita_jax.hf.load_original."""
    return _load(model_dir, **kwargs)


load_hf = load_original  # VITA-1.5 has no transformers format: its release folder is the checkpoint

__all__ = ["AUDIO_TOKEN_INDEX", "AudioAdapter", "IMAGE_TOKEN_INDEX", "SpeechEncoder", "SpeechEncoderConfig", "Vita",
           "VitaConfig", "abstract_params", "audio_token_lengths", "example_inputs", "init_params", "load_hf",
           "load_original", "param_counts", "trainable_patterns"]
