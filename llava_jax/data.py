"""LLaVA training data (Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.2 two-stage training; LLaVA-1.5 Sec. 3
data mix): sources, the tokenizer of the tiny configs, and the per-sample transform.

Sources (each a random-access list of {image, conversations} records, the LLaVA JSON record shape):
  shapes_captions       bundled shapes captions as one human `<image>` turn + the caption (stage 1, `plain`)
  shapes_conversations  bundled LLaVA-style multi-turn conversations (stage 2, `vicuna_v1`; `max_rounds` keeps the
                        first rounds: description, then questions)
  shapes_vqa            bundled VQA questions with LLaVA-1.5's short-answer prompt ("Answer the question using a
                        single word or phrase.") and the majority answer (part of LLaVA-1.5's mix665k)
  llava_json            your own data: `formats.llava_json(json, image_dir)` (llava_instruct_150k / mix665k layout)
  shapes_scene_text     text-only: a scene written as text where the image would be, then its caption or a short
                        answer (the tiny LM's own pretraining, "stage 0": the reading skill a real LLM brings)
`text_only=True` drops the images and the `<image>` markers.

Tokenizers: `tokenizer.kind='shapes_bpe'` builds a small byte-level BPE (any text encodes; the bundled data's words
are single tokens) deterministically in memory from the bundled data's vocabulary, with `<pad>`, `<s>`, `</s>` and
`<image>`; `kind='dir'` loads a checkpoint's tokenizer (`common.tokenizers.load_tokenizer`) and adds `<image>`.
The transform tokenizes with the conversation template (answer-only loss mask; a mask that cannot be built raises
BadRecord, which the pipeline counts and reports), expands every `<image>` into the model's placeholders, applies
the over-length policy and preprocesses the image (LLaVA-1.5 `image_aspect_ratio=pad`: pad to square with the mean
colour, then CLIP resize / crop / normalise).
"""
from __future__ import annotations

import functools
import json

import numpy as np

from common.data import image_ops, shapes
from common.data.batching import fit_length
from common.data.formats import llava_json
from common.data.scene_text import CELL_WORDS, VQA_SHORT_ANSWER_PROMPT, ShapesSceneTextSource
from common.data.shapes import COLOURS, NUMBER_WORDS, SHAPES, ShapesSource
from common.tokenizers import IMAGE_TOKEN, HFJsonTokenizer, train_byte_level_bpe
from common.tokenizers import build_tokenizer as build_family_tokenizer
from llava_jax import conversation

SHAPES_SPECIALS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
def _shapes_corpus() -> list[str]:
    """Text covering the bundled data's language, the templates and the evaluation prompts."""

    lines = [conversation.VICUNA_V1_SYSTEM, conversation.LLAVA_V1_SYSTEM, "USER: ASSISTANT:", VQA_SHORT_ANSWER_PROMPT,
             "Answer with the option's letter from the given choices directly.", "Options: A. B. C. D. E.",
             "Describe the image in detail. How many shapes are in the image? Where is it relative to the other?",
             " ".join(NUMBER_WORDS), " ".join(SHAPES), " ".join(COLOURS), "yes no small large big middle"]
    for kind in ("captions", "vqa", "conversations"):
        for i in range(200):
            ex = shapes.generate(kind, "train", i, seed=12345, image_size=8)
            if kind == "captions":
                lines.append(ex["caption"])
            elif kind == "vqa":
                lines.append(ex["question"].capitalize() + " " + ex["multiple_choice_answer"])
            else:
                lines += [t["value"] for t in json.loads(ex["conversations"])]
    return lines


@functools.lru_cache(maxsize=4)
def _shapes_bpe_json(vocab_size: int) -> str:
    return train_byte_level_bpe(_shapes_corpus(), vocab_size, SHAPES_SPECIALS)


def shapes_tokenizer(vocab_size: int = 512) -> HFJsonTokenizer:
    """The tiny configs' tokenizer: byte-level BPE trained in memory on the bundled data's text (deterministic)."""
    from tokenizers import Tokenizer

    tok = HFJsonTokenizer(tokenizer_object=Tokenizer.from_str(_shapes_bpe_json(int(vocab_size))),
                          config={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    tok.add_special_tokens(CELL_WORDS)
    return tok


def build_tokenizer(tok_config, workdir: str | None = None):
    """config.tokenizer -> Tokenizer with `<image>` (`common.tokenizers.build_tokenizer`: a workdir's saved
    tokenizer.json wins); a checkpoint tokenizer without a pad pads with `pad_token` (default `<unk>`)."""
    tok = build_family_tokenizer(tok_config, workdir, shapes_tokenizer=shapes_tokenizer, default_vocab_size=512,
                                 family="llava")
    if tok.pad_id is None:
        tok.pad_id = tok.token_to_id(dict(tok_config or {}).get("pad_token", "<unk>")) or 0
    return tok


def load_saved_tokenizer(directory: str):
    """The tokenizer `save_tokenizer` wrote into `directory` (a workdir or an exported checkpoint)."""
    return build_tokenizer({"kind": "dir", "path": directory}, directory)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------
class ShapesLlavaSource:
    """Bundled shapes examples as LLaVA JSON records {image, conversations}."""

    def __init__(self, kind: str, split: str = "train", size: int | None = None, seed: int = 0,
                 image_size: int = 48, vqa_prompt: str = VQA_SHORT_ANSWER_PROMPT, max_rounds: int | None = None):
        if kind not in ("captions", "conversations", "vqa"):
            raise ValueError(f"shapes kind {kind!r}: use captions, conversations or vqa")
        self.kind, self.vqa_prompt, self.max_rounds = kind, vqa_prompt, max_rounds
        self.source = ShapesSource(kind, split, size, seed, image_size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        ex = self.source[index]
        if self.kind == "captions":
            conv = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": ex["caption"]}]
        elif self.kind == "vqa":
            q = ex["question"][0].upper() + ex["question"][1:]
            conv = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{q}\n{self.vqa_prompt}"},
                    {"from": "gpt", "value": ex["multiple_choice_answer"]}]
        else:
            conv = json.loads(ex["conversations"])
            if self.max_rounds:
                conv = conv[:2 * self.max_rounds]
        return {"image": ex["image"], "conversations": conv}


def make_source(spec, split: str = "train"):
    """One dataset spec of config.data.datasets -> a random-access source of LLaVA records."""
    spec = dict(spec)
    source = spec.get("source", "shapes")
    if source == "shapes":
        return ShapesLlavaSource(spec["kind"], split if split != "train" else spec.get("split", "train"),
                                 spec.get("size"), int(spec.get("seed", 0)), int(spec.get("image_size", 48)),
                                 max_rounds=spec.get("max_rounds"))
    if source == "shapes_scene_text":
        return ShapesSceneTextSource(spec["kind"], split if split != "train" else spec.get("split", "train"),
                                     spec.get("size"), int(spec.get("seed", 0)),
                                     scene_format=spec.get("scene_format", "cells"))
    if source == "llava_json":
        return llava_json(spec["json"], spec["image_dir"])
    raise ValueError(f"unknown data source {source!r}; use 'shapes' or 'llava_json'")


# ----------------------------------------------------------------------------------------------------------------
# Transform
# ----------------------------------------------------------------------------------------------------------------
def strip_images(conversations) -> list[dict]:
    """Conversation without its `<image>` markers (text-only pretraining of the LM)."""
    turns = conversation._turns(conversations)
    return [{"from": t["from"], "value": t["value"].replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()}
            for t in turns]


def preprocess_image(image, image_size: int, pad_to_square: bool = True,
                     convert_image_modes: bool = True) -> np.ndarray:
    """LLaVA-1.5 image_aspect_ratio=pad: expand to square with the mean colour, then CLIP preprocessing.

    For inference a greyscale / RGBA / CMYK / 16-bit / palette image is converted to RGB (the default here);
    the training transform passes `convert_image_modes=False` (its default) so such records are skipped."""
    img = image_ops.decode_image(image, convert_image_modes=convert_image_modes)
    if pad_to_square:
        img = image_ops.expand_to_square(img, "mean")
    if img.shape[:2] == (image_size, image_size):
        return image_ops.normalize(img)
    return image_ops.clip_preprocess(img, image_size)


class LlavaSampleTransform:
    """{image, conversations} -> input_ids / loss_mask [L] (placeholders expanded) + images [n, S, S, 3].

    Records without an image (text-only samples of mix665k) or with `text_only=True` get no `images` entry when
    `text_only`, else images [0, S, S, 3]. Greyscale / RGBA / CMYK / 16-bit / palette images raise BadRecord (skipped
    and counted per reason) unless `convert_image_modes=True`, which converts them to RGB."""

    def __init__(self, tokenizer, template: str, *, image_token_id: int, tokens_per_image: int,
                 placeholder_id: int | None = None, image_size: int = 336, max_len: int = 2048,
                 over_length: str = "skip", pad_to_square: bool = True, text_only: bool = False,
                 convert_image_modes: bool = False):
        self.tok, self.template = tokenizer, template
        self.image_token_id, self.tokens_per_image = image_token_id, tokens_per_image
        self.placeholder_id = placeholder_id
        self.image_size, self.max_len, self.over_length = image_size, max_len, over_length
        self.pad, self.text_only = pad_to_square, text_only
        self.convert_image_modes = convert_image_modes

    def __call__(self, record: dict) -> dict:
        image = None if self.text_only else record.get("image")
        conv = record["conversations"]
        if self.text_only:
            conv = strip_images(conv)
        if self.text_only and conversation.get_template(self.template).style == "plain":
            ex = conversation.tokenize(self.tok, self.template, [("", conv[0]["value"]), ("", conv[-1]["value"])])
        else:
            ex = conversation.tokenize_conversation(self.tok, conv, self.template, int(image is not None))
        ex = conversation.expand_image_tokens(ex, self.image_token_id, self.tokens_per_image, self.placeholder_id)
        ex = fit_length(ex, self.max_len, self.over_length)
        if self.text_only:
            return ex
        if image is None:
            ex["images"] = np.zeros((0, self.image_size, self.image_size, 3), np.float32)
        else:
            ex["images"] = preprocess_image(image, self.image_size, self.pad, self.convert_image_modes)[None]
        return ex
