"""VITA-1.5 (Fu et al. 2025, "VITA-1.5: Towards GPT-4o Level Real-Time Vision and Speech Interaction") on the shared
core: InternViT tiles + speech encoder / adapter placed into a Qwen2 LM. Modules: model (Vita, VitaConfig, training
stage param groups), speech_encoder (the release's "whale" encoder and CNN adapter), hf (load_original / save_original:
the released VITA-1.5 folder; export of a training workdir to it; the codec's and speech decoder's checkpoints),
presets (vita_1_5 and tiny sizes)."""
from vita_jax.hf import export, load_original, save_original
from vita_jax.model import (AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX, Vita, VitaConfig, abstract_params, example_inputs,
                            init_params, param_counts, trainable_patterns)
from vita_jax.speech_encoder import AudioAdapter, SpeechEncoder, SpeechEncoderConfig, audio_token_lengths

# VITA-1.5 has no transformers format: its release folder is the checkpoint, read and written in that layout.
load_hf, save_hf = load_original, save_original

__all__ = ["AUDIO_TOKEN_INDEX", "AudioAdapter", "IMAGE_TOKEN_INDEX", "SpeechEncoder", "SpeechEncoderConfig", "Vita",
           "VitaConfig", "abstract_params", "audio_token_lengths", "example_inputs", "export", "init_params", "load_hf",
           "load_original", "param_counts", "save_hf", "save_original", "trainable_patterns"]
