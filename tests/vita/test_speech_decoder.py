"""The NAR + AR speech decoder against the release's LLM2TTSCodecAR built from transformers' Llama layers (random
weights, converted by our loader): teacher-forced logits, padded batches, greedy decoding through the KV cache."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tts_decoder_reference import LLM2TTSCodecAR  # noqa: E402
from vita_jax import speech_decoder as sd  # noqa: E402
from vita_jax.hf import speech_decoder as decoder_hf  # noqa: E402

CONFIGS = [dict(hidden=32, ffn=64, blocks=4, heads=4, odim=64),  # NAR 2 + AR 4, as the release's 4-block layout
           dict(hidden=24, ffn=40, blocks=3, heads=2, odim=40)]  # odd depth: NAR 1 + AR 3


def build(c, seed=0):
    torch.manual_seed(seed)
    ref = LLM2TTSCodecAR(c["hidden"], c["odim"], c["hidden"], c["ffn"], c["blocks"], c["heads"]).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    config = decoder_hf.config_from_state({k: v.shape for k, v in state.items()}, num_heads=c["heads"])
    return ref, sd.SpeechDecoder(config), decoder_hf.load_state(state, config)


@pytest.mark.parametrize("c", CONFIGS, ids=["4blocks", "3blocks"])
def test_teacher_forced_logits_match_reference_on_a_padded_batch(c):
    ref, model, params = build(c)
    rng = np.random.default_rng(0)
    lens, code_lens = [7, 4], [5, 2]
    text = rng.standard_normal((2, 7, c["hidden"])).astype(np.float32)
    codes = rng.integers(0, c["odim"], (2, 5))
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(text), jnp.asarray(lens), jnp.asarray(codes),
                               jnp.asarray(code_lens))
    chex.assert_shape(got, (2, 6, c["odim"] + 4))
    for i in range(2):  # the reference row by row, unpadded
        with torch.no_grad():
            want = ref.forward_logits(torch.from_numpy(text[i:i + 1, :lens[i]]), torch.tensor([lens[i]]),
                                      torch.from_numpy(codes[i:i + 1, :code_lens[i]]), torch.tensor([code_lens[i]]))
        chex.assert_trees_all_close(np.asarray(got[i, :code_lens[i] + 1]), want[0].numpy(), atol=1e-4, rtol=1e-7)


@pytest.mark.slow
def test_greedy_decoding_through_the_cache_matches_reference():
    c = CONFIGS[0]
    ref, model, params = build(c, seed=1)
    text = np.random.default_rng(2).standard_normal((6, c["hidden"])).astype(np.float32)
    with torch.no_grad():
        want = ref.greedy(torch.from_numpy(text[None]), max_tokens=12)
    assert len(want) == 12  # no early eos: twelve compared steps
    gen = sd.CodeGenerator(model, params, max_tokens=12, max_text_pieces=16)
    assert list(gen.stream(text, top_k=1)) == want
    # top-2 sampling stays within the two most likely codes of each step and never yields a special token
    sampled = list(sd.CodeGenerator(model, params, max_tokens=12, max_text_pieces=16).stream(
        text, rng=jax.random.key(3), top_k=2))
    assert all(0 <= t < c["odim"] for t in sampled)


def test_checkpoint_sizes_and_errors():
    c = CONFIGS[0]
    ref, _, _ = build(c)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    model_json = sd.SpeechDecoderConfig(idim=32, num_codes=64, hidden_size=32, intermediate_size=64, num_layers=4,
                                        num_heads=4).to_model_json()
    cfg = decoder_hf.config_from_state(shapes, model_json)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_codes, cfg.vocab_size, cfg.eos) == (4, 4, 64, 68, 66)
    with pytest.raises(decoder_hf.CheckpointError, match="heads"):
        decoder_hf.config_from_state(shapes)
    model_json[2]["transformer_num_blocks"] = 6
    with pytest.raises(decoder_hf.CheckpointError, match="num_layers=6"):
        decoder_hf.config_from_state(shapes, model_json)
    with pytest.raises(ValueError, match="multiple of the speech decoder's idim"):
        sd.text_pieces(jnp.zeros((1, 2, 50)), 32)
    chex.assert_shape(sd.text_pieces(jnp.zeros((1, 2, 64)), 32), (1, 4, 32))
