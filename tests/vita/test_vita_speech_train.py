"""Stages 3.1 (codec GAN) and 3.2 (speech decoders) through the shared trainer, end to end on the bundled speech:
train -> calibrate / export the codec in the release layout -> train the decoder on it -> speak."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # the release layout's final.pt

from common.trainer import DataShard, Trainer
from configs.vita import tiny_stage3_1, tiny_stage3_2
from vita_jax import codec_discriminators, codec_train, speech_train
from vita_jax.hf import load_codec
from vita_jax.speech_decoder import SpeechDecoder, SpeechDecoderConfig
from vita_jax.speech_decoder import init_params as init_decoder
from vita_jax.train import make_task_for

pytestmark = pytest.mark.slow  # trainings (and torch, for the release layout)

FAST_CODEC = dict(upsample_initial_channel=32, encoder_channels=2, n_codes=64, global_code_num=4,
                  global_feature_conv=(8, 4, 8, 3, 1), global_tokens=(0, 0, 0, 0), resblock_kernel_sizes=(3,),
                  resblock_dilation_sizes=((1,),))


def codec_config():
    c = tiny_stage3_1.get_config()
    c.codec = FAST_CODEC
    c.discriminator = dict(periods=(2, 3), channel_scale=1 / 32, num_scales=1, grouped=False)
    c.loss.stft_resolutions = ((256, 64, 256),)
    c.data.segment_seconds = 0.1
    c.batch_size, c.total_steps, c.log_every, c.codebook_init_clips = 8, 2, 1, 4
    return c


def test_one_gradient_is_each_players_update():
    """d(total)/d(codec) is the generator's loss gradient alone; d(total)/d(discriminator) the discriminator's."""
    task = codec_train.make_task(codec_config())
    params = jax.tree.map(jnp.asarray, __import__("flax").linen.unbox(jax.jit(task.init_params)(jax.random.key(0))))
    wav = jnp.asarray(0.1 * np.random.default_rng(0).standard_normal((2, task.extras["segment"])), jnp.float32)
    batch = {"wav": wav}
    disc = codec_train.discriminators_from(codec_config())

    def generator_only(codec_params):
        total, aux = task.loss_fn({**params, "codec": codec_params}, batch, None)
        return total - aux["discriminator"]

    def discriminator_only(d):
        recon = task.model.apply({"params": params["codec"]}, wav, True)[0]
        return codec_discriminators.discriminator_loss(disc.apply({"params": d}, wav), disc.apply({"params": d}, recon))

    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, None)[0]))(params)
    want_codec = jax.jit(jax.grad(generator_only))(params["codec"])
    want_disc = jax.jit(jax.grad(discriminator_only))(params["discriminator"])
    chex.assert_trees_all_close(grads["codec"], want_codec, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(grads["discriminator"], want_disc, rtol=1e-4, atol=1e-6)


def test_dead_codes_restart_onto_batch_latents():
    """A code whose usage EMA falls below threshold / K moves onto one of the batch's latents (and its usage resets
    to 1 / K); a code in use keeps its vector; the task applies it after each update."""
    config = codec_config()
    task = codec_train.make_task(config)
    assert task.update_params is not None
    params = jax.tree.map(jnp.asarray, __import__("flax").linen.unbox(jax.jit(task.init_params)(jax.random.key(0))))
    k = task.model_config.n_codes
    wav = jnp.asarray(0.1 * np.random.default_rng(0).standard_normal((4, task.extras["segment"])), jnp.float32)
    latent, codes = task.model.apply({"params": params["codec"]}, wav, True, method="quantizer_inputs")
    used = np.unique(np.asarray(codes))
    far = params["codec"]["codebook"].at[:].add(100.0).at[used].set(params["codec"]["codebook"][used])
    usage = jnp.full((k,), 0.01 / k).at[used].set(1.0)  # every code not picked by this batch is dead
    params = {**params, "codec": {**params["codec"], "codebook": far}, "code_usage": usage}
    new = jax.jit(lambda p, w, r: codec_train.restart_dead_codes(task.model, p, w, r))(params, wav, jax.random.key(1))
    book, rows = np.asarray(new["codec"]["codebook"]), np.asarray(latent).reshape(-1, latent.shape[-1])
    dead = np.setdiff1d(np.arange(k), used)
    chex.assert_trees_all_equal(book[used], np.asarray(far)[used])
    assert all(np.min(np.abs(rows - book[c]).max(-1)) < 1e-6 for c in dead)  # each is one of the batch's latents
    chex.assert_trees_all_close(np.asarray(new["code_usage"])[dead], np.asarray(1.0 / k), rtol=1e-7)
    assert np.all(np.asarray(new["code_usage"])[used] > 0.1 / k)
    config.optimizer.param_groups = ((r".*", dict()),)  # the usage statistics must not be trained
    with pytest.raises(ValueError, match="freeze 'code_usage'"):
        codec_train.make_task(config)


def test_codec_then_decoder_stages_end_to_end(tmp_path):
    c31 = codec_config()
    run31 = Trainer(c31, make_task_for(c31), str(tmp_path / "s3_1")).run()
    chex.assert_tree_all_finite(run31.metrics[-1]["loss"])
    assert run31.metrics[-1]["codebook_usage"] > 1 / 64
    cfg, params = codec_train.export(str(tmp_path / "s3_1"), str(tmp_path / "codec"), num_clips=4)
    assert float(np.abs(np.asarray(params["encoder"]["global_encoder"]["fn_2"]["running_mean"])).sum()) > 0
    codec, loaded = load_codec(str(tmp_path / "codec"))
    assert codec.config.global_tokens == cfg.global_tokens
    codes, _ = codec.apply({"params": loaded}, jnp.zeros((1, 1200)), method="encode")
    chex.assert_shape(codes, (1, 2))

    c32 = tiny_stage3_2.get_config()
    c32.codec_from, c32.text_from, c32.text_width = str(tmp_path / "codec"), "", 64
    c32.decoder = dict(idim=16, num_codes=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    c32.data.max_speech_seconds, c32.batch_size, c32.total_steps, c32.log_every = 2.0, 8, 2, 1
    wd = str(tmp_path / "s3_2")
    run32 = Trainer(c32, make_task_for(c32, wd), wd).run()
    chex.assert_tree_all_finite(run32.metrics[-1]["loss"])
    assert run32.metrics[-1]["tokens"] > 0
    use = speech_train.text_use(wd, num_pairs=4)  # teacher-forced loss with each pair's own vs another's text
    assert use["pairs"] == 4
    chex.assert_tree_all_finite(use["gain"])
    assert use["own"]["loss"] > 0
    speaker = speech_train.load_speaker(wd, max_tokens=12)
    audio = speaker.say("a red circle.")
    assert audio.dtype == np.float32 and 0 < len(audio) <= 12 * 600 and np.all(np.abs(audio) <= 1)


def test_bad_pairs_are_named():
    t = speech_train.SpeechPairTransform(type("Tok", (), {"encode": lambda self, s: list(s.encode())})(), 24000, 600,
                                         max_text=4, max_seconds=1.0)
    with pytest.raises(Exception, match="too_long|text tokens"):
        t({"text": "a long sentence", "audio": [np.ones(16000, np.float32) * 0.1]})
    with pytest.raises(Exception, match="silent|empty"):
        t({"text": "ok", "audio": [np.zeros(1600, np.float32)]})


def test_shapes_speech_source_mixes_captions_and_answers():
    def kinds(fraction):  # an answer is one to three words; a caption names a shape in a sentence
        src = speech_train.make_source(dict(source="shapes", size=40, answer_fraction=fraction))
        return [len(src[i]["text"].split()) <= 3 for i in range(len(src))]
    assert all(kinds(1.0)) and not any(kinds(0.0))
    assert 0 < sum(kinds(0.5)) < 40
    with pytest.raises(ValueError, match="answer_fraction"):
        speech_train.make_source(dict(source="shapes", answer_fraction=1.5))


def test_text_table_normalisation():
    table = np.random.default_rng(0).normal(0, 0.02, (50, 8)).astype(np.float32)
    assert speech_train.normalise_text_table(table, "none") is table
    unit = speech_train.normalise_text_table(table, "unit_std")
    assert abs(float(unit.std()) - 1.0) < 1e-5 and np.allclose(unit * table.std(), table, atol=1e-6)
    with pytest.raises(ValueError, match="text_norm"):
        speech_train.normalise_text_table(table, "layer")


def test_scheduled_sampling_feeds_the_decoders_own_codes():
    """own_predictions_mixed_in: each input code is replaced by the decoder's own teacher-forced greedy prediction of
    it with the given probability, never by a special token; probability 0 changes nothing."""
    cfg = SpeechDecoderConfig(idim=16, num_codes=16, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    decoder, params = SpeechDecoder(cfg), init_decoder(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    text, text_len = jnp.asarray(rng.normal(size=(4, 5, 16)), jnp.float32), jnp.asarray([5, 3, 4, 5])
    codes, code_len = jnp.asarray(rng.integers(0, 16, (4, 200)), jnp.int32), jnp.asarray([200, 150, 100, 200])
    logits = decoder.apply({"params": params}, text, text_len, codes, code_len)
    own = np.asarray(jnp.argmax(logits[:, :-1], -1))
    mixed = np.asarray(speech_train.own_predictions_mixed_in(decoder, params, text, text_len, codes, code_len, 0.5,
                                                             jax.random.key(1)))
    swapped = mixed != np.asarray(codes)
    assert np.all(mixed[swapped] == own[swapped]) and np.all(mixed < cfg.num_codes)
    differs = own != np.asarray(codes)
    assert 0.35 < swapped.sum() / differs.sum() < 0.65  # half of the positions where its prediction differs
    same = speech_train.own_predictions_mixed_in(decoder, params, text, text_len, codes, code_len, 0.0,
                                                 jax.random.key(1))
    chex.assert_trees_all_equal(same, codes)


def test_batch_spec_is_what_the_pipeline_yields_and_flops_count_the_decoder():
    """The stage-3.2 task plans ahead of time: its batch_spec is the collated batch's shapes and dtypes, its
    FLOPs per example at least the decoder's output layer over every code position, forward and backward."""
    config = tiny_stage3_2.get_config()
    config.codec_from, config.text_from, config.codec = "", "", FAST_CODEC  # stand-ins, made in init_params
    config.decoder = dict(idim=16, num_codes=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    config.batch_size = 4
    task = make_task_for(config)
    batch = next(task.make_train_data(DataShard(0, 1))["sentences"])
    spec = task.batch_spec()["sentences"]
    assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
    params = jax.eval_shape(task.init_params, jax.random.key(0))
    chex.assert_shape(params["text_embed"], (task.tokenizer.vocab_size, 64))  # the stand-in table: text_width
    code_positions = spec["wav"].shape[1] // task.extras["codec"].config.hop_length + 1
    assert task.flops_per_example >= 3 * 2 * 16 * (64 + 4) * code_positions
