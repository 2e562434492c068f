"""Batched LLaVA inference (Liu et al. 2023, "Visual Instruction Tuning", Sec. 5 chatbot / Fig. 1 at inference): many
(images, prompt) requests, each with its own number of images (0, 1, several), decoded together through the shared
`common.generate` loop (prefill with the images, KV-cache decode without them). The original repository could only
run one request at a time.

    from llava_jax import generate_batch
    answers = generate_batch(model, params, tokenizer, [([img_a], "What is this?"), ([img_a, img_b], "Compare."),
                                                        ([], "Say hi.")], template="vicuna_v1", max_new_tokens=64)

Prompts are rendered with the conversation template (`conversation.generation_prompt`: `<image>\\n` per image in
front of the question, open assistant turn), tokenized, every `<image>` expanded into the model's placeholders,
left padded; images are padded to the largest count with an image mask. A prompt may also be a list of token ids
holding one `config.image_token_index` per image (already templated and tokenized; no tokenizer needed then).
LLaVA-NeXT (anyres) models work the same way: each image is cut into its best-resolution grid of crops plus the base
image (`anyres.preprocess`, no padding to square), its placeholder count follows from its size
(`config.tokens_per_image`), and the per-image layout (`config.image_layout`) is passed to the jitted prefill.
`GenerationAdapter` gives a `Llava` the `(input_ids, attention_mask, *, position_ids, cache, **inputs)` signature
`common.generate` expects.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from common.data import image_ops
from common.generate import GenerationConfig, generate
from common.tokenizers import IMAGE_TOKEN
from llava_jax import anyres, conversation
from llava_jax.data import preprocess_image
from llava_jax.model import Llava


@dataclasses.dataclass(frozen=True)
class GenerationAdapter:
    """`Llava` with the call signature of `common.generate`. Decode steps run without pixels, so the placeholder id
    must never be generated (it would have no image feature): its logit is set to -inf when it lies in the
    vocabulary (`suppress_image_token`)."""

    module: Llava
    suppress_image_token: bool = True

    @property
    def lm_config(self):
        return self.module.config.text

    def apply(self, variables, input_ids, attention_mask=None, *, position_ids=None, cache=None, pixel_values=None,
              image_mask=None, image_sizes=None, image_layout=None):
        out = self.module.apply(variables, input_ids, pixel_values, attention_mask, image_mask, image_sizes,
                                image_layout=image_layout, position_ids=position_ids, cache=cache)
        logits, cache = out if cache is not None else (out, None)
        idx = self.module.config.image_token_index
        if self.suppress_image_token and 0 <= idx < logits.shape[-1]:
            logits = logits.at[..., idx].set(-1e30)
        return (logits, cache) if cache is not None else logits


def _as_images(images) -> list:
    if images is None:
        return []
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)


def _prompt_ids(module: Llava, tokenizer, prompt, num_images: int, template: str, raw_prompt: bool):
    """-> (token ids [L] with one image marker per image, the marker id)."""
    cfg = module.config
    if not isinstance(prompt, str):  # token ids, one image_token_index per image
        ids = np.asarray(prompt, np.int32).reshape(-1)
        marker = cfg.image_token_index
    else:
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer (or give token ids)")
        marker = tokenizer.token_to_id(IMAGE_TOKEN)
        if marker is None:
            raise ValueError("the tokenizer has no <image> token: call tokenizer.add_family_tokens('llava')")
        text = prompt if raw_prompt else conversation.generation_prompt(template, prompt, num_images=num_images)
        if text.count(IMAGE_TOKEN) != num_images:
            raise ValueError(f"prompt holds {text.count(IMAGE_TOKEN)} <image> markers for {num_images} images")
        ids = np.asarray(tokenizer.encode(text, add_bos=tokenizer.bos_id is not None), np.int32)
    if int((ids == marker).sum()) != num_images:
        raise ValueError(f"prompt holds {int((ids == marker).sum())} image markers (id {marker}) for "
                         f"{num_images} images")
    return ids, marker


def _anyres_images(module: Llava, images) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA-NeXT: images -> (crops [n, P, S, S, C] zero past each image's count, sizes [n, 2] (height, width))."""
    cfg = module.config
    arrays = [image_ops.decode_image(img, convert_image_modes=True) for img in images]  # uint8 RGB passes through
    if not arrays:
        size = cfg.vision.image_size
        return np.zeros((0, cfg.max_crops, size, size, cfg.vision.num_channels), np.float32), np.zeros((0, 2), np.int32)
    return anyres.preprocess(arrays, cfg.image_grid_pinpoints, cfg.vision.image_size, pad_to=cfg.max_crops)


def build_batch(module: Llava, tokenizer, requests: Sequence[tuple[Any, Any]], *, template: str = "vicuna_v1",
                raw_prompt: bool = False, pad_to_square: bool = True, pad_id: int | None = None,
                image_slots: int | None = None) -> dict:
    """requests [(images, prompt)] -> left-padded input_ids / attention_mask [B, T], pixel_values [B, N, S, S, 3]
    (NeXT: [B, N, P, S, S, 3], plus image_sizes [B, N, 2] and image_layout [B, N, 6]), image_mask [B, N] (N = the
    largest image count, at least 1, or `image_slots`; padding slots are zero). `raw_prompt=True`: a text prompt is
    already a full template string holding one `<image>` per image; a token-id prompt holds one `image_token_index`
    per image.
    `pad_to_square` (LLaVA-1.5's pad) applies to LLaVA only: NeXT keeps the aspect ratio in its crop grid."""
    cfg = module.config
    size = cfg.vision.image_size
    rows, pixels, sizes = [], [], []
    for images, prompt in requests:
        images = _as_images(images)
        ids, marker = _prompt_ids(module, tokenizer, prompt, len(images), template, raw_prompt)
        if cfg.anyres:
            crops, hw = _anyres_images(module, images)
            counts = cfg.tokens_per_image(hw) if len(images) else np.zeros((0,), np.int64)
            pixels.append(crops)
            sizes.append(hw)
        else:
            counts = cfg.tokens_per_crop
            pixels.append([preprocess_image(img, size, pad_to_square) for img in images])
        ex = conversation.expand_image_tokens({"input_ids": ids}, marker, counts, cfg.image_token_index)
        rows.append(ex["input_ids"])
    batch, length = len(rows), max(len(r) for r in rows)
    n = max(1, max(len(p) for p in pixels))
    if image_slots is not None:
        if image_slots < n:
            raise ValueError(f"a request holds {n} images > image_slots={image_slots}")
        n = image_slots
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    crops = (cfg.max_crops,) if cfg.anyres else ()
    pix = np.zeros((batch, n) + crops + (size, size, cfg.vision.num_channels), np.float32)
    image_mask = np.zeros((batch, n), bool)
    image_sizes = np.zeros((batch, n, 2), np.int32)
    for b, (row, p) in enumerate(zip(rows, pixels)):
        ids[b, length - len(row):], mask[b, length - len(row):] = row, 1
        for i, img in enumerate(p):
            pix[b, i], image_mask[b, i] = img, True
        if cfg.anyres and len(p):
            image_sizes[b, :len(p)] = sizes[b]
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pix, "image_mask": image_mask}
    if cfg.anyres:
        out.update(image_sizes=image_sizes, image_layout=np.asarray(cfg.image_layout(image_sizes), np.int32))
    return out


def generate_batch(model: Llava, params, tokenizer, requests: Sequence[tuple[Any, Any]], *,
                   template: str = "vicuna_v1", max_new_tokens: int = 64, raw_prompt: bool = False,
                   config: GenerationConfig | None = None, stop_strings: Sequence[str] = (), rng=None,
                   bucket: int = 64, return_tokens: bool = False, suppress_image_token: bool = True,
                   image_slots: int | None = None) -> list:
    """Answers (decoded strings, stripped) for requests [(images, prompt)]: images a list of uint8 [H, W, 3] arrays
    (or paths / bytes / PIL images), any count per request; prompt a question (templated with `template`), a full
    template string (`raw_prompt=True`) or token ids (one `image_token_index` per image). LLaVA and LLaVA-NeXT
    (anyres) models alike. Greedy by default; `config` overrides everything (sampling, beams). Generation stops at
    the tokenizer's eos (and, in the text, at any of `stop_strings`). `return_tokens=True` (or no tokenizer)
    returns the generated token lists instead. `image_slots` fixes the image axis (default: the largest image count
    of the batch), so batches with different image counts share one compilation."""
    if not requests:
        return []
    if config is None:
        eos = (tokenizer.eos_id,) if tokenizer is not None and tokenizer.eos_id is not None else ()
        pad = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=eos, bucket=bucket, pad_token_id=pad)
    batch = build_batch(model, tokenizer, requests, template=template, raw_prompt=raw_prompt,
                        pad_id=config.pad_token_id, image_slots=image_slots)
    adapter = GenerationAdapter(model, suppress_image_token=suppress_image_token)
    prefill = {"pixel_values": jnp.asarray(batch["pixel_values"]), "image_mask": jnp.asarray(batch["image_mask"])}
    if model.config.anyres:
        prefill["image_layout"] = jnp.asarray(batch["image_layout"])
    out = generate(adapter, params, batch["input_ids"], batch["attention_mask"], config=config, rng=rng,
                   prefill_inputs=prefill, lm_config=model.config.text)
    tokens = np.asarray(out["tokens"])
    lengths = np.asarray(out["lengths"])
    results = []
    for b in range(len(requests)):
        toks = [int(t) for t in tokens[b, :lengths[b]]]
        if toks and toks[-1] in config.eos_token_ids:
            toks = toks[:-1]
        if return_tokens or tokenizer is None:
            results.append(toks)
            continue
        text = tokenizer.decode(toks, skip_special_tokens=True)
        for s in stop_strings:
            text = text.split(s)[0]
        results.append(text.strip())
    return results
