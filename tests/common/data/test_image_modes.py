"""Images that are not 8-bit RGB (greyscale, RGBA, CMYK, 16-bit, palette): skipped and counted per reason by default,
converted to RGB (and counted as conversions under the same reason) with `convert_image_modes=True`, in
`decode_image`, the ready transforms and the family data configs."""
import io
import types

import chex
import numpy as np
import pytest
from PIL import Image

from flamingo_jax import data as FD
from common.data import image_ops, pipeline as P
from common.data.records import BadRecord, SkipCounter, TooManyBadRecords


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mode_images(real_images, camera_grey, png_rgb16):
    """reason -> (encoded bytes, the RGB image the opt-in conversion must give)."""
    coffee = real_images["coffee"][::4, ::4].copy()  # 100 x 150
    grey = camera_grey[::4, ::4].copy()
    rgba = np.dstack([coffee, np.linspace(0, 255, coffee.shape[1]).astype(np.uint8)[None].repeat(coffee.shape[0], 0)])
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    on_white = np.clip(np.round(coffee * alpha + 255 * (1 - alpha)), 0, 255).astype(np.uint8)
    pal = Image.fromarray(coffee).quantize(32)
    cmyk = Image.fromarray(coffee).convert("CMYK")
    return {
        "greyscale_image": (_png(Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1)),
        "rgba_image": (_png(Image.fromarray(rgba, "RGBA")), on_white),
        "cmyk_image": (_png(cmyk, "JPEG"), np.asarray(Image.open(io.BytesIO(_png(cmyk, "JPEG"))).convert("RGB"))),
        "16bit_image": (_png(Image.fromarray(grey.astype(np.uint16) * 257)), np.repeat(grey[..., None], 3, -1)),
        "palette_image": (_png(pal), np.asarray(pal.convert("RGB"))),
        "rgb48": (png_rgb16(coffee.astype(np.uint16) * 257), coffee),
    }


def test_decode_image_skips_by_default_and_converts_on_request(mode_images):
    for name, (data, want) in mode_images.items():
        reason = "16bit_image" if name == "rgb48" else name
        with pytest.raises(BadRecord) as e:
            image_ops.decode_image(data)
        assert e.value.reason == reason and "convert_image_modes=True" in str(e.value)
        counter = SkipCounter()
        got = image_ops.decode_image(data, counter=counter, convert_image_modes=True)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        assert np.abs(got.astype(int) - want).max() <= 1, name  # alpha compositing may round differently
        assert dict(counter.notes) == {reason: 1} and counter.num_skipped == 0
    # Plain 8-bit RGB is untouched and never noted.
    counter = SkipCounter()
    rgb = mode_images["rgb48"][1]
    chex.assert_trees_all_equal(image_ops.decode_image(_png(Image.fromarray(rgb)), counter=counter), rgb)
    assert not counter.notes


def test_decode_image_arrays(real_images):
    rgb = real_images["chelsea"][:32, :48]
    assert image_ops.decode_image(rgb) is rgb
    cases = {"greyscale_image": rgb[..., 0], "rgba_image": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
             "16bit_image": rgb.astype(np.uint16) * 257}
    for reason, a in cases.items():
        with pytest.raises(BadRecord, match=reason):
            image_ops.decode_image(a)
        out = image_ops.decode_image(a, convert_image_modes=True)
        assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    chex.assert_trees_all_equal(image_ops.decode_image(cases["16bit_image"], convert_image_modes=True), rgb)
    chex.assert_trees_all_equal(image_ops.decode_image(cases["rgba_image"], convert_image_modes=True), rgb)
    chex.assert_trees_all_equal(image_ops.decode_image(rgb.astype(np.float32) / 255.0), rgb)  # floats: no skip
    with pytest.raises(BadRecord, match="corrupt_image"):
        image_ops.decode_image(np.zeros((4, 4, 2), np.uint8))


def test_pipeline_counts_per_reason_and_stops_with_a_hint(mode_images, real_images, flamingo_tok):
    good = _png(Image.fromarray(real_images["chelsea"][::4, ::4].copy()))
    records = ([{"image": good, "caption": "a cat"}] * 4
               + [{"image": d, "caption": "x"} for d, _ in mode_images.values()])
    ds, c = P.build_dataset(records, FD.FlamingoCaptionTransform(flamingo_tok, 16, 32), batch_size=1,
                            collate=P.Collate(16, 0), shuffle=False, counter=SkipCounter(1.0))
    assert len(list(P.DataIterator(ds, c))) == 4
    assert c.summary()["by_reason"] == {"greyscale_image": 1, "rgba_image": 1, "cmyk_image": 1, "16bit_image": 2,
                                        "palette_image": 1}
    ds, c = P.build_dataset(records, FD.FlamingoCaptionTransform(flamingo_tok, 16, 32, convert_image_modes=True),
                            batch_size=1, collate=P.Collate(16, 0), shuffle=False, counter=SkipCounter(0.0))
    assert len(list(P.DataIterator(ds, c))) == len(records) and c.num_skipped == 0
    assert sum(c.summary()["converted"].values()) == len(mode_images)
    ds, c = P.build_dataset(records, FD.FlamingoCaptionTransform(flamingo_tok, 16, 32), batch_size=1,
                            collate=P.Collate(16, 0), shuffle=False, counter=SkipCounter(0.2, min_records=5))
    with pytest.raises(TooManyBadRecords, match="convert_image_modes=True"):
        list(P.DataIterator(ds, c))


def test_family_transforms_thread_the_flag(mode_images, llama_dir):
    from common.tokenizers import load_tokenizer
    from configs.flamingo.tiny import get_config as flamingo_tiny
    from configs.llava.tiny_stage2 import get_config as llava_tiny
    from flamingo_jax import data as fdata
    from llava_jax.task import make_transform

    grey = mode_images["greyscale_image"][0]
    assert flamingo_tiny().data.convert_image_modes is False and llava_tiny().data.convert_image_modes is False

    ftok = load_tokenizer(llama_dir)
    ftok.add_family_tokens("flamingo")
    spec = dict(source="coco_captions", max_len=24)
    with pytest.raises(BadRecord, match="greyscale_image"):
        fdata.make_transform(spec, ftok, 32)({"image": grey, "caption": "a man"})
    ex = fdata.make_transform({**spec, "convert_image_modes": True}, ftok, 32)({"image": grey, "caption": "a man"})
    chex.assert_shape(ex["images"], (1, 32, 32, 3))

    ltok = load_tokenizer(llama_dir)
    ltok.add_family_tokens("llava")
    config = llava_tiny()
    cfg = types.SimpleNamespace(tokens_per_crop=4, image_token_index=ltok.token_to_id("<image>"),
                                vision=types.SimpleNamespace(image_size=32))
    record = {"image": grey, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                               {"from": "gpt", "value": "A man."}]}
    spec = dict(source="llava_json", max_len=64)
    with pytest.raises(BadRecord, match="greyscale_image"):
        make_transform(config, ltok, cfg, spec)(record)
    with config.unlocked():
        config.data.convert_image_modes = True
    chex.assert_shape(make_transform(config, ltok, cfg, spec)(record)["images"], (1, 32, 32, 3))
    # Inference helpers convert (a photo given to chat / generate_batch is never "skipped").
    from llava_jax.data import preprocess_image

    chex.assert_shape(preprocess_image(grey, 32), (32, 32, 3))
