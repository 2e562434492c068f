"""The LM core loaded from HF checkpoints equals transformers' forward pass (f32, max abs diff <= 1e-4):
Llama, Mistral, Qwen2, MPT and GPT-NeoX, several configs each, left and right padding."""
import chex
import numpy as np
import pytest
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import common.hf as hf  # noqa: E402

TOL = 1e-4


def _batch(vocab, batch=3, length=12, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    return ids, mask


CONFIGS = {
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=64)),
    "llama_mha_tied_linear_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        max_position_embeddings=64)),
    "llama3_rope_scaling_bias": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, attention_bias=True, mlp_bias=True, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_theta": 500000.0})),
    "llama_head_dim": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=64)),
    "mistral_sliding_window": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=5, max_position_embeddings=64)),
    "qwen2_bias_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "qwen2_untied_mha": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=6, tie_word_embeddings=False, max_position_embeddings=64)),
    "mpt_alibi": ("MptConfig", "MptForCausalLM", dict(
        vocab_size=97, d_model=64, n_heads=4, n_layers=2, max_seq_len=64, expansion_ratio=4)),
    "mpt_alibi_6heads_clip": ("MptConfig", "MptForCausalLM", dict(
        vocab_size=97, d_model=48, n_heads=6, n_layers=2, max_seq_len=64, expansion_ratio=4,
        attn_config={"clip_qkv": 0.5, "alibi_bias_max": 8})),
    "gpt_neox_parallel_partial_rotary": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.25, max_position_embeddings=64)),
    "gpt_neox_sequential_tied": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.5, use_parallel_residual=False, tie_word_embeddings=True, hidden_act="gelu_new",
        max_position_embeddings=64)),
}


def build_hf(name):
    config_cls, model_cls, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    # Random norms / biases, so that a swapped or dropped tensor cannot hide behind init values of 1 and 0.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, save_hf):
    model = build_hf(name)
    module, params = hf.load(save_hf(model))
    ids, mask = _batch(model.config.vocab_size)
    ref = hf_logits(model, ids, mask)
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.dtype == np.float32
    chex.assert_equal_shape([ours, ref])
    valid = mask.astype(bool)
    chex.assert_trees_all_close(ours[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa", "mpt_alibi", "gpt_neox_parallel_partial_rotary"])
def test_unrolled_layout_loads_the_same(name, save_hf):
    model = build_hf(name)
    path = save_hf(model)
    from common.hf.checkpoint import read_config
    from common.hf.lm import config_from_hf
    from common.lm import DecoderLM
    arch = hf.ARCHITECTURES[read_config(path)["model_type"]]
    unrolled = DecoderLM(config_from_hf(read_config(path)).replace(scan_layers=False))
    arch_unrolled = hf.Architecture(build=lambda c, d: unrolled, rule=arch.rule, example_inputs=arch.example_inputs)
    module, params = hf.load_from_config(path, read_config(path), architecture=arch_unrolled)
    assert "layers_0" in params["decoder"]
    ids, mask = _batch(model.config.vocab_size)
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    chex.assert_trees_all_close(ours[valid], hf_logits(model, ids, mask)[valid], atol=TOL, rtol=0)


def test_bfloat16_load_and_pytorch_bin(save_hf):
    model = build_hf("qwen2_bias_tied")
    path = save_hf(model, safe_serialization=False) if _supports_bin() else save_hf(model)
    module, params = hf.load(path, dtype=jnp.bfloat16)
    import jax
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    ids, mask = _batch(model.config.vocab_size)
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.dtype == np.float32
    # bf16 weights and activations: close to the f32 reference, not equal.
    valid = mask.astype(bool)
    chex.assert_trees_all_close(ours[valid], hf_logits(model, ids, mask)[valid], atol=0.1, rtol=0)


def _supports_bin():
    import inspect
    return "safe_serialization" in inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters
