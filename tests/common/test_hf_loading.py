"""The streaming HF loader: sharded safetensors, placement onto a mesh, and clear errors for bad checkpoints."""
import json
import os

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import common.hf as hf  # noqa: E402
from common.hf.checkpoint import CheckpointError  # noqa: E402
from common.sharding import make_mesh  # noqa: E402


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def test_sharded_index_and_placement_onto_mesh(save_hf):
    model = tiny_llama()
    path = save_hf(model, max_shard_size="20KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    module, params = hf.load(path, mesh=mesh)
    up = params["decoder"]["layers"]["mlp"]["up"]["kernel"]
    assert up.sharding.spec == P(None, "fsdp", "tensor") and up.addressable_shards[0].data.shape == (2, 16, 32)
    ids = np.random.RandomState(0).randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    chex.assert_trees_all_close(module.apply({"params": params}, jnp.asarray(ids)), ref, atol=1e-4, rtol=1e-7)


def _edit_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def _rewrite_tensors(path, edit):
    from safetensors.numpy import load_file, save_file
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_unknown_model_type(save_hf):
    path = save_hf(tiny_llama())
    _edit_config(path, model_type="gpt7")
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt7'"):
        hf.load(path)


def test_missing_tensor(save_hf):
    path = save_hf(tiny_llama())
    _rewrite_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="incomplete stacked leaves.*decoder/layers/mlp/up/kernel"):
        hf.load(path)
    path = save_hf(tiny_llama())
    _rewrite_tensors(path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match="missing tensors for \\['final_norm/scale'\\]"):
        hf.load(path)


def test_mismatched_and_unexpected_tensors(save_hf):
    path = save_hf(tiny_llama())
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((63, 32), np.float32)}))
    with pytest.raises(CheckpointError,
                       match="model.layers.0.mlp.up_proj.weight.*shape \\(32, 63\\).*expects \\(32, 64\\)"):
        hf.load(path)
    path = save_hf(tiny_llama())
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.extra.weight": np.zeros((3,), np.float32)}))
    with pytest.raises(CheckpointError, match="unexpected tensor.*model.layers.0.extra.weight"):
        hf.load(path)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load(str(tmp_path))
