"""The shapes dataset prepared once through tensorflow-datasets into array_record files, read back without TensorFlow.

Images are written as encoded PNG bytes and audio as FLAC bytes, which is what lets tfds prepare without TF.
Layout: {cache_dir}/seed{seed}_px{image_size}/mmlm_shapes/{kind}/1.0.0/mmlm_shapes-{split}.array_record-*.
`prepare_shapes(...)` builds (idempotent); `PreparedShapesSource(kind, split, cache_dir)` is a grain-ready
random-access source returning the same dicts as `shapes.ShapesSource` (audio quantised to int16).
"""
from __future__ import annotations

import io
import logging
import os

import numpy as np

from common.data import shapes as S
from common.data.image_ops import encode_png
from common.data.records import DataPathError

DEFAULT_CACHE_DIR = os.environ.get("MMLM_DATA_DIR", os.path.expanduser("~/.cache/mmlm_jax/datasets"))
DEFAULT_PREPARED_SIZES = {"train": 2000, "validation": 200, "test": 200}


def _tfds():
    import tensorflow_datasets as tfds

    logging.getLogger("absl").setLevel(logging.ERROR)
    return tfds


def _features(kind: str, image_size: int):
    tfds = _tfds()
    F = tfds.features
    img = F.Image(shape=(image_size, image_size, 3), encoding_format="png")
    common = {"index": F.Scalar(dtype=np.int64)}
    spec = {
        "captions": {"image": img, "caption": F.Text(), "objects": F.Text()},
        "vqa": {
            "image": img, "image_id": F.Scalar(dtype=np.int64), "question_id": F.Scalar(dtype=np.int64),
            "question": F.Text(), "answers": F.Sequence(F.Text()), "multiple_choice_answer": F.Text(),
            "question_type": F.Text(), "answer_type": F.Text(),
        },
        "interleaved": {"task": F.Text(), "images": F.Sequence(img), "texts": F.Sequence(F.Text()),
                        "mapping": F.Text()},
        "conversations": {"id": F.Text(), "image": img, "conversations": F.Text()},
        "spoken_qa": {"image": img, "audio_flac": F.Tensor(shape=(), dtype=np.object_),
                      "answer_audio_flac": F.Tensor(shape=(), dtype=np.object_),
                      "question": F.Text(), "answer": F.Text(), "kind": F.Text()},
        "videos": {"frames": F.Sequence(img), "caption": F.Text()},
    }[kind]
    return F.FeaturesDict({**common, **spec})


def _flac(audio: np.ndarray) -> bytes:
    import soundfile as sf

    if len(audio) == 0:
        return b""
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _encode(kind: str, ex: dict) -> dict:
    ex = dict(ex)
    if "image" in ex:
        ex["image"] = encode_png(ex["image"])
    if kind == "interleaved":
        ex["images"] = [encode_png(i) for i in ex["images"]]
    if kind == "videos":
        ex["frames"] = [encode_png(f) for f in ex["frames"]]
    if kind == "spoken_qa":
        ex["audio_flac"] = _flac(ex.pop("audio"))
        ex["answer_audio_flac"] = _flac(ex.pop("answer_audio"))
    return ex


def _builder_class():
    tfds = _tfds()
    if hasattr(_builder_class, "cls"):
        return _builder_class.cls

    class MmlmShapes(tfds.core.GeneratorBasedBuilder):
        """Coloured shapes: captions, VQA, interleaved few-shot docs, conversations, spoken QA, videos."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=k, description=f"shapes {k}") for k in S.KINDS]

        def __init__(self, *, seed: int = 0, image_size: int = 64, split_sizes: dict | None = None, **kwargs):
            self._seed, self._image_size = seed, image_size
            self._split_sizes = dict(split_sizes or DEFAULT_PREPARED_SIZES)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Embedded shapes dataset ({self.builder_config.name}), seed {self._seed}, "
                            f"{self._image_size}px.",
                features=_features(self.builder_config.name, self._image_size),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, n) for split, n in self._split_sizes.items()}

        def _generate_examples(self, split: str, n: int):
            kind = self.builder_config.name
            for i in range(n):
                yield i, _encode(kind, S.generate(kind, split, i, self._seed, self._image_size))

    _builder_class.cls = MmlmShapes
    return MmlmShapes


def prepared_dir(cache_dir: str, seed: int, image_size: int) -> str:
    return os.path.join(cache_dir, f"seed{seed}_px{image_size}")


def prepare_shapes(cache_dir: str = DEFAULT_CACHE_DIR, kinds=S.KINDS, seed: int = 0, image_size: int = 64,
                   split_sizes: dict | None = None) -> dict[str, str]:
    """Writes the chosen kinds to array_record (skips those already prepared); returns {kind: dataset dir}."""
    cls = _builder_class()
    out = {}
    for kind in kinds:
        b = cls(config=kind, data_dir=prepared_dir(cache_dir, seed, image_size), file_format="array_record", seed=seed,
                image_size=image_size, split_sizes=split_sizes)
        b.download_and_prepare()
        out[kind] = str(b.data_dir)
    return out


def _decode_text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


class PreparedShapesSource:
    """Random-access source over a prepared split: records decoded to the `ShapesSource` dict format.

    Record order in array_record is tfds' hashed order, not `index` order: use the `index` field to match.
    """

    def __init__(self, kind: str, split: str = "train", cache_dir: str = DEFAULT_CACHE_DIR, seed: int = 0,
                 image_size: int = 64):
        tfds = _tfds()
        path = os.path.join(prepared_dir(cache_dir, seed, image_size), "mmlm_shapes", kind, "1.0.0")
        if not os.path.isdir(path):
            raise DataPathError(
                f"prepared shapes dataset not found at {path!r}: run common.data.tfds_shapes.prepare_shapes("
                f"{cache_dir!r}, kinds=[{kind!r}], seed={seed}, image_size={image_size})"
            )
        self.kind, self.split = kind, split
        self._src = tfds.builder_from_directory(path).as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        return decode_record(self.kind, self._src[i])

    def __getitems__(self, indices):
        return [decode_record(self.kind, r) for r in self._src.__getitems__(indices)]


def decode_record(kind: str, r: dict) -> dict:
    out = {k: (v if k.endswith("_flac") else _decode_text(v)) for k, v in r.items()}
    out["index"] = int(out["index"])
    if kind == "vqa":
        out["answers"] = [_decode_text(a) for a in r["answers"]]
        out["image_id"], out["question_id"] = int(r["image_id"]), int(r["question_id"])
    if kind == "interleaved":
        out["images"] = list(r["images"])
        out["texts"] = [_decode_text(t) for t in r["texts"]]
    if kind == "videos":
        out["frames"] = np.stack(list(r["frames"]))
    if kind == "spoken_qa":
        import soundfile as sf

        for key in ("audio", "answer_audio"):
            b = out.pop(f"{key}_flac")
            out[key] = sf.read(io.BytesIO(b), dtype="float32")[0] if b else np.zeros(0, np.float32)
    return out
