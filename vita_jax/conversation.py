"""VITA-1.5's prompt format (the release's `conv_qwen2p5_instruct`, `preprocess_multimodal` of
data_utils_video_audio_neg_patch.py and `tokenizer_image_audio_token`; docs/vita_release.md):
ChatML with a system prompt chosen by modality, one `<image>` per tile (or video frame) followed by a newline, the
`<audio>` after the question text, and a state character opening every answer:
  ☞ the answer to a spoken query (the human turn held `<audio>`), ☜ the answer to a typed query,
  ☟ "noise / not addressed to the assistant": the answer is the state character alone (non-awakening interaction).

Token ids follow HF semantics for `vita_jax.Vita`: each `<image>` becomes `tokens_per_tile` copies of
IMAGE_TOKEN_INDEX and each `<audio>` `audio_token_lengths(frames)` copies of AUDIO_TOKEN_INDEX; the text between them
goes through the tokenizer ('<|im_start|>' / '<|im_end|>' must be special tokens of it).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from common.data.records import IMAGE_MARKER_MISMATCH, BadRecord
from common.tokenizers import AUDIO_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN, VITA_STATE_AUDIO_QUERY, VITA_STATE_NOISE, \
    VITA_STATE_TEXT_QUERY
from vita_jax.model import AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX

_BASE_SYSTEM = (
    "You are an AI robot and your name is VITA. \n- You are a multimodal large language model developed by the open "
    "source community. Your aim is to be helpful, honest and harmless. \n- You support the ability to communicate "
    "fluently and answer user questions in multiple languages of the user's choice. \n- If the user corrects the wrong "
    "answer you generated, you will apologize and discuss the correct answer with the user.")
_SEEING = (" \n- You must answer the question strictly according to the content of the {0} given by the user, and it "
           "is strictly forbidden to answer the question without the content of the {0}. Please note that you are "
           "seeing the {0}, not the {1}.")
SYSTEM_PROMPTS = {
    "image": _BASE_SYSTEM + _SEEING.format("image", "video"),
    "video": _BASE_SYSTEM + _SEEING.format("video", "image"),
    "lang": _BASE_SYSTEM,  # text-only and audio-only conversations
}
STATE_TOKENS = {"audio": VITA_STATE_AUDIO_QUERY, "text": VITA_STATE_TEXT_QUERY, "noise": VITA_STATE_NOISE}
STRIP_BEFORE_TTS = (VITA_STATE_AUDIO_QUERY, VITA_STATE_NOISE, VITA_STATE_TEXT_QUERY, "<unk>", "<|im_end|>")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_MEDIA_RE = re.compile(f"(?:{re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)})\n?")
_PLACEHOLDER_RE = re.compile(f"({re.escape(AUDIO_TOKEN)}|{re.escape(IMAGE_TOKEN)})")


def modality_of(messages: Sequence[tuple[str, str | None]], video: bool = False) -> str:
    """'image' / 'video' when a message holds `<image>` (the release's get_prompt), else 'lang'."""
    if any(m and IMAGE_TOKEN in m for _, m in messages):
        return "video" if video else "image"
    return "lang"


def chat_prompt(messages: Sequence[tuple[str, str | None]], modality: str | None = None) -> str:
    """[(role, message)] -> the release's Qwen2p5Instruct text: `<|im_start|>system\\n{S}<|im_end|>\\n`, past
    turns `<|im_start|>{role}\\n{m}<|im_end|>\\n`, the last filled one without the trailing newline, and a message
    None opens that role's turn (`<|im_start|>assistant\\n`, the generation prompt)."""
    modality = modality or modality_of(messages)
    if modality not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown modality {modality!r}; use one of {sorted(SYSTEM_PROMPTS)}")
    out = f"<|im_start|>system\n{SYSTEM_PROMPTS[modality]}<|im_end|>\n"
    for i, (role, message) in enumerate(messages):
        role = ROLES.get(role, role)
        if message:
            out += f"<|im_start|>{role}\n{message}<|im_end|>" + ("\n" if i < len(messages) - 1 else "")
        else:
            out += f"<|im_start|>{role}\n"
    return out


def query_text(question: str = "", num_tiles: int = 0, audio: bool = False) -> str:
    """A user turn as the release's demo writes it: `<image>` per tile + `\\n`, the question, then `<audio>`."""
    return IMAGE_TOKEN * num_tiles + ("\n" if num_tiles else "") + question + (AUDIO_TOKEN if audio else "")


def generation_prompt(question: str = "", num_tiles: int = 0, audio: bool = False, video: bool = False,
                      history: Sequence[tuple[str, str]] = ()) -> str:
    """The full prompt for one answer: system, past (user, assistant) turns, this query, the open assistant turn."""
    messages = [m for user, answer in history for m in (("user", user), ("assistant", answer))]
    messages += [("user", query_text(question, num_tiles, audio)), ("assistant", None)]
    return chat_prompt(messages, modality_of(messages, video))


def prepare_conversation(conversation: Sequence[dict], num_tiles: int = 1, noise_turn: int | None = None,
                         video: bool = False) -> list[tuple[str, str]]:
    """LLaVA-style [{"from": "human"/"gpt", "value"}] -> [(role, text)] as `preprocess_multimodal` makes it:
    `<image>` (or `<video>`) -> `<image>` * num_tiles + newline, `<audio>\\n` -> `<audio>`, doubled newlines
    collapsed, and every answer prefixed with its state token (☟ for turn `noise_turn`, whose answer is then the state
    token alone; ☞ after a human turn with `<audio>`; ☜ otherwise)."""
    out: list[tuple[str, str]] = []
    for i, turn in enumerate(conversation):
        role = ROLES.get(turn.get("from"), None)
        if role is None:
            raise BadRecord("malformed_record", f"turn {i} has role {turn.get('from')!r}")
        value = str(turn.get("value", ""))
        if role == "user":
            if value.count(IMAGE_TOKEN) + value.count(VIDEO_TOKEN) > 1:
                raise BadRecord(IMAGE_MARKER_MISMATCH, f"turn {i} holds more than one <image> / <video> marker")
            tiles = IMAGE_TOKEN * num_tiles + "\n"
            value = _MEDIA_RE.sub(lambda _: tiles, value)
            value = value.replace(AUDIO_TOKEN + "\n", AUDIO_TOKEN).replace("\n\n", "\n")
        elif i == noise_turn:
            value = VITA_STATE_NOISE
        else:
            spoken = i > 0 and AUDIO_TOKEN in str(conversation[i - 1].get("value", ""))
            value = (VITA_STATE_AUDIO_QUERY if spoken else VITA_STATE_TEXT_QUERY) + value
        out.append((role, value))
    return out


def tokenize_with_placeholders(tokenizer, text: str, tokens_per_tile: int,
                               audio_tokens: Sequence[int] = ()) -> list[int]:
    """Text with `<image>` / `<audio>` markers -> ids with each marker expanded (HF semantics): a tile is
    `tokens_per_tile` IMAGE_TOKEN_INDEX, the k-th `<audio>` audio_tokens[k] AUDIO_TOKEN_INDEX."""
    ids: list[int] = []
    audio_tokens = list(audio_tokens)
    n_audio = text.count(AUDIO_TOKEN)
    if n_audio != len(audio_tokens):
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{n_audio} <audio> markers for {len(audio_tokens)} audio clips")
    k = 0
    for chunk in _PLACEHOLDER_RE.split(text):
        if chunk == IMAGE_TOKEN:
            ids += [IMAGE_TOKEN_INDEX] * tokens_per_tile
        elif chunk == AUDIO_TOKEN:
            ids += [AUDIO_TOKEN_INDEX] * int(audio_tokens[k])
            k += 1
        elif chunk:
            ids += tokenizer.encode(chunk)
    return ids


def training_example(tokenizer, conversation: Sequence[dict], tokens_per_tile: int, num_tiles: int = 1,
                     audio_tokens: Sequence[int] = (), noise_turn: int | None = None, video: bool = False) -> dict:
    """A conversation -> {"input_ids" [L] int32, "loss_mask" [L] bool}: targets are the answers (state token
    included) and their `<|im_end|>`; system, user turns, role headers and placeholders are never targets."""
    turns = prepare_conversation(conversation, num_tiles, noise_turn, video)
    modality = modality_of(turns, video)
    ids = tokenize_with_placeholders(tokenizer, f"<|im_start|>system\n{SYSTEM_PROMPTS[modality]}<|im_end|>\n",
                                     tokens_per_tile)
    mask = [False] * len(ids)
    audio = list(audio_tokens)
    for i, (role, text) in enumerate(turns):
        head = tokenize_with_placeholders(tokenizer, f"<|im_start|>{role}\n", tokens_per_tile)
        ids += head
        mask += [False] * len(head)
        n = text.count(AUDIO_TOKEN)
        body = tokenize_with_placeholders(tokenizer, text + "<|im_end|>", tokens_per_tile, audio[:n])
        audio = audio[n:]
        ids += body
        mask += [role == "assistant"] * len(body)
        if i < len(turns) - 1:
            nl = tokenizer.encode("\n")
            ids += nl
            mask += [False] * len(nl)
    if audio:
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{len(audio_tokens)} audio clips for "
                        f"{len(audio_tokens) - len(audio)} <audio> markers")
    return {"input_ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, bool)}


def decode_answer(tokenizer, token_ids) -> str:
    """Generated ids -> text with the state tokens kept (they are added special tokens, which a plain
    `skip_special_tokens` decode would drop) and every other special token dropped."""
    states = {tokenizer.token_to_id(t): t for t in STATE_TOKENS.values()}
    states.pop(None, None)
    text, run = [], []
    for t in list(token_ids) + [None]:
        if t is None or t in states:
            if run:
                text.append(tokenizer.decode(run, skip_special_tokens=True))
                run = []
            if t is not None:
                text.append(states[t])
        else:
            run.append(int(t))
    return "".join(text).strip()


def answer_state(text: str) -> str | None:
    """'audio' / 'text' / 'noise' from the state character a generated answer starts with (None: none)."""
    text = text.lstrip()
    for name, token in STATE_TOKENS.items():
        if text.startswith(token):
            return name
    return None


def strip_states(text: str) -> str:
    """The answer without state characters and end markers (what the release sends to speech synthesis)."""
    for token in STRIP_BEFORE_TTS:
        text = text.replace(token, "")
    return text.strip()
