"""Flamingo (Alayrac et al. 2022) on the shared core: Perceiver Resampler + GATED XATTN-DENSE blocks inserted into
common.lm.DecoderLM, a frozen vision encoder, loaders for IDEFICS v1 and OpenFlamingo checkpoints, and an IDEFICS v1
exporter (`save_hf`; `export` for a training workdir)."""
from flamingo_jax.hf import export, load_hf, load_open_flamingo, save_hf
from flamingo_jax.gated_cross_attention import GatedCrossAttentionBlock, GatedXAttnConfig, MediaInputs
from flamingo_jax.model import (Flamingo, FlamingoConfig, abstract_params, count_media, example_inputs, init_params,
                                param_counts, param_groups, trainable_param_patterns)
from flamingo_jax.perceiver_resampler import PerceiverResampler, ResamplerConfig

__all__ = ["Flamingo", "FlamingoConfig", "GatedCrossAttentionBlock", "GatedXAttnConfig", "MediaInputs",
           "PerceiverResampler", "ResamplerConfig", "abstract_params", "count_media", "example_inputs", "export",
           "init_params", "load_hf", "load_open_flamingo", "param_counts", "param_groups", "save_hf",
           "trainable_param_patterns"]
