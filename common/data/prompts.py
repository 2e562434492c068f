"""Prompt formats of the three families as (text, trainable) segments -> tokens with loss masks.

Flamingo (OpenFlamingo): `<image>{caption}<|endofchunk|>{eos}`; interleaved `<image>{text}<|endofchunk|>` per pair;
  `<image>` is never a target. Few-shot eval prompts `<image>Question:{q} Short answer:{a}<|endofchunk|>`.
LLaVA: `llava_conversation` delegates to `llava_jax.conversation` (plain, vicuna_v1, llava_llama_2, ChatML; answer-only
  loss mask; marker/image count or tokenization mismatches raise BadRecord instead of zeroing the loss).
VITA: ChatML, a state token prefixed to every answer (audio query / text query / noise).
"""
from __future__ import annotations

from typing import Sequence

from common.data.batching import tokenize_segments
from common.data.records import BadRecord, IMAGE_MARKER_MISMATCH, decode_text
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


def flamingo_interleaved(tokenizer, texts: Sequence[str | Sequence[str]], num_images: int | None = None,
                         image_slots: Sequence[bool] | None = None) -> dict:
    """One `<image>{text}<|endofchunk|>` chunk per text, then eos. image_slots[i] False: chunk i is text alone,
    `{text}<|endofchunk|>` (an MMC4 paragraph without an image; default: every chunk has one). A text given as a
    sequence of pieces tokenizes each piece on its own."""
    slots = [True] * len(texts) if image_slots is None else [bool(x) for x in image_slots]
    if len(slots) != len(texts):
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{len(slots)} image slots for {len(texts)} texts")
    if num_images is not None and num_images != sum(slots):
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{num_images} images for {sum(slots)} image chunks")
    segs: list[tuple[str, bool]] = []
    for t, has_image in zip(texts, slots):
        pieces = [t] if isinstance(t, str) else list(t)
        segs += ([(IMAGE_TOKEN, False)] if has_image else []) + [(decode_text(p).strip(), True) for p in pieces]
        segs.append((END_OF_CHUNK_TOKEN, True))
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
def llava_conversation(tokenizer, conversations, num_images: int = 1, template: str = "vicuna_v1") -> dict:
    """LLaVA conversation -> tokens + answer-only loss mask. The templates (plain, vicuna_v1, llava_llama_2, ChatML,
    ...) and the mask construction live in `llava_jax.conversation`; a prompt whose mask cannot be built raises
    BadRecord('tokenization_mismatch'), which the pipeline counts."""
    from llava_jax.conversation import tokenize_conversation

    return tokenize_conversation(tokenizer, conversations, template, num_images)


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
