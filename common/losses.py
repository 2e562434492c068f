"""Language-model losses: the one next-token cross-entropy every training task uses.

`next_token_loss` is the masked mean cross-entropy, either from float logits [B, T, V] or fused with the LM
head from final hidden states [B, T, E] and the head kernel [E, V] (`common.lm.head_kernel`). The fused form
never builds the [B, T, V] logits: it walks the positions in chunks of [B, C] tokens, and for each chunk forms
the logits, their log-sum-exp and (in the same pass) the gradient softmax - onehot, contracting it at once into
the gradients of the hidden states and the kernel (a custom VJP), so that the backward pass only scales them by
the loss cotangent. (A variant that kept only the log-sum-exp and recomputed the logits in the backward pass
compiled to the same TPU peak and was no faster on the CPU: docs/tpu.md.) Chunking along the positions keeps each
chunk's batch axis, so a batch sharded over the data / fsdp mesh axes stays sharded chunk by chunk.

Shapes: B batch, T positions, C positions per chunk, E width, V vocabulary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from common.layers import row_major_transpose


def next_token_loss(logits_or_hidden: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
                    kernel: jax.Array | None = None, chunk_size: int = 256) -> tuple[jax.Array, dict]:
    """Masked mean cross-entropy (float32 scalar) and aux {tokens, accuracy}.

    logits_or_hidden: float logits [B, T, V], or with `kernel` [E, V] the final hidden states [B, T, E] that the
    LM head maps to logits (hidden @ kernel, chunk_size positions at a time, accumulated in float32).
    targets [B, T] int: the token each position predicts (a sequence's ids shifted by one; see
    `shifted_next_token_loss`). loss_mask [B, T]: 1 where the target counts, 0 where not (padding, prompts); a
    masked target carries no loss and no gradient whatever its value (-100 included). aux: 'tokens', the number
    of counted targets (the trainer's weight for averaging micro-batches), and 'accuracy', the fraction of them
    that are the argmax.
    """
    b, t = targets.shape
    if logits_or_hidden.shape[:2] != (b, t) or loss_mask.shape != (b, t):
        raise ValueError(f"logits / hidden {logits_or_hidden.shape} and loss_mask {loss_mask.shape} do not match "
                         f"targets {targets.shape}")
    counted = loss_mask.astype(jnp.float32)
    tokens = counted.sum()
    weights = counted / jnp.maximum(tokens, 1.0)  # [B, T]: the mean over counted targets
    labels = targets.astype(jnp.int32)
    if kernel is None:
        loss, accuracy = _logits_ce(logits_or_hidden, labels, weights)
    else:
        if kernel.shape[0] != logits_or_hidden.shape[-1]:
            raise ValueError(f"kernel {kernel.shape} does not map hidden states {logits_or_hidden.shape}")
        loss, accuracy = _fused_head_ce(logits_or_hidden, kernel, labels, weights, int(chunk_size))
    return loss, {"tokens": tokens, "accuracy": accuracy}


def shifted_next_token_loss(logits_or_hidden: jax.Array, input_ids: jax.Array, loss_mask: jax.Array, *,
                            kernel: jax.Array | None = None, chunk_size: int = 256) -> tuple[jax.Array, dict]:
    """`next_token_loss` of whole sequences: position t predicts input_ids[:, t + 1]; loss_mask [B, T] marks the
    input ids that count as targets (the first id is never one; the last position predicts nothing)."""
    return next_token_loss(logits_or_hidden[:, :-1], input_ids[:, 1:], loss_mask[:, 1:], kernel=kernel,
                           chunk_size=chunk_size)


def _ce_grad(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """For float32 logits [..., V]: sum_i w_i * ce_i, sum_i w_i * [argmax_i == label_i], and d(first)/d logits."""
    lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
    # [...]: a gather, not a pass over V (an out-of-range label of a masked target is clipped; its weight is 0)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1, mode="clip")[..., 0]
    loss = jnp.sum(weights * (lse - picked))
    accuracy = jnp.sum(weights * (jnp.argmax(logits, axis=-1) == labels))
    onehot = jnp.arange(logits.shape[-1]) == labels[..., None]  # [..., V]
    grad = (jnp.exp(logits - lse[..., None]) - onehot.astype(jnp.float32)) * weights[..., None]
    return loss, accuracy, grad


@jax.custom_vjp
def _logits_ce(logits, labels, weights):
    return _ce_grad(logits.astype(jnp.float32), labels, weights)[:2]


def _logits_ce_fwd(logits, labels, weights):
    loss, accuracy, grad = _ce_grad(logits.astype(jnp.float32), labels, weights)
    return (loss, accuracy), (grad.astype(logits.dtype), labels, weights)


def _logits_ce_bwd(res, g):
    grad, labels, weights = res
    g_loss, _ = g  # the accuracy is piecewise constant: no gradient
    return grad * g_loss.astype(grad.dtype), None, jnp.zeros_like(weights)


_logits_ce.defvjp(_logits_ce_fwd, _logits_ce_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_head_ce(hidden, kernel, labels, weights, chunk_size):
    return _fused_head_ce_fwd(hidden, kernel, labels, weights, chunk_size)[0]


def _fused_head_ce_fwd(hidden, kernel, labels, weights, chunk_size):
    b, t, e = hidden.shape
    loss = accuracy = jnp.zeros((), jnp.float32)
    d_kernel = jnp.zeros(kernel.shape, jnp.float32)
    d_hidden = []
    for start in range(0, t, chunk_size):  # static chunks of positions: each a [B, C, E] x [E, V] product
        end = min(start + chunk_size, t)
        h = hidden[:, start:end]  # [B, C, E]
        logits = jnp.einsum("bce,ev->bcv", h, kernel, preferred_element_type=jnp.float32)  # [B, C, V]
        chunk_loss, chunk_accuracy, grad = _ce_grad(logits, labels[:, start:end], weights[:, start:end])
        loss, accuracy = loss + chunk_loss, accuracy + chunk_accuracy
        grad = grad.astype(kernel.dtype)
        d_hidden.append(jnp.einsum("bcv,ev->bce", grad, kernel, preferred_element_type=jnp.float32))  # [B, C, E]
        d_kernel = d_kernel + jnp.dot(row_major_transpose(h.reshape(-1, e)), grad.reshape(-1, grad.shape[-1]),
                                      preferred_element_type=jnp.float32)  # [E, V]
    d_hidden = d_hidden[0] if len(d_hidden) == 1 else jnp.concatenate(d_hidden, axis=1)  # [B, T, E]
    return (loss, accuracy), (d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype), weights)


def _fused_head_ce_bwd(chunk_size, res, g):
    d_hidden, d_kernel, weights = res
    g_loss, _ = g  # the accuracy is piecewise constant: no gradient
    return (d_hidden * g_loss.astype(d_hidden.dtype), d_kernel * g_loss.astype(d_kernel.dtype), None,
            jnp.zeros_like(weights))


_fused_head_ce.defvjp(_fused_head_ce_fwd, _fused_head_ce_bwd)
