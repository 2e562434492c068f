"""Packing in the data layer (common/data/packing.py through common/data/pipeline.build_dataset): every sample
lands whole in one row with its images, the first token of each sample is no target, samples that fit no row are
skipped and counted per reason, and the packed stream is deterministic and resumes exactly from its state."""
import chex
import numpy as np
import pytest

from common.data.packing import PackingSpec, padding_fraction
from common.data.pipeline import Collate, DataIterator, build_dataset
from common.data.records import BadRecord

IMAGE = (4, 4, 3)


class Source:
    """Samples of uneven length (3..40 tokens), each with 0-2 images whose pixels name the sample."""

    def __init__(self, n=120, seed=0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(3, 41, n)
        self.images = rng.integers(0, 3, n)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return {"index": i}


def transform(source):
    def fn(record):
        i = record["index"]
        n = int(source.lengths[i])
        if n == 13:
            raise BadRecord("malformed", "the transform refuses 13")
        ids = (np.arange(n) + 1000 * i).astype(np.int32) % 10**6 + 1
        return {"input_ids": ids, "loss_mask": np.arange(n) % 2 == 1,
                "images": np.full((int(source.images[i]),) + IMAGE, float(i), np.float32)}
    return fn


def packed_iterator(source, spec, batch_size=4, seed=0, max_skip_fraction=0.5):
    ds, counter = build_dataset(source, transform(source), batch_size=batch_size, seed=seed, packing=spec,
                                max_skip_fraction=max_skip_fraction)
    return DataIterator(ds, counter)


def segments(batch):
    """(row, sample index from its ids, token slice, image slots) of every packed sample."""
    out = []
    for r, seg in enumerate(batch["segment_ids"]):
        for s in range(1, seg.max() + 1):
            where = np.nonzero(seg == s)[0]
            first_id = int(batch["input_ids"][r, where[0]])
            slots = np.nonzero(batch["image_segment_ids"][r] == s)[0]
            out.append((r, (first_id - 1) // 1000, where, slots))
    return out


def test_every_sample_is_whole_in_one_row_with_its_images():
    source = Source()
    spec = PackingSpec(max_len=48, max_images=3, pad_id=0)
    seen = []
    for batch in packed_iterator(source, spec):
        chex.assert_shape([batch["input_ids"], batch["segment_ids"], batch["positions"], batch["loss_mask"]],
                          (4, 48))
        chex.assert_shape(batch["images"], (4, 3) + IMAGE)
        for r, index, where, slots in segments(batch):
            n = int(source.lengths[index])
            assert len(where) == n and np.all(np.diff(where) == 1), "a sample was split or cut"
            chex.assert_trees_all_equal(batch["input_ids"][r, where],
                                        (np.arange(n) + 1000 * index) % 10**6 + 1)
            chex.assert_trees_all_equal(batch["positions"][r, where], np.arange(n))
            expected_mask = np.arange(n) % 2 == 1
            expected_mask[0] = False  # never predicted from the previous sample
            chex.assert_trees_all_equal(batch["loss_mask"][r, where], expected_mask)
            assert len(slots) == source.images[index]
            assert np.all(batch["images"][r, slots] == index) and batch["image_mask"][r, slots].all()
            seen.append(index)
        assert not batch["loss_mask"][batch["segment_ids"] == 0].any()
        assert not batch["image_mask"][batch["image_segment_ids"] == 0].any()
    assert len(seen) == len(set(seen))
    refused = {i for i in range(len(source)) if source.lengths[i] == 13}
    dropped_at_the_end = set(range(len(source))) - set(seen) - refused
    assert len(dropped_at_the_end) < 4 * 4, "only the last incomplete batch's rows may be left over"


def test_samples_that_fit_no_row_are_counted_per_reason():
    source = Source(n=200, seed=3)
    it = packed_iterator(source, PackingSpec(max_len=30, max_images=1), max_skip_fraction=1.0)
    for _ in it:
        pass
    skips = it.counter.state()["skipped"]
    assert skips.get("too_long", 0) == int((source.lengths > 30).sum())
    too_many = int(((source.lengths <= 30) & (source.lengths != 13) & (source.images > 1)).sum())
    assert skips.get("too_many_images", 0) == too_many
    assert skips.get("malformed", 0) == int((source.lengths == 13).sum())


def test_deterministic_and_resumes_exactly():
    source = Source()
    spec = PackingSpec(max_len=48, max_images=3)
    first = packed_iterator(source, spec)
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(3)]
    again = packed_iterator(source, spec)
    again.set_state(state)
    chex.assert_trees_all_equal([next(again) for _ in range(3)], expected)
    one, two = packed_iterator(source, spec), packed_iterator(source, spec)
    chex.assert_trees_all_equal([next(one) for _ in range(3)], [next(two) for _ in range(3)])


def test_packing_leaves_less_padding_than_one_sample_per_row():
    source = Source(n=240, seed=5)
    packed = [padding_fraction(b) for b in packed_iterator(source, PackingSpec(max_len=48, max_images=3), 8)]
    ds, _ = build_dataset(source, transform(source), batch_size=8, collate=Collate(48, 0, max_images=2),
                          max_skip_fraction=0.5)
    padded = [padding_fraction(b) for b in ds]
    assert np.mean(packed) < 0.5 * np.mean(padded), (np.mean(packed), np.mean(padded))


def test_fields_the_packer_cannot_place_are_an_error():
    source = Source(n=8)
    bad = lambda r: {**transform(source)(r), "audio_features": np.zeros((5, 80), np.float32)}  # noqa: E731
    ds, _ = build_dataset(source, bad, batch_size=2, packing=PackingSpec(max_len=48, max_images=3))
    with pytest.raises(ValueError, match="carry audio"):
        next(iter(ds))
