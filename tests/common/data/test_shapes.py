"""The embedded shapes dataset: determinism, content of every kind, VQAv2 export, tfds array_record round trip."""
import json

import numpy as np
import pytest

from common.data import formats, shapes as S


def _eq(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("kind", S.KINDS)
def test_deterministic_and_seeded(kind):
    a, b = S.generate(kind, "train", 7, seed=3), S.generate(kind, "train", 7, seed=3)
    assert a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    c = S.generate(kind, "train", 7, seed=4)
    d = S.generate(kind, "validation", 7, seed=3)
    img = lambda r: r.get("image", r.get("frames", r.get("images", [None])[0] if "images" in r else None))  # noqa: E731
    assert not _eq(img(a), img(c)) and not _eq(img(a), img(d))


def test_captions_and_images():
    src = S.ShapesSource("captions", "train", size=50, image_size=48)
    assert len(src) == 50
    for i in range(50):
        r = src[i]
        assert r["image"].shape == (48, 48, 3) and r["image"].dtype == np.uint8
        objs = json.loads(r["objects"])
        for o in objs:
            assert f"{o['colour']} {o['shape']}" in r["caption"] and o["position"] in r["caption"]
        # each object colour is visibly present
        for o in objs:
            col = np.array(S.COLOURS[o["colour"]])
            assert (np.abs(r["image"].astype(int) - col).max(-1) < 20).sum() >= 4
    with pytest.raises(IndexError):
        src[50]


def test_vqa_items_and_vqav2_export(tmp_path):
    items = [S.generate("vqa", "validation", i) for i in range(40)]
    assert {it["answer_type"] for it in items} >= {"number", "yes/no", "other"}
    for it in items:
        assert len(it["answers"]) == 10
        assert it["answers"].count(it["multiple_choice_answer"]) >= 4
    qj, aj = S.vqav2_json(items)
    (tmp_path / "q.json").write_text(json.dumps({**qj, "data_subtype": "shapes"}))
    (tmp_path / "a.json").write_text(json.dumps(aj))
    recs = formats.vqav2(str(tmp_path / "q.json"), str(tmp_path / "a.json"), str(tmp_path), image_name="{image_id}.png")
    assert [r["answers"] for r in recs] == [it["answers"] for it in items]
    assert recs[0]["image"].endswith(f"{items[0]['image_id']}.png")


def test_interleaved_names_need_in_context_learning():
    docs = [S.generate("interleaved", "test", i) for i in range(60)]
    names_docs = [d for d in docs if d["task"] == "names"]
    assert 10 < len(names_docs) < 50
    all_names = set()
    for d in names_docs:
        mapping = json.loads(d["mapping"])
        assert len(d["images"]) == len(d["texts"]) >= 2
        last = d["texts"][-1]
        assert last in d["texts"][:-1]  # the query's label was shown earlier in the same document
        used = {t.split()[-1].rstrip(".") for t in d["texts"]}
        assert used <= set(mapping.values())
        all_names |= set(mapping.values())
    assert len(all_names) > 3 * 3  # the names change from document to document


def test_conversations_videos_spoken():
    c = S.generate("conversations", "train", 1)
    conv = json.loads(c["conversations"])
    assert conv[0]["from"] == "human" and conv[0]["value"].startswith("<image>") and len(conv) >= 6
    assert all(t["from"] == ("human" if i % 2 == 0 else "gpt") for i, t in enumerate(conv))
    v = S.generate("videos", "train", 2, image_size=48)
    assert v["frames"].shape == (8, 48, 48, 3) and "moves from" in v["caption"]
    assert not np.array_equal(v["frames"][0], v["frames"][-1])
    kinds = set()
    for i in range(15):
        s = S.generate("spoken_qa", "train", i)
        kinds.add(s["kind"])
        assert s["audio"].dtype == np.float32 and 0.5 < len(s["audio"]) / 16000 < 8
        assert (s["answer"] == "") == (s["kind"] == "noise") == (len(s["answer_audio"]) == 0)
    assert kinds == {"query", "noise"}


def test_tfds_array_record_round_trip(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from common.data import tfds_shapes as T

    sizes = {"train": 12, "validation": 4, "test": 4}
    dirs = T.prepare_shapes(str(tmp_path), kinds=S.KINDS, image_size=32, split_sizes=sizes)
    assert all("array_record" in " ".join(__import__("os").listdir(d)) for d in dirs.values())
    try:
        import tensorflow  # noqa: F401

        pytest.fail("tensorflow must not be installed: the prepared data is read without it")
    except ImportError:
        pass
    for kind in S.KINDS:
        src = T.PreparedShapesSource(kind, "validation", str(tmp_path), image_size=32)
        assert len(src) == 4
        for r in (src[i] for i in range(4)):
            g = S.generate(kind, "validation", r["index"], image_size=32)
            for k, v in g.items():
                if k in ("audio", "answer_audio"):
                    assert r[k].shape == v.shape and (len(v) == 0 or np.abs(r[k] - v).max() <= 1.0 / 32768 + 1e-7)
                else:
                    assert _eq(r[k], v), (kind, k)
    # preparing again is a no-op
    assert T.prepare_shapes(str(tmp_path), kinds=["captions"], image_size=32,
                            split_sizes=sizes) == {"captions": dirs["captions"]}
    with pytest.raises(FileNotFoundError, match="prepare_shapes"):
        T.PreparedShapesSource("captions", "train", str(tmp_path / "nothing"))
