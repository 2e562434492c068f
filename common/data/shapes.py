"""The embedded default dataset: coloured shapes generated deterministically from a seed, no download.

Every example is a pure function of (seed, kind, split, index), so a split is a random-access source of any size
(`ShapesSource`) that grain can shuffle and shard without preparing anything; `common.data.tfds_shapes` also writes
it once to array_record through tensorflow-datasets. Kinds:
  captions       image [S, S, 3] uint8 + caption                                   (LAION / COCO-like)
  vqa            image + question + 10 answers, VQAv2 annotation fields              (VQAv2-like)
  interleaved    2-6 (image, text) pairs; task 'names' uses per-document made-up     (MMC4 / few-shot)
                 names for shapes, so the label mapping exists only in the document
  conversations  LLaVA-style multi-turn: description, questions, reasoning           (llava_instruct)
  spoken_qa      image + spoken question (16 kHz float32) + answer text and speech,   (VITA audio QA)
                 or babble not addressed to the assistant (kind 'noise', no answer)
  videos         T frames [T, S, S, 3] of shapes moving in a straight line + caption  (video captioning)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from common.data.speech import load_word_bank

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = {
    "red": (215, 38, 38),
    "green": (46, 160, 67),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 30),
    "purple": (135, 60, 185),
    "orange": (245, 130, 30),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KINDS = ("captions", "vqa", "interleaved", "conversations", "spoken_qa", "videos")
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_SIZES = {"train": 20000, "validation": 1000, "test": 1000}
_SYLLABLES = ("da", "ke", "lo", "mi", "nu", "po", "ra", "si", "tu", "ve", "wo", "zi", "fa", "gu", "bli", "dax", "wug",
              "tor")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int  # 0..2, grid cell
    col: int  # 0..2

    @property
    def position(self) -> str:
        if (self.row, self.col) == (1, 1):
            return "center"
        if self.row == 1:
            return COLS[self.col]
        if self.col == 1:
            return ROWS[self.row]
        return f"{ROWS[self.row]} {COLS[self.col]}"

    def phrase(self, article: str = "a") -> str:
        return f"{article} {self.size} {self.colour} {self.shape}"


def _rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind) if kind in KINDS else 99, SPLITS.index(split), index])


# ----------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# ----------------------------------------------------------------------------------------------------------------
def random_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 4,
                 unique_shapes: bool = False) -> list[Obj]:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    shapes = rng.choice(len(SHAPES), size=n, replace=not unique_shapes)
    objs = []
    for c, s in zip(cells, shapes):
        objs.append(Obj(SHAPES[int(s)], list(COLOURS)[int(rng.integers(len(COLOURS)))], SIZES[int(rng.integers(2))],
                        int(c) // 3, int(c) % 3))
    return objs


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    base = int(rng.integers(110, 180))
    return tuple(int(np.clip(base + rng.integers(-12, 13), 0, 255)) for _ in range(3))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    if shape == "cross":
        t = r * 0.35
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(shape)


def draw_objects(draw: ImageDraw.ImageDraw, objs, size: int, centres=None, jitter=None) -> None:
    cell = size / 3.0
    for k, o in enumerate(objs):
        if centres is not None:
            cx, cy = centres[k]
        else:
            jx, jy = jitter[k] if jitter is not None else (0.0, 0.0)
            cx, cy = (o.col + 0.5 + jx) * cell, (o.row + 0.5 + jy) * cell
        r = cell * (0.42 if o.size == "large" else 0.24)
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif o.shape == "square":
            q = r * 0.85
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=colour)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=colour)


def render(objs, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Scene -> uint8 [size, size, 3]: a plain background with each object inside its 3x3 grid cell (jittered)."""
    img = Image.new("RGB", (size, size), _background(rng))
    jitter = rng.uniform(-0.08, 0.08, size=(len(objs), 2))
    draw_objects(ImageDraw.Draw(img), objs, size, jitter=jitter)
    arr = np.asarray(img).astype(np.int16)
    arr = arr + rng.integers(-6, 7, size=arr.shape)  # mild sensor noise, so images are not trivially compressible
    return np.clip(arr, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------
def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(objs, rng: np.random.Generator | None = None) -> str:
    parts = [f"{o.phrase()} at the {o.position}" for o in objs]
    if len(objs) == 1:
        return f"{parts[0]}."
    return f"{NUMBER_WORDS[len(objs)]} shapes: {_join(parts)}."


def describe(objs) -> str:
    """A longer description (the LLaVA 'detailed description' answer)."""
    n = len(objs)
    head = "The image shows one shape" if n == 1 else f"The image shows {NUMBER_WORDS[n]} shapes"
    body = ". ".join(f"{o.phrase().capitalize()} is at the {o.position}" for o in objs)
    return f"{head} on a grey background. {body}."


def _unique(objs, attr: str):
    vals = [getattr(o, attr) for o in objs]
    return [o for o in objs if vals.count(getattr(o, attr)) == 1]


def vqa_question(objs, rng: np.random.Generator) -> tuple[str, str, str, str]:
    """(question, answer, question_type, answer_type) with an unambiguous answer for this scene."""
    kinds = ["count", "exists"]
    if _unique(objs, "shape"):
        kinds += ["colour", "position", "size"]
    if _unique(objs, "colour"):
        kinds.append("shape")
    q = kinds[int(rng.integers(len(kinds)))]
    if q == "count":
        return "how many shapes are there?", str(len(objs)), "how many", "number"
    if q == "exists":
        if rng.random() < 0.5:
            o = objs[int(rng.integers(len(objs)))]
            shape, colour, ans = o.shape, o.colour, "yes"
        else:
            present = {(o.shape, o.colour) for o in objs}
            while True:
                shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
                if (shape, colour) not in present:
                    break
            ans = "no"
        return f"is there a {colour} {shape}?", ans, "is there a", "yes/no"
    if q == "shape":
        o = _unique(objs, "colour")[int(rng.integers(len(_unique(objs, "colour"))))]
        return f"what shape is the {o.colour} object?", o.shape, "what shape is the", "other"
    o = _unique(objs, "shape")[int(rng.integers(len(_unique(objs, "shape"))))]
    if q == "colour":
        return f"what color is the {o.shape}?", o.colour, "what color is the", "other"
    if q == "position":
        return f"where is the {o.shape}?", o.position, "where is the", "other"
    return f"is the {o.shape} small or large?", o.size, "is the", "other"


_SYNONYMS = {"2": "two", "3": "three", "1": "one", "4": "four", "center": "middle", "large": "big", "yes": "yes",
             "no": "no"}


def ten_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """Ten annotator answers: mostly the truth, sometimes a synonym, rarely a wrong-but-plausible answer."""
    out = []
    for _ in range(10):
        u = rng.random()
        if u < 0.12 and answer in _SYNONYMS:
            out.append(_SYNONYMS[answer])
        elif u < 0.16:
            pool = {"yes": ["no"], "no": ["yes"]}.get(answer) or (list(COLOURS) if answer in COLOURS
                                                                  else list(SHAPES) if answer in SHAPES else [answer])
            out.append(pool[int(rng.integers(len(pool)))])
        else:
            out.append(answer)
    return out


def made_up_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        w = "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=int(rng.integers(2, 4))))
        if w not in names and w not in SHAPES:
            names.append(w)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Example generators: each returns a plain dict (numpy arrays, str, lists)
# ----------------------------------------------------------------------------------------------------------------
def gen_caption(rng, size: int, index: int, max_objects: int = 4) -> dict:
    objs = random_scene(rng, 1, max_objects)
    return {"index": index, "image": render(objs, rng, size), "caption": caption(objs), "objects": _objs_json(objs)}


def gen_vqa(rng, size: int, index: int, seed: int = 0, split: str = "train") -> dict:
    objs = random_scene(rng)
    q, a, qt, at = vqa_question(objs, rng)
    image_id = index + 1
    return {
        "index": index,
        "image": render(objs, rng, size),
        "image_id": image_id,
        "question_id": image_id * 10,
        "question": q,
        "answers": ten_answers(a, rng),
        "multiple_choice_answer": a,
        "question_type": qt,
        "answer_type": at,
    }


def gen_interleaved(rng, size: int, index: int) -> dict:
    """task 'names': made-up per-document names for single shapes ('This is a dax.'); the last pair's shape always
    appeared earlier in the document, so the answer can only come from in-context learning. task 'captions':
    plain image-caption pairs."""
    n = int(rng.integers(2, 7))
    if rng.random() < 0.5:
        k = int(rng.integers(2, 4))
        shape_ids = rng.choice(len(SHAPES), size=k, replace=False)
        names = made_up_names(rng, k)
        mapping = {SHAPES[int(s)]: nm for s, nm in zip(shape_ids, names)}
        images, texts, seen = [], [], []
        for i in range(n):
            if i == n - 1 and seen:
                s = seen[int(rng.integers(len(seen)))]
            else:
                s = int(shape_ids[int(rng.integers(k))])
            seen.append(s)
            o = Obj(SHAPES[s], list(COLOURS)[int(rng.integers(len(COLOURS)))], SIZES[int(rng.integers(2))],
                    int(rng.integers(3)), int(rng.integers(3)))
            images.append(render([o], rng, size))
            texts.append(f"This is a {mapping[o.shape]}.")
        return {"index": index, "task": "names", "images": images, "texts": texts,
                "mapping": json.dumps(mapping, sort_keys=True)}
    images, texts = [], []
    for _ in range(n):
        objs = random_scene(rng, 1, 3)
        images.append(render(objs, rng, size))
        texts.append(caption(objs))
    return {"index": index, "task": "captions", "images": images, "texts": texts, "mapping": "{}"}


def gen_conversation(rng, size: int, index: int) -> dict:
    objs = random_scene(rng, 1, 4)
    turns = [("<image>\nDescribe the image in detail.", describe(objs))]
    q, a, _, _ = vqa_question(objs, rng)
    turns.append((q[0].upper() + q[1:], a.capitalize() + "."))
    turns.append(("How many shapes are in the image?",
                  f"There {'is one shape' if len(objs) == 1 else f'are {NUMBER_WORDS[len(objs)]} shapes'}."))
    if len(objs) >= 2:  # reasoning about relative position
        a_, b_ = objs[0], objs[1]
        rel = ("left of" if a_.col < b_.col else "right of" if a_.col > b_.col
               else "above" if a_.row < b_.row else "below")
        turns.append(
            (f"Where is the {a_.colour} {a_.shape} relative to the {b_.colour} {b_.shape}?",
             f"The {a_.colour} {a_.shape} is at the {a_.position} and the {b_.colour} {b_.shape} is at the "
             f"{b_.position}, so the {a_.colour} {a_.shape} is {rel} the {b_.colour} {b_.shape}.")
        )
    conv = []
    for h, g in turns:
        conv += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
    return {"index": index, "id": f"shapes-{index:08d}", "image": render(objs, rng, size),
            "conversations": json.dumps(conv)}


def gen_spoken_qa(rng, size: int, index: int, words=None) -> dict:
    """A spoken question about the image (state 'audio query') with its answer as text and as speech, or, one time
    in five, babble not addressed to the assistant (state 'noise', empty answer). Audio is float32 [N] at 16 kHz
    assembled from the word bank."""
    words = words or load_word_bank()
    objs = random_scene(rng)
    image = render(objs, rng, size)
    if rng.random() < 0.2:
        vocab = sorted(words.words)
        text = " ".join(vocab[int(i)] for i in rng.integers(len(vocab), size=int(rng.integers(3, 7))))
        kind, answer = "noise", ""
    else:
        q, answer, _, _ = vqa_question(objs, rng)
        text, kind = q, "query"
    audio = words.say(text, rng)
    spoken = " ".join(NUMBER_WORDS[int(w)] if w.isdigit() else w for w in answer.split())
    answer_audio = words.say(spoken, rng) if answer else np.zeros(0, np.float32)
    return {"index": index, "image": image, "audio": audio, "question": text, "answer": answer, "kind": kind,
            "answer_audio": answer_audio}


def gen_video(rng, size: int, index: int, num_frames: int = 8) -> dict:
    n = int(rng.integers(1, 3))
    objs = random_scene(rng, n, n, unique_shapes=True)
    cell = size / 3.0
    dirs = ("left to right", "right to left", "top to bottom", "bottom to top")
    moves = []
    for o in objs:
        d = dirs[int(rng.integers(4))]
        a, b = 0.5 * cell, size - 0.5 * cell
        fixed = (o.row + 0.5) * cell if d in dirs[:2] else (o.col + 0.5) * cell
        start, end = (a, b) if d in (dirs[0], dirs[2]) else (b, a)
        moves.append((d, fixed, start, end))
    bg = _background(rng)
    frames = []
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1)
        centres = []
        for d, fixed, s, e in moves:
            p = s + (e - s) * f
            centres.append((p, fixed) if d in dirs[:2] else (fixed, p))
        img = Image.new("RGB", (size, size), bg)
        draw_objects(ImageDraw.Draw(img), objs, size, centres=centres)
        frames.append(np.asarray(img))
    cap = _join([f"{o.phrase()} moves from {m[0]}" for o, m in zip(objs, moves)]) + "."
    return {"index": index, "frames": np.stack(frames), "caption": cap}


def _objs_json(objs) -> str:
    return json.dumps([{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position} for o in objs])


_GEN = {"captions": gen_caption, "vqa": gen_vqa, "interleaved": gen_interleaved, "conversations": gen_conversation,
        "spoken_qa": gen_spoken_qa, "videos": gen_video}


def generate(kind: str, split: str, index: int, seed: int = 0, image_size: int = 64,
             max_objects: int | None = None) -> dict:
    """One example of `kind` in `split`: a pure function of its arguments. max_objects (captions only, 1..4): fewer
    objects per scene, e.g. 1 for single-object captions whose in-batch negatives often differ in shape alone."""
    if kind not in _GEN:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if max_objects is None:
        return _GEN[kind](_rng(seed, kind, split, index), image_size, index)
    if kind != "captions" or not 1 <= int(max_objects) <= 4:
        raise ValueError(f"max_objects applies to kind 'captions' only, 1..4; got kind {kind!r}, {max_objects!r}")
    return gen_caption(_rng(seed, kind, split, index), image_size, index, int(max_objects))


class ShapesSource:
    """Random-access source (grain's RandomAccessDataSource protocol: __len__, __getitem__) of generated examples."""

    def __init__(self, kind: str, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 64,
                 max_objects: int | None = None):
        generate(kind, split, 0, seed, 8, max_objects) if kind != "spoken_qa" else None  # validate arguments early
        self.kind, self.split, self.seed, self.image_size, self.max_objects = kind, split, seed, image_size, max_objects
        self.size = DEFAULT_SPLIT_SIZES[split] if size is None else int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return generate(self.kind, self.split, int(index), self.seed, self.image_size, self.max_objects)

    def __repr__(self) -> str:
        return f"ShapesSource(kind={self.kind!r}, split={self.split!r}, size={self.size}, seed={self.seed})"


def vqav2_json(items: list[dict]) -> tuple[dict, dict]:
    """VQA examples -> (questions JSON, annotations JSON) in the official VQAv2 layout."""
    qs = [{"image_id": it["image_id"], "question": it["question"], "question_id": it["question_id"]} for it in items]
    anns = [
        {
            "image_id": it["image_id"],
            "question_id": it["question_id"],
            "question_type": it["question_type"],
            "answer_type": it["answer_type"],
            "multiple_choice_answer": it["multiple_choice_answer"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(it["answers"])],
        }
        for it in items
    ]
    return ({"questions": qs, "task_type": "Open-Ended", "data_type": "shapes"},
            {"annotations": anns, "data_type": "shapes"})
