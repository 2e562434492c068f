"""Stage 2.0 of the VITA miniature: the speech encoder pre-trained for ASR with a CTC head (Graves et al. 2006), before
stage 2.1 aligns it to the frozen LLM. VITA-1.5 (Sec. 3.1, "Audio Modality") starts its audio encoder from an ASR
model trained with CTC + attention (WeNet); a miniature trained from scratch has no such encoder, so this stage makes
one on the same ASR data: encoder frames [B, T', D] -> a linear head over the LM's vocabulary + one blank
([B, T', V + 1]), `optax.ctc_loss` against the transcript's tokens. The head is dropped after the stage.

WeNet also normalises the fbank features with global mean / variance statistics of the training set (`global_cmvn`,
computed once before training by its `tools/compute_cmvn_stats.py`); `cmvn_statistics` does the same here and the
stage writes them into the encoder's (never trained) `global_cmvn_mean` / `global_cmvn_istd`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.layers import Linear, dtype_of
from vita_jax.model import VitaConfig
from vita_jax.speech_encoder import SpeechEncoder


class SpeechCTC(nn.Module):
    """`apply({"params": {audio_encoder, ctc_head}}, features [B, T, 80], lengths [B])` -> (log-probabilities over
    vocab_size + 1 classes, the blank last, [B, T', V + 1] float32; encoder lengths [B])."""

    config: VitaConfig

    def setup(self):
        cfg = self.config
        self.audio_encoder = SpeechEncoder(cfg.audio)  # the same path as in Vita: its parameters graft both ways
        self.ctc_head = Linear(cfg.text.vocab_size + 1, ("embed",), ("vocab",), use_bias=True,
                               dtype=dtype_of(cfg.audio.dtype), param_dtype=dtype_of(cfg.audio.param_dtype))

    def __call__(self, features: jax.Array, lengths: jax.Array, deterministic: bool = True):
        hidden, enc_lengths = self.audio_encoder(features, lengths, deterministic=deterministic)  # [B, T', D]
        logits = self.ctc_head(hidden).astype(jnp.float32)  # [B, T', D] -> [B, T', V + 1]
        return jax.nn.log_softmax(logits), enc_lengths

    @property
    def blank_id(self) -> int:
        return self.config.text.vocab_size


def transcript_labels(input_ids: jax.Array, loss_mask: jax.Array, excluded_ids: Sequence[int]):
    """The CTC targets of a collated ASR batch: its answer tokens (loss-masked positions of input_ids [B, T]) without
    the state and end tokens, moved to the left -> (labels [B, T] int32, label_paddings [B, T] float32, 1 = pad)."""
    keep = loss_mask.astype(bool) & ~jnp.isin(input_ids, jnp.asarray(tuple(excluded_ids), input_ids.dtype))
    slot = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, input_ids.shape[1])  # [B, T]: target slot or out of range
    rows = jnp.arange(input_ids.shape[0])[:, None]
    labels = jnp.zeros_like(input_ids).at[rows, slot].set(input_ids, mode="drop")
    count = keep.sum(1)  # [B]
    paddings = (jnp.arange(input_ids.shape[1])[None] >= count[:, None]).astype(jnp.float32)
    return labels, paddings


def ctc_loss(log_probs: jax.Array, frame_lengths: jax.Array, labels: jax.Array, label_paddings: jax.Array,
             blank_id: int) -> tuple[jax.Array, dict]:
    """Mean over utterances of the CTC negative log-likelihood per target token (so that its scale does not grow
    with the transcript's length), and {ctc_per_utterance, tokens}. Utterances with no target count for nothing."""
    frame_paddings = (jnp.arange(log_probs.shape[1])[None] >= frame_lengths[:, None]).astype(jnp.float32)
    per_utterance = optax.ctc_loss(log_probs, frame_paddings, labels, label_paddings, blank_id=blank_id)  # [B]
    targets = (1.0 - label_paddings).sum(1)  # [B]
    valid = targets > 0
    per_token = jnp.where(valid, per_utterance / jnp.maximum(targets, 1.0), 0.0)
    loss = per_token.sum() / jnp.maximum(valid.sum(), 1)
    return loss, {"ctc_per_utterance": jnp.where(valid, per_utterance, 0.0).sum() / jnp.maximum(valid.sum(), 1),
                  "tokens": targets.sum()}


def greedy_decode(log_probs, lengths, blank_id: int) -> list[list[int]]:
    """Best path: per frame the most likely class, repeats merged, blanks dropped -> token ids per utterance."""
    best, lengths = np.asarray(jnp.argmax(log_probs, -1)), np.asarray(lengths)
    out = []
    for row, n in zip(best, lengths):
        row = row[:int(n)]
        merged = row[np.r_[True, row[1:] != row[:-1]]] if len(row) else row
        out.append([int(t) for t in merged if t != blank_id])
    return out


def cmvn_statistics(features: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Global mean and inverse standard deviation per fbank bin over all frames of `features` ([T, 80] each), as
    WeNet's compute_cmvn_stats.py (variance floored at 1e-20, as there)."""
    total, total_sq, frames = 0.0, 0.0, 0
    for f in features:
        f = np.asarray(f, np.float64)
        total, total_sq, frames = total + f.sum(0), total_sq + (f * f).sum(0), frames + len(f)
    if frames == 0:
        raise ValueError("no fbank frames to compute CMVN statistics from")
    mean = total / frames
    variance = np.maximum(total_sq / frames - mean * mean, 1e-20)
    return mean.astype(np.float32), (1.0 / np.sqrt(variance)).astype(np.float32)


def with_cmvn(params, mean: np.ndarray, istd: np.ndarray):
    """params with the speech encoder's global_cmvn_mean / global_cmvn_istd replaced (shape-checked)."""
    encoder = dict(params["audio_encoder"])
    for name, value in (("global_cmvn_mean", mean), ("global_cmvn_istd", istd)):
        old = encoder[name]
        if tuple(np.shape(value)) != tuple(old.shape):
            raise ValueError(f"CMVN {name} has shape {np.shape(value)}, the encoder's is {old.shape}")
        new = jnp.asarray(value, old.dtype)
        sharding = getattr(old, "sharding", None)
        encoder[name] = jax.device_put(new, sharding) if sharding is not None else new
    return {**params, "audio_encoder": encoder}
