"""Generation: cached decoding equals recomputing the full sequence; greedy and beam search equal
transformers' `generate` on converted tiny models; sampling filters; bucketing; errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import common.hf as hf  # noqa: E402
from common.generate import GenerationConfig, TokenStreamer, filter_logits, generate  # noqa: E402


def tiny(kind):
    torch.manual_seed(0)
    if kind == "qwen2":
        config = transformers.Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                          tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # sharper distributions than the default init, so that argmax ties cannot occur
        for p in model.parameters():
            p.mul_(4.0 if p.ndim > 1 else 1.0)
    return model.eval()


PROMPTS = np.array([[0, 0, 0, 5, 7, 9, 11], [3, 4, 5, 6, 7, 8, 9]])
MASK = np.array([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])


def hf_generate(model, **kwargs):
    with torch.no_grad():
        out = model.generate(torch.tensor(PROMPTS), attention_mask=torch.tensor(MASK), pad_token_id=0, **kwargs)
    return out[:, PROMPTS.shape[1]:].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_greedy_equals_transformers_and_full_recompute(kind, save_hf):
    model = tiny(kind)
    module, params = hf.load(save_hf(model))
    ours = generate(module, params, PROMPTS, MASK, config=GenerationConfig(max_new_tokens=8, bucket=16))
    ref = hf_generate(model, do_sample=False, max_new_tokens=8, eos_token_id=None)
    chex.assert_trees_all_equal(ours["tokens"], ref)
    assert list(ours["lengths"]) == [8, 8]
    # Recompute the whole sequence each step (no cache): same greedy tokens.
    seq, mask = PROMPTS.copy(), MASK.copy()
    for _ in range(8):
        positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
        logits = module.apply({"params": params}, jnp.asarray(seq), jnp.asarray(mask),
                              position_ids=jnp.asarray(positions))
        nxt = np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]
        seq, mask = np.concatenate([seq, nxt], 1), np.concatenate([mask, np.ones_like(nxt)], 1)
    chex.assert_trees_all_equal(seq[:, PROMPTS.shape[1]:], ours["tokens"])


@pytest.mark.slow
def test_token_streamer_equals_generate_and_stops_between_tokens(save_hf):
    module, params = hf.load(save_hf(tiny("qwen2")))
    config = GenerationConfig(max_new_tokens=8, bucket=16)
    batch = generate(module, params, PROMPTS, MASK, config=config)
    streamer = TokenStreamer(module, params, config)
    for row in range(2):
        ids, mask = PROMPTS[row:row + 1], MASK[row:row + 1]
        assert list(streamer.stream(ids, mask)) == list(batch["tokens"][row])
    stop = int(batch["tokens"][1, 3])  # a stop token ends the stream before it (generate counts it in lengths)
    stopping = TokenStreamer(module, params, GenerationConfig(max_new_tokens=8, bucket=16, eos_token_ids=(stop,)))
    assert (list(stopping.stream(PROMPTS[1:], MASK[1:]))
            == list(batch["tokens"][1, :list(batch["tokens"][1]).index(stop)]))
    asked = iter(range(100))
    assert len(list(streamer.stream(PROMPTS[1:], MASK[1:], should_stop=lambda: next(asked) >= 3))) == 3
    forced = [5, stop, 7] + [1] * 10  # forced tokens are yielded as given (stop tokens too), max_new_tokens at most
    assert list(stopping.stream(PROMPTS[1:], MASK[1:], forced_tokens=forced)) == forced[:8]


def test_stop_tokens_and_padding(save_hf):
    model = tiny("qwen2")
    module, params = hf.load(save_hf(model))
    free = generate(module, params, PROMPTS, MASK, config=GenerationConfig(max_new_tokens=8, bucket=16))
    stop = int(free["tokens"][0, 2])
    out = generate(module, params, PROMPTS, MASK, config=GenerationConfig(max_new_tokens=8, bucket=16,
                                                                          eos_token_ids=(stop,), pad_token_id=0))
    first = int(np.argmax(free["tokens"][0] == stop))
    assert out["lengths"][0] == first + 1
    assert (out["tokens"][0, first + 1:] == 0).all()
    ref = hf_generate(model, do_sample=False, max_new_tokens=8, eos_token_id=stop)
    chex.assert_trees_all_equal(out["tokens"][:, :ref.shape[1]], ref)


@pytest.mark.slow
def test_beam_search_equals_transformers(save_hf):
    model = tiny("llama")
    module, params = hf.load(save_hf(model))
    for length_penalty in (1.0, 0.0):
        ours = generate(module, params, PROMPTS, MASK, config=GenerationConfig(
            max_new_tokens=6, num_beams=3, length_penalty=length_penalty, bucket=16))
        ref = hf_generate(model, do_sample=False, num_beams=3, max_new_tokens=6, length_penalty=length_penalty,
                          eos_token_id=None, early_stopping=False)
        chex.assert_trees_all_equal(ours["tokens"], ref)


@pytest.mark.slow
def test_right_padding_is_moved_left_and_buckets_do_not_change_results(save_hf):
    model = tiny("qwen2")
    module, params = hf.load(save_hf(model))
    left = generate(module, params, PROMPTS, MASK, config=GenerationConfig(max_new_tokens=5, bucket=8))
    right_ids = np.array([[5, 7, 9, 11, 0, 0, 0], PROMPTS[1]])
    right_mask = np.array([[1, 1, 1, 1, 0, 0, 0], MASK[1]])
    right = generate(module, params, right_ids, right_mask, config=GenerationConfig(max_new_tokens=5, bucket=32))
    chex.assert_trees_all_equal(left["tokens"], right["tokens"])


@pytest.mark.slow
def test_sampling_filters_and_determinism(save_hf):
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert (np.asarray(filter_logits(logits, 1.0, 2, 1.0)) > -1e29).sum() == 2
    kept = np.asarray(filter_logits(logits, 1.0, 0, 0.7)) > -1e29
    chex.assert_trees_all_equal(kept, np.asarray([[True, True, False, False]]))
    model = tiny("qwen2")
    module, params = hf.load(save_hf(model))
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.8, top_k=10, top_p=0.9, bucket=16)
    a = generate(module, params, PROMPTS, MASK, config=cfg, rng=jax.random.key(1))
    b = generate(module, params, PROMPTS, MASK, config=cfg, rng=jax.random.key(1))
    chex.assert_trees_all_equal(a["tokens"], b["tokens"])


def test_bad_generation_arguments():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="beam search with sampling"):
        GenerationConfig(num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0.0)


@pytest.mark.slow
def test_generation_sharded_over_a_mesh_equals_single_device(save_hf):
    from common.sharding import activate, make_mesh, params_sharding
    from common.params import abstract_params

    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    model = tiny("llama")
    module, params = hf.load(save_hf(model))
    ids = np.tile(PROMPTS, (4, 1))  # batch 8: split over data x fsdp
    mask = np.tile(MASK, (4, 1))
    config = GenerationConfig(max_new_tokens=6, bucket=16)
    single = generate(module, params, ids, mask, config=config)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.device_put(params, params_sharding(abstract_params(module, jnp.zeros((1, 8), jnp.int32)), mesh))
    with activate(mesh):
        out = generate(module, sharded, ids, mask, config=config)
    chex.assert_trees_all_equal(out["tokens"], single["tokens"])
