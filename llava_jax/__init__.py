"""LLaVA / LLaVA-1.5 / LLaVA-NeXT (Liu et al. 2023, "Visual Instruction Tuning"; 2023b, "Improved Baselines with
Visual Instruction Tuning"; 2024, LLaVA-NeXT) on the shared core: CLIP tower (common/vision), projector, any
common.lm decoder. Modules: model (Llava, LlavaConfig), projector, anyres, hf (load_hf / save_hf, load_original,
export of a workdir, load_model from a workdir / HF / msgpack folder), conversation (templates + answer-only loss
masks), presets (published model sizes), data + task + train (two-stage training, LoRA), inference (generate_batch),
chat (CLI), eval (VQA / multiple choice), reproduce (the miniature reproduction)."""
from llava_jax.hf import export
from llava_jax.hf import load_hf as _load
from llava_jax.hf import load_original as _load_original
from llava_jax.hf import save_hf as _save
from llava_jax.inference import generate_batch as _generate
from llava_jax.model import (Llava, LlavaConfig, abstract_params, example_inputs, frozen_patterns, init_params,
                             param_counts, trainable_patterns)


def load_hf(path, dtype=None, mesh=None):
    """Local HF llava / llava_next checkpoint dir -> (Llava, params). See llava_jax.hf.load_hf."""
    return _load(path, dtype=dtype, mesh=mesh)


def save_hf(out_dir, module, params, tokenizer=None, **kwargs):
    """(Llava, plain params) -> HF llava / llava_next checkpoint dir. See llava_jax.hf.save_hf."""
    return _save(out_dir, module, params, tokenizer, **kwargs)


def load_original(lm_dir, mm_projector_bin=None, vision_tower_dir=None, **kwargs):
    """Original haotian-liu/LLaVA release layout -> (Llava, params). See llava_jax.hf.load_original."""
    return _load_original(lm_dir, mm_projector_bin, vision_tower_dir, **kwargs)


def generate_batch(model, params, tokenizer, requests, **kwargs):
    """Batched generation over (images, prompt) requests with mixed image counts. See llava_jax.inference."""
    return _generate(model, params, tokenizer, requests, **kwargs)


__all__ = ["generate_batch", "Llava", "LlavaConfig", "abstract_params", "example_inputs", "export", "frozen_patterns",
           "init_params", "load_hf", "load_original", "param_counts", "save_hf", "trainable_patterns"]
