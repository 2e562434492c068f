"""Autoregressive generation shared by every family: prefill + KV-cache decode in one `jax.jit`
(compiled once per shape bucket, not per prompt length) with greedy, temperature / top-k / top-p
sampling, and beam search with a length penalty; stop tokens, max new tokens, left-padded batches.

The model is any Flax module whose `__call__(input_ids, attention_mask, *, position_ids, cache, **inputs)`
returns `(logits [B, T, V], cache)` when given a `common.lm.KVCache` — `DecoderLM` and the families built
on it. `prefill_inputs` (e.g. LLaVA's pixel_values) go to the prefill call only; `decode_inputs` (e.g.
Flamingo's cached media) to every call; `step_inputs` (e.g. Flamingo's `media_seen`, the number of images in the
prompt) to the decode steps only.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.lm import KVCache, LMConfig

NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False  # False: greedy (num_beams == 1) or beam search
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum log p / (generated length ** length_penalty)
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    bucket: int = 64  # prompts are left-padded to a multiple of this: one compilation per bucket

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search with sampling is not supported; use do_sample=False with num_beams > 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) filtering of [B, V] logits (HF's order)."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)  # ascending, like HF's TopPLogitsWarper
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted = remove_sorted.at[:, -1].set(False)  # always keep the most likely token
        threshold = jnp.max(jnp.where(remove_sorted, sorted_logits, NEG_INF), axis=-1, keepdims=True)
        logits = jnp.where((logits <= threshold) & jnp.any(remove_sorted, -1, keepdims=True), NEG_INF, logits)
    return logits


def _bucketed(input_ids: np.ndarray, attention_mask: np.ndarray, bucket: int, pad: int):
    """Left-pads [B, T] prompts to the next multiple of `bucket`."""
    b, t = input_ids.shape
    target = max(bucket, -(-t // bucket) * bucket)
    extra = target - t
    ids = np.concatenate([np.full((b, extra), pad, input_ids.dtype), input_ids], axis=1)
    mask = np.concatenate([np.zeros((b, extra), attention_mask.dtype), attention_mask], axis=1)
    return ids, mask


def _lm_config(model: nn.Module) -> LMConfig:
    for attr in ("lm_config", "config"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, LMConfig):
            return cfg
        if cfg is not None and isinstance(getattr(cfg, "lm", None), LMConfig):
            return cfg.lm
    raise ValueError(f"cannot find the LM config of {type(model).__name__}; give it an `lm_config` attribute")


def generate(model: nn.Module, params: Any, input_ids, attention_mask=None, *, config: GenerationConfig,
             rng: jax.Array | None = None, prefill_inputs: dict | None = None, decode_inputs: dict | None = None,
             lm_config: LMConfig | None = None, step_inputs: dict | None = None) -> dict:
    """Generates up to `config.max_new_tokens` tokens after each (left- or right-padded) prompt.

    `step_inputs` ([B, ...] arrays, e.g. Flamingo's media_seen [B]) are passed to the one-token decode steps only,
    after the prefill (beam search repeats them per beam like `decode_inputs`).
    Returns {"tokens": [B, N] int32 (pad after a stop token), "lengths": [B] number of generated tokens
    including the stop token, "scores": [B] sum log-prob (beam: length-normalised)}.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} does not match input_ids {input_ids.shape}")
    if not attention_mask.any(axis=1).all():
        raise ValueError("every prompt needs at least one real token")
    # Move right padding to the left, so every prompt ends at the last slot.
    order = np.argsort(attention_mask.astype(bool), axis=1, kind="stable")
    input_ids = np.take_along_axis(input_ids, order, axis=1)
    attention_mask = np.take_along_axis(attention_mask, order, axis=1)
    ids, mask = _bucketed(input_ids, attention_mask, config.bucket, config.pad_token_id)
    lm_config = lm_config or _lm_config(model)
    if ids.shape[1] + config.max_new_tokens > lm_config.max_position_embeddings:
        raise ValueError(f"prompt bucket {ids.shape[1]} + max_new_tokens {config.max_new_tokens} exceeds "
                         f"max_position_embeddings {lm_config.max_position_embeddings}")
    rng = jax.random.key(0) if rng is None else rng
    fn = _compiled(model, config, lm_config)
    return jax.device_get(fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), rng,
                             prefill_inputs or {}, decode_inputs or {}, step_inputs or {}))


@functools.lru_cache(maxsize=64)
def _compiled(model: nn.Module, config: GenerationConfig, lm_config: LMConfig):
    fn = _beam_search if config.num_beams > 1 else _sample
    return jax.jit(functools.partial(fn, model, config, lm_config))


def _prefill(model, params, ids, mask, cache, prefill_inputs, decode_inputs):
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, cache = model.apply({"params": params}, ids, mask, position_ids=positions, cache=cache,
                                **prefill_inputs, **decode_inputs)
    return logits[:, -1], cache, positions[:, -1] + 1


def _decode_one(model, params, token, position, cache, decode_inputs, step_inputs):
    logits, cache = model.apply({"params": params}, token[:, None], jnp.ones_like(token)[:, None],
                                position_ids=position[:, None], cache=cache, **decode_inputs, **step_inputs)
    return logits[:, -1], cache


def _is_stop(token, eos_ids):
    if not eos_ids:
        return jnp.zeros(token.shape, bool)
    return jnp.isin(token, jnp.asarray(eos_ids))


def _sample(model, config: GenerationConfig, lm_config, params, ids, mask, rng, prefill_inputs, decode_inputs,
            step_inputs):
    batch, length = ids.shape
    cache = KVCache.create(lm_config, batch, length + config.max_new_tokens)
    logits, cache, position = _prefill(model, params, ids, mask, cache, prefill_inputs, decode_inputs)
    tokens = jnp.full((batch, config.max_new_tokens), config.pad_token_id, jnp.int32)

    def cond(state):
        step, _, _, _, _, done, _, _ = state
        return (step < config.max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, logits, position, tokens, done, scores, rng = state
        logits = logits.astype(jnp.float32)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        if config.do_sample:
            rng, key = jax.random.split(rng)
            token = jax.random.categorical(key, filter_logits(logits, config.temperature, config.top_k, config.top_p))
        else:
            token = jnp.argmax(logits, axis=-1)
        token = token.astype(jnp.int32)
        scores = scores + jnp.where(done, 0.0, jnp.take_along_axis(logprobs, token[:, None], axis=1)[:, 0])
        token = jnp.where(done, config.pad_token_id, token)
        tokens = tokens.at[:, step].set(token)
        done = done | _is_stop(token, config.eos_token_ids)
        logits, cache = _decode_one(model, params, token, position, cache, decode_inputs, step_inputs)
        return step + 1, cache, logits, position + 1, tokens, done, scores, rng

    state = (jnp.int32(0), cache, logits, position, tokens, jnp.zeros((batch,), bool), jnp.zeros((batch,)), rng)
    step, _, _, _, tokens, done, scores, _ = jax.lax.while_loop(cond, body, state)
    stop_at = jnp.argmax(_is_stop(tokens, config.eos_token_ids), axis=1) + 1
    lengths = jnp.where(done, stop_at, step)
    return {"tokens": tokens, "lengths": lengths, "scores": scores}


class TokenStreamer:
    """Token-by-token generation for one prompt at a time (streaming answers, barge-in): the same prefill and
    one-token decode as `generate`, each its own compiled call, so the caller sees every token as it is made and can
    stop between any two (`should_stop`). Greedy or sampled (top-k / top-p) as `config` says; no beams."""

    def __init__(self, model: nn.Module, params: Any, config: GenerationConfig, lm_config: LMConfig | None = None):
        if config.num_beams > 1:
            raise ValueError("TokenStreamer does not do beam search; use generate")
        self.model, self.params, self.config = model, params, config
        self.lm_config = lm_config or _lm_config(model)
        self._prefill = jax.jit(functools.partial(_prefill, model))
        self._step = jax.jit(functools.partial(_decode_one, model))
        cfg = config
        self._choose = jax.jit(lambda logits, key: (
            jax.random.categorical(key, filter_logits(logits.astype(jnp.float32), cfg.temperature, cfg.top_k,
                                                      cfg.top_p)) if cfg.do_sample
            else jnp.argmax(logits, axis=-1)).astype(jnp.int32))

    def stream(self, input_ids, attention_mask=None, *, prefill_inputs: dict | None = None,
               decode_inputs: dict | None = None, rng: jax.Array | None = None, should_stop=None,
               forced_tokens: Sequence[int] | None = None):
        """input_ids [1, T] -> yields token ids (the stop token is not yielded); ends at a stop token, after
        max_new_tokens, or as soon as `should_stop()` is true. `forced_tokens`: yield these (at most max_new_tokens)
        instead of choosing, each still fed through the real decode step (waited for), so the compute and timing are
        generation's whatever the weights say (benchmarks on random weights)."""
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"TokenStreamer takes one prompt [1, T], got {input_ids.shape}")
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        cfg = self.config
        ids, mask = _bucketed(input_ids, mask, cfg.bucket, cfg.pad_token_id)
        if ids.shape[1] + cfg.max_new_tokens > self.lm_config.max_position_embeddings:
            raise ValueError(f"prompt bucket {ids.shape[1]} + max_new_tokens {cfg.max_new_tokens} exceeds "
                             f"max_position_embeddings {self.lm_config.max_position_embeddings}")
        decode_inputs = decode_inputs or {}
        cache = KVCache.create(self.lm_config, 1, ids.shape[1] + cfg.max_new_tokens)
        logits, cache, position = self._prefill(self.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                                                cache, prefill_inputs or {}, decode_inputs)
        rng = jax.random.key(0) if rng is None else rng
        forced = None if forced_tokens is None else [int(t) for t in forced_tokens][:cfg.max_new_tokens]
        for i in range(cfg.max_new_tokens if forced is None else len(forced)):
            if should_stop is not None and should_stop():
                return
            if forced is None:
                token = self._choose(logits, jax.random.fold_in(rng, i))
                value = int(token[0])
                if value in cfg.eos_token_ids:
                    return
            else:
                jax.block_until_ready(logits)
                value = forced[i]
                token = jnp.asarray([value], jnp.int32)
            yield value
            if i + 1 < cfg.max_new_tokens:
                logits, cache = self._step(self.params, token, position, cache, decode_inputs, {})
                position = position + 1


def _beam_search(model, config: GenerationConfig, lm_config, params, ids, mask, rng, prefill_inputs,
                 decode_inputs, step_inputs):
    """Beam search keeping `num_beams` alive and `num_beams` finished hypotheses per prompt (HF semantics:
    finished score = sum log p / generated_length ** length_penalty; stops when no alive beam can win)."""
    del rng
    batch, length = ids.shape
    k, n_new, vocab = config.num_beams, config.max_new_tokens, lm_config.vocab_size
    expand = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731  [B, ...] -> [B*K, ...]
    prefill_inputs = jax.tree.map(expand, prefill_inputs)
    decode_inputs = jax.tree.map(expand, decode_inputs)
    step_inputs = jax.tree.map(expand, step_inputs)
    cache = KVCache.create(lm_config, batch * k, length + n_new)
    logits, cache, position = _prefill(model, params, expand(ids), expand(mask), cache, prefill_inputs,
                                       decode_inputs)
    alive_scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))  # [B, K]: beam 0 starts
    alive_tokens = jnp.full((batch, k, n_new), config.pad_token_id, jnp.int32)
    finished_scores = jnp.full((batch, k), NEG_INF)
    finished_tokens = jnp.full((batch, k, n_new), config.pad_token_id, jnp.int32)
    finished_lengths = jnp.zeros((batch, k), jnp.int32)

    def normalise(scores, gen_len):
        return scores / (gen_len.astype(jnp.float32) ** config.length_penalty)

    def cond(state):
        step, _, _, _, alive_scores, _, finished_scores, _, _ = state
        # Done when every prompt has k finished hypotheses none of which the best alive beam can beat.
        best_alive = normalise(alive_scores[:, 0], jnp.maximum(step, 1))
        can_improve = jnp.any(finished_scores[:, -1] < best_alive) | jnp.any(finished_scores[:, -1] <= NEG_INF / 2)
        return (step < n_new) & can_improve

    def body(state):
        step, cache, logits, position, alive_scores, alive_tokens, finished_scores, finished_tokens, fin_len = state
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        candidates = (alive_scores[:, :, None] + logprobs).reshape(batch, k * vocab)
        top_scores, top_index = jax.lax.top_k(candidates, 2 * k)  # [B, 2K]
        beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_tokens, beam[:, :, None], axis=1).at[:, :, step].set(token)  # [B, 2K, N]
        is_stop = _is_stop(token, config.eos_token_ids)
        within_top_k = jnp.arange(2 * k)[None, :] < k  # HF: only stops ranked among the top k finish a beam
        # Finished pool: merge the candidates that stop now with the previous finished hypotheses.
        new_fin = jnp.where(is_stop & within_top_k, normalise(top_scores, step + 1), NEG_INF)
        pool_scores = jnp.concatenate([finished_scores, new_fin], axis=1)
        pool_tokens = jnp.concatenate([finished_tokens, seqs], axis=1)
        pool_len = jnp.concatenate([fin_len, jnp.full((batch, 2 * k), step + 1, jnp.int32)], axis=1)
        finished_scores, keep = jax.lax.top_k(pool_scores, k)
        finished_tokens = jnp.take_along_axis(pool_tokens, keep[:, :, None], axis=1)
        fin_len = jnp.take_along_axis(pool_len, keep, axis=1)
        # Alive beams: the best k candidates that did not stop.
        alive_candidates = jnp.where(is_stop, NEG_INF, top_scores)
        alive_scores, pick = jax.lax.top_k(alive_candidates, k)
        alive_tokens = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
        source_beam = jnp.take_along_axis(beam, pick, axis=1)  # [B, K]
        next_token = jnp.take_along_axis(token, pick, axis=1).reshape(batch * k)
        flat_source = (jnp.arange(batch)[:, None] * k + source_beam).reshape(batch * k)
        cache = cache.replace(key=cache.key[:, flat_source], value=cache.value[:, flat_source],
                              valid=cache.valid[flat_source])
        logits, cache = _decode_one(model, params, next_token, position, cache, decode_inputs, step_inputs)
        return (step + 1, cache, logits, position + 1, alive_scores, alive_tokens, finished_scores,
                finished_tokens, fin_len)

    state = (jnp.int32(0), cache, logits, position, alive_scores, alive_tokens, finished_scores, finished_tokens,
             finished_lengths)
    state = jax.lax.while_loop(cond, body, state)
    step, _, _, _, alive_scores, alive_tokens, finished_scores, finished_tokens, fin_len = state
    # Prompts without a finished hypothesis fall back to their best alive beam.
    alive_norm = normalise(alive_scores[:, 0], jnp.maximum(step, 1))
    use_alive = alive_norm > finished_scores[:, 0]
    tokens = jnp.where(use_alive[:, None], alive_tokens[:, 0], finished_tokens[:, 0])
    lengths = jnp.where(use_alive, step, fin_len[:, 0])
    scores = jnp.where(use_alive, alive_norm, finished_scores[:, 0])
    return {"tokens": tokens, "lengths": lengths, "scores": scores}
