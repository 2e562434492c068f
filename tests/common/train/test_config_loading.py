"""The one config loader (configs.load_config): names, file paths and stage arguments give the same config; dotted
overrides from a dict or `--config.a.b=value` arguments; unknown fields and malformed overrides raise; the trainer's
fields are read typed and checked (common.trainer.TrainerSettings)."""
import os
import pathlib

import pytest

import configs
from configs import apply_overrides, load_config, split_config_overrides
from common.trainer import TrainerSettings
from configs.trainer import TRAINER_DEFAULTS, trainer_config

REPO = str(pathlib.Path(__file__).resolve().parents[3])  # tests/common/train/ -> the repository


def test_every_spelling_loads_the_same_config():
    by_name = load_config("llava/tiny_stage1").to_dict()
    assert load_config("llava.tiny_stage1").to_dict() == by_name
    assert load_config("configs/llava/tiny_stage1.py").to_dict() == by_name
    assert load_config(os.path.join(REPO, "configs", "llava", "tiny_stage1.py")).to_dict() == by_name
    assert load_config("vita/stage_7b:1.2").optimizer.lr == 2e-5  # an argument after the colon


def test_overrides_from_a_dict_and_from_the_command_line():
    argv = ["--workdir", "w", "--config.total_steps=7", "--config.optimizer.lr=0.5", "--config.data.pack=True",
            "--config.tokenizer.kind=shapes_bpe"]
    rest, overrides = split_config_overrides(argv)
    assert rest == ["--workdir", "w"]
    config = load_config("llava/tiny_stage1", overrides)
    assert (config.total_steps, config.optimizer.lr, config.data.pack, config.tokenizer.kind) == (7, 0.5, True,
                                                                                               "shapes_bpe")
    apply_overrides(config, {"mesh.fsdp": 2})
    assert config.mesh.fsdp == 2
    with pytest.raises(KeyError, match="no field 'nope'"):
        apply_overrides(config, ["nope.lr=1"])
    with pytest.raises(ValueError, match="field=value"):
        apply_overrides(config, ["total_steps"])


def test_trainer_fields_come_from_one_base():
    config = trainer_config(total_steps=3)
    assert config.total_steps == 3 and set(config.keys()) == set(TRAINER_DEFAULTS)
    with pytest.raises(ValueError, match="not trainer fields"):
        trainer_config(totl_steps=3)
    for name in ("lm/tiny", "flamingo/tiny", "llava/tiny_stage2", "vita/tiny_stage2_2", "llava/stage2_7b"):
        assert set(TRAINER_DEFAULTS) <= set(load_config(name).keys()), name
    assert configs.load_config("lm/tiny").logical_axis_rules == TRAINER_DEFAULTS["logical_axis_rules"]


def test_trainer_settings_are_typed_defaulted_and_checked():
    settings = TrainerSettings.from_config(load_config("llava/tiny_stage2", ["total_steps=7", "peak_flops=2"]))
    assert settings.total_steps == 7 and isinstance(settings.peak_flops, float) and settings.peak_flops == 2.0
    assert settings == TrainerSettings.from_config(settings.to_dict())
    partial = TrainerSettings.from_config({"total_steps": 5, "mesh": {"fsdp": 2}, "eval_every": None})
    assert (partial.total_steps, partial.batch_size, partial.mesh, partial.eval_every) == (5, 16, {"fsdp": 2}, 0)
    assert TrainerSettings.from_config({"logical_axis_rules": [["act_batch", ["data", "fsdp"]]]}).logical_axis_rules \
        == (("act_batch", ("data", "fsdp")),)
    with pytest.raises(ValueError, match="multi_dataset_mode must be 'accumulate' or 'round_robin'"):
        trainer_config(multi_dataset_mode="mix")
    with pytest.raises(ValueError, match="mesh axes are"):
        TrainerSettings.from_config({"mesh": {"model": 2}})
    with pytest.raises(ValueError, match="logical_axis_rules maps 'act_batch' to 'model'"):
        TrainerSettings.from_config({"logical_axis_rules": [["act_batch", "model"]]})
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1"):
        TrainerSettings.from_config({"grad_accum_steps": 0})


def test_reproduce_stages_take_command_line_overrides():
    from llava_jax import reproduce as llava_reproduce
    from vita_jax import reproduce as vita_reproduce

    argv, overrides = split_config_overrides(["--workdir", "w", "--config.data.num_threads=0", "--config.seed=3"])
    config = llava_reproduce.stage_config("stage1", "w", 0.5, overrides)
    assert (config.data.num_threads, config.seed, config.init_from) == (0, 3, os.path.join("w", "stage0"))
    config = vita_reproduce.stage_config("2_1", 10, 1.0, 0, ["optimizer.lr=0.25"])
    assert config.optimizer.lr == 0.25 and config.total_steps == 10
