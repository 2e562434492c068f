"""Helpers for the LLaVA tests: tiny random HF LLaVA / LLaVA-NeXT models, prompts with expanded placeholders,
real images through our preprocessing, jitted forwards."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.data import image_ops
from llava_jax import anyres

VOCAB = 96
IMAGE_TOKEN = VOCAB - 1
PAD = 0

TEXT_CONFIGS = {
    "llama": dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "mistral": dict(model_type="mistral", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128, sliding_window=4096),
    "qwen2": dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
}


def vision_config(image_size: int) -> dict:
    return dict(model_type="clip_vision_model", hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, image_size=image_size, patch_size=14)


def randomize(model, seed: int, scale: float = 0.05) -> None:
    """HF initialises biases to zero and norms to one: perturb every parameter so each tensor's mapping matters."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def hf_llava(text: str = "llama", image_size: int = 42, next_pinpoints=None, seed: int = 0, text_overrides=None,
             **kwargs):
    """A random (then perturbed) LlavaForConditionalGeneration / LlavaNextForConditionalGeneration in eval mode
    (text_overrides: fields of TEXT_CONFIGS[text] to change, e.g. max_position_embeddings)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vision_config=vision_config(image_size), text_config={**TEXT_CONFIGS[text], **(text_overrides or {})},
                  image_token_index=IMAGE_TOKEN, **kwargs)
    if next_pinpoints is None:
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**common))
    else:
        model = transformers.LlavaNextForConditionalGeneration(
            transformers.LlavaNextConfig(image_grid_pinpoints=next_pinpoints, **common))
    randomize(model, seed)
    return model.eval()


def clip_pixels(images, size: int) -> np.ndarray:
    """uint8 images -> [N, size, size, 3] float32 through our CLIP preprocessing (pad to square, resize, crop)."""
    return np.stack([image_ops.clip_preprocess(image_ops.expand_to_square(img), size) for img in images])


def prompts(counts_per_sample, tokens_per_image, rng, length=None, text_len=(3, 6), vocab=VOCAB,
            image_token=IMAGE_TOKEN):
    """Random token prompts, every image expanded into its placeholders between text runs; left padded.

    counts_per_sample: [[tokens of image 1, tokens of image 2, ...] per sample]. -> (ids [B, T], mask [B, T])."""
    rows = []
    top = min(vocab, image_token) if image_token >= 0 else vocab
    for counts in counts_per_sample:
        row = list(rng.randint(1, top, rng.randint(*text_len)))
        for n in counts:
            row += [image_token] * int(n) + list(rng.randint(1, top, rng.randint(*text_len)))
        rows.append(row)
    length = length or max(len(r) for r in rows)
    ids = np.full((len(rows), length), PAD, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for b, r in enumerate(rows):
        ids[b, length - len(r):] = r
        mask[b, length - len(r):] = 1
    return ids, mask


def hf_logits(model, ids, mask, pixels_nhwc, image_sizes=None) -> np.ndarray:
    import torch

    kwargs = {}
    if pixels_nhwc is not None:
        kwargs["pixel_values"] = torch.tensor(np.moveaxis(pixels_nhwc, -1, -3))
    if image_sizes is not None:
        kwargs["image_sizes"] = torch.tensor(image_sizes)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kwargs
                     ).logits.float().numpy()


_JITTED = {}


def jit_apply(module, params, *args, static=None, **kwargs):
    """Jitted forward, compiled once per (module, argument structure); numpy arguments are passed as jax arrays,
    `static` ones (e.g. host image_sizes) are closed over as numpy constants."""
    static = static or {}
    key = (id(module), tuple(a is None for a in args), tuple(sorted(kwargs)), tuple(sorted(static)),
           tuple(id(v) for v in static.values()))
    if key not in _JITTED:
        _JITTED[key] = (module, jax.jit(lambda p, a, k: module.apply({"params": p}, *a, **k, **static)))
    to_jax = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    return np.asarray(_JITTED[key][1](params, tuple(to_jax(a) for a in args),
                                      {k: to_jax(v) for k, v in kwargs.items()}))


def random_params(module, example_args, seed: int = 0):
    """Parameters of `module` drawn at random from the shapes of `jax.eval_shape(init)` (no compilation): normal
    noise, around one for norm scales. Returns (boxed abstract tree, params)."""
    import flax.linen as nn

    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_args))["params"]
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        base = 1.0 if name == "scale" else 0.0
        return jnp.asarray(base + 0.1 * rng.randn(*leaf.shape), leaf.dtype)

    return boxed, jax.tree_util.tree_map_with_path(draw, nn.unbox(boxed))


def next_inputs(images, pinpoints, crop):
    """Real images -> (pixels [N, P, crop, crop, 3], sizes [N, 2]) through our anyres preprocessing."""
    return anyres.preprocess(images, pinpoints, crop)
