"""Batched VITA-1.5 inference: many requests, each with its own tiles (images dynamically tiled, or video frames) and
spoken clips, prefilled together and decoded through the shared `common.generate` KV-cache loop (the release runs
one request at a time). The answer's state token tells whether the model answers (☞ / ☜) or stays silent (☟).

    from vita_jax.inference import Request, generate_batch
    answers = generate_batch(model, params, tokenizer, [Request(images=[img], audio=[wave]),
                                                        Request(question="What shape is this?", images=[img])])

Audio: float waveforms at 16 kHz (other rates resampled with soxr) or file paths; features are the release's
fbank (x32768, 80 bins, dither 0: `common.data.audio.speech_fbank`). Images: uint8 [H, W, 3] (or paths), tiled with
InternVL's dynamic tiling (`max_tiles`, thumbnail when more than one tile; 1 = one 448 resize, the real-time demo's
setting); video: frames [F, H, W, 3], sampled to 4-16 frames, one tile each.
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from common.data import image_ops
from common.data.audio import SAMPLE_RATE, load_audio, speech_fbank
from common.generate import GenerationConfig, generate
from vita_jax import conversation
from vita_jax.model import Vita


@dataclasses.dataclass
class Request:
    question: str = ""
    images: Sequence[Any] = ()  # uint8 [H, W, 3] arrays or paths; several images are tiled one after another
    audio: Sequence[Any] = ()  # float32 waveforms (16 kHz) or (waveform, rate) pairs or paths
    video: Any = None  # frames [F, H, W, 3] (instead of images)
    history: Sequence[tuple[str, str]] = ()  # past (user, assistant) turns, text only


@dataclasses.dataclass(frozen=True)
class GenerationAdapter:
    """`Vita` with the call signature `common.generate` expects; the placeholder ids are never generated."""

    module: Vita

    @property
    def lm_config(self):
        return self.module.config.text

    def apply(self, variables, input_ids, attention_mask=None, *, position_ids=None, cache=None, pixel_values=None,
              image_mask=None, input_features=None, feature_attention_mask=None):
        out = self.module.apply(variables, input_ids, pixel_values, attention_mask, image_mask, input_features,
                                feature_attention_mask, position_ids=position_ids, cache=cache)
        logits, cache = out if cache is not None else (out, None)
        for idx in (self.module.config.image_token_index, self.module.config.audio_token_index):
            if 0 <= idx < logits.shape[-1]:
                logits = logits.at[..., idx].set(-1e30)
        return (logits, cache) if cache is not None else logits


def speech_features(audio) -> np.ndarray:
    """A waveform (16 kHz float), a (waveform, rate) pair or a path -> fbank [T, 80] (resampled to 16 kHz)."""
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        audio = load_audio(audio, expected_rate=None)
    if isinstance(audio, tuple):
        wave, rate = audio
        wave = np.asarray(wave, np.float32)
        if rate != SAMPLE_RATE:
            import soxr

            wave = soxr.resample(wave, rate, SAMPLE_RATE).astype(np.float32)
    else:
        wave = np.asarray(audio, np.float32)
    if wave.ndim != 1 or len(wave) < 400 * 2:
        raise ValueError(f"audio must be mono and at least 50 ms at 16 kHz, got shape {wave.shape}")
    return speech_fbank(wave)


def request_tiles(module: Vita, request: Request, max_tiles: int = 1) -> tuple[np.ndarray, bool]:
    """-> (tiles [n, S, S, 3] ImageNet-normalised, is_video)."""
    size = module.config.vision.image_size
    if request.video is not None:
        frames = image_ops.sample_video(np.asarray(request.video))
        return np.stack([image_ops.square_resize_preprocess(f, size) for f in frames]), True
    tiles = [image_ops.internvl_preprocess(image_ops.decode_image(img, convert_image_modes=True), 1, max_tiles, size)
             for img in request.images]
    if not tiles:
        return np.zeros((0, size, size, 3), np.float32), False
    return np.concatenate(tiles), False


def build_batch(module: Vita, tokenizer, requests: Sequence[Request], *, max_tiles: int = 1, pad_id: int = 0,
                tile_slots: int | None = None, audio_slots: int | None = None) -> dict:
    """requests -> input_ids / attention_mask [B, T] (left padded), pixel_values [B, N, S, S, 3], image_mask [B, N],
    input_features [B, A, F, 80], feature_attention_mask [B, A, F] (N, A: the largest counts, at least 1)."""
    cfg = module.config
    rows, tiles, clips = [], [], []
    for r in requests:
        t, is_video = request_tiles(module, r, max_tiles)
        feats = [speech_features(a) for a in r.audio]
        if len(feats) > 1:
            raise ValueError("one spoken clip per request (the release's query format); join the audio first")
        text = conversation.generation_prompt(r.question, len(t), bool(feats), is_video, r.history)
        ids = conversation.tokenize_with_placeholders(tokenizer, text, cfg.tokens_per_tile,
                                                      [int(cfg.audio_tokens(len(f))) for f in feats])
        rows.append(ids)
        tiles.append(t)
        clips.append(feats)
    n = max([1, *(len(t) for t in tiles)]) if tile_slots is None else tile_slots
    a = max([1, *(len(c) for c in clips)]) if audio_slots is None else audio_slots
    frames = max([16, *(len(f) for c in clips for f in c)])
    batch, length, size = len(rows), max(map(len, rows)), cfg.vision.image_size
    out = {"input_ids": np.full((batch, length), pad_id, np.int32),
           "attention_mask": np.zeros((batch, length), np.int32),
           "pixel_values": np.zeros((batch, n, size, size, 3), np.float32), "image_mask": np.zeros((batch, n), bool),
           "input_features": np.zeros((batch, a, frames, cfg.audio.input_dim), np.float32),
           "feature_attention_mask": np.zeros((batch, a, frames), bool)}
    for b, (row, t, c) in enumerate(zip(rows, tiles, clips)):
        if len(t) > n or len(c) > a:
            raise ValueError(f"request {b} has {len(t)} tiles / {len(c)} clips > slots {n} / {a}")
        out["input_ids"][b, length - len(row):], out["attention_mask"][b, length - len(row):] = row, 1
        out["pixel_values"][b, :len(t)], out["image_mask"][b, :len(t)] = t, True
        for k, f in enumerate(c):
            out["input_features"][b, k, :len(f)], out["feature_attention_mask"][b, k, :len(f)] = f, True
    return out


PREFILL_KEYS = ("pixel_values", "image_mask", "input_features", "feature_attention_mask")


def prefill_inputs(batch: dict) -> dict:
    """The media of a `build_batch` batch, which only the prefill reads."""
    return {k: jnp.asarray(batch[k]) for k in PREFILL_KEYS}


def answer_generation_config(tokenizer, max_new_tokens: int = 64, bucket: int = 64) -> GenerationConfig:
    """Greedy decoding of an answer: stops at `<|im_end|>` / eos (and the release's stop string `<|im_start|>`)."""
    stops = {tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")}
    stops |= {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return GenerationConfig(max_new_tokens=max_new_tokens,
                            eos_token_ids=tuple(sorted(s for s in stops if s is not None)),
                            bucket=bucket, pad_token_id=pad)


def generate_batch(model: Vita, params, tokenizer, requests: Sequence[Request], *, max_new_tokens: int = 64,
                   max_tiles: int = 1, config: GenerationConfig | None = None, rng=None, bucket: int = 64,
                   tile_slots: int | None = None, audio_slots: int | None = None, return_tokens: bool = False) -> list:
    """Decoded answers (state token kept: see `conversation.answer_state` / `strip_states`), greedy by default;
    stops at `<|im_end|>` / eos (the release's stop string `<|im_start|>` too)."""
    if not requests:
        return []
    if config is None:
        config = answer_generation_config(tokenizer, max_new_tokens, bucket)
    batch = build_batch(model, tokenizer, requests, max_tiles=max_tiles, pad_id=config.pad_token_id,
                        tile_slots=tile_slots, audio_slots=audio_slots)
    prefill = prefill_inputs(batch)
    out = generate(GenerationAdapter(model), params, batch["input_ids"], batch["attention_mask"], config=config,
                   rng=rng, prefill_inputs=prefill, lm_config=model.config.text)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    results = []
    for b in range(len(requests)):
        toks = [int(t) for t in tokens[b, :lengths[b]]]
        if toks and toks[-1] in config.eos_token_ids:
            toks = toks[:-1]
        results.append(toks if return_tokens else conversation.decode_answer(tokenizer, toks))
    return results
