"""Token sequences with loss masks: building from (text, trainable) segments, over-length policy, padding (packing
several samples per row: common.data.packing).

An example is a dict with `input_ids` int32 [L] and `loss_mask` bool [L] (True where the token is a target when
predicting it from the previous ones). Batches are int32/bool [B, max_len].
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
