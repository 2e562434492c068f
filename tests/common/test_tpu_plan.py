"""Ahead-of-time TPU compilation on this CPU (libtpu's topology descriptions, no TPU): every family's tiny training
config compiles for a v5e 2x2 slice through `mmlm_jax.plan` (the trainer's own step), with fsdp's all-gathers and
gradient reductions in the optimized program; the splash program holds no [B, H, T, T] buffer while the masked
softmax's does; topology names and the HLO collective counter (trip counts, async chains) on fixed inputs."""
import importlib

import jax
import pytest

pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) compiles for TPU topologies")

from common import aot
from mmlm_jax import plan as plan_cli


def load(name: str):
    return importlib.import_module("configs." + name).get_config()


# The LLaVA and VITA towers and LMs at one layer (the step keeps every part: vision, speech encoder, projector, LM).
SMALLER = {
    "llava": {"text": dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64),
              "vision": dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_layers=1,
                             num_heads=2)},
    "vita": {"text": dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=48),
             "vision": dict(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=1),
             "audio": dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)},
}


# One dataset each (a step over several compiles one loss per dataset): Flamingo's interleaved image-text
# sequences, VITA's spoken questions about images (vision, speech encoder and LLM in one step).
@pytest.mark.slow
@pytest.mark.parametrize("family,name,dataset", [("lm", "lm.tiny", None), ("llava", "llava.tiny_stage2", None),
                                                 ("flamingo", "flamingo.tiny", "interleaved"),
                                                 ("vita", "vita.tiny_stage2_2", "spoken_qa")])
def test_tiny_config_compiles_for_a_tpu_slice(family, name, dataset):
    config = load(name)
    if dataset:
        config.data.datasets = {dataset: config.data.datasets[dataset]}
    for part, fields in SMALLER.get(family, {}).items():  # the family's whole step, at a size that compiles fast
        config.model[part].update(fields)
        for spec in config.data.datasets.values():
            spec.image_size = config.model.vision.image_size
    plan = plan_cli.plan(config, family, "v5e-4", mesh={"fsdp": -1}, config_name=name)
    assert plan["chip"] == "v5e" and plan["devices"] == 4 and plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    mem = plan["per_device_gb"]
    assert 0 < mem["params"] and 0 < mem["arguments"] and mem["total"] <= plan["hbm_gb"] and plan["fits"]
    # the state is an argument: its per-device shards are within the compiled program's arguments
    assert mem["params"] + mem["optimizer"] + mem["batch"] <= mem["arguments"] * 1.0001
    comms = plan["collectives"]
    assert comms.get("all-gather", {}).get("count", 0) > 0, comms  # fsdp: weights gathered for the matmuls
    assert comms.get("all-reduce", {}).get("count", 0) + comms.get("reduce-scatter", {}).get("count", 0) > 0, comms
    assert plan["bound_s"]["step"] > 0 and 0 < plan["mfu_ceiling"] <= 1
    assert plan["jax"] == jax.__version__ and plan["libtpu"]


def _attention_buffers(impl: str, block: int):
    config = load("lm.tiny")
    length = 1024
    config.batch_size = 4
    config.data.seq_len = length
    config.model.max_position_embeddings = length
    config.model.attention_impl = impl
    config.model.attention_block_size = block
    plan = aot.plan_train_step(config, plan_cli.make_task("lm", config)[0], aot.parse_topology("v5e:2x2"),
                               keep_hlo=True)
    return [shape for shape, _ in aot.largest_buffers(plan["_hlo"], top=50)], plan


@pytest.mark.slow
def test_splash_program_has_no_t_by_t_buffer():
    control, _ = _attention_buffers("xla", 0)  # one block: the masked softmax forms [B, H, T, T]
    assert any(",1024,1024]" in s for s in control), control[:5]
    splash, plan = _attention_buffers("splash", 64)
    assert not any(",1024,1024]" in s for s in splash), splash[:5]
    assert "tpu_custom_call" in plan["_hlo"]  # the Mosaic kernel, not the interpret-mode loop


@pytest.mark.parametrize("name,libtpu,chips", [("v5p-8", "v5p:2x2x1", 4), ("v5p-64", "v5p:2x4x4", 32),
                                               ("v4-16", "v4:2x2x2", 8), ("v5e-16", "v5e:4x4", 16),
                                               ("v6e-256", "v6e:16x16", 256), ("v5p:4x4x2", "v5p:4x4x2", 32)])
def test_topology_names(name, libtpu, chips):
    topology = aot.parse_topology(name)
    assert topology.libtpu_name == libtpu and topology.chips == chips


def test_bad_topology_names_are_named():
    with pytest.raises(ValueError, match="unknown TPU topology"):
        aot.parse_topology("h100-8")
    with pytest.raises(ValueError, match="no standard v5e slice"):
        aot.parse_topology("v5e-12")
    with pytest.raises(ValueError, match="TensorCores per chip"):
        aot.parse_topology("v5p-3")


HLO = """HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %ag = bf16[4,64]{1,0} all-gather(%x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}
  %ag.1 = bf16[4,64]{1,0} all-gather(%x), channel_id=2, replica_groups=[1,4]<=[4], frontend_attributes={chain_id="7"}
  %ag.2 = bf16[4,64]{1,0} all-gather(%x), channel_id=3, replica_groups=[1,4]<=[4], frontend_attributes={chain_id="7"}
  %f = f32[16,16]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %y)
}

%all-reduce-scatter.1 (input: f32[64,16]) -> f32[16,16] {
  %ar = f32[64,16]{1,0} all-reduce(%input), channel_id=7, replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %ds = f32[16,16]{1,0} dynamic-slice(%ar, %o, %z), dynamic_slice_sizes={16,16}
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

%cond.2 (p: (s32[], f32[8,16])) -> pred[] {
  %c = s32[]{:T(128)} constant(3)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%body.2 (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %cp = f32[8,16]{1,0} collective-permute(%x), channel_id=6, source_target_pairs={{0,1},{1,0}}
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %cp)
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %w = (s32[], f32[8,16]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %w.2 = (s32[], f32[8,16]) while(%init), condition=%cond.2, body=%body.2
  %ar = f32[8,16]{1,0} all-reduce(%g), channel_id=4, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %rs = f32[2,16]{1,0} reduce-scatter(%g), channel_id=5, replica_groups=mesh['x'=2,'y'=2] {'x','y'}, dimensions={0}
}
"""


def test_collectives_count_loop_trips_and_async_chains_once():
    """A 12-trip loop (known_trip_count), a 3-trip loop (its condition's bound), an async chain of two pieces, the TPU
    compiler's reduce-scatter fusion."""
    out = aot.collectives(HLO, devices=4)
    # in the 12-trip loop: one plain all-gather and one chain of two pieces (counted once) -> 24 per step
    assert out["all-gather"]["count"] == 24 and out["all-gather"]["bytes"] == 24 * 4 * 64 * 2
    assert out["all-gather"]["wire_bytes"] == pytest.approx(24 * 512 * 3 / 4)
    assert out["all-reduce"]["count"] == 1 and out["all-reduce"]["wire_bytes"] == pytest.approx(8 * 16 * 4 * 2 * 3 / 4)
    # one reduce-scatter in the entry, and the TPU compiler's form in the 12-trip loop (an all-reduce of the
    # [64, 16] gradient inside an all-reduce-scatter fusion: each device keeps [16, 16])
    rs_wire = 2 * 16 * 4 * 3 + 12 * 16 * 16 * 4 * 3
    assert out["reduce-scatter"]["count"] == 13 and out["reduce-scatter"]["wire_bytes"] == pytest.approx(rs_wire)
    # a loop without a known trip count (the TPU compiler's text): the bound of its condition `i < 3`
    assert out["collective-permute"]["count"] == 3 and out["collective-permute"]["bytes"] == 3 * 8 * 16 * 4
    assert out["while_loops_with_unknown_trips"] == 0


@pytest.mark.slow
def test_multi_slice_puts_the_data_axis_over_dcn():
    """Two v5e 2x2 slices: data = 2 spans the slices (DCN), fsdp = 4 stays inside each; the step compiles."""
    plan = plan_cli.plan(load("lm.tiny"), "lm", "v5e-4", num_slices=2, mesh={"fsdp": -1, "data": 2})
    assert plan["num_slices"] == 2 and plan["chips"] == 8 and plan["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    devices = aot.parse_topology("v5e-4", num_slices=2).devices()
    from common.sharding import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 4}, devices)
    for row in mesh.devices.reshape(2, 4):  # each data index holds one slice's devices
        assert len({d.slice_index for d in row}) == 1


@pytest.mark.slow
def test_smallest_slice_stops_at_the_first_that_fits():
    """The tiny LM fits one v5e chip: the search makes that one plan (and skips slices the batch of 16 cannot
    split: none here before the first)."""
    plans = plan_cli.smallest_slice(lambda: load("lm.tiny"), "lm", "v5e", mesh={"fsdp": -1})
    assert len(plans) == 1 and plans[0]["fits"] and plans[0]["chips"] == 1


@pytest.mark.slow
def test_vita_speech_decoder_stage_compiles_for_a_tpu_slice():
    """Stage 3.2 (the speech decoders on a frozen codec and LLM table, random stand-ins for both) plans like the
    model stages: it fits, fsdp gathers the decoder's weights, and its FLOPs give a step bound."""
    config = load("vita.tiny_stage3_2")
    config.codec_from, config.text_from = "", ""
    config.codec = dict(upsample_initial_channel=32, encoder_channels=2, n_codes=64, global_code_num=4,
                        global_feature_conv=(8, 4, 8, 3, 1), global_tokens=(0, 0, 0, 0), resblock_kernel_sizes=(3,),
                        resblock_dilation_sizes=((1,),))  # a small codec (only its encoder runs in 3.2)
    config.decoder = dict(idim=16, num_codes=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    config.data.max_speech_seconds = 0.5
    plan = plan_cli.plan(config, "vita", "v5e-4", mesh={"fsdp": -1}, config_name="vita.tiny_stage3_2")
    assert plan["fits"] and plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert plan["collectives"].get("all-gather", {}).get("count", 0) > 0, plan["collectives"]
    assert plan["model_tflops_per_step"] > 0 and 0 < plan["mfu_ceiling"] <= 1
