"""Typed config sections (common.config_sections): defaults, conversion, and a clear error for unknown fields, for
every section a family task reads."""
import dataclasses

import ml_collections
import pytest

from common.config_sections import config_section, has_section, section_fields
from common.lora import ALL_LINEAR, LoraSettings
from common.task_utils import lora_config_from
from common.trainer import TrainerSettings
from configs import load_config
from flamingo_jax.task import ContrastiveSettings, InitLM, InitVision
from llava_jax.task import EvalVQA, InitCheckpoint
from vita_jax.codec_train import CodecLossWeights, CodeRestart, discriminators_from
from vita_jax.speech_decoder import SpeechDecoderConfig


@dataclasses.dataclass(frozen=True)
class Example:
    count: int = 1
    scale: float = 1.0
    name: str = ""
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    extra: dict = dataclasses.field(default_factory=dict)


def test_absent_section_and_none_fields_take_the_defaults():
    assert config_section(ml_collections.ConfigDict(), "example", Example) == Example()
    config = ml_collections.ConfigDict({"example": {"count": None, "name": "x"}})
    assert config_section(config, "example", Example) == Example(name="x")
    assert config_section({"example": None}, "example", Example) == Example()


def test_values_take_their_fields_types():
    config = ml_collections.ConfigDict({"example": {"count": 3.0, "scale": 2, "flag": 1, "sizes": [4, 5],
                                                    "extra": {"a": [1, 2]}}})
    got = config_section(config, "example", Example)
    assert got == Example(count=3, scale=2.0, flag=True, sizes=(4, 5), extra={"a": (1, 2)})
    assert type(got.count) is int and type(got.scale) is float and type(got.flag) is bool


def test_an_unknown_field_names_the_section_and_its_fields():
    config = ml_collections.ConfigDict({"init_lm": {"hfdir": "/somewhere"}})
    with pytest.raises(ValueError, match=r"config.init_lm has no field 'hfdir'.*hf_dir"):
        config_section(config, "init_lm", InitLM)


def test_has_section():
    assert not has_section({}, "code_restart")
    assert not has_section({"code_restart": {}}, "code_restart")
    assert has_section({"code_restart": {"decay": 0.5}}, "code_restart")


def test_trainer_settings_read_only_their_own_fields():
    config = ml_collections.ConfigDict({"batch_size": "8", "mesh": {"fsdp": 2.0}, "init_lm": {"workdir": ""},
                                        "async_checkpoints": 0})
    settings = TrainerSettings.from_config(config)
    assert settings.batch_size == 8 and settings.mesh == {"fsdp": 2} and settings.async_checkpoints is False
    with pytest.raises(ValueError, match="mesh axes"):
        TrainerSettings.from_config({"mesh": {"model": 2}})


def test_lora_section():
    assert lora_config_from({"lora": {"rank": 0, "alpha": 0.0, "targets": ()}}) is None
    lora = lora_config_from({"lora": {"rank": 4}}, prefix="lm/")
    assert (lora.rank, lora.alpha, lora.targets, lora.prefix) == (4, 8.0, ALL_LINEAR, "lm/")
    lora = lora_config_from({"lora": {"rank": 128, "alpha": 256, "targets": ["q", "v"]}})
    assert (lora.alpha, lora.targets) == (256.0, ("q", "v"))
    with pytest.raises(ValueError, match="config.lora has no field 'ranks'"):
        lora_config_from({"lora": {"ranks": 4}})
    assert LoraSettings().lora_config("lm/") is None


def test_family_sections_read_the_shipped_configs():
    """Every section a shipped config sets reads into its class (no field of a shipped config is unknown)."""
    llava = load_config("llava.tiny_stage2_lora")
    assert config_section(llava, "eval_vqa", EvalVQA).split == "validation"
    assert config_section(llava, "init_checkpoint", InitCheckpoint) == InitCheckpoint()
    assert config_section(llava, "lora", LoraSettings).rank == 8
    flamingo = load_config("flamingo.flamingo_3b")
    assert config_section(flamingo, "init_vision", InitVision).timm_nfnet.endswith("dm_nfnet_f6.dm_in1k")
    assert config_section(flamingo, "init_lm", InitLM).hf_dir.endswith("chinchilla_1.4b")
    vision = load_config("flamingo.tiny_vision")
    assert config_section(vision, "contrastive", ContrastiveSettings).projection_dim == 64
    codec = load_config("vita.tiny_stage3_1")
    assert config_section(codec, "code_restart", CodeRestart) == CodeRestart(decay=0.9, threshold=0.1)
    assert config_section(codec, "loss", CodecLossWeights).mel == 45.0
    disc = discriminators_from(codec)
    assert (disc.periods, disc.num_scales, disc.grouped, disc.channel_scale) == ((2, 3, 5, 7, 11), 1, False, 1 / 16)
    with pytest.raises(ValueError, match="config.discriminator has no field 'period'"):
        discriminators_from({"discriminator": {"period": (2,)}})
    decoder = config_section(load_config("vita.tiny_stage3_2"), "decoder", SpeechDecoderConfig)
    assert decoder.hidden_size == decoder.idim == 64


def test_init_lm_refuses_two_sources():
    with pytest.raises(ValueError, match="not both"):
        config_section({"init_lm": {"workdir": "a", "hf_dir": "b"}}, "init_lm", InitLM)


def test_section_fields_can_leave_unknown_keys_to_the_caller():
    assert section_fields({"count": 2, "other": 1}, Example, "x", strict=False) == {"count": 2}
