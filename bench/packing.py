"""Packed vs padded training batches, side by side in one run: padding fraction and useful (non-padding) tokens per
second of a jitted train step on the CPU, one JSON line per mix and layout.

    python bench/packing.py [--mixes llava_665k,librispeech_asr] [--samples 384] [--batch 8] [--out FILE]

Mixes (lengths drawn to match published statistics, scaled down for a CPU step; see docs/packing.md):
  llava_665k       LLaVA-1.5's 665K instruction mix (Liu et al. 2023b, Table 7: its ten sources and their sizes),
                   2048-token rows with 576 image tokens, scaled by 1/9: 228-token rows, 64 image tokens (128 px,
                   16 px patches); the tiny LLaVA model (configs/llava/tiny_base.py widths, 2-layer tower), stage 2:
                   projector + LM trained, tower frozen.
  librispeech_asr  VITA stage 2.1 ASR on LibriSpeech train-clean-100 (Panayotov et al. 2015: 28,539 utterances,
                   100.6 h, so 12.7 s on average; at most 24.5 s): 12 LM tokens per second of audio (VITA-1.5's
                   adapter output), a prompt and a transcript of ~2.7 words/s; the LM side only (the LM core of the
                   tiny configs), rows of 512 tokens.
Each layout sees the same samples in the same order: `padded` = one sample per row (common.data.pipeline.Collate),
`packed` = common.data.packing (best fit over as many open rows as the batch). Steps are timed after one warm-up
step; useful_tokens_per_s = real tokens / step time. ratio = packed / padded useful tokens per second.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.data.packing import PackingSpec, packed_model_inputs, padding_fraction
from common.data.pipeline import Collate, build_dataset
from common.lm import DecoderLM, LMConfig
from common.losses import shifted_next_token_loss
from common.provenance import provenance

# LLaVA-1.5 mix665k (paper Table 7): source -> (samples, has an image, median text tokens, lognormal sigma). The
# sizes are the paper's; the text-length medians are our estimates of each source's conversations (several VQA
# questions of one image merged into one conversation, as LLaVA-1.5 does; ShareGPT text-only and long).
LLAVA_665K = {
    "llava_instruct": (158_000, True, 300, 0.6),
    "sharegpt": (40_000, False, 900, 0.7),
    "vqav2": (83_000, True, 90, 0.5),
    "gqa": (72_000, True, 120, 0.5),
    "okvqa": (9_000, True, 40, 0.3),
    "ocrvqa": (80_000, True, 110, 0.4),
    "a_okvqa": (66_000, True, 70, 0.4),
    "textcaps": (22_000, True, 40, 0.3),
    "refcoco": (48_000, True, 250, 0.5),
    "vg": (86_000, True, 230, 0.5),
}
LLAVA_ROW, LLAVA_IMAGE_TOKENS, LLAVA_SCALE = 2048, 576, 9
ASR_ROW, ASR_TOKENS_PER_S, ASR_MEAN_S, ASR_MAX_S, ASR_MIN_S = 512, 12, 12.7, 24.5, 1.0


def llava_lengths(n: int, rng) -> list[tuple[int, int]]:
    """n samples of the 665K mix -> (text tokens, images) each, at the bench's 1/9 scale."""
    names = list(LLAVA_665K)
    weights = np.asarray([LLAVA_665K[k][0] for k in names], float)
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    out = []
    for p in picks:
        _, has_image, median, sigma = LLAVA_665K[names[p]]
        image_tokens = LLAVA_IMAGE_TOKENS if has_image else 0
        text = int(np.clip(rng.lognormal(np.log(median), sigma), 8, LLAVA_ROW - image_tokens))  # cut at 2048
        out.append((max(2, round(text / LLAVA_SCALE)), int(has_image)))
    return out


def asr_lengths(n: int, rng) -> list[int]:
    """n utterances -> LM tokens each: audio at 12 tokens/s + a 20-token prompt + ~3.5 transcript tokens/s."""
    seconds = np.clip(rng.normal(ASR_MEAN_S, 3.5, n), ASR_MIN_S, ASR_MAX_S)
    return [int(s * ASR_TOKENS_PER_S + 20 + s * 3.5) for s in seconds]


class ListSource:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def llava_setup(samples: int, seed: int):
    from configs.llava.tiny_base import model as tiny_model
    from llava_jax.model import Llava, LlavaConfig, example_inputs
    from llava_jax.task import model_inputs
    from common.vision.clip import CLIPVisionConfig

    m = tiny_model()
    text = dict(m["text"], vocab_size=1024, max_position_embeddings=512)
    vision = dict(m["vision"], image_size=128)
    cfg = LlavaConfig(text=LMConfig(**text), vision=CLIPVisionConfig(**vision), image_token_index=1023)
    row = LLAVA_ROW // LLAVA_SCALE + 1  # 228
    rng = np.random.default_rng(seed)
    items = []
    for text_tokens, images in llava_lengths(samples, rng):
        ids = rng.integers(1, 1000, text_tokens + images * cfg.tokens_per_crop).astype(np.int32)
        ids[1:1 + images * cfg.tokens_per_crop] = cfg.image_token_index
        loss = np.zeros(len(ids), bool)
        loss[len(ids) // 2:] = True  # the answers
        items.append({"input_ids": ids, "loss_mask": loss,
                      "images": rng.normal(size=(images, 128, 128, 3)).astype(np.float32)})
    model = Llava(cfg)
    params = nn.unbox(jax.jit(lambda k: model.init(k, *example_inputs(cfg)))(jax.random.key(0))["params"])

    def loss_fn(trainable, frozen, batch):
        logits = model.apply({"params": {**trainable, **frozen}}, batch["input_ids"], **model_inputs(batch))
        ids = batch["input_ids"]
        return shifted_next_token_loss(logits, ids, batch["loss_mask"])[0]

    trainable = {k: v for k, v in params.items() if k != "vision_tower"}
    frozen = {"vision_tower": params["vision_tower"]}
    return items, row, row // (cfg.tokens_per_crop + 1), loss_fn, (trainable, frozen)


def asr_setup(samples: int, seed: int):
    from configs.llava.tiny_base import model as tiny_model

    cfg = LMConfig(**dict(tiny_model()["text"], vocab_size=1024, max_position_embeddings=ASR_ROW))
    rng = np.random.default_rng(seed)
    items = []
    for n in asr_lengths(samples, rng):
        ids = rng.integers(1, 1000, n).astype(np.int32)
        loss = np.zeros(n, bool)
        loss[-int(n * 3.5 / (ASR_TOKENS_PER_S + 3.5)):] = True  # the transcript
        items.append({"input_ids": ids, "loss_mask": loss})
    model = DecoderLM(cfg)
    params = nn.unbox(jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)))(jax.random.key(0))["params"])

    def loss_fn(trainable, frozen, batch):
        del frozen
        logits = model.apply({"params": trainable}, batch["input_ids"], attention_mask=batch["attention_mask"],
                             **packed_model_inputs(batch))
        ids = batch["input_ids"]
        return shifted_next_token_loss(logits, ids, batch["loss_mask"])[0]

    return items, ASR_ROW, None, loss_fn, (params, {})


def batches(items, row: int, max_images, batch: int, packed: bool):
    source = ListSource(items)
    identity = lambda x: x  # noqa: E731
    if packed:
        spec = PackingSpec(row, max_images)
        ds, counter = build_dataset(source, identity, batch_size=batch, shuffle=False, packing=spec)
    else:
        ds, counter = build_dataset(source, identity, batch_size=batch, shuffle=False,
                                    collate=Collate(row, 0, max_images=1 if max_images else None))
    return list(ds), counter


def samples_in(batch) -> int:
    if "segment_ids" not in batch:
        return int(np.asarray(batch["attention_mask"]).any(axis=1).sum())
    return int(sum(len(np.unique(row[row > 0])) for row in batch["segment_ids"]))


def measure(name: str, setup, samples: int, batch: int, seed: int) -> list[dict]:
    items, row, max_images, loss_fn, (trainable, frozen) = setup(samples, seed)
    step = jax.jit(jax.value_and_grad(loss_fn))
    records = {}
    for layout in ("padded", "packed"):
        data, counter = batches(items, row, max_images, batch, layout == "packed")
        jax.block_until_ready(step(trainable, frozen, data[0]))  # compile + warm-up
        start = time.perf_counter()
        for b in data[1:]:
            jax.block_until_ready(step(trainable, frozen, b))
        seconds = time.perf_counter() - start
        timed = data[1:]
        useful = int(sum(np.asarray(b["attention_mask"]).sum() for b in timed))
        samples_timed = sum(samples_in(b) for b in timed)
        records[layout] = {
            "bench": "packing", "mix": name, "layout": layout, "row_tokens": row, "batch_rows": batch,
            "max_images_per_row": max_images if layout == "packed" else (1 if max_images else None),
            "steps_timed": len(timed), "samples_timed": samples_timed,
            "padding_fraction": round(float(np.mean([padding_fraction(b) for b in timed])), 4),
            "useful_tokens_per_s": round(useful / seconds, 1), "step_s": round(seconds / len(timed), 4),
            "samples_per_s": round(samples_timed / seconds, 2), "skipped": counter.state()["skipped"],
            "device": jax.devices()[0].device_kind, **provenance()}
    ratio = records["packed"]["useful_tokens_per_s"] / records["padded"]["useful_tokens_per_s"]
    records["packed"]["ratio_useful_tokens_per_s"] = round(ratio, 2)
    return [records["padded"], records["packed"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", default="llava_665k,librispeech_asr")
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = parser.parse_args()
    setups = {"llava_665k": llava_setup, "librispeech_asr": asr_setup}
    for name in args.mixes.split(","):
        for record in measure(name, setups[name], args.samples, args.batch, args.seed):
            line = json.dumps(record)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
