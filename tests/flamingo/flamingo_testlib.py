"""Tiny Flamingo configurations shared by the Flamingo tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.lm import LMConfig
from common.vision.clip import CLIPVisionConfig
from flamingo_jax.gated_cross_attention import GatedXAttnConfig
from flamingo_jax.model import Flamingo, FlamingoConfig, init_params
from flamingo_jax.perceiver_resampler import ResamplerConfig

IMAGE = 5  # the <image> token id of the tiny models


def tiny_config(every: int = 2, position=None, frames=None, scan: bool = True, **xattn) -> FlamingoConfig:
    lm = LMConfig(vocab_size=48, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=64,
                  max_position_embeddings=64, scan_layers=scan)
    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48, num_layers=2,
                              num_heads=4, scan_layers=scan)
    resampler = ResamplerConfig(width=24, depth=2, num_heads=2, head_dim=8, num_latents=4, max_frames=frames)
    return FlamingoConfig(lm=lm, xattn=GatedXAttnConfig(num_heads=2, head_dim=8, **xattn), resampler=resampler,
                          vision=vision, image_token_id=IMAGE, cross_attn_every=every, block_position=position)


def with_gates(params, value=None, seed=0):
    """Sets every alpha_* leaf to `value` (or random normal values)."""
    rng = np.random.RandomState(seed)

    def set_leaf(path, leaf):
        name = getattr(path[-1], "key", "")
        if name.startswith("alpha_"):
            return jnp.full(leaf.shape, value, leaf.dtype) if value is not None else jnp.asarray(
                rng.randn(*leaf.shape).astype(np.float32))
        return leaf
    return jax.tree_util.tree_map_with_path(set_leaf, params)


def build(config: FlamingoConfig, seed: int = 0, **kwargs):
    """(model, unboxed params), initialised under jit (eager flax init compiles every op separately)."""
    model = Flamingo(config)
    init = jax.jit(lambda key: nn.unbox(init_params(model, key, **kwargs)))
    return model, init(jax.random.key(seed))


def jit_apply(model, method=None, **static):
    """model.apply under jit; keyword arguments given here are static (e.g. method)."""
    def run(params, *args, **kwargs):
        return model.apply({"params": params}, *args, method=method, **kwargs)
    return jax.jit(run)


def pixels(batch, n, frames=None, seed=1):
    shape = (batch, n) + ((frames,) if frames else ()) + (16, 16, 3)
    return jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32))
