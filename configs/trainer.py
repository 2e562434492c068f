"""The trainer's fields (common.trainer.Trainer / TrainProgram), shared by every training config: each family's
base config starts from `trainer_config(...)` with its own values, then adds its model, tokenizer, data and
optimizer. `logical_axis_rules` is the sharding rules table (logical axis name -> mesh axis, a tuple of mesh axes or
None), MaxText's field of the same name; the default is the library's table, common.sharding.LOGICAL_AXIS_RULES.
"""
import ml_collections

from common.sharding import LOGICAL_AXIS_RULES

TRAINER_DEFAULTS = dict(
    seed=0,
    total_steps=1000,
    batch_size=16,  # global, in sequences
    grad_accum_steps=1,  # micro-batches summed inside one step
    log_every=10,
    checkpoint_every=1000,
    keep_checkpoints=3,
    async_checkpoints=True,
    eval_every=0,
    eval_batches=0,
    mesh=dict(data=-1, fsdp=1, tensor=1),  # -1: the remaining devices
    multi_dataset_mode="accumulate",  # or 'round_robin' (one dataset per step)
    max_nonfinite_in_a_row=10,
    peak_flops=0.0,  # per device, for MFU; 0 = not reported
    logical_axis_rules=LOGICAL_AXIS_RULES,
)


def trainer_config(**fields) -> ml_collections.ConfigDict:
    """A ConfigDict of the trainer's fields: TRAINER_DEFAULTS with `fields` replacing them (unknown names raise)."""
    unknown = set(fields) - set(TRAINER_DEFAULTS)
    if unknown:
        raise ValueError(f"not trainer fields: {sorted(unknown)}; known: {sorted(TRAINER_DEFAULTS)}")
    return ml_collections.ConfigDict({**TRAINER_DEFAULTS, **fields})
