"""VITA-1.5's speech encoder + adapter against a PyTorch reference written from the upstream semantics
(tests/vita/whale_reference.py, the release's state-dict names), through vita_jax.hf.speech_rule; real espeak speech,
batched with padding; full, static-chunk and unrolled variants; lengths; dynamic chunks; bad inputs."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl.testing import parameterized

from common.data.audio import speech_fbank
from common.data.speech import load_word_bank
from common.hf.checkpoint import fill_params
import whale_reference as ref
from vita_jax.hf import speech_rule
from vita_jax.speech_encoder import (AudioAdapter, SpeechEncoder, SpeechEncoderConfig, audio_token_lengths,
                                     chunk_attention_mask)

TOL = 1e-4

CONFIGS = {
    "full_4heads": dict(ref=dict(dim=64, heads=4, ffn=128, layers=2, llm_dim=48), jax=dict(chunk_mode="full")),
    "static_chunk3_left1_8heads": dict(ref=dict(dim=64, heads=8, ffn=96, layers=3, llm_dim=40, chunk_size=3,
                                                left_chunks=1),
                                       jax=dict(chunk_mode="static", chunk_size=3, left_chunks=1)),
    "static_chunk4_all_left_unrolled": dict(ref=dict(dim=32, heads=2, ffn=64, layers=2, llm_dim=24, chunk_size=4),
                                            jax=dict(chunk_mode="static", chunk_size=4, left_chunks=-1,
                                                     scan_layers=False)),
}


class AudioTower(nn.Module):
    config: SpeechEncoderConfig
    out_features: int

    @nn.compact
    def __call__(self, features, lengths):
        hidden, enc_lengths = SpeechEncoder(self.config, name="audio_encoder")(features, lengths)
        return AudioAdapter(self.out_features, act=self.config.adapter_act, name="audio_adapter")(hidden, enc_lengths)


def speech_batch(texts=("how many shapes are there", "red circle"), seed=0):
    bank = load_word_bank()
    rng = np.random.default_rng(seed)
    feats = [speech_fbank(bank.say(t, rng)) for t in texts]
    lengths = np.array([len(f) for f in feats])
    batch = np.zeros((len(feats), lengths.max(), 80), np.float32)
    for i, f in enumerate(feats):
        batch[i, :len(f)] = f
    return batch, lengths


def convert(model: ref.AudioEncoder, config: SpeechEncoderConfig, llm_dim: int):
    module = AudioTower(config, llm_dim)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 16, 80)), jnp.array([16])))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = fill_params(iter(state.items()), speech_rule(config), nn.unbox(abstract)["params"], source="whale ref")
    return module, params


@pytest.mark.slow
class SpeechEncoderReferenceTest(chex.TestCase):
    """SpeechEncoder + AudioAdapter against the PyTorch reference, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((name, name) for name in sorted(CONFIGS))
    def test_speech_encoder_and_adapter_match_reference(self, name):
        spec = CONFIGS[name]
        r = spec["ref"]
        model = ref.randomize(ref.AudioEncoder(**r), seed=len(name))
        config = SpeechEncoderConfig(hidden_size=r["dim"], num_heads=r["heads"], intermediate_size=r["ffn"],
                                     num_layers=r["layers"], **spec["jax"])
        module, params = convert(model, config, r["llm_dim"])
        apply = self.variant(lambda p, feats, lengths: module.apply({"params": p}, feats, lengths))
        feats, lengths = speech_batch()
        with torch.no_grad():
            want, want_mask = model(torch.tensor(feats), torch.tensor(lengths))
        got, got_lengths = apply(params, jnp.asarray(feats), jnp.asarray(lengths))
        chex.assert_trees_all_equal(np.asarray(got_lengths), want_mask.sum(1).numpy())
        chex.assert_trees_all_equal(np.asarray(got_lengths), audio_token_lengths(lengths))
        chex.assert_shape(got, tuple(want.shape))
        for b, n in enumerate(np.asarray(got_lengths)):  # valid tokens only (what the LLM receives)
            chex.assert_trees_all_close(np.asarray(got[b, :n]), want[b, :n].numpy(), atol=TOL, rtol=0,
                                        custom_message=f"{name}, sample {b}")
        # a sample's tokens do not depend on the padding of the batch: alone it gives the same values
        alone, _ = apply(params, jnp.asarray(feats[1:, :lengths[1]]), jnp.asarray(lengths[1:]))
        n = int(got_lengths[1])
        chex.assert_trees_all_close(alone[0, :n], got[1, :n], atol=TOL, rtol=0)


def test_token_lengths_are_the_release_formula():
    for frames in (7, 8, 98, 99, 100, 101, 400, 1234):
        want = len(np.ones(frames)[2::2][2::2][0::2])
        assert int(audio_token_lengths(frames)) == want
    assert int(audio_token_lengths(98)) == 12  # 1 s of 16 kHz audio -> 12 tokens


def test_chunk_mask_is_wenet_subsequent_chunk_mask():
    for size, chunk, left in ((10, 3, 1), (9, 4, -1), (7, 2, 0), (5, 5, 2)):
        want = ref.subsequent_chunk_mask(size, chunk, left).numpy()
        chex.assert_trees_all_equal(np.asarray(chunk_attention_mask(size, chunk, left)), want)


@pytest.mark.slow
def test_dynamic_chunks_train_and_evaluate_full():
    config = SpeechEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1,
                                 chunk_mode="dynamic", dropout_rate=0.0, positional_dropout_rate=0.0)
    full = config.replace(chunk_mode="full")
    feats, lengths = speech_batch()
    enc = SpeechEncoder(config)
    params = enc.init(jax.random.key(0), jnp.asarray(feats), jnp.asarray(lengths))["params"]
    evaluated, _ = enc.apply({"params": params}, jnp.asarray(feats), jnp.asarray(lengths))
    reference, _ = SpeechEncoder(full).apply({"params": params}, jnp.asarray(feats), jnp.asarray(lengths))
    chex.assert_trees_all_close(evaluated, reference, atol=1e-6, rtol=1e-7)  # evaluation: full attention
    outs = [enc.apply({"params": params}, jnp.asarray(feats), jnp.asarray(lengths), deterministic=False,
                      rngs={"dropout": jax.random.key(s)})[0] for s in range(6)]
    assert any(float(jnp.abs(o - reference).max()) > 1e-3 for o in outs)  # some calls drew a chunked mask


@pytest.mark.slow
def test_cmvn_is_never_trained():
    config = SpeechEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1)
    feats, lengths = speech_batch()
    enc = SpeechEncoder(config)
    params = nn.unbox(enc.init(jax.random.key(0), jnp.asarray(feats), jnp.asarray(lengths))["params"])
    grads = jax.grad(lambda p: enc.apply({"params": p}, jnp.asarray(feats), jnp.asarray(lengths))[0].sum())(params)
    assert float(jnp.abs(grads["global_cmvn_mean"]).max()) == 0.0
    assert float(jnp.abs(grads["conv_0"]["kernel"]).max()) > 0.0


def test_bad_inputs_raise():
    config = SpeechEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1, max_positions=8)
    enc = SpeechEncoder(config)
    with pytest.raises(ValueError, match="fbank frames"):
        enc.init(jax.random.key(0), jnp.zeros((1, 20, 40)))
    with pytest.raises(ValueError, match="too few"):
        enc.init(jax.random.key(0), jnp.zeros((1, 5, 80)))
    with pytest.raises(ValueError, match="max_positions"):
        enc.init(jax.random.key(0), jnp.zeros((1, 60, 80)))
    with pytest.raises(ValueError, match="chunk_size"):
        SpeechEncoderConfig(chunk_mode="static")
    with pytest.raises(ValueError, match="chunk_mode"):
        SpeechEncoderConfig(chunk_mode="causal")


def release_yaml(dim=32, heads=2, ffn=64, layers=2, llm_dim=24, drop=()):
    """An audio folder's train.yaml as the release writes it (every key), less the keys in `drop`."""
    transformer = {"transformer-attention-dim": dim, "transformer-attention-heads": heads,
                   "transformer-linear-units": ffn, "transformer-num-blocks": layers,
                   "transformer-dropout-rate": 0.1, "transformer-attention-dropout-rate": 0.0,
                   "transformer-positional-dropout-rate": 0.1, "transformer-pos-enc-class": "rel-enc",
                   "transformer-normalize-before": True, "transformer-concat-after": False,
                   "transformer-chunk_size": -1, "transformer-left_chunks": -1, "transformer-dynamic-chunks": False}
    model = {"enc_out_dim": dim, "llm_embed_dim": llm_dim, "kernel_size": 5, "adpter_type": "subsampling",
             "activation_func": "gelu", "norm": "layer"}
    for key in drop:
        transformer.pop(key, None)
        model.pop(key, None)
    return {"input_dim": 80, "model_conf": model, "encoder_conf": {
        "overview_conf": {"encoder-input-dim": 80, "encoder-output-dim": dim,
                          "encoder-layer-config": "subsampling-transformer"},
        "para_conf": {"subsampling": {"subsampling-rate": 4, "subsampling-input-dim": 80,
                                      "subsampling-output-dim": dim, "subsampling-dropout-rate": 0.1},
                      "transformer": transformer}}}


def test_yaml_with_every_key_reads_without_warning():
    import warnings

    from vita_jax.hf import speech_config_from_yaml

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = speech_config_from_yaml(release_yaml())
    assert (config.chunk_mode, config.adapter_act, config.hidden_size, config.input_dim) == ("full", "gelu", 32, 80)


class ReleaseDefaultsTest(chex.TestCase):
    """A train.yaml missing keys takes the release's defaults; its encoder + adapter forward with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_missing_yaml_keys_take_the_release_defaults(self):
        """A train.yaml without transformer-dynamic-chunks and activation_func: the release's code builds a
        dynamic-chunk encoder (transformer.py's argparse default True) and a ReLU adapter (init_model.py's default); so
        do we, with a warning. The encoder + adapter then equal the PyTorch port built as the release would build it
        (ReLU)."""
        from vita_jax.hf import speech_config_from_yaml

        with pytest.warns(UserWarning, match=r"transformer_dynamic_chunks=True.*activation_func='relu'"):
            config = speech_config_from_yaml(release_yaml(drop=("transformer-dynamic-chunks", "activation_func")))
        assert (config.chunk_mode, config.adapter_act) == ("dynamic", "relu")
        model = ref.randomize(ref.AudioEncoder(dim=32, heads=2, ffn=64, layers=2, llm_dim=24, activation_func="relu"),
                              seed=3)
        module, params = convert(model, config, 24)
        feats, lengths = speech_batch()
        with torch.no_grad():
            want, want_mask = model(torch.tensor(feats), torch.tensor(lengths))
        apply = self.variant(lambda p, feats, lengths: module.apply({"params": p}, feats, lengths))
        got, got_lengths = apply(params, jnp.asarray(feats), jnp.asarray(lengths))
        for b, n in enumerate(np.asarray(got_lengths)):  # evaluation: full attention (docs/vita_release.md)
            chex.assert_trees_all_close(np.asarray(got[b, :n]), want[b, :n].numpy(), atol=TOL, rtol=0)
        gelu = ref.randomize(ref.AudioEncoder(dim=32, heads=2, ffn=64, layers=2, llm_dim=24), seed=3)
        with torch.no_grad():  # the old default (GELU) would not have matched
            assert float((gelu(torch.tensor(feats), torch.tensor(lengths))[0] - want).abs().max()) > 1e-2


def test_missing_yaml_keys_whose_release_default_we_lack_raise():
    from common.hf.checkpoint import CheckpointError
    from vita_jax.hf import speech_config_from_yaml

    with pytest.warns(UserWarning, match="adpter_type='cnn'"), pytest.raises(CheckpointError, match="'cnn'"):
        speech_config_from_yaml(release_yaml(drop=("adpter_type",)))
    with pytest.warns(UserWarning, match="pos_enc_class='abs-enc'"), pytest.raises(CheckpointError, match="abs-enc"):
        speech_config_from_yaml(release_yaml(drop=("transformer-pos-enc-class",)))
