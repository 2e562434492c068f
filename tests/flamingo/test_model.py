"""Flamingo model semantics: gates at 0 give the bare LM, per-image masking, cached generation, video path with
time embeddings, trainable-parameter patterns and clear errors on bad input."""
import dataclasses
import functools
import re

import flax.linen as nn
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flamingo_testlib import IMAGE, build, jit_apply, pixels, tiny_config, with_gates

from common.lm import DecoderLM, KVCache
from common.optimizer import param_names
from flamingo_jax.gated_cross_attention import (GatedCrossAttentionBlock, GatedXAttnConfig, MediaInputs,
                                                media_mask, text_time_from_ids)
from flamingo_jax.model import count_media, param_groups, trainable_param_patterns
from flamingo_jax.perceiver_resampler import PerceiverResampler, ResamplerConfig

IDS = np.array([[1, 7, IMAGE, 9, 10, IMAGE, 12, 13, 14, 15],
                [3, IMAGE, 5 + 1, 6, 7, 8, 9, IMAGE, 2, 4]], np.int32)


@pytest.fixture(scope="module")
def tiny():
    """(config, model, params with random gates) of the default tiny model (block every 2nd layer, 2 media)."""
    cfg = tiny_config()
    model, params = build(cfg, num_media=2)
    return cfg, model, with_gates(params)


class Identity(nn.Module):
    def __call__(self, x, inputs):
        return x


@pytest.mark.slow
class ZeroGatesVariantsTest(chex.TestCase):
    """The whole Flamingo forward (vision tower, resampler, gated LM), with and without jit."""

    # OpenFlamingo; one block mid-stack; every 3rd of 4 layers (a plain tail layer, as Flamingo-80B's 80 / 7)
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("every2", 2, None), ("every4_at2", 4, 2), ("every3_at0", 3, 0))
    def test_zero_gates_equal_the_bare_lm(self, every, position):
        """With both alphas at 0 every block adds exactly 0 * (finite) = 0: the logits equal the bare LM run with
        the same grouped layout (identity blocks) bit for bit."""
        cfg = tiny_config(every=every, position=position)
        model, params = build(cfg, num_media=2)
        apply = self.variant(lambda p, ids, px: model.apply({"params": p}, ids, px))
        ours = apply(params, IDS, pixels(2, 2))
        bare = DecoderLM(cfg.lm, block=Identity, block_every=every, block_position=cfg.position)
        lm_params = {**params["lm"], "decoder": {k: {j: v for j, v in g.items() if j != "block"}
                                                 for k, g in params["lm"]["decoder"].items()}}
        ref = self.variant(lambda p, ids: bare.apply({"params": p}, ids))(lm_params, IDS)
        chex.assert_trees_all_equal(np.asarray(ours), np.asarray(ref))
        # and the gates really matter once open
        gated = apply(with_gates(params), IDS, pixels(2, 2))
        assert np.abs(np.asarray(gated) - np.asarray(ref)).max() > 1e-3


def _block(variant=lambda fn: fn, **kw):
    """(x, media, run): run(media) applies a tiny gated block (dense branch closed) through `variant`."""
    cfg = GatedXAttnConfig(num_heads=2, head_dim=8, **kw)
    block = GatedCrossAttentionBlock(cfg)
    x = jnp.asarray(np.random.RandomState(0).randn(2, 10, 32).astype(np.float32))
    media = jnp.asarray(np.random.RandomState(1).randn(2, 2, 3, 24).astype(np.float32))
    inputs = MediaInputs(media, text_time_from_ids(IDS, IMAGE))
    params = nn.unbox(block.init(jax.random.key(0), x, inputs)["params"])
    params = {**params, "alpha_xattn": jnp.ones_like(params["alpha_xattn"])}  # dense branch stays closed
    apply = variant(lambda p, x, m, tt: block.apply({"params": p}, x, MediaInputs(m, tt)))
    return x, media, lambda m: apply(params, x, m, inputs.text_time)


def test_text_time_and_media_mask():
    tt = text_time_from_ids(IDS, IMAGE)
    chex.assert_trees_all_equal(tt[0], np.asarray([0, 0, 1, 1, 1, 2, 2, 2, 2, 2]))
    chex.assert_trees_all_equal(text_time_from_ids(IDS[:, -2:], IMAGE, media_seen=count_media(IDS[:, :-2], IMAGE)),
                                np.asarray([[2, 2], [2, 2]]))
    immediate, previous = media_mask(tt, 2, True), media_mask(tt, 2, False)
    chex.assert_trees_all_equal(immediate[0, :, 0], tt[0] == 1)
    chex.assert_trees_all_equal(previous[0, :, 0], tt[0] >= 1)


class GatedBlockVariantsTest(chex.TestCase):
    """The gated cross-attention block's per-image masking, run with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("immediate", True), ("all_previous", False))
    def test_masking_semantics(self, immediate):
        x, media, run = _block(self.variant, only_attend_immediate_media=immediate)
        base = np.asarray(run(media))
        tt = np.asarray(text_time_from_ids(IDS, IMAGE))
        # tokens before any image: zero cross-attention output, the block is the identity for them
        chex.assert_trees_all_equal(base[tt == 0], np.asarray(x)[tt == 0])
        # change the first medium only: which tokens move?
        moved = np.abs(np.asarray(run(media.at[:, 0].add(1.0))) - base).max(-1) > 1e-6
        expected = (tt == 1) if immediate else (tt >= 1)
        chex.assert_trees_all_equal(moved, expected)
        # the <image> token itself attends to its own image
        assert moved[0, 2] and moved[1, 1]

    @chex.variants(with_jit=True, without_jit=True)
    def test_openflamingo_zeroing_quirk(self):
        """OpenFlamingo with only_attend_immediate_media=False does not zero tokens before the first image: they
        average all media (they see later images). Reproducible on request, off by default."""
        x, media, run = _block(self.variant, only_attend_immediate_media=False, openflamingo_zeroing=True)
        tt = np.asarray(text_time_from_ids(IDS, IMAGE))
        moved = np.abs(np.asarray(run(media.at[:, 1].add(1.0))) - np.asarray(run(media))).max(-1) > 1e-6
        assert moved[tt == 0].all()


class ResamplerVariantsTest(chex.TestCase):
    """The Perceiver Resampler, with and without jit: R latents per medium; without time embeddings the frames of a
    video are one set of tokens, their order does not matter."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_resampler_output_and_frame_order(self):
        feats = jnp.asarray(np.random.RandomState(2).randn(2, 2, 3, 4, 24).astype(np.float32))  # [B, N, T, S, Dv]
        plain = PerceiverResampler(ResamplerConfig(width=24, depth=1, num_heads=2, head_dim=8, num_latents=4))
        p = jax.jit(plain.init)(jax.random.key(0), feats)
        run = self.variant(plain.apply)
        media = run(p, feats)
        chex.assert_shape(media, (2, 2, 4, 24))  # [B, N, R, Dv]
        chex.assert_trees_all_close(run(p, feats[:, :, ::-1]), media, atol=1e-5, rtol=1e-7)


def test_idefics_image_attention_mask_is_accepted(tiny):
    """HF IDEFICS' input name: image_attention_mask [B, T, N] (one-hot of text_time) gives the logits text_time
    gives; a mask that hides every image from a token makes its cross-attention zero; a wrong shape is named."""
    cfg, model, params = tiny
    px = pixels(2, 2)
    tt = np.asarray(text_time_from_ids(IDS, IMAGE))
    mask = np.eye(3, dtype=np.int32)[tt][..., 1:]  # [B, T, N]
    apply = jit_apply(model)
    chex.assert_trees_all_close(apply(params, IDS, px, image_attention_mask=mask), apply(params, IDS, px),
                                atol=1e-6)
    blind = apply(params, IDS, px, image_attention_mask=np.zeros_like(mask))
    chex.assert_trees_all_close(blind, apply(params, IDS, px, text_time=np.zeros_like(tt)), atol=1e-6)
    with pytest.raises(ValueError, match="image_attention_mask must be"):
        model.apply({"params": params}, IDS, px, image_attention_mask=mask[:, :, :1])


@pytest.mark.slow
def test_cached_generation_continues_media_time(tiny):
    """Prefill + one-token steps (no <image> in the new tokens, media_seen from the prefix) equal the full pass."""
    cfg, model, params = tiny
    px = pixels(2, 2)
    full = jit_apply(model)(params, IDS, px)
    media = jit_apply(model, method="encode_media")(params, px)  # [B, N, R, D], cached across steps
    chex.assert_shape(media, (2, 2, 4, 24))
    cache = KVCache.create(cfg.lm, 2, 16)
    apply = jit_apply(model)
    first, cache = apply(params, IDS[:, :8], media=media, cache=cache)
    seen = count_media(IDS[:, :8], IMAGE)
    outs = [first]
    for t in (8, 9):
        step, cache = apply(params, IDS[:, t:t + 1], media=media, cache=cache, media_seen=seen)
        outs.append(step)
        seen = seen + count_media(IDS[:, t:t + 1], IMAGE)
    chex.assert_trees_all_close(np.concatenate(outs, 1), full, atol=2e-5, rtol=1e-7)


@pytest.mark.slow
def test_video_path_and_time_embeddings():
    cfg = tiny_config(frames=3)
    model, params = build(cfg, num_media=2, frames=3)
    params = with_gates(params)
    video = pixels(2, 2, frames=3)
    logits = jit_apply(model)(params, IDS, video)
    chex.assert_shape(logits, (2, 10, 48))
    assert logits.dtype == jnp.float32
    feats = jit_apply(model, method="encode_vision")(params, video)
    chex.assert_shape(feats, (2, 2, 3, 4, 24))  # [B, N, T, S, Dv]: 2x2 patches of 8px, CLS dropped
    resample = jit_apply(model, method="resample")
    media = resample(params, feats)
    chex.assert_shape(media, (2, 2, 4, 24))  # [B, N, R, Dv]
    # time embeddings: reordering frames changes the media (without them it does not: ResamplerVariantsTest)
    assert np.abs(np.asarray(resample(params, feats[:, :, ::-1])) - np.asarray(media)).max() > 1e-4
    with pytest.raises(ValueError, match="max_frames"):
        jax.eval_shape(lambda p, v: model.apply({"params": p}, IDS, v), params, pixels(2, 2, frames=4))


@pytest.mark.slow
def test_trainable_patterns_and_groups(tiny):
    _, _, params = tiny
    names = jax.tree.leaves(param_names(params))
    patterns = [re.compile(p) for p in trainable_param_patterns()]
    trainable = {n for n in names if any(p.fullmatch(n) for p in patterns)}
    assert trainable == {n for n in names if n.startswith(("resampler/", "lm/embed/")) or "/block/" in n}
    assert any("alpha_xattn" in n for n in trainable) and not any(n.startswith("vision/") for n in trainable)
    no_embed = [re.compile(p) for p in trainable_param_patterns(train_embeddings=False)]
    assert not any(p.fullmatch("lm/embed/embedding") for p in no_embed)
    assert param_groups()[-1] == (".*", None)
    embed = [settings for pattern, settings in param_groups() if re.fullmatch(pattern, "lm/embed/embedding")][0]
    assert embed == {"wd_mult": 0.0, "rows": ("<image>", "<|endofchunk|>")}  # OpenFlamingo's new-token rows
    assert [s for p, s in param_groups("all") if re.fullmatch(p, "lm/embed/embedding")][0] == {"wd_mult": 0.0}
    assert [s for p, s in param_groups(False) if re.fullmatch(p, "lm/embed/embedding")][0] is None
    with pytest.raises(ValueError, match="train_embeddings"):
        param_groups("some")


def test_bad_inputs(tiny):
    _, model, params = tiny
    apply = functools.partial(model.apply, {"params": params})  # eager: the checks fire before any heavy work
    with pytest.raises(ValueError, match="rank 4"):
        apply(IDS, pixels(2, 2)[:, 0])
    too_many = IDS.copy()
    too_many[0, 0] = IMAGE
    with pytest.raises(ValueError, match="3 <image> tokens"):
        apply(too_many, media=jnp.zeros((2, 2, 4, 24)))
    with pytest.raises(ValueError, match="at most one"):
        apply(IDS, pixels(2, 2), media=jnp.zeros((2, 2, 4, 24)))
    with pytest.raises(ValueError, match="NHWC"):
        apply(IDS, jnp.zeros((2, 2, 3, 16, 16)))
    with pytest.raises(ValueError, match="media must be"):
        apply(IDS, media=jnp.zeros((2, 2, 4, 25)))
    # text only works: nobody sees an image
    chex.assert_shape(jit_apply(model)(params, np.full((2, 3), 7, np.int32)), (2, 3, 48))


def test_param_groups_follow_open_flamingo_weight_decay():
    """OpenFlamingo's apply_decay: decay on the gated blocks' kernels only; gates, norms, biases, the resampler and
    the embeddings get none; everything else is frozen (first matching regex wins)."""
    import re

    from flamingo_jax.model import param_groups

    groups = param_groups(True)

    def settings(path):
        return next(s for p, s in groups if re.fullmatch(p, path))

    for path in ("lm/decoder/groups/block/alpha_xattn", "lm/decoder/groups_2/block/alpha_dense",
                 "lm/decoder/groups/block/attn_norm/scale", "lm/decoder/groups/block/ff_norm/bias",
                 "resampler/layers/attn/q/kernel", "lm/embed/embedding"):
        assert settings(path) == {"wd_mult": 0.0}, path
    for path in ("lm/decoder/groups/block/attn/q/kernel", "lm/decoder/groups_1/block/ff/up/kernel"):
        assert settings(path) == {"wd_mult": 1.0}, path
    assert settings("lm/decoder/groups/layer_0/mlp/up/kernel") is None
    assert settings("vision/embeddings/patch/kernel") is None


@pytest.mark.slow
def test_resampler_and_blocks_start_from_torch_linear_init():
    """OpenFlamingo / flamingo-pytorch keep torch.nn.Linear's default init for the resampler and the gated blocks:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) over all contracted axes (o [H, Dh, E]: fan_in = H * Dh); IDEFICS keeps HF's
    normal(0.02)."""
    import torch

    from common.layers import kernel_initializer

    torch.manual_seed(0)
    ref = torch.nn.Linear(96, 64, bias=False).weight.detach().numpy()  # [out, in]
    for shape, n_in, n_out, fan_in in [((96, 64), 1, 1, 96), ((96, 4, 24), 1, 2, 96), ((4, 24, 64), 2, 1, 96)]:
        w = np.asarray(kernel_initializer("torch_linear", n_in, n_out)(jax.random.key(0), shape))
        assert np.abs(w).max() <= 1 / np.sqrt(fan_in) + 1e-7
        chex.assert_trees_all_close(w.std(), ref.std(), rtol=0.05)  # both 1/sqrt(3 fan_in)
    with pytest.raises(ValueError, match="unknown kernel init 'xavier'"):
        kernel_initializer("xavier")

    cfg = ResamplerConfig(width=96, depth=1, num_heads=4, head_dim=24, num_latents=4)
    params = PerceiverResampler(cfg).init(jax.random.key(1), jnp.zeros((1, 1, 1, 9, 96)))["params"]
    o = np.asarray(nn.unbox(params["layers_0"]["attn"]["o"]["kernel"]))  # [H, Dh, D], fan_in 96
    assert 0.9 / np.sqrt(3 * 96) < o.std() < 1.1 / np.sqrt(3 * 96)
    block = GatedCrossAttentionBlock(GatedXAttnConfig(num_heads=2, head_dim=8, kernel_init="normal_0.02"))
    x = jnp.zeros((1, 3, 32))
    media = MediaInputs(jnp.zeros((1, 1, 2, 48)), jnp.ones((1, 3), jnp.int32))
    q = np.asarray(nn.unbox(block.init(jax.random.key(2), x, media)["params"]["attn"]["q"]["kernel"]))
    assert 0.018 < q.std() < 0.022


def test_idefics_configs_keep_hf_init():
    from flamingo_jax.hf import idefics_config

    cfg = idefics_config({"model_type": "idefics", "use_resampler": True, "vocab_size": 64, "hidden_size": 32,
                          "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "vision_config": {"embed_dim": 48, "image_size": 30,
                                                                      "patch_size": 15, "num_hidden_layers": 1,
                                                                      "num_attention_heads": 4,
                                                                      "intermediate_size": 96},
                          "perceiver_config": {}})
    assert cfg.xattn.kernel_init == cfg.resampler.kernel_init == "normal_0.02"


def test_blocks_keep_their_own_param_dtype():
    """The frozen LM stored in bfloat16 with the trained gated blocks' weights in float32 (docs/tpu.md: OpenFlamingo-
    4B's step); with no xattn dtype given the blocks follow the LM, as before."""
    from flamingo_jax.model import abstract_params

    cfg = tiny_config()
    lm_bf16 = cfg.replace(lm=cfg.lm.replace(param_dtype="bfloat16"))
    mixed = nn.unbox(abstract_params(lm_bf16.replace(xattn=dataclasses.replace(lm_bf16.xattn, param_dtype="float32"))))
    groups = mixed["lm"]["decoder"]["groups"]
    assert {x.dtype for x in jax.tree.leaves(groups["block"])} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(groups["layer_0"])} == {jnp.dtype(jnp.bfloat16)}
    follows = nn.unbox(abstract_params(lm_bf16))["lm"]["decoder"]["groups"]["block"]
    assert {x.dtype for x in jax.tree.leaves(follows)} == {jnp.dtype(jnp.bfloat16)}
