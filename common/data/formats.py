"""Loaders for the formats users bring. Each returns a list of plain records (a random-access source for grain);
images / audio stay paths, decoded later in the transform so a bad file is skipped and counted, not fatal.

  coco_captions(annotations_json, image_dir)     {image, caption, image_id}             one record per caption
  tfds_coco_captions(data_dir, split)            same (+ captions, file_name; image = JPEG bytes), from a prepared
                                                 tfds `coco_captions`, array_record or TFRecord (no TensorFlow)
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
import struct

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


def _tfds_version_dir(data_dir: str, name: str, config: str) -> str:
    """The newest prepared version dir of a tfds dataset: {data_dir}/{name}/{config}/{version}/dataset_info.json
    (`data_dir` may also be that version dir itself)."""
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    root = os.path.join(data_dir, name, config)
    found = []
    for info in glob.glob(os.path.join(root, "*", "dataset_info.json")):
        version = os.path.basename(os.path.dirname(info))
        try:
            found.append((tuple(int(x) for x in version.split(".")), os.path.dirname(info)))
        except ValueError:  # e.g. an unfinished 'incomplete.XXXX_1.1.0' folder
            continue
    if not found:
        raise DataPathError(f"no prepared tfds {name} under {root!r} (expected {root}/<version>/dataset_info.json)")
    return max(found)[1]


class _TFRecordSource:
    """Random access to the serialized examples of a tfds split stored as TFRecord (`tfds build`'s default format)
    without TensorFlow: each shard's record offsets are indexed once (headers only), records read with pread."""

    def __init__(self, info, split: str):
        from tensorflow_datasets.core.data_sources.base import file_instructions

        self._fds, self._index = [], []
        for fi in file_instructions(info, split):
            path = os.fspath(fi.filename)
            if not os.path.isabs(path):
                path = os.path.join(os.fspath(info.data_dir), path)
            fd = os.open(path, os.O_RDONLY)
            self._fds.append(fd)
            offsets, pos, size = [], 0, os.fstat(fd).st_size
            while pos + 12 <= size:
                (length,) = struct.unpack("<Q", os.pread(fd, 8, pos))
                offsets.append((pos + 12, length))
                pos += 12 + length + 4  # length, its crc, data, data crc
            stop = len(offsets) if fi.take in (None, -1) else fi.skip + fi.take
            self._index += [(len(self._fds) - 1, o, n) for o, n in offsets[fi.skip : stop]]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> bytes:
        f, offset, length = self._index[i]
        return os.pread(self._fds[f], length, offset)

    def __del__(self):
        for fd in getattr(self, "_fds", ()):
            try:
                os.close(fd)
            except OSError:
                pass


class tfds_coco_captions:
    """A prepared tfds `coco_captions` ({data_dir}/coco_captions/2014/<version>) as records {image (the encoded
    JPEG bytes, decoded in the transform so a corrupt / greyscale image is a counted skip), caption, captions (all
    of the image's captions), image_id, file_name}. No TensorFlow: array_record (or parquet) through tfds' data
    source, TFRecord (the default of `tfds build coco_captions`) through an offset index.

    split: 'train', 'val', 'test', 'restval' (Karpathy and Li's splits; 'validation' means 'val').
    captions_per_image: k > 1 gives k records per image, record i = caption i % k of image i // k (as the folder
    loader's one record per caption; COCO has at least 5 per image, fewer wrap around); 1 = the first caption.
    """

    def __init__(self, data_dir: str, split: str = "train", config: str = "2014", captions_per_image: int = 1):
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import file_adapters

        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
        path = _tfds_version_dir(data_dir, "coco_captions", config)
        builder = tfds.builder_from_directory(path)
        info = builder.info
        split = {"validation": "val"}.get(split, split)
        if split not in info.splits:
            raise DataPathError(f"{path}: no split {split!r}; prepared splits: {sorted(info.splits)}")
        self.split, self.k = split, int(captions_per_image)
        self._features = info.features
        self._skip_image = {"image": tfds.decode.SkipDecoding()}
        formats = info.available_file_formats() or {info.file_format}
        if formats & set(file_adapters.FileFormat.with_random_access()):
            self._src = builder.as_data_source(split=split, decoders=self._skip_image)
            self._raw = False
        elif file_adapters.FileFormat.TFRECORD in formats:
            self._src = _TFRecordSource(info, split)
            self._raw = True
        else:
            raise DataPathError(f"{path}: cannot read file format(s) {sorted(f.value for f in formats)}")

    def __len__(self) -> int:
        return len(self._src) * self.k

    def _example(self, j: int) -> dict:
        r = self._src[j]
        return self._features.deserialize_example_np(r, decoders=self._skip_image) if self._raw else r

    def _record(self, r: dict, c: int) -> dict:
        caps = r["captions"]
        texts = caps["text"] if isinstance(caps, dict) else [x["text"] for x in caps]
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in texts]
        if not texts:
            return _bad(MALFORMED, f"COCO image {int(r['image/id'])} without captions", image_id=int(r["image/id"]))
        name = r.get("image/filename", b"")
        return {"image": r["image"], "caption": texts[c % len(texts)].strip(), "captions": texts,
                "image_id": int(r["image/id"]),
                "file_name": name.decode("utf-8", "replace") if isinstance(name, bytes) else name}

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._record(self._example(i // self.k), i % self.k)

    def __getitems__(self, indices) -> list[dict]:
        return [self[i] for i in indices]


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
                pairs = [(_image_path(image_dir, i["image_name"]), texts[i["matched_text_index"]]) for i in info
                         if 0 <= i.get("matched_text_index", -1) < len(texts)]
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
def vqav2(questions_json: str, annotations_json: str | None, image_dir: str,
          image_name: str = "COCO_{subtype}_{image_id:012d}.jpg") -> list[dict]:
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
