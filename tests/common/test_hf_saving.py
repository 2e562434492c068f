"""`common.hf.save`: a module of ours written back as a Hugging Face checkpoint by inverting the loader's own
tensor-name rules. Every decoder-LM family the loader knows (Llama with llama3 rope scaling and biases, Mistral with
a sliding window, tied Qwen2, MPT with clip_qkv and its fused Wqkv, GPT-NeoX with fused per-head q/k/v and partial
rotary) and a CLIP tower with projection: HF -> load -> save -> transformers gives every tensor bit for bit and the
same logits, and load(save) gives identical parameters. Sharded output, unsaveable configs and parameters without a
checkpoint name are covered too."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import common.hf as hf  # noqa: E402
from common.hf.checkpoint import CheckpointError  # noqa: E402
from test_lm_parity import build_hf  # noqa: E402


def _same_params(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb))


@pytest.mark.parametrize("name", ["llama3_rope_scaling_bias", "mistral_sliding_window", "qwen2_bias_tied",
                                  "mpt_alibi_6heads_clip", "gpt_neox_parallel_partial_rotary"])
def test_lm_round_trip_through_transformers(name, save_hf, tmp_path):
    model = build_hf(name)
    module, params = hf.load(save_hf(model))
    out = hf.save(str(tmp_path / "out"), module, params)  # the family is inferred from the LMConfig
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == model.config.model_type
    again = type(model).from_pretrained(out).eval()
    ref, got = model.state_dict(), again.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    ids = torch.tensor(np.random.RandomState(0).randint(0, model.config.vocab_size, (2, 9)))
    with torch.no_grad():  # the config too: rope scaling, window, partial rotary, clip_qkv ... act the same
        chex.assert_trees_all_equal(again(ids).logits.numpy(), model(ids).logits.numpy())
    module2, params2 = hf.load(out)
    assert module2.config == module.config and _same_params(params, params2)


def test_clip_tower_round_trip_and_sharded_files(tmp_path):
    config = transformers.CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=28, patch_size=14, projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    module, params = hf.load(str(tmp_path / "clip"))
    out = hf.save(str(tmp_path / "out"), module, params, max_shard_bytes=20_000)  # several shards + index
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    again = transformers.CLIPVisionModelWithProjection.from_pretrained(out).eval()
    ref, got = model.state_dict(), again.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    _, params2 = hf.load(out)
    assert _same_params(params, params2)


def test_what_cannot_be_saved_raises(tmp_path):
    from common.hf.lm import config_to_hf
    from common.lm import DecoderLM, LMConfig
    from common.params import random_params

    cfg = LMConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    with pytest.raises(CheckpointError, match="biases"):
        config_to_hf(cfg.replace(qkv_bias=True), "llama")  # Llama's attention_bias covers q/k/v and o together
    with pytest.raises(CheckpointError, match="sliding window"):
        config_to_hf(cfg.replace(sliding_window=8), "llama")
    module = DecoderLM(cfg)
    params = random_params(module, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(CheckpointError, match="no checkpoint name"):  # e.g. LoRA adapters left in the tree
        hf.save(str(tmp_path / "x"), module, {**params, "lora": {"a": np.zeros(3, np.float32)}})
    hf.save(str(tmp_path / "ok"), module, params, dtype=jnp.bfloat16)  # bf16 on disk
    module2, params2 = hf.load(str(tmp_path / "ok"))
    assert json.load(open(tmp_path / "ok" / "config.json"))["dtype"] == "bfloat16"
    chex.assert_trees_all_equal(np.asarray(params2["embed"]["embedding"]),
                                np.asarray(params["embed"]["embedding"].astype(jnp.bfloat16).astype(jnp.float32)))
