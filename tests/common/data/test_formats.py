"""User formats on small fixtures built from real images and speech, run through the pipelines, with bad records."""
import json
import os

import chex
import numpy as np
import pytest
from PIL import Image

from flamingo_jax import data as FD
from common.data import formats, pipeline as P
from common.data.records import DataPathError, SkipCounter, TooManyBadRecords
from common.data.speech import load_word_bank


def _run(records, transform, counter, batch_size=1, max_len=64, pad_id=0):
    ds, counter = P.build_dataset(records, transform, batch_size=batch_size, collate=P.Collate(max_len, pad_id),
                                  shuffle=False, counter=counter, drop_remainder=False)
    return list(P.DataIterator(ds, counter)), counter


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, real_images, camera_grey, png_rgb16):
    """Real photos in several encodings plus every kind of bad image file."""
    d = tmp_path_factory.mktemp("images")
    Image.fromarray(real_images["astronaut"]).save(d / "astronaut.jpg", quality=90)
    Image.fromarray(real_images["coffee"]).save(d / "coffee.png")
    Image.fromarray(real_images["chelsea"]).save(d / "chelsea.jpg")
    Image.fromarray(camera_grey).save(d / "grey.png")  # mode L
    rgba = np.dstack([real_images["chelsea"], np.full(real_images["chelsea"].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(real_images["coffee"]).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(camera_grey.astype(np.uint16) * 257).save(d / "deep16.png")  # 16-bit greyscale
    Image.fromarray(real_images["astronaut"]).quantize(64).save(d / "palette.png")  # mode P, no transparency
    (d / "rgb48.png").write_bytes(png_rgb16(real_images["coffee"][::4, ::4].astype(np.uint16) * 257))  # 16-bit RGB
    good = (d / "astronaut.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(good[:200] + b"\x00garbage" * 50)  # truncated / corrupt JPEG
    (d / "empty.jpg").write_bytes(b"")
    return str(d)


GOOD = ["astronaut.jpg", "coffee.png", "chelsea.jpg"]
# Not 8-bit RGB: skipped per reason by default, converted (and counted under the same reason) with convert_image_modes.
MODES = {"grey.png": "greyscale_image", "rgba.png": "rgba_image", "cmyk.jpg": "cmyk_image", "deep16.png": "16bit_image",
         "palette.png": "palette_image", "rgb48.png": "16bit_image"}
BAD = {"corrupt.jpg": "corrupt_image", "empty.jpg": "empty_image", "missing.jpg": "missing_image"}


def _mode_counts() -> dict:
    out = {}
    for r in MODES.values():
        out[r] = out.get(r, 0) + 1
    return out


def test_coco_captions_folder(image_dir, tmp_path, flamingo_tok):
    names = GOOD + list(MODES) + list(BAD)
    ann = {
        "images": [{"id": i + 1, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"id": 100 + i, "image_id": i + 1, "caption": f"A photo number {i}. "}
                        for i in range(len(names))]
        + [{"id": 999, "image_id": 77, "caption": "orphan"}],
    }
    (tmp_path / "captions_train2014.json").write_text(json.dumps(ann))
    recs = formats.coco_captions(str(tmp_path / "captions_train2014.json"), image_dir)
    assert len(recs) == len(names) + 1 and recs[0]["caption"] == "A photo number 0."
    batches, c = _run(recs, FD.FlamingoCaptionTransform(flamingo_tok, 32, 64), SkipCounter(max_skip_fraction=1.0),
                      pad_id=flamingo_tok.pad_id)
    assert len(batches) == len(GOOD)  # default: greyscale / RGBA / CMYK / 16-bit / palette images are skipped
    s = c.summary()
    assert s["by_reason"] == {**{r: 1 for r in BAD.values()}, "malformed_record": 1, **_mode_counts()}
    assert s["converted"] == {} and s["seen"] == len(recs)
    # Opt-in: the same records are converted to RGB and counted as conversions, not skips.
    t = FD.FlamingoCaptionTransform(flamingo_tok, 32, 64, convert_image_modes=True)
    batches, c = _run(recs, t, SkipCounter(max_skip_fraction=1.0), pad_id=flamingo_tok.pad_id)
    assert len(batches) == len(GOOD) + len(MODES)
    s = c.summary()
    assert s["by_reason"] == {**{r: 1 for r in BAD.values()}, "malformed_record": 1}
    assert s["converted"] == _mode_counts()
    b = batches[0]
    assert b["images"].shape == (1, 1, 64, 64, 3) and b["input_ids"][0, 1] == flamingo_tok.token_to_id("<image>")
    assert not b["loss_mask"][0, 1] and b["loss_mask"][0, 2]
    with pytest.raises(DataPathError):
        formats.coco_captions(str(tmp_path / "nope.json"), image_dir)
    with pytest.raises(DataPathError):
        formats.coco_captions(str(tmp_path / "captions_train2014.json"), str(tmp_path / "no_images"))


def test_max_skip_fraction_stops_with_clear_error(image_dir, flamingo_tok):
    recs = [{"image": os.path.join(image_dir, n), "caption": "x"}
            for n in (["astronaut.jpg"] * 6 + ["corrupt.jpg"] * 4)]
    ds, c = P.build_dataset(recs, FD.FlamingoCaptionTransform(flamingo_tok, 16, 32), batch_size=1,
                            collate=P.Collate(16, 0), seed=0, counter=SkipCounter(0.2, min_records=5))
    with pytest.raises(TooManyBadRecords, match="corrupt_image"):
        list(P.DataIterator(ds, c))


def test_llava_json(image_dir, tmp_path, flamingo_tok):
    data = [
        {"id": "1", "image": "coffee.png", "conversations": [{"from": "human", "value": "What is this?\n<image>"},
                                                             {"from": "gpt", "value": "A cup of coffee."}]},
        {"id": "2", "image": "chelsea.jpg", "conversations": [{"from": "human", "value": "<image>\n<image> two?"},
                                                              {"from": "gpt", "value": "No."}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "4", "image": "astronaut.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                                {"from": "gpt", "value": "word " * 400}]},
        {"id": "5", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                              {"from": "gpt", "value": "?"}]},
        {"id": "6", "image": "coffee.png", "conversations": [{"from": "gpt", "value": "<image> wrong order"}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    recs = formats.llava_json(str(tmp_path / "llava.json"), image_dir)
    assert recs[2]["image"] is None
    from llava_jax.data import LlavaSampleTransform

    t = LlavaSampleTransform(flamingo_tok, "vicuna_v1", image_token_id=flamingo_tok.token_to_id("<image>"),
                             tokens_per_image=1, image_size=56, max_len=96)
    batches, c = _run(recs, t, SkipCounter(max_skip_fraction=1.0), max_len=96, pad_id=flamingo_tok.pad_id)
    assert c.summary()["by_reason"] == {"image_marker_mismatch": 1, "too_long": 1, "missing_image": 1,
                                        "malformed_record": 1}
    assert len(batches) == 2
    first = batches[0]
    text = flamingo_tok.decode(first["input_ids"][0][first["attention_mask"][0]])
    assert "USER: <image>\nWhat is this? ASSISTANT: A cup of coffee.</s>" in text
    target = flamingo_tok.decode(first["input_ids"][0][first["loss_mask"][0]])
    assert target.strip() == "A cup of coffee.</s>"
    assert first["images"].shape == (1, 1, 56, 56, 3) and batches[1]["image_mask"].sum() == 0  # text-only record


def test_interleaved_mmc4_and_obelics(image_dir, tmp_path, flamingo_tok):
    mmc4 = {"text_list": ["Intro text.", "A cat sits.", "Coffee is hot."], "image_info": [
        {"image_name": "coffee.png", "matched_text_index": 2, "matched_sim": 0.3},
        {"image_name": "chelsea.jpg", "matched_text_index": 1, "matched_sim": 0.3}]}
    obelics = {"texts": [None, "An astronaut.", None, "A cat.", "More about cats."],
               "images": ["http://x/astronaut.jpg?s=1", None, "chelsea.jpg", None, None]}
    lines = [json.dumps(mmc4).encode(), json.dumps(obelics).encode(),
             b'{"text_list": ["caf\xe9 latin-1"], "image_info": []}',
             json.dumps({"text_list": ["no images"], "image_info": []}).encode()]
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    recs = formats.interleaved_jsonl(str(tmp_path / "docs.jsonl"), image_dir)
    assert recs[0]["texts"] == ["A cat sits.", "Coffee is hot."] and recs[0]["images"][0].endswith("chelsea.jpg")
    assert (recs[1]["texts"] == ["An astronaut.", "A cat. More about cats."]
            and recs[1]["images"][0].endswith("astronaut.jpg"))
    batches, c = _run(recs, FD.FlamingoInterleavedTransform(flamingo_tok, 64, 48, max_images=3), SkipCounter(1.0),
                      max_len=64, pad_id=flamingo_tok.pad_id)
    assert c.summary()["by_reason"] == {"non_utf8_text": 1, "malformed_record": 1} and len(batches) == 2
    ids = batches[0]["input_ids"][0]
    assert (ids == flamingo_tok.token_to_id("<image>")).sum() == 2 == batches[0]["image_mask"].sum()


@pytest.fixture(scope="module")
def libri_root(tmp_path_factory):
    import soundfile as sf

    wb = load_word_bank()
    root = tmp_path_factory.mktemp("LibriSpeech") / "dev-clean"
    d = root / "84" / "121123"
    d.mkdir(parents=True)
    texts = ["A RED CIRCLE AT THE TOP", "HOW MANY SHAPES ARE THERE", "IS THERE A BLUE SQUARE"]
    rng = np.random.default_rng(0)
    for i, t in enumerate(texts):
        sf.write(d / f"84-121123-{i:04d}.flac", wb.say(t, rng), 16000)
    sf.write(d / "84-121123-0003.flac", wb.say("yes", rng)[::2], 8000)  # wrong sample rate
    lines = ([f"84-121123-{i:04d} {t}".encode() for i, t in enumerate(texts)]
             + [b"84-121123-0003 YES", b"84-121123-0004 CAF\xc9"])
    (d / "84-121123.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    return str(root)


def test_librispeech(libri_root):
    """The layout reader: one record per transcript line; a line that is not UTF-8 is a bad record the pipeline
    counts (the VITA ASR pipeline over this folder: tests/vita/test_vita_train.py)."""
    recs = formats.librispeech(libri_root)
    assert len(recs) == 5 and recs[0]["text"] == "A RED CIRCLE AT THE TOP" and recs[0]["id"] == "84-121123-0000"
    assert recs[0]["audio"].endswith("84-121123-0000.flac")
    assert recs[4]["_bad"][0] == "non_utf8_text"
    with pytest.raises(DataPathError):
        formats.librispeech(libri_root + "/nope")


def test_vqav2_okvqa_layout(image_dir, tmp_path):
    os.symlink(os.path.join(image_dir, "coffee.png"), tmp_path / "COCO_val2014_000000000042.jpg")
    q = {"data_subtype": "val2014",
         "questions": [{"image_id": 42, "question": "What drink is this?", "question_id": 420}]}
    a = {"annotations": [{"question_id": 420, "image_id": 42, "answer_type": "other", "question_type": "what",
                          "multiple_choice_answer": "coffee",
                          "answers": [{"answer": "coffee", "answer_confidence": "yes", "answer_id": i + 1}
                                      for i in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps(a))
    recs = formats.vqav2(str(tmp_path / "q.json"), str(tmp_path / "a.json"), str(tmp_path))
    assert recs[0]["answers"] == ["coffee"] * 10
    from common.data.image_ops import decode_image

    chex.assert_shape(decode_image(recs[0]["image"]), (400, 600, 3))
    test_recs = formats.vqav2(str(tmp_path / "q.json"), None, str(tmp_path))
    assert test_recs[0]["answers"] == []
