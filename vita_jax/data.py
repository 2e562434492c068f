"""VITA-1.5 training data (Fu et al. 2025, Sec. 3.2 / Fig. 3: stage 1 vision-language, stage 2 audio input tuning):
sources, the tiny configs' tokenizer and the per-sample transform. Records are LLaVA-style JSON records with optional
`image` / `video` / `audio` fields (the release's data format, issues #77 / #18):
  {"conversations": [{"from": "human", "value": "<image>\\n<audio>\\n"}, {"from": "gpt", "value": "..."}],
   "image": path | array, "video": frames | None, "audio": [path | waveform], "noise_turn": None | int}
Sources:
  shapes (kind captions | conversations | vqa | asr | spoken_qa): the bundled shapes scenes and their real espeak
        speech (`common.data.speech`); `spoken_qa` is stage 2.2's mix: a question spoken (state ☞) or typed (☜), and
        one in five a babble not addressed to the assistant, answered with ☟ alone;
  vita_json: your own file (`json`, `image_dir`, `audio_dir`);
  librispeech: a LibriSpeech-layout folder (<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac) as
        ASR records "<audio>" + an instruction -> the transcript (stage 2.1).
Bad audio is skipped and counted per reason: wrong_sample_rate, empty_audio, clipped_audio, too_long (past
`max_audio_seconds`), missing / corrupt_audio; bad images as everywhere (common.data.image_ops).
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np

from common.data import formats, image_ops, scene_text, shapes
from common.data.audio import SAMPLE_RATE, load_audio, speech_fbank
from common.data.batching import fit_length
from common.data.records import (CORRUPT_AUDIO, MALFORMED, MISSING_AUDIO, TOO_LONG, WRONG_SAMPLE_RATE, BadRecord,
                                 require_path)
from common.data.speech import load_word_bank
from common.tokenizers import (AUDIO_TOKEN, IMAGE_TOKEN, QWEN_SPECIAL_TOKENS, VITA_STATE_TOKENS, HFJsonTokenizer,
                               train_byte_level_bpe)
from common.tokenizers import build_tokenizer as build_family_tokenizer
from vita_jax import conversation

EMPTY_AUDIO = "empty_audio"
CLIPPED_AUDIO = "clipped_audio"
AUDIO_REASONS = (WRONG_SAMPLE_RATE, EMPTY_AUDIO, CLIPPED_AUDIO, TOO_LONG, MISSING_AUDIO, CORRUPT_AUDIO)
ASR_PROMPT = "Convert the speech to text."
# The miniature's ASR query: the prompt on its own line, then the speech; its text stage 0 repeats the words written
# on the line after the same prompt, so that the frozen LM of stage 2.1 already knows the task.
ASR_QUERY = ASR_PROMPT + "\n"
CAPTION_PROMPT = "Describe the image briefly."


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
def _shapes_corpus() -> list[str]:
    lines = list(conversation.SYSTEM_PROMPTS.values()) * 50 + [ASR_PROMPT, CAPTION_PROMPT, "user assistant system",
                                                          " ".join(shapes.NUMBER_WORDS), " ".join(shapes.SHAPES),
                                                          " ".join(shapes.COLOURS), "yes no small large"]
    for kind in ("captions", "vqa", "conversations"):
        for i in range(200):
            ex = shapes.generate(kind, "train", i, seed=54321, image_size=8)
            if kind == "captions":
                lines.append(ex["caption"])
            elif kind == "vqa":
                lines.append(ex["question"].capitalize() + " " + ex["multiple_choice_answer"])
            else:
                lines += [t["value"] for t in json.loads(ex["conversations"])]
    return lines


@functools.lru_cache(maxsize=4)
def _shapes_bpe_json(vocab_size: int) -> str:
    specials = tuple(QWEN_SPECIAL_TOKENS) + VITA_STATE_TOKENS
    return train_byte_level_bpe(_shapes_corpus(), vocab_size, specials, isolate_punctuation=True)


def shapes_tokenizer(vocab_size: int = 1024) -> HFJsonTokenizer:
    """A small byte-level BPE (any text encodes) with Qwen's ChatML specials and the three state characters as single
    tokens, trained deterministically on the bundled data's language: the tiny configs' tokenizer."""
    from tokenizers import Tokenizer

    tok = HFJsonTokenizer(tokenizer_object=Tokenizer.from_str(_shapes_bpe_json(vocab_size)),
                          config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    return tok


def build_tokenizer(tok_config, workdir: str | None = None):
    """{kind: 'shapes_bpe', vocab_size} | {kind: 'dir', path} (a release folder / any Qwen2 tokenizer dir); a
    workdir's saved tokenizer.json wins (`common.tokenizers.build_tokenizer`: a resumed run keeps its vocabulary)."""
    return build_family_tokenizer(tok_config, workdir, shapes_tokenizer=shapes_tokenizer, default_vocab_size=1024)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------
SHAPES_KINDS = ("captions", "conversations", "vqa", "asr", "spoken_qa")


class ShapesVitaSource:
    """Random-access VITA records from the bundled shapes data (deterministic per index)."""

    def __init__(self, kind: str, split: str = "train", size: int = 4096, seed: int = 0, image_size: int = 56,
                 typed_fraction: float = 0.3, max_rounds: int = 2):
        if kind not in SHAPES_KINDS:
            raise ValueError(f"unknown shapes kind {kind!r}; use one of {SHAPES_KINDS}")
        self.kind, self.split, self.size, self.seed, self.image_size = kind, split, size, seed, image_size
        self.typed_fraction, self.max_rounds = typed_fraction, max_rounds
        self._offset = {"train": 0, "validation": 10_000_000, "test": 20_000_000}[split]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self._offset + int(index), SHAPES_KINDS.index(self.kind)])
        size = self.image_size
        if self.kind == "captions":
            ex = shapes.gen_caption(rng, size, index)
            conv = [("<image>\n" + CAPTION_PROMPT, ex["caption"])]
            return _record(conv, image=ex["image"])
        if self.kind == "conversations":
            ex = shapes.gen_conversation(rng, size, index)
            turns = json.loads(ex["conversations"])[: 2 * self.max_rounds]
            return {"conversations": turns, "image": ex["image"], "audio": [], "noise_turn": None}
        if self.kind == "vqa":
            objs = shapes.random_scene(rng)
            q, a, _, _ = shapes.vqa_question(objs, rng)
            return _record([("<image>\n" + q.capitalize(), a)], image=shapes.render(objs, rng, size))
        if self.kind == "asr":
            text = scene_text.utterance(rng)  # a question about a scene, or a one-object caption: 1-7 s of speech
            return _record([(ASR_QUERY + "<audio>", text)], audio=[load_word_bank().say(text, rng)], text=text)
        ex = shapes.gen_spoken_qa(rng, size, index)
        if ex["kind"] == "noise":
            return _record([("<image>\n<audio>", "")], image=ex["image"], audio=[ex["audio"]], noise_turn=1,
                           kind="noise", question=ex["question"])
        if rng.random() < self.typed_fraction:  # the same question typed: answered with ☜
            return _record([("<image>\n" + ex["question"].capitalize(), ex["answer"])], image=ex["image"],
                           kind="typed", question=ex["question"], answer=ex["answer"])
        return _record([("<image>\n<audio>", ex["answer"])], image=ex["image"], audio=[ex["audio"]], kind="spoken",
                       question=ex["question"], answer=ex["answer"])


def spoken_words(text: str) -> str:
    """Lower-case words only (what the word bank can say and what WER is computed on)."""
    return " ".join(load_word_bank().tokenize(text))


def spoken_form(text: str) -> str:
    """Text as it is said: digits as number words ('2' -> 'two'), then `spoken_words`."""
    return spoken_words(" ".join(shapes.NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < 10 else w
                                 for w in text.replace(".", " . ").split()))


def _record(turns, image=None, audio=(), noise_turn=None, **extra) -> dict:
    conv = []
    for user, answer in turns:
        conv += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
    return {"conversations": conv, "image": image, "audio": list(audio), "noise_turn": noise_turn, **extra}


class VitaJsonSource:
    """Your own data: a JSON list of VITA records; relative image / audio paths resolve against image_dir /
    audio_dir. Malformed entries are kept as records marked bad (skipped and counted by the pipeline)."""

    def __init__(self, json_path: str, image_dir: str = "", audio_dir: str = ""):
        with open(require_path(json_path, "VITA json", "file")) as f:
            self.items = json.load(f)
        if not isinstance(self.items, list):
            raise ValueError(f"{json_path}: expected a JSON list of records")
        self.image_dir, self.audio_dir = image_dir, audio_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            return {"_bad": (MALFORMED, f"record {index} has no conversations list")}
        resolve = lambda base, p: p if not isinstance(p, str) or os.path.isabs(p) else os.path.join(base, p)  # noqa
        audio = item.get("audio") or []
        audio = [audio] if isinstance(audio, str) else list(audio)
        image = item.get("image")
        return {"conversations": item["conversations"], "image": resolve(self.image_dir, image) if image else None,
                "audio": [resolve(self.audio_dir, a) for a in audio], "noise_turn": item.get("inserted_id")}


class LibriSpeechSource:
    """ASR records from a LibriSpeech-layout folder (read by `common.data.formats.librispeech`): {conversations,
    audio: [flac path], text}; a transcript line that is not UTF-8 stays a bad record, counted by the pipeline."""

    def __init__(self, root: str, prompt: str = ASR_QUERY):
        self.items = formats.librispeech(root)
        self.prompt = prompt

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if "_bad" in item:
            return item
        text = item["text"].lower()
        return _record([(self.prompt + "<audio>", text)], audio=[item["audio"]], text=text, id=item["id"])


def make_source(spec: dict, split: str = "train"):
    source = spec.get("source", "shapes")
    if source == "shapes":
        return ShapesVitaSource(spec["kind"], split, int(spec.get("size", 4096)), int(spec.get("seed", 0)),
                                int(spec.get("image_size", 56)), float(spec.get("typed_fraction", 0.3)),
                                int(spec.get("max_rounds", 2)))
    if source == "shapes_scene_text":  # text only: the tiny LM's stage 0, and its copy skill kept through stage 1
        return scene_text.ShapesSceneTextSource(spec["kind"], split, spec.get("size"), int(spec.get("seed", 0)),
                                                scene_format=spec.get("scene_format", "words"),
                                                repeat_prompt=spec.get("repeat_prompt", ASR_PROMPT))
    if source == "vita_json":
        return VitaJsonSource(spec["json"], spec.get("image_dir", ""), spec.get("audio_dir", ""))
    if source == "librispeech":
        return LibriSpeechSource(spec["root"], spec.get("prompt", ASR_QUERY))
    raise ValueError(f"unknown VITA data source {source!r}; use shapes, shapes_scene_text, vita_json or "
                     "librispeech")


# ----------------------------------------------------------------------------------------------------------------
# The per-sample transform
# ----------------------------------------------------------------------------------------------------------------
def checked_waveform(audio, max_seconds: float, clip_fraction: float = 0.01) -> np.ndarray:
    """A path / bytes / waveform -> float32 [N] at 16 kHz, or BadRecord: a file at another rate (nothing is resampled
    silently), empty, clipped (more than `clip_fraction` of the samples at full scale) or longer than max_seconds."""
    if isinstance(audio, np.ndarray):
        wave = audio.astype(np.float32).reshape(-1)
    else:
        wave, _ = load_audio(audio, SAMPLE_RATE)
    if wave.size < 400:
        raise BadRecord(EMPTY_AUDIO, f"{wave.size} samples (< one 25 ms frame)")
    if not np.isfinite(wave).all():
        raise BadRecord(CORRUPT_AUDIO, "non-finite samples")
    if float(np.abs(wave).max()) <= 1e-6:
        raise BadRecord(EMPTY_AUDIO, "silence (all samples zero)")
    if float(np.mean(np.abs(wave) >= 0.999)) > clip_fraction:
        raise BadRecord(CLIPPED_AUDIO, f"{100 * float(np.mean(np.abs(wave) >= 0.999)):.1f}% of samples at full scale")
    if wave.size > max_seconds * SAMPLE_RATE:
        raise BadRecord(TOO_LONG, f"{wave.size / SAMPLE_RATE:.1f} s of audio > {max_seconds} s")
    return wave


class VitaSampleTransform:
    """record -> {input_ids, loss_mask, images [n, S, S, 3], audio_features [T, 80]} with every `<image>` expanded into
    its tiles' placeholders and every `<audio>` into its clip's (ids from `vita_jax.conversation`)."""

    def __init__(self, tokenizer, config, max_len: int, max_tiles: int = 1, max_audio_seconds: float = 30.0,
                 over_length: str = "skip", convert_image_modes: bool = False):
        self.tok, self.cfg, self.max_len, self.max_tiles = tokenizer, config, max_len, max_tiles
        self.max_audio_seconds, self.over_length, self.convert_image_modes = max_audio_seconds, over_length, \
            convert_image_modes

    def __call__(self, record: dict) -> dict:
        size = self.cfg.vision.image_size
        tiles = np.zeros((0, size, size, 3), np.float32)
        if record.get("video") is not None:
            frames = image_ops.sample_video(np.asarray(record["video"]))
            tiles = np.stack([image_ops.square_resize_preprocess(f, size) for f in frames])
        elif record.get("image") is not None:
            img = image_ops.decode_image(record["image"], convert_image_modes=self.convert_image_modes)
            tiles = image_ops.internvl_preprocess(img, 1, self.max_tiles, size)
        feats = [speech_fbank(checked_waveform(a, self.max_audio_seconds)) for a in record.get("audio") or []]
        if len(feats) > 1:
            raise BadRecord(MALFORMED, f"{len(feats)} audio clips in one record (one per sample is supported)")
        ex = conversation.training_example(self.tok, record["conversations"], self.cfg.tokens_per_tile,
                                           num_tiles=len(tiles), audio_tokens=[int(self.cfg.audio_tokens(len(f)))
                                                                               for f in feats],
                                           noise_turn=record.get("noise_turn"), video=record.get("video") is not None)
        if len(tiles) == 0 and IMAGE_TOKEN in json.dumps(record["conversations"]):
            raise BadRecord("image_marker_mismatch", "an <image> marker without an image")
        if not feats and AUDIO_TOKEN in json.dumps(record["conversations"]):
            raise BadRecord("image_marker_mismatch", "an <audio> marker without audio")
        placeholders = int((ex["input_ids"] < 0).sum())
        ex = fit_length(ex, self.max_len, self.over_length)
        if int((np.asarray(ex["input_ids"]) < 0).sum()) != placeholders:  # truncation cut into a tile or clip
            raise BadRecord(TOO_LONG, f"truncating to {self.max_len} tokens would cut image / audio placeholders")
        ex["images"] = tiles
        ex["audio_features"] = feats[0] if feats else np.zeros((0, self.cfg.audio.input_dim), np.float32)
        return ex
