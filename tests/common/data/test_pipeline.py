"""grain pipelines: per-host sharding, checkpointable iterator, padding / packing with loss masks, family transforms."""
import chex
import numpy as np
import pytest

from flamingo_jax import data as FD
from common.data import batching as B, pipeline as P, shapes as S


class _Ids:
    """A source whose records are their own index (to check shuffling / sharding exactly)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"i": i}


def _ids_pipeline(n=103, shard=None, seed=0, epochs=1, batch=4):
    ds, c = P.build_dataset(_Ids(n), lambda r: r, batch_size=batch, collate=lambda xs: np.array([x["i"] for x in xs]),
                            seed=seed, num_epochs=epochs, shard=shard)
    return P.DataIterator(ds, c)


def test_per_host_sharding_is_disjoint_and_complete():
    hosts = [np.concatenate(list(_ids_pipeline(shard=(i, 4)))) for i in range(4)]
    assert all(len(h) == 24 for h in hosts)  # 103 // 4 = 25 per host, batches of 4 drop the remainder
    full = [np.concatenate(list(P.DataIterator(*P.build_dataset(_Ids(103), lambda r: r, batch_size=1,
                                                                collate=lambda xs: np.array([x["i"] for x in xs]),
                                                                shard=(i, 4)))))
            for i in range(4)]
    allidx = np.concatenate(full)
    assert len(allidx) == 100 and len(set(allidx.tolist())) == 100
    assert set(full[1].tolist()) == set(range(1, 100, 4))
    assert P.shard_for_host("jax") == (0, 1)


def test_shuffle_differs_per_epoch_and_seed():
    a = np.concatenate(list(_ids_pipeline(n=40, epochs=2, batch=40)))
    assert sorted(a[:40]) == list(range(40)) and sorted(a[40:]) == list(range(40))
    assert not np.array_equal(a[:40], a[40:])
    b = np.concatenate(list(_ids_pipeline(n=40, seed=1, batch=40)))
    assert not np.array_equal(a[:40], b)


def test_checkpoint_resume_gives_identical_stream(tmp_path, flamingo_tok):
    def make():
        src = S.ShapesSource("captions", "train", size=64, image_size=32)
        ds, c = P.build_dataset(src, FD.FlamingoCaptionTransform(flamingo_tok, 32, 32), batch_size=4,
                                collate=P.Collate(32, flamingo_tok.pad_id), seed=5, num_epochs=None, num_threads=2)
        return P.DataIterator(ds, c)

    it = make()
    for _ in range(3):
        next(it)
    it.save(str(tmp_path / "data_state.json"))
    expected = [next(it)["input_ids"] for _ in range(20)]  # crosses the epoch boundary (64 / 4 = 16 batches)
    fresh = make()
    fresh.restore(str(tmp_path / "data_state.json"))
    assert fresh.counter.seen == 12
    got = [next(fresh)["input_ids"] for _ in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_padding_and_truncation(flamingo_tok):
    a = B.tokenize_segments(flamingo_tok, [("Question: what?", False), (" Answer.", True)], add_bos=True, add_eos=True)
    assert not a["loss_mask"][0] and a["loss_mask"][-1] and a["input_ids"][-1] == flamingo_tok.eos_id
    n = len(a["input_ids"])
    batch = B.pad_batch([a, a], n + 3, flamingo_tok.pad_id, side="left")
    assert (batch["input_ids"][:, :3] == flamingo_tok.pad_id).all() and not batch["attention_mask"][:, :3].any()
    assert np.array_equal(batch["positions"][0, 3:], np.arange(n))
    with pytest.raises(Exception, match="too_long"):
        B.fit_length(a, n - 1, "skip")
    assert len(B.fit_length(a, 4, "truncate")["input_ids"]) == 4


def test_family_pipelines_on_shapes(flamingo_tok, tmp_path):
    src = S.ShapesSource("interleaved", "train", size=16, image_size=32)
    ds, c = P.build_dataset(src, FD.FlamingoInterleavedTransform(flamingo_tok, 128, 32, max_images=6), batch_size=4,
                            collate=P.Collate(128, flamingo_tok.pad_id, max_images=6))
    b = next(iter(ds))
    chex.assert_shape(b["images"], (4, 6, 32, 32, 3))
    img_id = flamingo_tok.token_to_id("<image>")
    assert np.array_equal((b["input_ids"] == img_id).sum(1), b["image_mask"].sum(1))
    assert not b["loss_mask"][b["input_ids"] == img_id].any()

    from llava_jax.data import LlavaSampleTransform

    llava = LlavaSampleTransform(flamingo_tok, "vicuna_v1", image_token_id=img_id, tokens_per_image=1, image_size=28,
                                 max_len=256)
    ds, c = P.build_dataset(S.ShapesSource("conversations", "train", size=8, image_size=32), llava, batch_size=4,
                            collate=P.Collate(256, flamingo_tok.pad_id))
    b = next(iter(ds))
    assert b["images"].shape == (4, 1, 28, 28, 3) and c.num_skipped == 0
    assert 0 < b["loss_mask"].sum() < b["attention_mask"].sum()


def test_prepared_source_through_grain(tmp_path, flamingo_tok):
    pytest.importorskip("tensorflow_datasets")
    from common.data import tfds_shapes as T

    T.prepare_shapes(str(tmp_path), kinds=["captions"], image_size=32,
                     split_sizes={"train": 16, "validation": 4, "test": 4})
    src = T.PreparedShapesSource("captions", "train", str(tmp_path), image_size=32)
    ds, c = P.build_dataset(src, FD.FlamingoCaptionTransform(flamingo_tok, 32, 32), batch_size=8,
                            collate=P.Collate(32, flamingo_tok.pad_id), shard=(1, 2))
    batches = list(P.DataIterator(ds, c))
    assert len(batches) == 1 and batches[0]["images"].shape == (8, 1, 32, 32, 3)


def test_flamingo_interleaved_text_only_chunks(flamingo_tok):
    """`image_slots`: a text without an image is a chunk `{text}<|endofchunk|>` (a text piece sequence tokenizes each
    piece on its own); max_images cuts before the first image chunk it cannot keep; images that do not match the
    image chunks are a BadRecord, not silently dropped."""

    from common.data.records import BadRecord
    from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN

    img = np.full((8, 8, 3), 128, np.uint8)
    record = {"images": [img, img, img], "texts": ["a cat.", ("word", "no image."), "a dog.", "a bird."],
              "image_slots": [True, False, True, True]}
    ex = FD.FlamingoInterleavedTransform(flamingo_tok, 64, 8, max_images=6)(record)
    text = flamingo_tok.decode([int(i) for i in ex["input_ids"]])
    assert text.count(IMAGE_TOKEN) == 3 and ex["images"].shape == (3, 8, 8, 3)
    assert f"a cat.{END_OF_CHUNK_TOKEN}wordno image.{END_OF_CHUNK_TOKEN}{IMAGE_TOKEN}a dog." in text
    expected = FD.flamingo_interleaved(flamingo_tok, record["texts"], 3, record["image_slots"])["input_ids"]
    assert np.array_equal(ex["input_ids"], expected)
    cut = FD.FlamingoInterleavedTransform(flamingo_tok, 64, 8, max_images=2)(record)  # keeps chunks 0-1-2
    assert cut["images"].shape[0] == 2
    assert "a bird" not in flamingo_tok.decode([int(i) for i in cut["input_ids"]])
    for bad in (dict(record, images=[img, img]), dict(record, image_slots=[True, False, True])):
        with pytest.raises(BadRecord):
            FD.FlamingoInterleavedTransform(flamingo_tok, 64, 8, max_images=6)(bad)
