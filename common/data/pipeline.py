"""grain input pipelines: shuffle, per-host shard, bad-record skipping, batching, and a checkpointable iterator.

    source (random access) -> [shard host i of n] -> shuffle(seed) -> repeat(epochs) -> map(transform, skip bad)
      -> filter(None) -> batch(collate) -> DataIterator (get_state / set_state, skip counts included)

A transform maps one record to a dict of numpy arrays or raises BadRecord; `Collate` pads a list of them into a
batch: input_ids/loss_mask/attention_mask/positions [B, max_len], images float32 [B, max_images, H, W, 3] +
image_mask [B, max_images], audio features [B, max_frames, 80] + audio_mask.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable

import jax
import numpy as np

from common.data import image_ops, packing as packing_lib
from common.data.batching import fit_length, pad_batch, tokenize_segments
from common.data.records import BadRecord, SkipCounter, collect_notes


class Skipped:
    """What SafeTransform returns for a bad record; CountingFilter counts and drops it."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


class SafeTransform:
    """Runs `fn`; a BadRecord becomes a `Skipped` marker instead of an exception (transforms run in prefetch
    threads, so counting happens later, in CountingFilter, in consumption order)."""

    def __init__(self, fn: Callable[[dict], dict]):
        self.fn = fn

    def __call__(self, record):
        if isinstance(record, dict) and "_bad" in record:  # a loader already found the record unreadable
            return Skipped(*record["_bad"])
        try:
            with collect_notes() as c:
                out = self.fn(record)
        except BadRecord as e:
            return Skipped(e.reason, e.detail)
        if c.notes and isinstance(out, dict):
            out["_notes"] = c.notes
        return out


class CountingFilter:
    """Counts every record as it is consumed (ok or skipped, per reason) and drops the skipped ones. Counting at
    consumption keeps the counts consistent with the iterator state saved in a checkpoint."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, x) -> bool:
        if isinstance(x, Skipped):
            self.counter.skip(x.reason, x.detail)
            return False
        if isinstance(x, dict):
            for n in x.pop("_notes", ()):
                self.counter.note(n)
        self.counter.ok()
        return True


def shard_for_host(shard) -> tuple[int, int]:
    """None -> (0, 1); 'jax' -> (jax.process_index(), jax.process_count()); (i, n) as given."""
    if shard is None:
        return 0, 1
    if shard == "jax":
        import grain

        opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
        return opts.shard_index, opts.shard_count
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"bad shard {shard}")
    return int(i), int(n)


def build_dataset(
    source,
    transform: Callable[[dict], dict],
    *,
    batch_size: int,
    collate: Callable | None = None,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard=None,
    counter: SkipCounter | None = None,
    max_skip_fraction: float = 0.05,
    drop_remainder: bool = True,
    num_threads: int = 0,
    packing=None,
):
    """-> (grain IterDataset of batches, SkipCounter). num_epochs=None repeats forever.

    Host i of n reads records i, i+n, ... (all hosts get the same count). num_threads: transform threads
    (0 = in the consuming thread; 2 suits a 2-core machine). Bad records are skipped and counted; past
    `max_skip_fraction` of the records seen (after 100) iteration stops with TooManyBadRecords.
    packing: a `common.data.packing.PackingSpec` to pack several samples per row (then `collate` is unused;
    samples that fit no row are skipped and counted).
    """
    import grain

    counter = counter or SkipCounter(max_skip_fraction)
    if len(source) == 0:
        raise ValueError("the data source is empty")
    ds = grain.MapDataset.source(source)
    i, n = shard_for_host(shard)
    if n > 1:
        per_host = len(source) // n
        ds = ds[i : per_host * n : n]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if packing is not None:
        transform = packing_lib.FitsRow(transform, packing)
    ds = ds.map(SafeTransform(transform))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 8)))
    ds = ds.filter(CountingFilter(counter))
    if packing is not None:
        ds = packing_lib.pack(ds, packing, batch_size, seed=seed)
        collate = packing_lib.PackedCollate(packing)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)
    return ds, counter


def task_iterator(name: str, source, transform: Callable[[dict], dict], *, batch_size: int, shard: tuple[int, int],
                  seed: int, data_config, collate: Callable | None = None, shuffle: bool = True,
                  num_epochs: int | None = None, packing=None) -> DataIterator:
    """One named dataset of a training task as a resumable `DataIterator`: `build_dataset` seeded per dataset name,
    with the data config's `max_skip_fraction` and `num_threads`, its skip counter named after the dataset."""
    ds, counter = build_dataset(source, transform, batch_size=batch_size, collate=collate,
                                seed=int(seed) + zlib.crc32(name.encode()) % 1000, shuffle=shuffle,
                                num_epochs=num_epochs, shard=shard,
                                max_skip_fraction=float(data_config.get("max_skip_fraction", 0.05)),
                                num_threads=int(data_config.get("num_threads", 0)), packing=packing)
    counter.name = name
    return DataIterator(ds, counter)


class DataIterator:
    """Iterator over a `build_dataset` pipeline whose position and skip counts can be saved and restored."""

    def __init__(self, dataset, counter: SkipCounter):
        self._it = iter(dataset)
        self.counter = counter

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._it)
        except StopIteration:
            self.counter.check(final=True)
            raise

    def get_state(self) -> dict:
        s = self._it.get_state()
        return {"grain": s.decode() if isinstance(s, bytes) else s, "skips": self.counter.state()}

    def set_state(self, state: dict) -> None:
        self._it.set_state(state["grain"])
        self.counter.restore(state["skips"])

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, path: str) -> None:
        with open(path) as f:
            self.set_state(json.load(f))


# ----------------------------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------------------------
class Collate:
    """Pads token fields to max_len, media to max_images / max_audio_frames (with masks)."""

    def __init__(self, max_len: int, pad_id: int, max_images: int | None = None, max_audio_frames: int | None = None,
                 side: str = "right"):
        self.max_len, self.pad_id, self.side = max_len, pad_id, side
        self.max_images, self.max_audio_frames = max_images, max_audio_frames

    def __call__(self, examples: list[dict]) -> dict:
        media = {}
        if "images" in examples[0]:
            n = self.max_images or max(len(e["images"]) for e in examples)
            shape = next(e["images"].shape[1:] for e in examples)
            imgs = np.zeros((len(examples), n, *shape), np.float32)
            mask = np.zeros((len(examples), n), bool)
            for b, e in enumerate(examples):
                k = min(len(e["images"]), n)
                imgs[b, :k], mask[b, :k] = e["images"][:k], True
            media.update(images=imgs, image_mask=mask)
        if "audio_features" in examples[0]:
            T = self.max_audio_frames or max(len(e["audio_features"]) for e in examples)
            feats = np.zeros((len(examples), T, examples[0]["audio_features"].shape[-1]), np.float32)
            amask = np.zeros((len(examples), T), bool)
            for b, e in enumerate(examples):
                k = min(len(e["audio_features"]), T)
                feats[b, :k], amask[b, :k] = e["audio_features"][:k], True
            media.update(audio_features=feats, audio_mask=amask)
        tok = [{k: v for k, v in e.items() if k in ("input_ids", "loss_mask")} for e in examples]
        out = pad_batch(tok, self.max_len, self.pad_id, self.side)
        out.update(media)
        return out


def collated_batch_spec(collate: Collate, batch_size: int, images: tuple[int, ...] | None = None,
                        audio: tuple[int, int] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch `collate` makes of `batch_size` full-length examples, as ShapeDtypeStructs: what the ahead-of-time
    planner (common.aot) lowers a train step with. One example is collated for real (so keys, dtypes and padding
    are the pipeline's own); images: one example's image stack [n, ...]; audio: its features [frames, dims]."""
    example = {"input_ids": np.zeros(collate.max_len, np.int32), "loss_mask": np.zeros(collate.max_len, np.int32)}
    if images is not None:
        example["images"] = np.zeros(images, np.float32)
    if audio is not None:
        example["audio_features"] = np.zeros(audio, np.float32)
    one = collate([example])
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in one.items()}


# ----------------------------------------------------------------------------------------------------------------
# Ready-made transforms for the shapes dataset (and the user formats, which yield the same record fields).
# Every image transform takes `convert_image_modes` (default False): greyscale / RGBA / CMYK / 16-bit / palette
# images are skipped and counted per reason, or, when True, converted to RGB and counted as conversions.
# ----------------------------------------------------------------------------------------------------------------
def clip_image(img, size: int, convert_image_modes: bool = False) -> np.ndarray:
    img = image_ops.decode_image(img, convert_image_modes=convert_image_modes)
    return image_ops.clip_preprocess(img, size) if img.shape[:2] != (size, size) else image_ops.normalize(img)


class ImageTextPairTransform:
    """{image, caption} -> images [1, S, S, 3] + tokens of `{bos}{caption}{eos}`: a dual encoder's pair
    (common.contrastive; the text side is read at its last real token)."""

    def __init__(self, tokenizer, max_len: int = 32, image_size: int = 224, over_length: str = "truncate",
                 convert_image_modes: bool = False):
        self.tok, self.max_len, self.image_size, self.over_length = tokenizer, max_len, image_size, over_length
        self.convert_image_modes = convert_image_modes

    def __call__(self, r: dict) -> dict:
        ex = tokenize_segments(self.tok, [(r["caption"], True)], add_bos=self.tok.bos_id is not None, add_eos=True)
        ex = fit_length(ex, self.max_len, self.over_length)
        ex["images"] = clip_image(r["image"], self.image_size, self.convert_image_modes)[None]
        return ex
