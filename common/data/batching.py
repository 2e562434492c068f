"""Token sequences with loss masks: building from (text, trainable) segments, over-length policy, padding, packing.

An example is a dict with `input_ids` int32 [L] and `loss_mask` bool [L] (True where the token is a target when
predicting it from the previous ones). Batches are int32/bool [B, max_len]; packed rows add `segment_ids`
(0 = padding) and `positions` that restart at 0 for every packed example.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.records import TOO_LONG, BadRecord


def tokenize_segments(tokenizer, segments: Sequence[tuple[str, bool]], add_bos: bool = True, add_eos: bool = False,
                      eos_trainable: bool = True) -> dict:
    """[(text, trainable)] -> {'input_ids': int32 [L], 'loss_mask': bool [L]}; bos is never a target."""
    ids: list[int] = []
    mask: list[bool] = []
    if add_bos:
        if tokenizer.bos_id is None:
            raise ValueError("add_bos=True but the tokenizer has no bos token")
        ids.append(tokenizer.bos_id)
        mask.append(False)
    for k, (text, train) in enumerate(segments):
        if not text:
            continue
        # Text after the first piece is not at the start of the sequence (no SentencePiece dummy prefix there).
        t = tokenizer.encode(text) if not ids else tokenizer.encode_continuation(text)
        ids += t
        mask += [bool(train)] * len(t)
    if add_eos:
        ids.append(tokenizer.eos_id)
        mask.append(bool(eos_trainable))
    return {"input_ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, bool)}


def fit_length(example: dict, max_len: int, policy: str = "skip") -> dict:
    """Over-length examples: 'skip' raises BadRecord(too_long); 'truncate' cuts every [L] field to max_len."""
    n = len(example["input_ids"])
    if n <= max_len:
        return example
    if policy == "skip":
        raise BadRecord(TOO_LONG, f"{n} tokens > {max_len}")
    if policy != "truncate":
        raise ValueError(f"unknown over-length policy {policy!r}")
    return {k: (v[:max_len] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v)
            for k, v in example.items()}


def pad_batch(examples: Sequence[dict], max_len: int, pad_id: int, side: str = "right") -> dict:
    """List of examples -> {'input_ids' int32 [B, max_len], 'loss_mask' bool, 'attention_mask' bool, 'positions' int32}.

    side='left' is for generation prompts (OpenFlamingo evaluation pads on the left). Other array fields of equal
    shape across examples are stacked as they are.
    """
    B = len(examples)
    ids = np.full((B, max_len), pad_id, np.int32)
    loss = np.zeros((B, max_len), bool)
    att = np.zeros((B, max_len), bool)
    pos = np.zeros((B, max_len), np.int32)
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if n > max_len:
            raise ValueError(f"example of {n} tokens does not fit max_len {max_len}: apply fit_length first")
        sl = slice(0, n) if side == "right" else slice(max_len - n, max_len)
        ids[b, sl] = ex["input_ids"]
        loss[b, sl] = ex.get("loss_mask", np.ones(n, bool))
        att[b, sl] = True
        pos[b, sl] = np.arange(n)
    out = {"input_ids": ids, "loss_mask": loss, "attention_mask": att, "positions": pos}
    for k in examples[0]:
        if k in out or k == "loss_mask":
            continue
        vals = [ex[k] for ex in examples]
        if all(isinstance(v, np.ndarray) for v in vals) and len({v.shape for v in vals}) == 1:
            out[k] = np.stack(vals)
        else:
            out[k] = vals
    return out


def pack_sequences(examples: Sequence[dict], max_len: int, pad_id: int, max_rows: int | None = None) -> dict:
    """First-fit packing of token examples into rows of max_len (examples longer than max_len must be cut first).

    Returns int32 [R, max_len] 'input_ids', 'segment_ids' (1.. per example in the row, 0 = padding),
    'positions' (restarting per example), bool 'loss_mask' (never across a segment boundary: the first token of each
    packed example is not a target), and 'attention_mask' = segment_ids > 0. Attention must stay within a segment:
    mask[i, j] = segment_ids[i] == segment_ids[j] and j <= i.
    """
    rows: list[list[dict]] = []
    room: list[int] = []
    for ex in examples:
        n = len(ex["input_ids"])
        if n > max_len:
            raise ValueError(f"example of {n} tokens > max_len {max_len}")
        for r in range(len(rows)):
            if room[r] >= n:
                rows[r].append(ex)
                room[r] -= n
                break
        else:
            rows.append([ex])
            room.append(max_len - n)
    if max_rows is not None and len(rows) > max_rows:
        raise ValueError(f"{len(rows)} rows needed, max_rows={max_rows}")
    R = max_rows or len(rows)
    ids = np.full((R, max_len), pad_id, np.int32)
    seg = np.zeros((R, max_len), np.int32)
    pos = np.zeros((R, max_len), np.int32)
    loss = np.zeros((R, max_len), bool)
    for r, row in enumerate(rows):
        o = 0
        for s, ex in enumerate(row, start=1):
            n = len(ex["input_ids"])
            ids[r, o : o + n] = ex["input_ids"]
            seg[r, o : o + n] = s
            pos[r, o : o + n] = np.arange(n)
            m = np.asarray(ex.get("loss_mask", np.ones(n, bool)), bool).copy()
            m[0] = False
            loss[r, o : o + n] = m
            o += n
    return {"input_ids": ids, "segment_ids": seg, "positions": pos, "loss_mask": loss, "attention_mask": seg > 0}


def packed_attention_mask(segment_ids: np.ndarray) -> np.ndarray:
    """[B, L] segment ids -> bool [B, L, L] causal mask that never crosses examples."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = np.tril(np.ones(segment_ids.shape[-1:] * 2, bool))
    return same & causal & (segment_ids[:, :, None] > 0)
