"""Sequence packing for every family: several whole samples in one row of `max_len` tokens, their images (and
the media-to-segment map) in the same row, instead of one sample per row padded to the longest.

    examples -> [FitsRow: a sample that cannot fit one row is a counted skip, never cut] -> [PackableExample]
      -> grain's best-fit (or first-fit) packer over `num_bins` open rows -> batch(PackedCollate)

grain's packer (`grain.experimental.BestFitPackIterDataset`) keeps every sample whole, packs each field along its
first axis within its own budget (tokens: max_len, images: max_images per row) and numbers the samples of a row
1, 2, ... in `<field>_segment_ids` (0 = padding); its iterator state is part of the pipeline's checkpointed state,
so exact resume holds. `PackedCollate` turns the rows into the batch the models read:

    input_ids, loss_mask, attention_mask, positions, segment_ids   [B, max_len]  (positions restart per sample)
    images [B, max_images, H, W, C], image_mask [B, max_images], image_segment_ids [B, max_images]
    audio_features [B, max_audio_clips, max_audio_frames, D], audio_mask [B, max_audio_clips, max_audio_frames],
      audio_segment_ids [B, max_audio_clips]   (a sample's clip keeps its own slot, frames left-aligned)

The first token of every sample is never a target (it would be predicted from the previous sample's last token),
and the LM core attends only within a segment (`common.lm.DecoderLM(segment_ids=...)`). A sample's image slots
follow the order of its placeholders, so LLaVA / VITA's in-order scatter puts every sample's features into its own
span; `image_segment_ids` lets a model check that.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from common.data.records import TOO_LONG, BadRecord

TOO_MANY_IMAGES = "too_many_images"
PACK_ALGORITHMS = ("best_fit", "first_fit")


@dataclasses.dataclass(frozen=True)
class PackingSpec:
    """How rows are packed: `max_len` tokens and `max_images` image slots per row (None: text only), over
    `num_bins` rows kept open at once (None: the batch size); algorithm 'best_fit' or 'first_fit'; pad_id fills
    the token slots no sample takes; `max_audio_clips` audio clips per row of up to `max_audio_frames` frames
    each (None: no audio)."""

    max_len: int
    max_images: int | None = None
    num_bins: int | None = None
    algorithm: str = "best_fit"
    pad_id: int = 0
    max_audio_clips: int | None = None
    max_audio_frames: int | None = None

    def __post_init__(self):
        if self.max_len < 2:
            raise ValueError(f"packing max_len must be >= 2, got {self.max_len}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"packing max_images must be >= 1 (or None for text only), got {self.max_images}")
        if (self.max_audio_clips is None) != (self.max_audio_frames is None):
            raise ValueError("packing audio needs both max_audio_clips (per row) and max_audio_frames (per clip)")
        if self.algorithm not in PACK_ALGORITHMS:
            raise ValueError(f"packing algorithm must be one of {PACK_ALGORITHMS}, got {self.algorithm!r}")


def packing_from_config(spec: dict, data_config: dict, pad_id: int, default_max_images: int | None,
                        default_max_audio_clips: int | None = None,
                        max_audio_frames: int | None = None) -> PackingSpec | None:
    """A dataset's packing from a training config: `pack: true`, data-wide or in the dataset's spec (as every setting
    below; the dataset's spec wins). Rows of the dataset's `max_len`; `max_images_per_row` image slots (default
    `default_max_images`; None for text only); `max_audio_clips_per_row` (default `default_max_audio_clips`; None:
    no audio) of `max_audio_frames` each; `pack_bins` open rows (default: the batch); `pack_algorithm` (best_fit).
    None when packing is off."""
    if not spec.get("pack", data_config.get("pack", False)):
        return None
    setting = lambda key, default: spec.get(key) or data_config.get(key) or default  # noqa: E731
    max_images = setting("max_images_per_row", default_max_images)
    clips = setting("max_audio_clips_per_row", default_max_audio_clips)
    return PackingSpec(int(spec["max_len"]), None if max_images is None else int(max_images),
                       num_bins=setting("pack_bins", None), algorithm=setting("pack_algorithm", "best_fit"),
                       pad_id=int(pad_id), max_audio_clips=None if clips is None else int(clips),
                       max_audio_frames=None if clips is None else int(max_audio_frames))


def packed_model_inputs(batch: dict) -> dict:
    """The keyword inputs a packed batch adds to a model call (empty for a padded batch): segment_ids and
    position_ids, and image_segment_ids when the batch has images."""
    if "segment_ids" not in batch:
        return {}
    out = {"segment_ids": batch["segment_ids"], "position_ids": batch["positions"]}
    for key in ("image_segment_ids", "audio_segment_ids"):
        if key in batch:
            out[key] = batch[key]
    return out


class FitsRow:
    """Wraps a sample transform: a sample longer than a row, or with more images than a row holds, raises
    BadRecord (the pipeline skips and counts it per reason) instead of reaching the packer, which would fail."""

    def __init__(self, transform, spec: PackingSpec):
        self.transform, self.spec = transform, spec

    def __call__(self, record):
        example = self.transform(record)
        n = len(example["input_ids"])
        if n > self.spec.max_len:
            raise BadRecord(TOO_LONG, f"{n} tokens > the packed row's {self.spec.max_len}")
        if "images" in example:
            if self.spec.max_images is None:
                raise ValueError("the samples carry images: set the packing's max_images (images per row)")
            if len(example["images"]) > self.spec.max_images:
                raise BadRecord(TOO_MANY_IMAGES, f"{len(example['images'])} images > the packed row's "
                                                 f"{self.spec.max_images}")
        frames = len(example.get("audio_features", ()))
        if frames:
            if self.spec.max_audio_clips is None:
                raise ValueError("the samples carry audio: set the packing's max_audio_clips and max_audio_frames")
            if frames > self.spec.max_audio_frames:
                raise BadRecord(TOO_LONG, f"{frames} audio frames > a packed clip's {self.spec.max_audio_frames}")
        return example


class PackableExample:
    """An example as the packer's fields: input_ids int32 [L], loss_mask bool [L], images [n, H, W, C], and its audio
    clip (audio_features [F, D], F = 0 for none) as audio_clips [0 or 1, max_audio_frames, D] + audio_frames [0 or 1].
    Any other field is an error: packing would drop it."""

    FIELDS = ("input_ids", "loss_mask", "images", "audio_features")

    def __init__(self, spec: PackingSpec):
        self.spec = spec

    def __call__(self, example: dict) -> dict:
        extra = sorted(set(example) - set(self.FIELDS))
        if extra:
            raise ValueError(f"packing does not know how to place the fields {extra} of a sample")
        n = len(example["input_ids"])
        out = {"input_ids": np.asarray(example["input_ids"], np.int32),
               "loss_mask": np.asarray(example.get("loss_mask", np.ones(n, bool)), bool)}
        if "images" in example:
            out["images"] = np.asarray(example["images"], np.float32)
        if self.spec.max_audio_clips is not None:
            if "audio_features" not in example:
                raise ValueError("packing with audio needs every sample's audio_features ([0, D] for none)")
            feats = np.asarray(example["audio_features"], np.float32)  # [F, D]
            frames = len(feats)
            clip = np.zeros((1, self.spec.max_audio_frames, feats.shape[-1]), np.float32)
            clip[0, :frames] = feats
            keep = slice(0, 1 if frames else 0)  # no clip: no slot
            out["audio_clips"], out["audio_frames"] = clip[keep], np.asarray([frames], np.int32)[keep]
        return out


def pack(dataset, spec: PackingSpec, batch_size: int, seed: int = 0):
    """grain IterDataset of examples -> IterDataset of packed rows (grain's packer, checkpointable)."""
    import grain

    length_struct = {"input_ids": spec.max_len, "loss_mask": spec.max_len}
    padding_struct = {"input_ids": spec.pad_id, "loss_mask": False}
    if spec.max_images is not None:
        length_struct["images"], padding_struct["images"] = spec.max_images, 0.0
    if spec.max_audio_clips is not None:
        for key, pad in (("audio_clips", 0.0), ("audio_frames", 0)):
            length_struct[key], padding_struct[key] = spec.max_audio_clips, pad
    packer = (grain.experimental.BestFitPackIterDataset if spec.algorithm == "best_fit"
              else grain.experimental.FirstFitPackIterDataset)
    dataset = dataset.map(PackableExample(spec))
    return packer(dataset, length_struct=length_struct, padding_struct=padding_struct,
                  num_packing_bins=int(spec.num_bins or batch_size), seed=int(seed), shuffle_bins=True)


class PackedCollate:
    """Packed rows (grain's packer output) -> the batch the models read (see the module docstring)."""

    def __init__(self, spec: PackingSpec):
        self.spec = spec

    def __call__(self, rows: list[dict]) -> dict:
        stack = lambda key: np.stack([r[key] for r in rows])  # noqa: E731
        segment_ids = stack("input_ids_segment_ids")  # [B, L]
        positions = stack("input_ids_positions")
        out = {"input_ids": stack("input_ids"), "segment_ids": segment_ids, "positions": positions,
               "attention_mask": segment_ids > 0,
               # a sample's first token is not a target: it would be predicted from the previous sample
               "loss_mask": stack("loss_mask") & (segment_ids > 0) & (positions > 0)}
        if "images" in rows[0]:
            image_segment_ids = stack("images_segment_ids")  # [B, N]
            out.update(images=stack("images"), image_mask=image_segment_ids > 0, image_segment_ids=image_segment_ids)
        if "audio_clips" in rows[0]:
            frames = stack("audio_frames")  # [B, A]
            out.update(audio_features=stack("audio_clips"),  # [B, A, F, D]
                       audio_mask=np.arange(self.spec.max_audio_frames) < frames[..., None],  # [B, A, F]
                       audio_segment_ids=stack("audio_clips_segment_ids"))
        return out


def packed_batch_spec(spec: PackingSpec, batch_size: int, image_shape: tuple[int, ...] | None = None,
                      audio_dim: int | None = None) -> dict:
    """The batch PackedCollate makes, as ShapeDtypeStructs (for the ahead-of-time planner)."""
    row = {"input_ids": np.zeros(spec.max_len, np.int32), "input_ids_segment_ids": np.zeros(spec.max_len, np.int32),
           "input_ids_positions": np.zeros(spec.max_len, np.int32), "loss_mask": np.zeros(spec.max_len, bool)}
    if image_shape is not None:
        n = spec.max_images or 1
        row.update(images=np.zeros((n,) + tuple(image_shape), np.float32),
                   images_segment_ids=np.zeros(n, np.int32))
    if spec.max_audio_clips is not None:
        a = spec.max_audio_clips
        row.update(audio_clips=np.zeros((a, spec.max_audio_frames, audio_dim), np.float32),
                   audio_frames=np.zeros(a, np.int32), audio_clips_segment_ids=np.zeros(a, np.int32))
    one = PackedCollate(spec)([row])
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in one.items()}


def padding_fraction(batch: dict) -> float:
    """Share of a batch's token slots that hold no sample (padding)."""
    mask = np.asarray(batch["attention_mask"])
    return float(1.0 - mask.sum() / mask.size)
