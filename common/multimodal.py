"""Placing encoder features into a token sequence (the LLaVA / VITA "placeholder" scheme, HF semantics): the prompt
holds, for every media item, as many placeholder tokens as that item has feature tokens, and the k-th placeholder of
a sample receives the k-th valid feature row of that sample's items taken in slot order.

Static shapes throughout: features [B, N, F, E] for N item slots of up to F rows, lengths [B, N] of valid rows (0 for
an empty slot); nothing data-dependent, so it runs under jit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> np.ndarray | None:
    """numpy value of x, or None when x is traced (inside jit / eval_shape)."""
    if x is None:
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def scatter_features(embeds: jax.Array, is_placeholder: jax.Array, features: jax.Array, lengths: jax.Array,
                     segment_ids: jax.Array | None = None,
                     item_segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """embeds [B, T, E] with the placeholders [B, T] bool replaced by features [B, N, F, E] (lengths [B, N] valid
    rows each) -> ([B, T, E], ok [B] bool: the sample's placeholder count equals its valid feature rows).
    Packed rows: with segment_ids [B, T] and item_segment_ids [B, N], ok also needs every placeholder to take its
    features from an item of its own segment (sample)."""
    batch, n_slots, rows = features.shape[:3]
    lengths = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (batch, n_slots))
    table = features.reshape(batch, n_slots * rows, -1).astype(embeds.dtype)  # [B, N*F, E]
    slot, within = placeholder_slots(is_placeholder, lengths)
    merged = gather_rows(embeds, is_placeholder, table, slot * rows + within)
    ok = is_placeholder.sum(axis=1) == lengths.sum(axis=1)  # [B]
    if segment_ids is not None and item_segment_ids is not None:
        ok &= placeholders_in_own_segment(is_placeholder, slot, segment_ids, item_segment_ids)
    return merged, ok


def placeholder_slots(is_placeholder: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For every token [B, T]: the item slot its placeholder reads (the k-th placeholder of a sample belongs to the
    slot whose cumulated lengths [B, N] first exceed k) and its index `within` that item's rows. Non-placeholder
    tokens get meaningless values (mask them with is_placeholder)."""
    k = jnp.cumsum(is_placeholder, axis=1) - 1  # [B, T]: index of each placeholder among its sample's
    ends = jnp.cumsum(lengths, axis=1)  # [B, N]
    slot = jnp.minimum((k[:, :, None] >= ends[:, None, :]).sum(-1), lengths.shape[1] - 1)  # [B, T]
    within = k - jnp.take_along_axis(ends - lengths, slot, axis=1)  # [B, T]
    return slot, within


def gather_rows(embeds: jax.Array, is_placeholder: jax.Array, table: jax.Array, row: jax.Array) -> jax.Array:
    """embeds [B, T, E] with each placeholder replaced by table[b, row[b, t]] (table [B, R, E]; rows clipped)."""
    row = jnp.where(is_placeholder, jnp.clip(row, 0, table.shape[1] - 1), 0)
    gathered = jnp.take_along_axis(table, row[..., None], axis=1)  # [B, T, E]
    return jnp.where(is_placeholder[..., None], gathered, embeds)


def placeholders_in_own_segment(is_placeholder: jax.Array, slot: jax.Array, segment_ids: jax.Array,
                                item_segment_ids: jax.Array) -> jax.Array:
    """Packed rows: [B] bool, True where every placeholder [B, T] takes its features from an item slot [B, T] whose
    segment (item_segment_ids [B, N]) is the placeholder's own (segment_ids [B, T])."""
    owner = jnp.take_along_axis(jnp.asarray(item_segment_ids), slot, axis=1)  # [B, T]
    return jnp.all(~is_placeholder | (owner == segment_ids), axis=1)


def check_counts(is_placeholder, lengths, what: str, token_index: int, hint: str) -> None:
    """Raises ValueError (outside jit) when a sample's placeholder count differs from its valid feature rows."""
    have, want = concrete(jnp.asarray(is_placeholder).sum(axis=1)), concrete(lengths)
    if have is None or want is None:
        return
    want = np.broadcast_to(want, (have.shape[0],) + want.shape[1:]).reshape(have.shape[0], -1).sum(axis=1)
    bad = np.nonzero(have != want)[0]
    if bad.size:
        detail = ", ".join(f"sample {b}: {have[b]} placeholder tokens vs {want[b]} {what} feature tokens"
                           for b in bad[:4])
        raise ValueError(f"{what} placeholders (id {token_index}) do not match the {what} features: {detail}. {hint}")
