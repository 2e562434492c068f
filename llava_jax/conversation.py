"""LLaVA conversation templates and answer-only loss masks (Liu et al. 2023, "Visual Instruction Tuning", Sec. 5 /
Table 2: the instruction-following sequence, loss on the assistant answers only; LLaVA-1.5 Sec. 3.3 response
formatting). Prompts render exactly as haotian-liu/LLaVA's `conversation.py` (`Conversation.get_prompt`) and
`train.py` (`preprocess_multimodal`, `preprocess_plain`) do; ChatML for Qwen2 is LLaVA-NeXT's `qwen_1_5` template.

Templates: `plain` (stage 1: `<image>` + caption + "\\n"), `v1` / `vicuna_v1` / `llava_v1` (system, `USER: ...
ASSISTANT: ...</s>`), `llava_llama_2` / `mistral_instruct` (`[INST] <<SYS>>...`), `chatml_direct` / `mpt` (the
original's MPT style: ChatML without newlines between turns) and `qwen_1_5` / `qwen_2` / `chatml` (ChatML).

Loss mask. The original tokenizes the whole prompt, then re-tokenizes every round to count where the answers
start, and when its counts disagree with the full tokenization it zeroes the whole sample ("WARNING: tokenization
mismatch ... (ignored)") — users saw loss 0. Here the prompt is cut into segments at the answer boundaries, the
full prompt is tokenized once, and every segment's tokens must equal the corresponding slice of the full
tokenization; the mask is then exact. When they do not (a token straddles a boundary), the sample raises
`BadRecord("tokenization_mismatch")`: the data pipeline's SkipCounter counts and reports it (and stops past its
maximum skip fraction). The loss is never silently zeroed.

After tokenization each `<image>` token is expanded into the number of feature tokens of its image
(`expand_image_tokens`), the HF processor's job, so the model's placeholders line up with the features.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from common.data.records import BadRecord, MALFORMED, check_image_markers, decode_text
from common.tokenizers import IMAGE_TOKEN

TOKENIZATION_MISMATCH = "tokenization_mismatch"

VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. "
                        "You are able to understand the visual content that the user provides, "
                        "and assist the user with a variety of tasks using natural language.")


@dataclasses.dataclass(frozen=True)
class Template:
    """One `Conversation` of the original: sep_style in single / two / mpt / plain / llama_2 / chatml."""

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str = "###"
    sep2: str | None = None


TEMPLATES: dict[str, Template] = {}


def _add(template: Template, *aliases: str) -> None:
    for name in (template.name, *aliases):
        TEMPLATES[name] = template


_add(Template("plain", "", ("", ""), "plain", sep="\n"), "v0_plain")
_add(Template("vicuna_v1", VICUNA_V1_SYSTEM, ("USER", "ASSISTANT"), "two", sep=" ", sep2="</s>"), "v1")
_add(Template("llava_v1", LLAVA_V1_SYSTEM, ("USER", "ASSISTANT"), "two", sep=" ", sep2="</s>"))
_add(Template("llava_llama_2", LLAVA_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), "llama_2", sep="<s>", sep2="</s>"))
_add(Template("mistral_instruct", "", ("USER", "ASSISTANT"), "llama_2", sep="", sep2="</s>"))
_add(Template("chatml_direct", "<|im_start|>system\nAnswer the questions.",
              ("<|im_start|>user\n", "<|im_start|>assistant\n"), "mpt", sep="<|im_end|>"), "mistral_direct")
_add(Template("mpt", "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
              "The assistant gives helpful and honest answers.",
              ("<|im_start|>user\n", "<|im_start|>assistant\n"), "mpt", sep="<|im_end|>"))
_add(Template("qwen_1_5", "<|im_start|>system\nYou are a helpful assistant.",
              ("<|im_start|>user", "<|im_start|>assistant"), "chatml", sep="<|im_end|>"), "qwen_2", "chatml")


def get_template(name: str | Template) -> Template:
    if isinstance(name, Template):
        return name
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------
def segments(template: str | Template, messages: Sequence[tuple[str, str | None]]) -> list[tuple[str, bool]]:
    """[(role, message)] (roles as in the template; a final message None = open generation prompt) -> the prompt
    as (text, is_answer) pieces whose concatenation is exactly the original `get_prompt()` string. The answer pieces
    are what the original trains on: the reply and the separator closing it ("</s>", " </s>", "<|im_end|>")."""
    t = get_template(template)
    out: list[tuple[str, bool]] = []
    if t.style == "plain":  # preprocess_plain: "<image>" * images, then caption + sep; no roles, no system
        for i, (_, message) in enumerate(messages):
            if message:
                out.append((message + (t.sep if i % 2 else ""), i % 2 == 1))
        return _merge(out)
    if t.style in ("two", "single"):
        seps = (t.sep, t.sep2) if t.style == "two" else (t.sep, t.sep)
        out.append((t.system + seps[0], False))
        for i, (role, message) in enumerate(messages):
            if message:
                if i % 2:  # the answer piece starts after "ROLE:", with the space that joins it
                    out += [(role + ":", False), (" " + message + seps[1], True)]
                else:
                    out.append((role + ": " + message + seps[0], False))
            else:
                out.append((role + ":", False))
    elif t.style == "mpt":
        out.append((t.system + t.sep, False))
        for i, (role, message) in enumerate(messages):
            if message:
                out += [(role, False), (message + t.sep, bool(i % 2))]
            else:
                out.append((role, False))
    elif t.style == "chatml":
        if t.system:
            out.append((t.system + t.sep + "\n", False))
        for i, (role, message) in enumerate(messages):
            if message:
                out += [(role + "\n", False), (message + t.sep, bool(i % 2)), ("\n", False)]
            else:
                out.append((role + "\n", False))
    elif t.style == "llama_2":
        for i, (role, message) in enumerate(messages):
            if i == 0 and (not message or role != t.roles[0]):
                raise ValueError("llama_2 templates need a first message from the user")
            if not message:
                continue
            if i == 0 and t.system:
                message = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n" + message
            if i % 2 == 0:
                # every user turn opens with sep ("<s>"); ret.lstrip(sep) removes the first one
                out.append(((t.sep if i else "") + f"[INST] {message} [/INST]", False))
            else:
                out.append((" " + message + " " + t.sep2, True))
    else:
        raise ValueError(f"unknown separator style {t.style!r}")
    return _merge(out)


def _merge(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Joins neighbouring pieces with the same flag (segment boundaries only where the mask changes)."""
    out: list[tuple[str, bool]] = []
    for text, flag in pieces:
        if not text:
            continue
        if out and out[-1][1] == flag:
            out[-1] = (out[-1][0] + text, flag)
        else:
            out.append((text, flag))
    return out


def render(template: str | Template, messages: Sequence[tuple[str, str | None]]) -> str:
    """The prompt string, exactly as the original's `conv.get_prompt()` (plain: as `preprocess_plain`)."""
    return "".join(text for text, _ in segments(template, messages))


def generation_prompt(template: str | Template, question: str, num_images: int = 1) -> str:
    """One user turn (with `<image>\\n` in front, as the original's CLI / eval scripts) and the open assistant turn."""
    t = get_template(template)
    if t.style == "plain":
        return IMAGE_TOKEN * num_images
    text = (IMAGE_TOKEN + "\n") * num_images + question if num_images and IMAGE_TOKEN not in question else question
    return render(t, [(t.roles[0], text), (t.roles[1], None)])


def to_messages(conversations, template: str | Template, num_images: int = 1) -> list[tuple[str, str]]:
    """LLaVA JSON turns [{'from': 'human'|'gpt', 'value': ...}] -> [(role, message)], with the original's data
    preprocessing: a leading gpt turn is dropped, turns must alternate human/gpt, every turn holding one `<image>`
    gets it moved to the front as `<image>\\n` (`preprocess_multimodal`; turns with several images keep them in
    place: the original collapses them into one, which breaks multi-image samples), and `plain` keeps only
    `<image>` * images + the caption (`preprocess_plain`). The number of `<image>` markers must equal num_images."""
    t = get_template(template)
    turns = _turns(conversations)
    if turns and turns[0]["from"] != "human":
        turns = turns[1:]
    if not turns:
        raise BadRecord(MALFORMED, "no human turn")
    for i, turn in enumerate(turns):
        if turn["from"] != ("human", "gpt")[i % 2]:
            raise BadRecord(MALFORMED, f"turn {i} from {turn['from']!r}: expected alternating human/gpt")
    check_image_markers("".join(turn["value"] for turn in turns), num_images)
    if t.style == "plain":
        if len(turns) != 2 or num_images < 1:
            raise BadRecord(MALFORMED, "plain (stage 1) samples are one image + one caption turn")
        return [("", IMAGE_TOKEN * num_images), ("", turns[1]["value"])]
    messages = []
    for i, turn in enumerate(turns):
        value = turn["value"]
        if value.count(IMAGE_TOKEN) == 1:
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        messages.append((t.roles[i % 2], value))
    return messages


def _turns(conversations) -> list[dict]:
    if isinstance(conversations, (str, bytes)):
        conversations = json.loads(decode_text(conversations, "conversations"))
    if not isinstance(conversations, list) or not conversations:
        raise BadRecord(MALFORMED, "conversations must be a non-empty list")
    out = []
    for turn in conversations:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise BadRecord(MALFORMED, f"bad turn {turn!r:.80}")
        out.append({"from": turn["from"], "value": decode_text(turn["value"], "conversation")})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tokenization with the answer-only loss mask
# ----------------------------------------------------------------------------------------------------------------
def tokenize(tokenizer, template: str | Template, messages: Sequence[tuple[str, str | None]],
             add_bos: bool | None = None) -> dict:
    """-> {'input_ids' int32 [L], 'loss_mask' bool [L]}: the full prompt tokenized once (with bos when the
    tokenizer has one, as the original's `tokenizer_image_token`), loss on the answer pieces only.

    Raises BadRecord('tokenization_mismatch') when a segment's own tokens differ from its slice of the full
    tokenization (the mask would be wrong); see the module docstring."""
    pieces = segments(template, messages)
    text = "".join(p for p, _ in pieces)
    add_bos = tokenizer.bos_id is not None if add_bos is None else add_bos
    ids = tokenizer.encode(text, add_bos=add_bos)
    mask = np.zeros(len(ids), bool)
    cursor = 1 if add_bos else 0
    for k, (piece, trainable) in enumerate(pieces):
        piece_ids = tokenizer.encode(piece) if k == 0 else tokenizer.encode_continuation(piece)
        if ids[cursor:cursor + len(piece_ids)] != piece_ids:
            raise BadRecord(TOKENIZATION_MISMATCH,
                            f"segment {k} {piece[:40]!r}: tokens {piece_ids[:8]} != prompt tokens "
                            f"{ids[cursor:cursor + 8]} at {cursor}")
        mask[cursor:cursor + len(piece_ids)] = trainable
        cursor += len(piece_ids)
    if cursor != len(ids):
        raise BadRecord(TOKENIZATION_MISMATCH, f"segments cover {cursor} of {len(ids)} prompt tokens")
    if not mask.any() and any(trainable for _, trainable in pieces):
        raise BadRecord(TOKENIZATION_MISMATCH, "no answer token survived tokenization")
    return {"input_ids": np.asarray(ids, np.int32), "loss_mask": mask}


def tokenize_conversation(tokenizer, conversations, template: str | Template = "vicuna_v1",
                          num_images: int = 1) -> dict:
    """LLaVA JSON conversation -> tokens + answer-only loss mask (one `<image>` token per image, not expanded)."""
    return tokenize(tokenizer, template, to_messages(conversations, template, num_images))


def expand_image_tokens(example: dict, image_token_id: int, tokens_per_image: int | Sequence[int],
                        placeholder_id: int | None = None) -> dict:
    """Replaces the i-th `<image>` token by tokens_per_image[i] placeholder tokens (id `placeholder_id`, default
    the same id; the model's `image_token_index`), never targets. Other [L] fields are repeated alongside."""
    ids = np.asarray(example["input_ids"])
    where = np.nonzero(ids == image_token_id)[0]
    counts = np.broadcast_to(np.asarray(tokens_per_image, np.int64), (len(where),)) if np.ndim(tokens_per_image) == 0 \
        else np.asarray(tokens_per_image, np.int64)
    if len(counts) != len(where):
        raise BadRecord("image_marker_mismatch", f"{len(where)} <image> tokens for {len(counts)} images")
    repeats = np.ones(len(ids), np.int64)
    repeats[where] = counts
    out = {k: (np.repeat(v, repeats) if isinstance(v, np.ndarray) and v.shape[:1] == ids.shape else v)
           for k, v in example.items()}
    out["input_ids"] = np.repeat(ids, repeats).astype(ids.dtype)
    if placeholder_id is not None:
        out["input_ids"][np.repeat(ids == image_token_id, repeats)] = placeholder_id
    if "loss_mask" in out:
        out["loss_mask"] = out["loss_mask"] & ~np.repeat(ids == image_token_id, repeats)
    return out
