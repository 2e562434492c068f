"""The trainer's fields (common.trainer.Trainer / TrainProgram), shared by every training config: each family's
base config starts from `trainer_config(...)` with its own values, then adds its model, tokenizer, data and
optimizer. The fields, their types and defaults are `common.trainer.TrainerSettings`, which is also how the trainer
reads them (typed and checked). `logical_axis_rules` is the sharding rules table (logical axis name -> mesh axis, a
tuple of mesh axes or None), MaxText's field of the same name; the default is the library's table,
common.sharding.LOGICAL_AXIS_RULES.
"""
import ml_collections

from common.trainer import TrainerSettings

# The trainer's fields and their defaults: common.trainer.TrainerSettings, the one place they are defined.
TRAINER_DEFAULTS = TrainerSettings().to_dict()


def trainer_config(**fields) -> ml_collections.ConfigDict:
    """A ConfigDict of the trainer's fields: TRAINER_DEFAULTS with `fields` replacing them (unknown names raise, and
    so do values TrainerSettings refuses)."""
    unknown = set(fields) - set(TRAINER_DEFAULTS)
    if unknown:
        raise ValueError(f"not trainer fields: {sorted(unknown)}; known: {sorted(TRAINER_DEFAULTS)}")
    TrainerSettings.from_config(fields)  # checked now, not at the first step
    return ml_collections.ConfigDict({**TRAINER_DEFAULTS, **fields})
