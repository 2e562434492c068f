"""Prompt formats of the three families as (text, trainable) segments -> tokens with loss masks.

Flamingo (OpenFlamingo): `<image>{caption}<|endofchunk|>{eos}`; interleaved `<image>{text}<|endofchunk|>` per pair;
  `<image>` is never a target. Few-shot eval prompts `<image>Question:{q} Short answer:{a}<|endofchunk|>`.
LLaVA: `plain` (stage 1: `<image>` + caption + newline, only the caption is a target) and `vicuna_v1`
  (system, `USER: ... ASSISTANT: ...</s>`, `<image>\\n` moved to the front of the first user turn; targets =
  assistant answers and their `</s>`). Marker/image count mismatches raise BadRecord instead of zeroing the loss.
VITA: ChatML, a state token prefixed to every answer (audio query / text query / noise).
"""
from __future__ import annotations

import json
from typing import Sequence

from common.data.batching import tokenize_segments
from common.data.records import BadRecord, IMAGE_MARKER_MISMATCH, MALFORMED, check_image_markers, decode_text
from common.tokenizers import (
    AUDIO_TOKEN,
    END_OF_CHUNK_TOKEN,
    IMAGE_TOKEN,
    VITA_STATE_AUDIO_QUERY,
    VITA_STATE_NOISE,
    VITA_STATE_TEXT_QUERY,
)

LLAVA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VITA_SYSTEM = "You are an AI robot and your name is VITA. You are a multimodal large language model developed by the open source community."


# ---- Flamingo ------------------------------------------------------------------------------------------------
def flamingo_caption(tokenizer, caption: str) -> dict:
    segs = [(IMAGE_TOKEN, False), (decode_text(caption, "caption").strip(), True), (END_OF_CHUNK_TOKEN, True)]
    return tokenize_segments(tokenizer, segs, add_bos=tokenizer.bos_id is not None, add_eos=True)


def flamingo_interleaved(tokenizer, texts: Sequence[str], num_images: int | None = None) -> dict:
    """One `<image>{text}<|endofchunk|>` chunk per (image, text) pair, then eos."""
    if num_images is not None and num_images != len(texts):
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{num_images} images for {len(texts)} texts")
    segs: list[tuple[str, bool]] = []
    for t in texts:
        segs += [(IMAGE_TOKEN, False), (decode_text(t).strip(), True), (END_OF_CHUNK_TOKEN, True)]
    return tokenize_segments(tokenizer, segs, add_bos=tokenizer.bos_id is not None, add_eos=True)


def flamingo_vqa_prompt(demos: Sequence[tuple[str, str]], question: str) -> str:
    """Few-shot VQA prompt: each demo `<image>Question:{q} Short answer:{a}<|endofchunk|>`, joined by newlines;
    the query is left open."""
    parts = [f"{IMAGE_TOKEN}Question:{q} Short answer:{a}{END_OF_CHUNK_TOKEN}" for q, a in demos]
    return "\n".join(parts + [f"{IMAGE_TOKEN}Question:{question} Short answer:"])


def flamingo_caption_prompt(demos: Sequence[str]) -> str:
    parts = [f"{IMAGE_TOKEN}Output:{c}{END_OF_CHUNK_TOKEN}" for c in demos]
    return "\n".join(parts + [f"{IMAGE_TOKEN}Output:"])


# ---- LLaVA ---------------------------------------------------------------------------------------------------
def _turns(conversations) -> list[dict]:
    if isinstance(conversations, (str, bytes)):
        conversations = json.loads(decode_text(conversations, "conversations"))
    if not isinstance(conversations, list) or not conversations:
        raise BadRecord(MALFORMED, "conversations must be a non-empty list")
    out = []
    for t in conversations:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise BadRecord(MALFORMED, f"bad turn {t!r:.80}")
        out.append({"from": t["from"], "value": decode_text(t["value"], "conversation")})
    return out


def llava_conversation(tokenizer, conversations, num_images: int = 1, template: str = "vicuna_v1") -> dict:
    turns = _turns(conversations)
    check_image_markers("".join(t["value"] for t in turns), num_images)
    if template == "plain":
        # Stage 1: `<image>` + caption + "\n"; the caption (the first gpt turn) is the target.
        cap = next(t["value"] for t in turns if t["from"] == "gpt")
        return tokenize_segments(tokenizer, [(IMAGE_TOKEN, False), (cap + "\n", True)], add_bos=False, add_eos=False)
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}")
    if num_images and IMAGE_TOKEN in turns[0]["value"]:
        v = turns[0]["value"].replace(IMAGE_TOKEN, "").strip()
        turns[0]["value"] = f"{IMAGE_TOKEN}\n{v}"
    segs: list[tuple[str, bool]] = [(LLAVA_V1_SYSTEM + " ", False)]
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    for i, t in enumerate(turns):
        role = roles.get(t["from"])
        if role is None or (role == "USER") != (i % 2 == 0):
            raise BadRecord(MALFORMED, f"turn {i} from {t['from']!r}: expected alternating human/gpt")
        if role == "USER":
            segs.append((f"USER: {t['value']} ASSISTANT:", False))
        else:
            segs.append((f" {t['value']}", True))
            segs.append(("</s>", True))
    return tokenize_segments(tokenizer, segs, add_bos=tokenizer.bos_id is not None, add_eos=False)


# ---- VITA ----------------------------------------------------------------------------------------------------
def vita_chatml(tokenizer, turns: Sequence[tuple[str, str]], state: str = VITA_STATE_TEXT_QUERY, system: str = VITA_SYSTEM) -> dict:
    """turns [(user_text, answer)]: ChatML; every answer starts with the state token; answers + <|im_end|> are targets.

    For state=VITA_STATE_NOISE the answer is empty: the model learns to emit only the state token and stop.
    """
    segs: list[tuple[str, bool]] = [(f"<|im_start|>system\n{system}<|im_end|>\n", False)]
    for user, answer in turns:
        segs.append((f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False))
        segs.append((f"{state}{answer}<|im_end|>", True))
        segs.append(("\n", False))
    return tokenize_segments(tokenizer, segs, add_bos=False, add_eos=False)


def vita_spoken_qa(tokenizer, example: dict) -> dict:
    """shapes spoken_qa example -> ChatML with `<image>` and `<audio>` placeholders and the matching state token."""
    state = VITA_STATE_NOISE if example.get("kind") == "noise" else VITA_STATE_AUDIO_QUERY
    return vita_chatml(tokenizer, [(f"{IMAGE_TOKEN}\n{AUDIO_TOKEN}", example.get("answer", ""))], state=state)
