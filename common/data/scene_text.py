"""Scenes of the bundled shapes data written as text, for a tiny LM's own text pretraining ("stage 0"): what a real
LLM (Vicuna for LLaVA, Qwen2 for VITA-1.5) brings before any multimodal stage, the skill of reading what stands in its
context and answering from it. The LM never sees an image here: a scene is written where the image would be.

Kinds: 'captions' (scene -> its caption), 'vqa' (scene + question -> short answer), and 'repeat' (an utterance of the
ASR data written out -> the same words: the copying skill a real LLM has and stage 2.1's frozen LM relies on).
"""
from __future__ import annotations

import json
import re

import numpy as np

from common.data import shapes
from common.data.shapes import ShapesSource

VQA_SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
REPEAT_PROMPT = "Repeat after me."
KINDS = ("captions", "vqa", "repeat")


def utterance(rng: np.random.Generator) -> str:
    """What the ASR data says, as lower-case words: a question about a random scene (40%), a one-object caption
    (40%) or the answer to a question as it is said ('2' -> 'two'; 20%), so that the ASR knows the words the
    assistant answers with (yes, no, numbers) as well as those it is asked with."""
    objs = shapes.random_scene(rng)
    one = shapes.random_scene(rng, 1, 1)
    question, answer = shapes.vqa_question(objs, rng)[:2]
    draw = rng.random()
    if draw < 0.4:
        text = question
    elif draw < 0.8:
        text = shapes.caption(one, rng)
    else:
        text = " ".join(shapes.NUMBER_WORDS[int(w)] if w.isdigit() else w for w in answer.split())
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def _objects(objects_json) -> list:
    """A captions record's objects JSON -> shapes.Obj list (grid cell recovered from the position name)."""
    Obj = shapes.Obj
    cells = {Obj("circle", "red", "small", r, c).position: (r, c) for r in range(3) for c in range(3)}
    return [Obj(o["shape"], o["colour"], o["size"], *cells[o["position"]]) for o in json.loads(objects_json)]


EMPTY_CELL = "<empty>"
# One "word" per grid cell and content ("<large-red-circle>"): added tokens of the tiny tokenizer, so that a scene in
# text is 9 tokens in raster order, one per 16 px cell, exactly where the 9 image tokens of the tiny tower will stand.
CELL_WORDS = (EMPTY_CELL,) + tuple(f"<{z}-{c}-{s}>" for z in shapes.SIZES for c in shapes.COLOURS
                                   for s in shapes.SHAPES)
SCENE_FORMATS = ("cells", "words")


def scene_text(objs, scene_format: str = "cells") -> str:
    """The textual stand-in of an image for the LM's text pretraining. 'cells': the 3x3 grid in raster order, one
    cell word per cell ("<empty><large-red-circle>..."), the stand-in for the words a real LM knows for what CLIP
    sees, one per image token; 'words': a description ("Scene: large red circle top left; ...")."""
    if scene_format == "words":
        return "Scene: " + "; ".join(f"{o.size} {o.colour} {o.shape} {o.position}" for o in objs) + "."
    if scene_format != "cells":
        raise ValueError(f"scene_format must be one of {SCENE_FORMATS}, got {scene_format!r}")
    grid = [EMPTY_CELL] * 9
    for o in objs:
        grid[3 * o.row + o.col] = f"<{o.size}-{o.colour}-{o.shape}>"
    return "".join(grid)


class ShapesSceneTextSource:
    """Text-only records for the tiny LM's own pretraining: the scene of a bundled captions example written as text
    (`scene_text`) where the image would be, followed by its caption (kind 'captions', plain template) or by a
    short-answer question about it (kind 'vqa'), or an utterance of the ASR data on the line after `repeat_prompt`,
    to repeat word for word (kind 'repeat'; VITA passes its ASR prompt, so that the frozen LM of its stage 2.1 knows
    the task). The LM learns to caption / answer / copy from what stands in its context, the reading skill a real
    LLM brings to LLaVA and VITA; it never sees an image."""

    def __init__(self, kind: str, split: str = "train", size: int | None = None, seed: int = 0,
                 vqa_prompt: str = VQA_SHORT_ANSWER_PROMPT, scene_format: str = "cells",
                 repeat_prompt: str = REPEAT_PROMPT):
        if kind not in KINDS:
            raise ValueError(f"scene-text kind {kind!r}: use one of {KINDS}")
        if scene_format not in SCENE_FORMATS:
            raise ValueError(f"scene_format must be one of {SCENE_FORMATS}, got {scene_format!r}")
        self.kind, self.seed, self.vqa_prompt, self.scene_format = kind, seed, vqa_prompt, scene_format
        self.repeat_prompt = repeat_prompt
        self.source = ShapesSource("captions", split, size, seed + 1000, 8)  # a different scene stream

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if self.kind == "repeat":
            text = utterance(np.random.default_rng([self.seed, 78, int(index)]))
            return {"image": None, "conversations": [{"from": "human", "value": f"{self.repeat_prompt}\n{text}"},
                                                     {"from": "gpt", "value": text}]}
        ex = self.source[index]
        objs = _objects(ex["objects"])
        scene = scene_text(objs, self.scene_format)
        if self.kind == "captions":
            conv = [{"from": "human", "value": scene}, {"from": "gpt", "value": ex["caption"]}]
        else:
            q, a, _, _ = shapes.vqa_question(objs, np.random.default_rng([self.seed, 77, int(index)]))
            conv = [{"from": "human", "value": f"{scene}\n{q[0].upper() + q[1:]}\n{self.vqa_prompt}"},
                    {"from": "gpt", "value": a}]
        return {"image": None, "conversations": conv}


