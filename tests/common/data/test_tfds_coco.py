"""`formats.tfds_coco_captions` on a small prepared tfds `coco_captions` written the way tfds writes it, without
TensorFlow: the real feature spec (image, image/filename, image/id, objects, captions {text, id}), COCO's 80
labels, dataset_info.json / features.json and array_record shards, or TFRecord shards (the default of
`tfds build`, written here by tfds itself with a pure-Python TFRecord writer standing in for tf.io)."""
import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from common.data import formats, pipeline as P
from common.data.records import DataPathError, SkipCounter

tfds = pytest.importorskip("tensorflow_datasets")

COCO_LABELS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass "
    "cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush").split()


def _crc32c(data: bytes) -> int:
    table = _crc32c.table
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_crc32c.table = [0] * 256
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _crc32c.table[_i] = _c


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _write_tfrecord(cls, path, iterator):
    """tf.io.TFRecordWriter's format: uint64 length, masked crc32c(length), data, masked crc32c(data)."""
    with open(os.fspath(path), "wb") as f:
        for _, data in iterator:
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))


def _builder_class():
    from tensorflow_datasets.core import registered

    F = tfds.features
    with registered.skip_registration():  # the real coco_captions builder keeps its registry name

        class CocoCaptions(tfds.core.GeneratorBasedBuilder):
            """tensorflow_datasets.object_detection.coco_captions' features and naming, fed from local files."""

            VERSION = tfds.core.Version("1.1.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014", version=tfds.core.Version("1.1.0"),
                                                       description="COCO 2014 with Karpathy splits")]

            def __init__(self, *, examples=None, **kwargs):
                self._examples = examples
                super().__init__(**kwargs)

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=F.FeaturesDict({
                    "image": F.Image(encoding_format="jpeg"),
                    "image/filename": F.Text(),
                    "image/id": np.int64,
                    "objects": F.Sequence({"id": np.int64, "area": np.int64, "bbox": F.BBoxFeature(),
                                           "label": F.ClassLabel(names=COCO_LABELS), "is_crowd": np.bool_}),
                    "captions": F.Sequence({"text": np.str_, "id": np.int64}),
                }))

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(exs) for split, exs in self._examples.items()}

            def _generate_examples(self, exs):
                for ex in exs:
                    yield ex["image/filename"], ex

    return CocoCaptions


@pytest.fixture(scope="module")
def coco(tmp_path_factory, real_images, camera_grey):
    """Images as COCO JPEG files, their examples by split, and the expected records by image id."""
    d = tmp_path_factory.mktemp("coco_images")
    photos = {1: real_images["astronaut"][::4, ::4], 2: real_images["coffee"][::4, ::4],
              3: real_images["chelsea"][::3, ::3], 4: real_images["grace_hopper"][::4, ::4],
              5: camera_grey[::4, ::4]}  # 5: a greyscale JPEG, as COCO has
    captions = {1: ["An astronaut in a white suit.", "A woman poses with a helmet.", "A portrait of a smiling woman."],
                2: ["A cup of coffee on a saucer.", "Un café crème."], 3: ["A cat looks to the side."],
                4: ["An officer in uniform."], 5: ["A man with a camera on a tripod."]}
    split_of = {1: "train", 2: "train", 3: "train", 4: "val", 5: "train"}
    examples, expected = {}, {}
    for iid, img in photos.items():
        name = f"COCO_{'train' if split_of[iid] == 'train' else 'val'}2014_{iid:012d}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(d / name, quality=90)
        ex = {"image": str(d / name), "image/filename": name, "image/id": iid,
              "objects": [{"id": 100 * iid, "area": 50, "bbox": tfds.features.BBox(0.1, 0.2, 0.5, 0.6), "label": "cat",
                           "is_crowd": False}],
              "captions": [{"id": 10 * iid + k, "text": t} for k, t in enumerate(captions[iid])]}
        examples.setdefault(split_of[iid], []).append(ex)
        expected[iid] = {"captions": captions[iid], "file_name": name, "jpeg": (d / name).read_bytes(),
                         "grey": iid == 5}
    return examples, expected


def _prepare(data_dir, examples, file_format):
    builder = _builder_class()(config="2014", data_dir=str(data_dir), file_format=file_format, examples=examples)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module", params=["array_record", "tfrecord"])
def prepared(request, coco, tmp_path_factory):
    from tensorflow_datasets.core import file_adapters

    data_dir = tmp_path_factory.mktemp(f"tfds_{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(file_adapters.TfRecordFileAdapter, "write_examples", classmethod(_write_tfrecord))
        builder = _prepare(data_dir, coco[0], request.param)
    return str(data_dir), builder, request.param


def test_layout_is_tfds(prepared):
    data_dir, builder, fmt = prepared
    version_dir = os.path.join(data_dir, "coco_captions", "2014", "1.1.0")
    assert os.fspath(builder.data_dir) == version_dir
    files = set(os.listdir(version_dir))
    assert {"dataset_info.json", "features.json", "objects-label.labels.txt"} <= files  # labels: COCO's 80 names
    assert f"coco_captions-train.{fmt}-00000-of-00001" in files and f"coco_captions-val.{fmt}-00000-of-00001" in files
    info = tfds.builder_from_directory(version_dir).info
    assert info.name == "coco_captions" and info.file_format.value == fmt
    assert set(info.features) == {"image", "image/filename", "image/id", "objects", "captions"}
    assert info.features["objects"]["label"].names == COCO_LABELS and info.features["image"].shape == (None, None, 3)
    assert info.splits["train"].num_examples == 4 and info.splits["val"].num_examples == 1
    if fmt == "tfrecord":  # the record framing is TFRecord's, CRCs included
        raw = open(os.path.join(version_dir, "coco_captions-val.tfrecord-00000-of-00001"), "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        assert struct.unpack("<I", raw[8:12])[0] == _masked_crc(raw[:8]) and len(raw) == 16 + n
        assert struct.unpack("<I", raw[-4:])[0] == _masked_crc(raw[12:12 + n])


def test_read_back(prepared, coco):
    data_dir, _, fmt = prepared
    _, expected = coco
    src = formats.tfds_coco_captions(data_dir, "train")
    assert len(src) == 4
    seen = set()
    for i in range(len(src)):
        r = src[i]
        want = expected[r["image_id"]]
        seen.add(r["image_id"])
        assert r["image"] == want["jpeg"]  # the encoded JPEG, decoded later in the transform
        assert (r["caption"] == want["captions"][0] and r["captions"] == want["captions"]
                and r["file_name"] == want["file_name"])
        decoded = np.asarray(Image.open(io.BytesIO(r["image"])))
        assert decoded.ndim == (2 if want["grey"] else 3)
    assert seen == {1, 2, 3, 5}
    assert [r["image_id"] for r in src.__getitems__([0, 3])] == [src[0]["image_id"], src[3]["image_id"]]
    val = formats.tfds_coco_captions(data_dir, "validation")  # 'validation' = Karpathy 'val'
    assert len(val) == 1 and val[0]["caption"] == "An officer in uniform."
    per_caption = formats.tfds_coco_captions(os.path.join(data_dir, "coco_captions", "2014", "1.1.0"), "train",
                                             captions_per_image=3)
    assert len(per_caption) == 12
    by_image = {}
    for i in range(len(per_caption)):
        r = per_caption[i]
        by_image.setdefault(r["image_id"], []).append(r["caption"])
    assert (by_image[1] == expected[1]["captions"]
            and by_image[2] == expected[2]["captions"] + expected[2]["captions"][:1])
    with pytest.raises(IndexError):
        src[4]
    with pytest.raises(DataPathError, match="no split"):
        formats.tfds_coco_captions(data_dir, "restval")
    with pytest.raises(DataPathError, match="no prepared tfds coco_captions"):
        formats.tfds_coco_captions(os.path.join(data_dir, "nowhere"))


def test_through_the_flamingo_pipeline(prepared, coco, flamingo_tok):
    data_dir, _, _ = prepared
    from flamingo_jax import data as fdata

    src = fdata.make_source({"source": "tfds_coco_captions", "data_dir": data_dir, "split": "train"})
    transform = fdata.make_transform({"source": "tfds_coco_captions", "max_len": 32}, flamingo_tok, 32)
    ds, c = P.build_dataset(src, transform, batch_size=1, collate=P.Collate(32, flamingo_tok.pad_id), shuffle=False,
                            counter=SkipCounter(1.0))
    batches = list(P.DataIterator(ds, c))
    assert len(batches) == 3 and c.summary()["by_reason"] == {"greyscale_image": 1}  # COCO's greyscale JPEG
    b = batches[0]
    assert b["images"].shape == (1, 1, 32, 32, 3) and b["input_ids"][0, 1] == flamingo_tok.token_to_id("<image>")
    transform = fdata.make_transform({"source": "tfds_coco_captions", "max_len": 32, "convert_image_modes": True},
                                     flamingo_tok, 32)
    ds, c = P.build_dataset(src, transform, batch_size=4, collate=P.Collate(32, flamingo_tok.pad_id), shuffle=False,
                            counter=SkipCounter(0.0))
    assert len(list(P.DataIterator(ds, c))) == 1 and c.summary()["converted"] == {"greyscale_image": 1}
