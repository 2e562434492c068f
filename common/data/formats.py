"""Loaders for the formats users bring. Each returns a list of plain records (a random-access source for grain);
images / audio stay paths, decoded later in the transform so a bad file is skipped and counted, not fatal.

  coco_captions(annotations_json, image_dir)     {image, caption, image_id}             one record per caption
  tfds_coco_captions(data_dir, split)            same, from a prepared tfds `coco_captions` (no TensorFlow)
  llava_json(json_path, image_dir)               {id, image, conversations}             llava_instruct_150k / mix665k
  interleaved_jsonl(jsonl_path, image_dir)       {images, texts}                        MMC4 or OBELICS layout
  vqav2(questions_json, annotations_json, image_dir)  {question_id, image_id, image, question, answers, ...}
  librispeech(root)                              {id, audio, text}                      flac + *.trans.txt

A missing path is a DataPathError at once. A record that cannot be read (e.g. a non-UTF-8 line) is kept with a
`_bad` = (reason, detail) field, which the pipeline's SafeTransform turns into a counted skip.
"""
from __future__ import annotations

import glob
import json
import os

from common.data.records import BAD_TEXT_ENCODING, MALFORMED, DataPathError, require_path


def _bad(reason: str, detail: str, **fields) -> dict:
    return {"_bad": (reason, detail), **fields}


def _load_json(path: str):
    require_path(path, "annotation file", "file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataPathError(f"{path} is not UTF-8 JSON: {e}") from None


# ---- COCO captions -------------------------------------------------------------------------------------------
def coco_captions(annotations_json: str, image_dir: str, one_per_image: bool = False) -> list[dict]:
    """COCO `captions_*.json` ({images: [{id, file_name}], annotations: [{image_id, caption}]}) + image folder."""
    require_path(image_dir, "COCO image folder", "dir")
    data = _load_json(annotations_json)
    files = {im["id"]: im["file_name"] for im in data.get("images", [])}
    out, seen = [], set()
    for a in data.get("annotations", []):
        iid = a.get("image_id")
        if one_per_image and iid in seen:
            continue
        seen.add(iid)
        if iid not in files or "caption" not in a:
            out.append(_bad(MALFORMED, f"caption annotation {a.get('id')} without image", image_id=iid))
            continue
        out.append({"image": os.path.join(image_dir, files[iid]), "caption": a["caption"].strip(), "image_id": iid})
    return out


class tfds_coco_captions:  # noqa: N801  (reads like the function-style loaders above)
    """A prepared tfds `coco_captions` (…/coco_captions/2014/<version>) as {image, caption, image_id} records."""

    def __init__(self, data_dir: str, split: str = "train", config: str = "2014"):
        import tensorflow_datasets as tfds

        root = os.path.join(data_dir, "coco_captions", config)
        versions = sorted(glob.glob(os.path.join(root, "*", "dataset_info.json")))
        if not versions:
            raise DataPathError(f"no prepared tfds coco_captions under {root!r}")
        self._src = tfds.builder_from_directory(os.path.dirname(versions[-1])).as_data_source(split=split)

    def __len__(self):
        return len(self._src)

    def __getitem__(self, i):
        r = self._src[i]
        caps = r["captions"]["text"] if isinstance(r["captions"], dict) else [c["text"] for c in r["captions"]]
        cap = caps[0].decode("utf-8", "replace") if isinstance(caps[0], bytes) else caps[0]
        return {"image": r["image"], "caption": cap, "image_id": int(r["image/id"])}


# ---- LLaVA JSON ----------------------------------------------------------------------------------------------
def llava_json(json_path: str, image_dir: str) -> list[dict]:
    """llava_instruct_150k / llava_v1_5_mix665k: [{id, image (relative path, optional), conversations}]."""
    require_path(image_dir, "LLaVA image folder", "dir")
    data = _load_json(json_path)
    if not isinstance(data, list):
        raise DataPathError(f"{json_path}: expected a JSON list of conversations")
    out = []
    for r in data:
        if not isinstance(r, dict) or "conversations" not in r:
            out.append(_bad(MALFORMED, f"record without conversations: {str(r)[:80]}"))
            continue
        rec = {"id": str(r.get("id", "")), "conversations": r["conversations"]}
        rec["image"] = os.path.join(image_dir, r["image"]) if r.get("image") else None
        out.append(rec)
    return out


# ---- MMC4 / OBELICS ------------------------------------------------------------------------------------------
def _image_path(image_dir: str, name: str) -> str:
    p = os.path.join(image_dir, name)
    return p if os.path.exists(p) else os.path.join(image_dir, os.path.basename(name.split("?")[0]))


def interleaved_jsonl(jsonl_path: str, image_dir: str, max_images: int | None = None) -> list[dict]:
    """One document per line, either layout, -> {images: [path], texts: [text paired with each image]}.

    MMC4: {"text_list": [...], "image_info": [{"image_name", "matched_text_index", ...}]}: each image is paired
      with its matched sentence (images in sentence order).
    OBELICS: {"texts": [str|null], "images": [name|null]} aligned position lists: each image is paired with the
      text that follows it (up to the next image).
    """
    require_path(jsonl_path, "interleaved JSONL", "file")
    require_path(image_dir, "interleaved image folder", "dir")
    out = []
    with open(jsonl_path, "rb") as f:
        for ln, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                out.append(_bad(BAD_TEXT_ENCODING, f"line {ln}: {e}"))
                continue
            except json.JSONDecodeError as e:
                out.append(_bad(MALFORMED, f"line {ln}: {e}"))
                continue
            if "text_list" in doc:
                info = sorted(doc.get("image_info", []), key=lambda x: x.get("matched_text_index", 0))
                texts = doc["text_list"]
                pairs = [(_image_path(image_dir, i["image_name"]), texts[i["matched_text_index"]]) for i in info if 0 <= i.get("matched_text_index", -1) < len(texts)]
            elif "texts" in doc and "images" in doc:
                pairs = []
                for k, img in enumerate(doc["images"]):
                    if img is None:
                        continue
                    following = []
                    for t, im2 in zip(doc["texts"][k + 1 :], doc["images"][k + 1 :]):
                        if im2 is not None:
                            break
                        if t:
                            following.append(t)
                    pairs.append((_image_path(image_dir, img), " ".join(following)))
            else:
                out.append(_bad(MALFORMED, f"line {ln}: neither MMC4 nor OBELICS fields"))
                continue
            if max_images:
                pairs = pairs[:max_images]
            if not pairs:
                out.append(_bad(MALFORMED, f"line {ln}: document without images"))
                continue
            out.append({"images": [p for p, _ in pairs], "texts": [t for _, t in pairs], "line": ln})
    return out


# ---- VQAv2 / OK-VQA ------------------------------------------------------------------------------------------
def vqav2(questions_json: str, annotations_json: str | None, image_dir: str, image_name: str = "COCO_{subtype}_{image_id:012d}.jpg") -> list[dict]:
    """VQAv2 / OK-VQA question (+ annotation) JSON -> records with 10 answers (empty without annotations: test).

    `image_name` formats the file name from image_id and the questions file's `data_subtype` (e.g. 'val2014').
    """
    require_path(image_dir, "VQA image folder", "dir")
    q = _load_json(questions_json)
    subtype = q.get("data_subtype", "")
    anns = {}
    if annotations_json is not None:
        anns = {a["question_id"]: a for a in _load_json(annotations_json)["annotations"]}
    out = []
    for item in q["questions"]:
        a = anns.get(item["question_id"], {})
        out.append(
            {
                "question_id": item["question_id"],
                "image_id": item["image_id"],
                "image": os.path.join(image_dir, image_name.format(subtype=subtype, image_id=item["image_id"])),
                "question": item["question"],
                "answers": [x["answer"] for x in a.get("answers", [])],
                "multiple_choice_answer": a.get("multiple_choice_answer", ""),
                "answer_type": a.get("answer_type", ""),
                "question_type": a.get("question_type", ""),
            }
        )
    return out


# ---- LibriSpeech ---------------------------------------------------------------------------------------------
def librispeech(root: str) -> list[dict]:
    """LibriSpeech layout root/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt."""
    require_path(root, "LibriSpeech folder", "dir")
    out = []
    for trans in sorted(glob.glob(os.path.join(root, "**", "*.trans.txt"), recursive=True)):
        d = os.path.dirname(trans)
        with open(trans, "rb") as f:
            for ln, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    out.append(_bad(BAD_TEXT_ENCODING, f"{trans}:{ln}: {e}"))
                    continue
                uid, _, text = line.partition(" ")
                out.append({"id": uid, "audio": os.path.join(d, uid + ".flac"), "text": text})
    if not out:
        raise DataPathError(f"no LibriSpeech transcripts (*.trans.txt) under {root!r}")
    return out
