"""Language-model losses.

`next_token_loss` is the mean next-token cross-entropy, either from float logits [B, T, V] or fused with
the LM head from final hidden states [B, T, E] and the head kernel [E, V]. The fused form never builds the
[B, T, V] logits: it walks the tokens in chunks, and for each chunk forms the logits, their log-sum-exp and
(in the same pass) the gradient softmax - onehot, contracting it at once into the gradients of the hidden
states and the kernel (a custom VJP), so that the backward pass only scales them by the loss cotangent.

Shapes: B batch, T tokens, E width, V vocabulary, N = B * T.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from common.layers import row_major_transpose


def next_token_loss(logits_or_hidden: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *,
                    kernel: jax.Array | None = None, chunk_size: int = 1024) -> jax.Array:
    """Mean cross-entropy of predicting targets[:, t + 1] at position t (float32 scalar).

    logits_or_hidden: logits [B, T, V], or with `kernel` [E, V] the hidden states [B, T, E] that the LM head
    maps to logits (hidden @ kernel, computed chunk by chunk in float32). targets [B, T] int: the token ids
    (the sequence itself; position t predicts token t + 1). mask [B, T] optional: 1 where targets[b, t]
    counts as a prediction target, 0 where not (padding); the mean is over counted targets.
    """
    b, t = targets.shape
    if logits_or_hidden.shape[:2] != (b, t):
        raise ValueError(f"logits / hidden {logits_or_hidden.shape} do not match targets {targets.shape}")
    weights = jnp.ones((b, t - 1), jnp.float32) if mask is None else mask[:, 1:].astype(jnp.float32)
    # Position t predicts targets[:, t + 1]; the last position predicts nothing (weight 0).
    labels = jnp.concatenate([targets[:, 1:], jnp.zeros((b, 1), targets.dtype)], axis=1).reshape(-1)
    weights = jnp.concatenate([weights, jnp.zeros((b, 1), jnp.float32)], axis=1).reshape(-1)
    weights = weights / jnp.maximum(jnp.sum(weights), 1.0)
    x = logits_or_hidden.reshape(b * t, -1)
    if kernel is None:
        return _logits_ce(x, labels.astype(jnp.int32), weights)
    return _fused_head_ce(x, kernel, labels.astype(jnp.int32), weights, chunk_size)


def _ce_grad(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Per-row loss sum and d(sum_i w_i * ce_i)/d logits for float32 logits [n, V]."""
    lse = jax.nn.logsumexp(logits, axis=-1)  # [n]
    onehot = jnp.arange(logits.shape[-1])[None, :] == labels[:, None]  # [n, V]
    # [n]: a gather, not a pass over V
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1, mode="clip")[:, 0]
    loss = jnp.sum(weights * (lse - picked))
    grad = (jnp.exp(logits - lse[:, None]) - onehot.astype(jnp.float32)) * weights[:, None]
    return loss, grad


@jax.custom_vjp
def _logits_ce(logits, labels, weights):
    return _ce_grad(logits.astype(jnp.float32), labels, weights)[0]


def _logits_ce_fwd(logits, labels, weights):
    loss, grad = _ce_grad(logits.astype(jnp.float32), labels, weights)
    return loss, (grad.astype(logits.dtype), labels, weights)


def _logits_ce_bwd(res, g):
    grad, labels, weights = res
    return grad * g.astype(grad.dtype), None, jnp.zeros_like(weights)


_logits_ce.defvjp(_logits_ce_fwd, _logits_ce_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_head_ce(hidden, kernel, labels, weights, chunk_size):
    return _fused_head_ce_fwd(hidden, kernel, labels, weights, chunk_size)[0]


def _fused_head_ce_fwd(hidden, kernel, labels, weights, chunk_size):
    n = hidden.shape[0]
    loss = jnp.zeros((), jnp.float32)
    d_kernel = jnp.zeros(kernel.shape, jnp.float32)
    d_hidden = []
    for start in range(0, n, chunk_size):  # static chunks: each a plain [c, E] x [E, V] matmul
        end = min(start + chunk_size, n)
        h = hidden[start:end]
        logits = jnp.dot(h, kernel, preferred_element_type=jnp.float32)  # [c, V]
        chunk_loss, grad = _ce_grad(logits, labels[start:end], weights[start:end])
        loss = loss + chunk_loss
        grad = grad.astype(kernel.dtype)
        d_hidden.append(jnp.dot(grad, kernel.T, preferred_element_type=jnp.float32))  # [c, E]
        d_kernel = d_kernel + jnp.dot(row_major_transpose(h), grad, preferred_element_type=jnp.float32)  # [E, V]
    d_hidden = d_hidden[0] if len(d_hidden) == 1 else jnp.concatenate(d_hidden, axis=0)
    return loss, (d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype), weights)


def _fused_head_ce_bwd(chunk_size, res, g):
    d_hidden, d_kernel, weights = res
    return d_hidden * g.astype(d_hidden.dtype), d_kernel * g.astype(d_kernel.dtype), None, jnp.zeros_like(weights)


_fused_head_ce.defvjp(_fused_head_ce_fwd, _fused_head_ce_bwd)
