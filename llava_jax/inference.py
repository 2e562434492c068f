"""Batched LLaVA inference (Liu et al. 2023, "Visual Instruction Tuning", Sec. 5 chatbot / Fig. 1 at inference): many
(images, prompt) requests, each with its own number of images (0, 1, several), decoded together through the shared
`common.generate` loop (prefill with the images, KV-cache decode without them). The original repository could only
run one request at a time.

    from llava_jax import generate_batch
    answers = generate_batch(model, params, tokenizer, [([img_a], "What is this?"), ([img_a, img_b], "Compare."),
                                                        ([], "Say hi.")], template="vicuna_v1", max_new_tokens=64)

Prompts are rendered with the conversation template (`conversation.generation_prompt`: `<image>\\n` per image in
front of the question, open assistant turn), tokenized, every `<image>` expanded into the model's placeholders,
left padded; images are padded to the largest count with an image mask. `GenerationAdapter` gives a `Llava` the
`(input_ids, attention_mask, *, position_ids, cache, **inputs)` signature `common.generate` expects.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from common.generate import GenerationConfig, generate
from common.tokenizers import IMAGE_TOKEN
from llava_jax import conversation
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


def build_batch(module: Llava, tokenizer, requests: Sequence[tuple[Any, str]], *, template: str = "vicuna_v1",
                raw_prompt: bool = False, pad_to_square: bool = True) -> dict:
    """requests [(images, prompt)] -> left-padded input_ids / attention_mask [B, T], pixel_values [B, N, S, S, 3],
    image_mask [B, N] (N = the largest image count, at least 1). `raw_prompt=True`: the prompt is already a full
    template string holding one `<image>` per image."""
    from llava_jax.data import preprocess_image

    cfg = module.config
    if cfg.anyres:
        raise NotImplementedError("generate_batch covers LLaVA / LLaVA-1.5 (not LLaVA-NeXT anyres) for now")
    size = cfg.vision.image_size
    image_token_id = tokenizer.token_to_id(IMAGE_TOKEN)
    if image_token_id is None:
        raise ValueError("the tokenizer has no <image> token: call tokenizer.add_family_tokens('llava')")
    rows, pixels = [], []
    for images, prompt in requests:
        images = _as_images(images)
        text = prompt if raw_prompt else conversation.generation_prompt(template, prompt, num_images=len(images))
        if text.count(IMAGE_TOKEN) != len(images):
            raise ValueError(f"prompt holds {text.count(IMAGE_TOKEN)} <image> markers for {len(images)} images")
        ids = np.asarray(tokenizer.encode(text, add_bos=tokenizer.bos_id is not None), np.int32)
        ex = conversation.expand_image_tokens({"input_ids": ids}, image_token_id, cfg.tokens_per_crop,
                                              cfg.image_token_index)
        rows.append(ex["input_ids"])
        pixels.append([preprocess_image(img, size, pad_to_square) for img in images])
    batch, length = len(rows), max(len(r) for r in rows)
    n = max(1, max(len(p) for p in pixels))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids = np.full((batch, length), pad, np.int32)
    mask = np.zeros((batch, length), np.int32)
    pix = np.zeros((batch, n, size, size, cfg.vision.num_channels), np.float32)
    image_mask = np.zeros((batch, n), bool)
    for b, (row, p) in enumerate(zip(rows, pixels)):
        ids[b, length - len(row):], mask[b, length - len(row):] = row, 1
        for i, img in enumerate(p):
            pix[b, i], image_mask[b, i] = img, True
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pix, "image_mask": image_mask}


def generate_batch(model: Llava, params, tokenizer, requests: Sequence[tuple[Any, str]], *,
                   template: str = "vicuna_v1", max_new_tokens: int = 64, raw_prompt: bool = False,
                   config: GenerationConfig | None = None, stop_strings: Sequence[str] = (), rng=None,
                   bucket: int = 64, return_tokens: bool = False) -> list:
    """Answers (decoded strings, stripped) for requests [(images, prompt)]: images a list of uint8 [H, W, 3] arrays
    (or paths / bytes / PIL images), any count per request. Greedy by default; `config` overrides everything
    (sampling, beams). Generation stops at the tokenizer's eos (and, in the text, at any of `stop_strings`).
    `return_tokens=True` returns the generated token lists instead."""
    if not requests:
        return []
    batch = build_batch(model, tokenizer, requests, template=template, raw_prompt=raw_prompt)
    if config is None:
        eos = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=eos, bucket=bucket,
                                  pad_token_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0)
    adapter = GenerationAdapter(model)
    out = generate(adapter, params, batch["input_ids"], batch["attention_mask"], config=config, rng=rng,
                   prefill_inputs={"pixel_values": jnp.asarray(batch["pixel_values"]),
                                   "image_mask": jnp.asarray(batch["image_mask"])},
                   lm_config=model.config.text)
    tokens = np.asarray(out["tokens"])
    lengths = np.asarray(out["lengths"])
    results = []
    for b in range(len(requests)):
        toks = [int(t) for t in tokens[b, :lengths[b]]]
        if toks and toks[-1] in config.eos_token_ids:
            toks = toks[:-1]
        if return_tokens:
            results.append(toks)
            continue
        text = tokenizer.decode(toks, skip_special_tokens=True)
        for s in stop_strings:
            text = text.split(s)[0]
        results.append(text.strip())
    return results
