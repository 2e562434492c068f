"""VITA-1.5 as a whole: a release-layout folder (sharded safetensors, the audio folder's train.yaml) written from a
PyTorch reference composition (tests/vita/vita_reference.py: HF Qwen2ForCausalLM + HF InternVLVisionModel under the
release's InternViT names + projector + the whale reference) loads through vita_jax.load_original, and its logits on
mixed image + audio + text batches equal the reference's (<= 1e-4); `vita_jax.hf.save_original` writes that layout
back (every release tensor equal, loaded back exactly); the published sizes; (2, 2, 2) sharding equals one device;
placeholder mismatches fail loudly."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from common.data.audio import speech_fbank
from common.data.speech import load_word_bank
from common.sharding import activate, make_mesh, params_sharding
from test_vision_parity import IMAGENET_MEAN, IMAGENET_STD, real_images
from vita_jax import AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX, Vita, load_original, param_counts
from vita_jax.presets import PUBLISHED_PARAMS, tiny, vita_1_5
from vita_jax.model import abstract_params, example_inputs

TOL = 1e-4

CONFIGS = {
    # GQA 4/2, untied head; vision sizes read from the tensor shapes (1 head of 64); full-attention audio encoder
    "gqa2_untied_shapes_full": dict(
        text=dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6, tie_word_embeddings=False),
        vision=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, image_size=56,
                    patch_size=14, attention_bias=True, norm_type="layer_norm", use_qk_norm=False),
        audio=dict(dim=64, heads=4, ffn=96, layers=2), vision_config_in_json=False),
    # GQA 6/1, tied embeddings, default rope; vision config in config.json (4 heads); static-chunk audio encoder
    "gqa6_tied_visionjson_chunked": dict(
        text=dict(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                    patch_size=7, attention_bias=True, norm_type="layer_norm", use_qk_norm=False),
        audio=dict(dim=32, heads=2, ffn=64, layers=2, chunk_size=4, left_chunks=1), vision_config_in_json=True),
}


def clips(texts, seed=0):
    bank, rng = load_word_bank(), np.random.default_rng(seed)
    return [speech_fbank(bank.say(t, rng)) for t in texts]


def mixed_batch(config, vocab, image_size, seed=0):
    """Two samples: [text, 2 tiles, text, audio, text] and [text, 1 tile, text, audio, text, audio] (shorter,
    right-padded) -> (ids, attention_mask, pixels [2, 2, H, W, C], image_mask, features [2, 2, T, 80], frame mask,
    per-sample tiles and clips for the reference)."""
    rng = np.random.default_rng(seed)
    images = real_images(image_size, IMAGENET_MEAN, IMAGENET_STD)  # [3, H, W, C]
    audio = clips(["how many shapes are there", "red circle", "is there a blue square"], seed)
    tokens = lambda n: list(rng.integers(1, vocab, n))  # noqa: E731
    per_tile, n_audio = config.tokens_per_tile, [int(config.audio_tokens(len(c))) for c in audio]
    rows = [tokens(5) + [IMAGE_TOKEN_INDEX] * (2 * per_tile) + tokens(3) + [AUDIO_TOKEN_INDEX] * n_audio[0] + tokens(4),
            tokens(3) + [IMAGE_TOKEN_INDEX] * per_tile + tokens(2) + [AUDIO_TOKEN_INDEX] * n_audio[1] + tokens(2)
            + [AUDIO_TOKEN_INDEX] * n_audio[2]]
    length = max(map(len, rows))
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros((2, length), np.int32)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = r, 1
    pixels = np.zeros((2, 2) + images.shape[1:], np.float32)
    pixels[0, :2], pixels[1, 0] = images[:2], images[2]
    image_mask = np.array([[1, 1], [1, 0]], bool)
    frames = max(len(c) for c in audio)
    feats = np.zeros((2, 2, frames, 80), np.float32)
    fmask = np.zeros((2, 2, frames), bool)
    for (b, a), c in zip([(0, 0), (1, 0), (1, 1)], audio):
        feats[b, a, :len(c)], fmask[b, a, :len(c)] = c, True
    return (ids, mask, pixels, image_mask, feats, fmask,
            [images[:2], images[2:3]], [[audio[0]], [audio[1], audio[2]]])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_release_folder_matches_reference(name, tmp_path):
    import vita_reference

    spec = CONFIGS[name]
    reference = vita_reference.Reference(spec["text"], spec["vision"], spec["audio"], seed=len(name))
    folder = reference.save_release(str(tmp_path / "VITA-1.5"), vision_config_in_json=spec["vision_config_in_json"])
    module, params = load_original(folder)
    cfg = module.config
    assert cfg.audio.chunk_mode == ("static" if "chunk_size" in spec["audio"] else "full")
    assert cfg.vision.num_heads == spec["vision"]["num_attention_heads"]
    assert cfg.text.tie_word_embeddings == spec["text"]["tie_word_embeddings"]
    ids, mask, pixels, image_mask, feats, fmask, tiles, audio = mixed_batch(cfg, spec["text"]["vocab_size"],
                                                                           spec["vision"]["image_size"])
    got = jax.jit(module.apply)({"params": params}, ids, pixels, mask, image_mask, feats, fmask)
    want = reference.logits(ids, mask, IMAGE_TOKEN_INDEX, AUDIO_TOKEN_INDEX, tiles, audio)
    valid = mask.astype(bool)
    diff = float(np.abs(np.asarray(got)[valid] - want[valid]).max())
    print(name, f"max |diff| {diff:.2e}, logits std {want[valid].std():.3f}")
    chex.assert_trees_all_close(np.asarray(got)[valid], want[valid], atol=TOL, rtol=0)
    assert want[valid].std() > 0.1  # the comparison is not between near-constant logits
    # one request at a time gives the same logits as the mixed batch
    for b in range(2):
        n = int(mask[b].sum())
        one = module.apply({"params": params}, ids[b:b + 1, :n], pixels[b:b + 1, :int(image_mask[b].sum())], None,
                           None, feats[b:b + 1, :int(fmask[b].any(-1).sum())],
                           fmask[b:b + 1, :int(fmask[b].any(-1).sum())])
        chex.assert_trees_all_close(np.asarray(one[0]), np.asarray(got[b, :n]), atol=TOL, rtol=0)


@pytest.mark.slow
def test_export_writes_the_release_layout_back(tmp_path):
    """load_original -> save_original: every tensor of the release folder comes back under its own name with the same
    values (fused qkv, conv kernels, CMVN buffers included), config.json / train.yaml / global_cmvn read back to the
    same model and parameters; a setting the release's files cannot hold is refused, naming it."""
    import dataclasses
    import json
    import os

    import vita_reference

    from common.hf.checkpoint import CheckpointError, iter_tensors
    from vita_jax.hf import AUDIO_DIR_NAME, load_cmvn_json, save_original

    spec = CONFIGS["gqa6_tied_visionjson_chunked"]
    reference = vita_reference.Reference(spec["text"], spec["vision"], spec["audio"], seed=3)
    folder = reference.save_release(str(tmp_path / "VITA-1.5"), vision_config_in_json=True)
    module, params = load_original(folder)
    out = save_original(str(tmp_path / "export"), module, params, max_shard_bytes=40_000)
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))  # sharded past 40 kB
    exported = dict(iter_tensors(out))
    # buffers the loader recomputes, and the copy of the tied embedding torch's state_dict carries, are not written
    recomputed = ("inv_freq", "position_ids") + (("lm_head.weight",) if module.config.text.tie_word_embeddings else ())
    release = {n: t for n, t in iter_tensors(folder) if not n.endswith(recomputed)}
    assert sorted(exported) == sorted(release)
    for name, tensor in release.items():
        chex.assert_trees_all_equal(exported[name], tensor, custom_message=name)
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    assert hf["model_type"] == "vita-Qwen2" and hf["vision_config"]["model_type"] == "intern_vit_6b"
    again, params_again = load_original(out)
    assert again.config == module.config
    chex.assert_trees_all_close(params_again, params, atol=0, rtol=0)
    mean, istd = load_cmvn_json(os.path.join(out, AUDIO_DIR_NAME, "global_cmvn"))  # what the release's code reads
    chex.assert_trees_all_close((mean, istd), (params["audio_encoder"]["global_cmvn_mean"],
                                               params["audio_encoder"]["global_cmvn_istd"]), rtol=1e-6)
    odd = Vita(module.config.replace(audio=dataclasses.replace(module.config.audio, layer_norm_eps=1e-6)))
    with pytest.raises(CheckpointError, match="no train.yaml counterpart: layer_norm_eps: 1e-06 would load as 1e-05"):
        save_original(str(tmp_path / "refused"), odd, params)
    assert not os.path.exists(tmp_path / "refused")


def test_published_sizes():
    counts = param_counts(vita_1_5())
    assert counts["lm"] == 7_615_616_512 and abs(counts["lm"] - PUBLISHED_PARAMS["lm"]) / PUBLISHED_PARAMS["lm"] < 0.01
    assert counts["vision_tower"] == 304_012_288
    assert counts["projector"] == 4096 * 3584 + 3584 + 3584 * 3584 + 3584
    assert counts["audio_encoder"] == 357_950_464 + 160  # + the CMVN statistics
    assert abs(counts["audio_encoder"] - PUBLISHED_PARAMS["audio_encoder"]) / PUBLISHED_PARAMS["audio_encoder"] < 0.05
    assert counts["audio_adapter"] == 5 * 1024 * 2048 + 2048 + 2 * 2048 + 2048 * 3584 + 3584
    assert vita_1_5().tokens_per_tile == 256


@pytest.mark.slow
def test_placeholder_mismatch_raises():
    config = tiny()
    module = Vita(config)
    params = jax.jit(lambda k: nn.unbox(module.init(k, *example_inputs(config))["params"]))(jax.random.key(0))
    ids = np.full((1, 10), 5, np.int32)
    ids[0, :3] = IMAGE_TOKEN_INDEX  # 3 placeholders for a tile of 16 tokens
    pixels = np.zeros((1, 1, 56, 56, 3), np.float32)
    with pytest.raises(ValueError, match="image placeholders"):
        module.apply({"params": params}, ids, pixels)
    with pytest.raises(ValueError, match="no pixel_values"):
        module.apply({"params": params}, ids)
    ids[0, :3] = AUDIO_TOKEN_INDEX
    with pytest.raises(ValueError, match="no input_features"):
        module.apply({"params": params}, ids)
    with pytest.raises(ValueError, match="audio placeholders"):
        module.apply({"params": params}, ids, input_features=np.zeros((1, 100, 80), np.float32))
    # under jit nothing can be raised: the mismatched sample's logits are NaN, so its loss fails loudly
    out = jax.jit(module.apply)({"params": params}, ids, None, None, None, np.zeros((1, 100, 80), np.float32))
    assert np.isnan(np.asarray(out)).all()


@pytest.mark.slow
def test_video_frames_are_tiles():
    config = tiny()
    module = Vita(config)
    params = jax.jit(lambda k: nn.unbox(module.init(k, *example_inputs(config))["params"]))(jax.random.key(1))
    frames = np.random.default_rng(0).normal(size=(1, 1, 4, 56, 56, 3)).astype(np.float32)  # [B, N, F, H, W, C]
    ids = np.array([[7] * 3 + [IMAGE_TOKEN_INDEX] * (4 * config.tokens_per_tile) + [9] * 2], np.int32)
    video = module.apply({"params": params}, ids, frames)
    tiles = module.apply({"params": params}, ids, frames[:, 0])  # the same 4 frames as 4 tile slots
    chex.assert_trees_all_close(video, tiles, atol=1e-6, rtol=1e-7)


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_sharded_forward_and_gradients_equal_single_device():
    config = tiny()
    module = Vita(config)
    boxed = abstract_params(config)
    params = jax.jit(lambda k: nn.unbox(module.init(k, *example_inputs(config))["params"]))(jax.random.key(2))
    rng = np.random.default_rng(0)
    per_tile = config.tokens_per_tile
    audio = clips(["red circle", "blue square", "how many", "yellow star"])
    frames = max(map(len, audio))
    feats = np.zeros((4, 1, frames, 80), np.float32)
    fmask = np.zeros((4, 1, frames), bool)
    rows = []
    for b, c in enumerate(audio):
        feats[b, 0, :len(c)], fmask[b, 0, :len(c)] = c, True
        rows.append(list(rng.integers(1, 500, 4)) + [IMAGE_TOKEN_INDEX] * per_tile + [AUDIO_TOKEN_INDEX]
                    * int(config.audio_tokens(len(c))))
    length = max(map(len, rows)) + 2
    ids = np.array([r + list(rng.integers(1, 500, length - len(r))) for r in rows], np.int32)
    pixels = rng.normal(size=(4, 1, 56, 56, 3)).astype(np.float32)

    def loss_fn(p, ids, pixels, feats, fmask):
        logits = module.apply({"params": p}, ids, pixels, None, None, feats, fmask)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, jnp.maximum(ids[:, 1:, None], 0), axis=-1)), logits

    args = (ids, pixels, feats, fmask)
    (ref_loss, ref_logits), ref_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, *args)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = params_sharding(boxed, mesh)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    with activate(mesh):
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), in_shardings=(shardings,) + (batch,) * 4,
                       out_shardings=((NamedSharding(mesh, P()), None), shardings))
        (loss, logits), grads = step(jax.device_put(params, shardings), *(jax.device_put(a, batch) for a in args))
    chex.assert_trees_all_close(loss, ref_loss, atol=0, rtol=1e-5)
    chex.assert_trees_all_close(logits, ref_logits, atol=1e-4, rtol=1e-7)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-5, rtol=1e-7)
    q = grads["audio_encoder"]["layers"]["self_attn"]["proj"]["q"]["kernel"]  # [L, D, H, d]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert grads["audio_adapter"]["project"]["kernel"].sharding.spec == P("tensor", "fsdp")
