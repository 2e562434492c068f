"""The speech codec against a PyTorch reference of the release's TiCodec (random weights, weight norm folded by our
loader), its config reader and its checkpoint round trip."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ticodec_reference as ref  # noqa: E402
from vita_jax import codec as codec_lib  # noqa: E402
from vita_jax.hf import codec as codec_hf  # noqa: E402

RELEASE_MODEL_JSON = {  # codec/model.json of VITA-1.5 (docs/vita_release.md, "Speech output")
    "resblock": "1", "upsample_rates": [8, 5, 5, 3], "upsample_kernel_sizes": [16, 11, 11, 5],
    "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "segment_size": 24000, "num_mels": 80,
    "n_fft": 1024, "hop_size": 240, "win_size": 1024, "sampling_rate": 24000, "n_code_groups": 1, "residul_layer": 1,
    "n_codes": 1024, "codebook_loss_lambda": 1.0, "commitment_loss_lambda": 0.25, "global_code_num": 8,
    "global_feature_conv": [128, 64, 128, 3, 1], "global_tokens": [473, 975, 419, 219, 565, 121, 550, 616],
    "fmin": 0, "fmax": 8000}
TINY = codec_lib.CodecConfig(upsample_initial_channel=32, encoder_channels=2, n_codes=64, global_code_num=4,
                             global_feature_conv=(8, 4, 8, 3, 1), global_tokens=(1, 2, 3, 4))
# one resblock of one dilation per stage: quick to compile, for the tests of everything around the codec
FAST = TINY.replace(resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))


def ref_hparams(cfg: codec_lib.CodecConfig) -> dict:
    return {**cfg.to_json(), "code_dim": cfg.code_dim}


def reference(cfg, seed=0):
    h = ref_hparams(cfg)
    gen, enc, quant = ref.Generator(h), ref.Encoder(h), ref.Quantizer(h)
    for i, m in enumerate((gen, enc, quant)):
        ref.randomize(m, seed + i)
        m.eval()
    as_np = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    params = codec_hf.convert_state(as_np(gen), as_np(quant), as_np(enc), cfg)
    return (gen, enc, quant), codec_hf.check_params(params, cfg)


def test_release_model_json_is_the_default_config():
    cfg = codec_lib.CodecConfig.from_json(RELEASE_MODEL_JSON)
    assert cfg == codec_lib.CodecConfig()
    assert (cfg.hop_length, cfg.code_dim, cfg.global_dim, cfg.sampling_rate // cfg.hop_length) == (600, 512, 128, 40)
    with pytest.raises(ValueError, match="n_code_groups=1"):
        codec_lib.CodecConfig.from_json({**RELEASE_MODEL_JSON, "n_code_groups": 2})


@pytest.mark.slow
def test_release_size_generator_matches_reference():
    """VITA-1.5's generator at its real size: codes + the release's voice -> 24 kHz waveform."""
    cfg = codec_lib.CodecConfig()
    h = ref_hparams(cfg)
    gen, quant = ref.Generator(h), ref.Quantizer(h)
    ref.randomize(gen, 0, scale=0.05)
    ref.randomize(quant, 1)
    as_np = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    params = codec_hf.check_params(codec_hf.convert_state(as_np(gen), as_np(quant), None, cfg), cfg,
                                    with_encoder=False)
    codes = np.random.default_rng(0).integers(0, 1024, (1, 5))
    tokens = np.asarray([cfg.global_tokens])
    with torch.no_grad():
        want = gen(quant.embed(torch.from_numpy(codes)), quant.embed_gst(torch.from_numpy(tokens)))[:, 0].numpy()
    got = jax.jit(lambda p, c: codec_lib.Codec(cfg).apply({"params": p}, c,
                                                          method="decode"))(params, jnp.asarray(codes))
    chex.assert_shape(got, (1, 5 * 600))
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-4, rtol=1e-7)
    assert float(np.std(want)) > 1e-2  # a real signal, not a saturated or silent one


@pytest.mark.slow
def test_encoder_codes_and_decoder_match_reference():
    (gen, enc, quant), params = reference(TINY)
    codec = codec_lib.Codec(TINY)
    wav = (0.3 * np.random.default_rng(1).standard_normal((2, 6 * TINY.hop_length))).astype(np.float32)
    with torch.no_grad():
        latent, g = enc(torch.from_numpy(wav)[:, None])
        codes, tokens = quant.encode(latent, g)
        want_wav = gen(quant.embed(codes), quant.embed_gst(tokens))[:, 0].numpy()
    latent_j, style_j = jax.jit(lambda p, w: codec.apply({"params": p}, w, method=lambda m, w: m.encoder(w)))(
        params, jnp.asarray(wav))
    chex.assert_trees_all_close(np.asarray(latent_j).transpose(0, 2, 1), latent.numpy(), atol=1e-4, rtol=1e-7)
    chex.assert_trees_all_close(np.asarray(style_j), g.numpy(), atol=1e-4, rtol=1e-7)
    codes_j, tokens_j = jax.jit(lambda p, w: codec.apply({"params": p}, w, method="encode"))(params, jnp.asarray(wav))
    chex.assert_trees_all_equal(np.asarray(codes_j), codes.numpy())
    chex.assert_trees_all_equal(np.asarray(tokens_j), tokens.numpy())
    got = jax.jit(lambda p, c, t: codec.apply({"params": p}, c, t, method="decode"))(params, codes_j, tokens_j)
    chex.assert_trees_all_close(np.asarray(got), want_wav, atol=1e-4, rtol=1e-7)


@pytest.mark.slow
def test_training_forward_is_straight_through():
    cfg = FAST
    codec = codec_lib.Codec(cfg)
    params = codec_lib.init_params(cfg, jax.random.key(0))
    wav = jnp.asarray(0.1 * np.random.default_rng(0).standard_normal((2, 4 * cfg.hop_length)), jnp.float32)

    def loss(p):
        recon, vq, _ = codec.apply({"params": p}, wav)
        return jnp.mean((recon - wav) ** 2) + vq

    grads = jax.jit(jax.grad(loss))(params)
    # the encoder learns through the quantizer (straight-through) and the codebook through the VQ loss
    assert float(jnp.abs(grads["encoder"]["conv_pre"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["codebook"]).sum()) > 0
    # the running statistics of the style norm are never trained
    assert float(jnp.abs(grads["encoder"]["global_encoder"]["fn_2"]["running_mean"]).sum()) == 0


@pytest.mark.slow
def test_save_and_load_the_release_layout(tmp_path):
    _, params = reference(TINY, seed=3)
    codec_hf.save_original(str(tmp_path / "codec"), params, TINY)
    assert json.load(open(tmp_path / "codec" / "model.json"))["n_codes"] == 64
    model, loaded = codec_hf.load_original(str(tmp_path))
    assert model.config == TINY
    chex.assert_trees_all_equal(params, loaded)


@pytest.mark.slow
def test_bad_input_is_named():
    codec = codec_lib.Codec(FAST)
    params = codec_lib.init_params(FAST, jax.random.key(0))
    with pytest.raises(ValueError, match="not a multiple of 600"):
        codec.apply({"params": params}, jnp.zeros((1, 1000)), method="encode")
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        codec.apply({"params": params}, jnp.zeros((1000,)), method="encode")
    with pytest.raises(FileNotFoundError, match="model.json"):
        codec_hf.load_original("/nonexistent")
