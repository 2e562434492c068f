"""The data side of every family's training task: its named datasets (`config.data.datasets`) turned into the
trainer's iterators, dataset weights and (for the ahead-of-time planner, `common.aot`) batch shapes.

A family says, per dataset spec, where the records come from (`make_source(spec, split)`), how one record becomes a
row of tokens and media (`make_transform(spec)`, raising `BadRecord` to have it skipped and counted), how rows are
batched (`collate_for(spec)`) or packed (`packing_for(spec)`, None when packing is off) and what media one row holds
(`media_shapes(spec)`). Everything else (per-host batch, seeds per dataset name, skip accounting, resumable
iterators, held-out batches) is the same for Flamingo, LLaVA and VITA, and lives here once.

    spec -> source(split) -> transform -> collate | pack -> DataIterator per dataset -> the trainer's mixture
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from common.data.packing import PackingSpec, packed_batch_spec
from common.data.pipeline import Collate, DataIterator, collated_batch_spec, task_iterator
from common.lm import LMConfig, matmul_flops_per_token
from common.config_sections import plain
from common.trainer import TrainerSettings


@dataclasses.dataclass(frozen=True)
class MediaShapes:
    """What one (unpacked) row holds besides tokens: `images` its image stack [n, ...] (None: text only), `audio`
    its speech features [frames, dims] (None: the batch has no audio key)."""

    images: tuple[int, ...] | None = None
    audio: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's named datasets and the four per-dataset functions a family gives (module docstring).

    config: the training config (batch_size, seed, eval_batches, data: max_skip_fraction, num_threads, ...);
    datasets: {name: spec}, each spec a plain dict with at least `max_len` (and optionally `batch_size`, `weight`).
    """

    config: Any
    datasets: Mapping[str, dict]
    make_source: Callable[[dict, str], Any]
    make_transform: Callable[[dict], Callable[[dict], dict]]
    collate_for: Callable[[dict], Collate]
    packing_for: Callable[[dict], PackingSpec | None]
    media_shapes: Callable[[dict], MediaShapes]

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("no training data: set config.data.datasets")
        for name, spec in self.datasets.items():
            if "max_len" not in spec:
                raise ValueError(f"dataset {name!r} has no max_len")

    # -- what the trainer reads -----------------------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        """{name: mixture weight} (default 1)."""
        return {name: float(spec.get("weight", 1.0)) for name, spec in self.datasets.items()}

    @functools.cached_property
    def settings(self) -> TrainerSettings:
        """The config's trainer fields (batch size, seed, eval batches, lm_loss), read once."""
        return TrainerSettings.from_config(self.config)

    def lm_flops_per_example(self, lm_config: LMConfig) -> dict[str, float]:
        """{name: training FLOPs of one max_len example through the LM `lm_config`} (3x the forward matmuls)."""
        return {name: 3.0 * matmul_flops_per_token(lm_config, int(spec["max_len"])) * int(spec["max_len"])
                for name, spec in self.datasets.items()}

    @property
    def eval_batches(self) -> int:
        """How many held-out batches the trainer's evaluation reads (config.eval_batches; 0 = none)."""
        return self.settings.eval_batches

    def global_batch(self, spec: dict) -> int:
        """The dataset's global batch: its own `batch_size`, else the config's."""
        return int(spec.get("batch_size") or self.settings.batch_size)

    def iterator(self, name: str, spec: dict, shard, split: str, shuffle: bool) -> DataIterator:
        """One dataset's resumable iterator over this host's rows of every global batch (`shard`: a DataShard)."""
        return task_iterator(name, self.make_source(spec, split), self.make_transform(spec),
                             batch_size=shard.local_batch(self.global_batch(spec)), shard=(shard.index, shard.count),
                             seed=self.settings.seed, data_config=plain(self.config.data),
                             collate=self.collate_for(spec), shuffle=shuffle, num_epochs=None,
                             packing=self.packing_for(spec))

    def train_data(self, shard) -> dict[str, DataIterator]:
        """{name: shuffled, endlessly repeated iterator over the train split}: the trainer's `make_train_data`."""
        return {name: self.iterator(name, spec, shard, "train", True) for name, spec in self.datasets.items()}

    def eval_data(self, shard) -> Iterator[dict]:
        """`eval_batches` batches of the first dataset (by name)'s validation split, in order."""
        name, spec = sorted(self.datasets.items())[0]
        batches = self.iterator(name, spec, shard, "validation", False)
        return (next(batches) for _ in range(self.eval_batches))

    def batch_spec(self) -> dict[str, dict]:
        """{name: the batch the pipeline makes, as ShapeDtypeStructs}: what `common.aot` lowers a step with."""

        def one(spec):
            batch, media, packing = self.global_batch(spec), self.media_shapes(spec), self.packing_for(spec)
            if packing is not None:
                return packed_batch_spec(packing, batch, None if media.images is None else media.images[1:],
                                         None if media.audio is None else media.audio[-1])
            return collated_batch_spec(self.collate_for(spec), batch, images=media.images, audio=media.audio)

        return {name: one(spec) for name, spec in self.datasets.items()}
