"""Flamingo training data (Alayrac et al. 2022, Sec. 2.4 "Training on a mixture of vision and language datasets";
OpenFlamingo's LAION-2B / MMC4 recipe): the tiny configs' tokenizer, the sources, the per-dataset label masks,
and the in-context-only 'names' episodes used both for the tiny LM's text pretraining and for evaluation.

Sources (config.data.datasets[name].source):
  shapes_captions     LAION-style pairs, `<image>{caption}<|endofchunk|>{eos}` (bundled shapes captions)
  shapes_interleaved  MMC4-style documents, `<image>{text}<|endofchunk|>` per pair (bundled shapes interleaved:
                      'names' documents with made-up per-document names, and caption documents)
  names_documents     'names' documents only, `<image>This is a dax.<|endofchunk|>` per pair, with the episode sizes
                      of stage 0's names_text (min/max_pairs, min/max_names in the spec): a names-heavier mix
  names_text          text-only 'names' episodes ("circle This is a dax. ..."): the tiny LM's own pretraining
                      ("stage 0"), standing in for the paper's text-pretrained, frozen Chinchilla LM
  captions_text, vqa_text  text-only captions / "{scene} Question:{q} Short answer:{a}" (stage 0)
  coco_captions / interleaved_jsonl  your data through common.data.formats (paths in the spec)
  tfds_coco_captions  a prepared tfds coco_captions (data_dir, split, captions_per_image), no TensorFlow

Labels (OpenFlamingo train_utils): pad, bos and `<image>` never are targets; for interleaved documents neither are
the tokens before the first `<image>` nor those between an `<|endofchunk|>` and the next `<image>` (so the eos after
the last chunk is not a target there, while LAION-style pairs keep it). See `flamingo_loss_mask`.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np

from common.data import formats, shapes
from common.data.batching import fit_length, tokenize_segments
from common.data.pipeline import ImageTextPairTransform, clip_image
from common.data.records import IMAGE_MARKER_MISMATCH, BadRecord, decode_text
from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN, HFJsonTokenizer, train_byte_level_bpe
from common.tokenizers import build_tokenizer as build_family_tokenizer

SPECIALS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN, END_OF_CHUNK_TOKEN)
NAMES_SENTENCE = "This is a {}."
CAPTION_SOURCES = ("shapes_captions", "coco_captions", "tfds_coco_captions")  # image-caption pairs
NAMES_PROMPT = "This is a"


# ----------------------------------------------------------------------------------------------------------------
# Prompt formats (OpenFlamingo) and the per-record transforms
# ----------------------------------------------------------------------------------------------------------------
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


class FlamingoCaptionTransform:
    """{image, caption} -> images [1, S, S, 3] + tokens of `<image>{caption}<|endofchunk|>{eos}`."""

    def __init__(self, tokenizer, max_len: int = 32, image_size: int = 224, over_length: str = "truncate",
                 convert_image_modes: bool = False):
        self.tok, self.max_len, self.image_size, self.over_length = tokenizer, max_len, image_size, over_length
        self.convert_image_modes = convert_image_modes

    def __call__(self, r: dict) -> dict:
        ex = flamingo_caption(self.tok, r["caption"])
        ex = fit_length(ex, self.max_len, self.over_length)
        ex["images"] = clip_image(r["image"], self.image_size, self.convert_image_modes)[None]
        return ex


class FlamingoInterleavedTransform:
    """{images, texts[, image_slots]} -> images [N, S, S, 3] + `<image>{text}<|endofchunk|>` chunks (at most max_images
    images; image_slots[i] False: text i has no image, see `flamingo_interleaved`)."""

    def __init__(self, tokenizer, max_len: int = 256, image_size: int = 224, max_images: int = 6,
                 over_length: str = "skip", convert_image_modes: bool = False):
        self.tok, self.max_len, self.image_size = tokenizer, max_len, image_size
        self.max_images, self.over_length = max_images, over_length
        self.convert_image_modes = convert_image_modes

    def __call__(self, r: dict) -> dict:
        texts, slots = list(r["texts"]), r.get("image_slots")
        slots = [True] * len(texts) if slots is None else [bool(x) for x in slots]
        if len(slots) != len(texts):
            raise BadRecord(IMAGE_MARKER_MISMATCH, f"{len(slots)} image slots for {len(texts)} texts")
        images = list(r["images"])
        if len(images) != sum(slots):
            raise BadRecord(IMAGE_MARKER_MISMATCH, f"{len(images)} images for {sum(slots)} image chunks")
        keep = len(texts) if sum(slots) <= self.max_images else int(np.flatnonzero(slots)[self.max_images])
        texts, slots = texts[:keep], slots[:keep]  # up to the (max_images + 1)-th image chunk
        images = images[: sum(slots)]
        ex = flamingo_interleaved(self.tok, texts, num_images=len(images), image_slots=slots)
        ex = fit_length(ex, self.max_len, self.over_length)
        ex["images"] = np.stack([clip_image(i, self.image_size, self.convert_image_modes) for i in images])
        return ex


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
def _corpus() -> list[str]:
    lines = ["Question: Short answer: Output:", " ".join(shapes.NUMBER_WORDS), " ".join(shapes.SHAPES),
             " ".join(shapes.COLOURS), "yes no small large big middle", "0 1 2 3 4 5 6 7 8 9"]
    for i in range(300):
        lines.append("Output:" + shapes.generate("captions", "train", i, seed=4242, image_size=8)["caption"])
        ex = shapes.generate("vqa", "train", i, seed=4242, image_size=8)
        lines.append(f"Question:{ex['question']} Short answer:{ex['multiple_choice_answer']}")
    rng = np.random.default_rng(4242)
    for _ in range(600):
        lines.append(" ".join(NAMES_SENTENCE.format(n) for n in shapes.made_up_names(rng, 3)))
    return lines


@functools.lru_cache(maxsize=4)
def _bpe_json(vocab_size: int) -> str:
    return train_byte_level_bpe(_corpus(), vocab_size, SPECIALS, isolate_punctuation=True)


def shapes_tokenizer(vocab_size: int = 768) -> HFJsonTokenizer:
    """Byte-level BPE trained in memory (deterministically) on the bundled data's text, with `<pad>`, `<s>`, `</s>`,
    `<image>`, `<|endofchunk|>`: any text encodes; shape / colour words are single tokens, made-up names a few."""
    from tokenizers import Tokenizer

    return HFJsonTokenizer(tokenizer_object=Tokenizer.from_str(_bpe_json(int(vocab_size))),
                           config={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})


def build_tokenizer(tok_config=None, workdir: str | None = None):
    """config.tokenizer {kind: 'shapes_bpe' (vocab_size) | 'dir' (path: an HF / SentencePiece checkpoint dir, to which
    `<image>`, `<|endofchunk|>` and a pad are added, OpenFlamingo style)}; a workdir's saved tokenizer.json wins
    (`common.tokenizers.build_tokenizer`: a resumed run keeps its vocabulary)."""
    return build_family_tokenizer(tok_config, workdir, shapes_tokenizer=shapes_tokenizer, default_vocab_size=768,
                                  family="flamingo")


def special_ids(tokenizer) -> dict[str, int]:
    ids = {"image": tokenizer.token_to_id(IMAGE_TOKEN), "eoc": tokenizer.token_to_id(END_OF_CHUNK_TOKEN),
           "pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    if ids["image"] is None or ids["eoc"] is None:
        raise ValueError("the tokenizer lacks <image> / <|endofchunk|>")
    return ids


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------
def flamingo_loss_mask(input_ids: np.ndarray, image_id: int, eoc_id: int, pad_id: int | None = None,
                       bos_id: int | None = None, interleaved: bool = True) -> np.ndarray:
    """[L] or [B, L] ids -> bool mask of the tokens that are targets (OpenFlamingo's labels != -100).

    Never targets: pad, bos, `<image>`. Interleaved (MMC4) documents also drop the tokens before the first `<image>`
    and every token after an `<|endofchunk|>` up to the next `<image>` (the `<|endofchunk|>` itself stays a target).
    """
    ids = np.asarray(input_ids)
    squeeze = ids.ndim == 1
    ids = np.atleast_2d(ids)
    mask = np.ones(ids.shape, bool)
    for special in (pad_id, bos_id, image_id):
        if special is not None:
            mask &= ids != special
    if interleaved:
        mask &= np.cumsum(ids == image_id, axis=1) > 0  # before the first <image>
        event = np.where(ids == image_id, 1, np.where(ids == eoc_id, 2, 0))
        pos = np.where(event > 0, np.arange(ids.shape[1])[None], -1)
        last = np.maximum.accumulate(pos, axis=1)  # latest <image> / <|endofchunk|> at or before each token
        prev = np.concatenate([np.full((ids.shape[0], 1), -1), last[:, :-1]], axis=1)  # ... strictly before
        prev_kind = np.where(prev >= 0, np.take_along_axis(event, np.maximum(prev, 0), axis=1), 0)
        mask &= prev_kind != 2
    return mask[0] if squeeze else mask


class LabelledTransform:
    """Wraps a token transform: its loss_mask AND `flamingo_loss_mask` of the resulting ids."""

    def __init__(self, inner, ids: dict, interleaved: bool):
        self.inner, self.ids, self.interleaved = inner, ids, interleaved

    def __call__(self, record: dict) -> dict:
        ex = self.inner(record)
        ex["loss_mask"] = ex["loss_mask"] & flamingo_loss_mask(ex["input_ids"], self.ids["image"], self.ids["eoc"],
                                                               self.ids["pad"], self.ids["bos"], self.interleaved)
        return ex


# ----------------------------------------------------------------------------------------------------------------
# 'names' episodes: made-up per-episode names for shapes, resolvable only in context
# ----------------------------------------------------------------------------------------------------------------
def names_episode(rng: np.random.Generator, num_pairs: int, num_names: int = 3, image_size: int = 64,
                  render: bool = True) -> dict:
    """A mapping of `num_names` shapes to made-up names and `num_pairs` single-shape images with their names.
    -> {shapes: [str], names: [str], mapping: {shape: name}, images: [uint8 [S, S, 3]] (when render)}."""
    shape_ids = rng.choice(len(shapes.SHAPES), size=num_names, replace=False)
    mapping = {shapes.SHAPES[int(s)]: n for s, n in zip(shape_ids, shapes.made_up_names(rng, num_names))}
    out_shapes, images = [], []
    for _ in range(num_pairs):
        s = shapes.SHAPES[int(shape_ids[int(rng.integers(num_names))])]
        o = shapes.Obj(s, list(shapes.COLOURS)[int(rng.integers(len(shapes.COLOURS)))],
                       shapes.SIZES[int(rng.integers(2))], int(rng.integers(3)), int(rng.integers(3)))
        out_shapes.append(s)
        if render:
            images.append(shapes.render([o], rng, image_size))
    return {"shapes": out_shapes, "names": [mapping[s] for s in out_shapes], "mapping": mapping, "images": images}


# Words that may stand for a names episode's keys in stage 0 instead of the shape words (`other_keys`).
KEY_WORDS = tuple(shapes.SHAPES) + tuple(shapes.COLOURS) + shapes.SIZES + shapes.ROWS + shapes.COLS + \
    shapes.NUMBER_WORDS[1:]


class TextSource:
    """Random-access source of text-only examples {text} generated from (seed, index)."""

    def __init__(self, kind: str, size: int = 100000, seed: int = 0, min_pairs: int = 2, max_pairs: int = 10,
                 min_names: int = 2, max_names: int = 3, other_keys: float = 0.0, caption_keys: bool = False):
        if kind not in ("names_text", "captions_text", "vqa_text"):
            raise ValueError(f"unknown text source {kind!r}")
        if not 1 <= min_names <= max_names <= len(shapes.SHAPES):
            raise ValueError(f"need 1 <= min_names <= max_names <= {len(shapes.SHAPES)}, got {min_names}, {max_names}")
        self.kind, self.size, self.seed, self.min_pairs, self.max_pairs = kind, size, seed, min_pairs, max_pairs
        self.min_names, self.max_names, self.other_keys = min_names, max_names, other_keys
        self.caption_keys = caption_keys

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, 7, int(index)])
        if self.kind == "names_text":
            ep = names_episode(rng, int(rng.integers(self.min_pairs, self.max_pairs + 1)),
                               int(rng.integers(self.min_names, self.max_names + 1)), render=False)
            keys = {s: s for s in ep["mapping"]}
            if rng.random() < self.other_keys:  # another word than the shape's stands for each key
                words = rng.choice(len(KEY_WORDS), size=len(keys), replace=False)
                keys = {s: KEY_WORDS[int(w)] for s, w in zip(keys, words)}
            # Token for token the layout of a Flamingo names document (`<image>This is a dax.<|endofchunk|>` per pair,
            # each piece tokenized on its own) with the shape word (the key) standing where <image> will stand.
            segments = []
            for shape, name in zip(ep["shapes"], ep["names"]):
                segments += [(keys[shape], True), (NAMES_SENTENCE.format(name), True), (END_OF_CHUNK_TOKEN, True)]
            return {"text": "".join(text for text, _ in segments), "segments": segments}
        objs = shapes.random_scene(rng)
        scene = shapes.caption(objs)
        if self.kind == "captions_text":
            if not self.caption_keys:
                return {"text": scene}
            # The caption's first word that the image alone determines stands where <image> will stand, as the
            # shape word does in names_text: the LM learns to copy from that position into the caption.
            key = objs[0].shape if len(objs) == 1 else shapes.NUMBER_WORDS[len(objs)]
            return {"text": key + scene, "segments": [(key, True), (scene, True)]}
        q, a, _, _ = shapes.vqa_question(objs, rng)
        return {"text": f"{scene} Question:{q} Short answer:{a}"}


class NamesDocumentSource:
    """Random-access source of Flamingo 'names' documents {images, texts} (`names_episode` rendered): the image-text
    counterpart of TextSource('names_text') with the same episode sizes."""

    def __init__(self, size: int = 100000, seed: int = 0, min_pairs: int = 3, max_pairs: int = 10, min_names: int = 2,
                 max_names: int = 6, image_size: int = 64, text_keys: float = 0.0):
        if not 1 <= min_names <= max_names <= len(shapes.SHAPES):
            raise ValueError(f"need 1 <= min_names <= max_names <= {len(shapes.SHAPES)}, got {min_names}, {max_names}")
        if not 1 <= min_pairs <= max_pairs:
            raise ValueError(f"need 1 <= min_pairs <= max_pairs, got {min_pairs}, {max_pairs}")
        if not 0.0 <= text_keys < 1.0:
            raise ValueError(f"text_keys is the share of pairs keyed by their shape word, in [0, 1); got {text_keys}")
        self.size, self.seed, self.image_size, self.text_keys = size, seed, image_size, text_keys
        self.min_pairs, self.max_pairs, self.min_names, self.max_names = min_pairs, max_pairs, min_names, max_names

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, 11, int(index)])
        ep = names_episode(rng, int(rng.integers(self.min_pairs, self.max_pairs + 1)),
                           int(rng.integers(self.min_names, self.max_names + 1)), self.image_size)
        texts = [NAMES_SENTENCE.format(n) for n in ep["names"]]
        if not self.text_keys:
            return {"index": index, "task": "names", "images": ep["images"], "texts": texts,
                    "mapping": json.dumps(ep["mapping"], sort_keys=True)}
        # Some pairs name their key with the shape word instead of an image (stage 0's layout, "circle|This is a
        # dax."); the last pair always shows its image.
        slots = [bool(x) for x in rng.random(len(texts)) >= self.text_keys]
        slots[-1] = True
        return {"index": index, "task": "names", "image_slots": slots,
                "images": [img for img, has in zip(ep["images"], slots) if has],
                "texts": [t if has else (s, t) for t, s, has in zip(texts, ep["shapes"], slots)],
                "mapping": json.dumps(ep["mapping"], sort_keys=True)}


class TextTransform:
    """{text} (every token a target) or {segments: [(text, is_target)]} (each piece tokenized on its own) -> bos +
    tokens + eos."""

    def __init__(self, tokenizer, max_len: int):
        self.tok, self.max_len = tokenizer, max_len

    def __call__(self, r: dict) -> dict:
        segments = r.get("segments") or [(r["text"], True)]
        ex = tokenize_segments(self.tok, segments, add_bos=self.tok.bos_id is not None, add_eos=True)
        return fit_length(ex, self.max_len, "truncate")


def make_source(spec: dict, split: str = "train"):
    """A dataset spec -> random-access source of records."""
    source = spec["source"]
    size = spec.get("size")
    seed = int(spec.get("seed", 0)) + (0 if split == "train" else 1000)  # names / text sources: a split = its seeds
    if source in ("shapes_captions", "shapes_interleaved"):
        kind = source.split("_", 1)[1]
        return shapes.ShapesSource(kind, split, size, int(spec.get("seed", 0)), int(spec.get("raw_image_size", 64)),
                                   spec.get("max_objects"))
    if source == "names_documents":
        return NamesDocumentSource(int(size or 100000), seed, int(spec.get("min_pairs", 3)),
                                   int(spec.get("max_pairs", 10)), int(spec.get("min_names", 2)),
                                   int(spec.get("max_names", 6)), int(spec.get("raw_image_size", 64)),
                                   float(spec.get("text_keys", 0.0)))
    if source in ("names_text", "captions_text", "vqa_text"):
        return TextSource(source, int(size or 100000), seed, int(spec.get("min_pairs", 2)),
                          int(spec.get("max_pairs", 10)), int(spec.get("min_names", 2)), int(spec.get("max_names", 3)),
                          float(spec.get("other_keys", 0.0)), bool(spec.get("caption_keys", False)))
    if source == "coco_captions":
        return formats.coco_captions(spec["annotations"], spec["image_dir"])
    if source == "tfds_coco_captions":
        return formats.tfds_coco_captions(spec["data_dir"], split if split != "train" else spec.get("split", "train"),
                                          spec.get("config", "2014"), int(spec.get("captions_per_image", 1)))
    if source == "interleaved_jsonl":
        return formats.interleaved_jsonl(spec["jsonl"], spec["image_dir"], spec.get("max_images"))
    raise ValueError(f"unknown data source {source!r}")


def make_transform(spec: dict, tokenizer, image_size: int):
    """A dataset spec -> transform producing input_ids / loss_mask (Flamingo labels) [/ images].

    spec['convert_image_modes'] (default False): convert greyscale / RGBA / CMYK / 16-bit / palette images to RGB
    instead of skipping them (the task fills it in from config.data.convert_image_modes)."""
    ids = special_ids(tokenizer)
    source = spec["source"]
    max_len = int(spec["max_len"])
    if source in ("names_text", "captions_text", "vqa_text"):
        return TextTransform(tokenizer, max_len)
    convert = bool(spec.get("convert_image_modes", False))
    if source in CAPTION_SOURCES:
        inner = FlamingoCaptionTransform(tokenizer, max_len, image_size, spec.get("over_length", "truncate"),
                                         convert_image_modes=convert)
        return LabelledTransform(inner, ids, interleaved=False)
    inner = FlamingoInterleavedTransform(tokenizer, max_len, image_size, int(spec.get("max_images", 6)),
                                         spec.get("over_length", "truncate"), convert_image_modes=convert)
    return LabelledTransform(inner, ids, interleaved=True)


def make_pair_transform(spec: dict, tokenizer, image_size: int):
    """An image-caption dataset spec -> {images [1, S, S, 3], `{bos}{caption}{eos}` tokens}: the contrastive
    pretraining of the vision encoder (stage 'contrastive')."""
    if spec["source"] not in CAPTION_SOURCES:
        raise ValueError(f"stage 'contrastive' needs image-caption pairs, not source {spec['source']!r}")
    return ImageTextPairTransform(tokenizer, int(spec["max_len"]), image_size, spec.get("over_length", "truncate"),
                                  convert_image_modes=bool(spec.get("convert_image_modes", False)))

