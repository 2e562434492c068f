"""LLaVA / LLaVA-NeXT loaded from HF checkpoints equal transformers' LlavaForConditionalGeneration /
LlavaNextForConditionalGeneration (f32 logits, max abs diff <= 1e-4 on every non-padding position) on real photographs
through our preprocessing, with several images per sample, mixed image counts, left padding, and configs covering
feature layer -1 / -2 / a list, select strategy default / full, projector activations, GQA, tied embeddings and
Llama / Mistral / Qwen2 text models. The original release layout (LM dir + mm_projector.bin + CLIP dir) loads to
the same parameters."""
import json
import os

import chex
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import common.hf  # noqa: E402
import llava_jax  # noqa: E402
from llava_testlib import (IMAGE_TOKEN, clip_pixels, hf_llava, hf_logits, jit_apply, next_inputs,  # noqa: E402
                              prompts)

TOL = 1e-4
CASES = {
    # name: (text model, HF LlavaConfig kwargs)
    "llama_layer-2_default_gelu": ("llama", dict(vision_feature_layer=-2)),
    "qwen2_layer-1_full_tanh_tied": ("qwen2", dict(vision_feature_layer=-1, vision_feature_select_strategy="full",
                                                   projector_hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "mistral_layers[-3,-1]_relu_nobias": ("mistral", dict(vision_feature_layer=[-3, -1], projector_hidden_act="relu",
                                                          multimodal_projector_bias=False)),
}


def _batch(images, tokens, size, rng):
    """Sample 0: images 0 and 1; sample 1: image 2 (mixed counts, left padded). -> HF + our inputs."""
    pixels = clip_pixels(images, size)  # [3, S, S, 3]
    ids, mask = prompts([[tokens, tokens], [tokens]], tokens, rng)
    ours = np.zeros((2, 2) + pixels.shape[1:], np.float32)
    ours[0], ours[1, 0] = pixels[:2], pixels[2]
    return ids, mask, pixels, ours, np.array([[True, True], [True, False]])


@pytest.mark.parametrize("case", sorted(CASES))
def test_llava_matches_transformers(case, save_hf, real_images):
    text, kwargs = CASES[case]
    model = hf_llava(text, 42, **kwargs)
    path = save_hf(model)
    module, params = llava_jax.load_hf(path)
    cfg = module.config
    assert (cfg.text.tie_word_embeddings == bool(kwargs.get("tie_word_embeddings"))
            and cfg.image_token_index == IMAGE_TOKEN)
    images = [real_images[k] for k in ("astronaut", "coffee", "chelsea")]
    ids, mask, hf_pixels, pixels, image_mask = _batch(images, cfg.tokens_per_crop, 42, np.random.RandomState(1))
    ref = hf_logits(model, ids, mask, hf_pixels)
    out = jit_apply(module, params, ids, pixels, mask, image_mask)
    valid = mask.astype(bool)
    chex.assert_equal_shape([out, ref])
    assert out.dtype == np.float32
    diff = np.abs(out - ref)[valid].max()
    print(f"{case}: max |logits - HF| = {diff:.2e}")
    chex.assert_trees_all_close(np.asarray(out)[valid], ref[valid], atol=TOL, rtol=0)
    # the images matter: different pixels change the logits after the first placeholder
    other = jit_apply(module, params, ids, pixels[:, ::-1], mask, image_mask[:, ::-1])
    assert np.abs(other - out)[valid].max() > 1e-3


PINPOINTS = [[42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]  # LLaVA-NeXT's five, scaled to 42px crops


def test_llava_next_matches_transformers(save_hf, real_images):
    model = hf_llava("llama", 42, next_pinpoints=PINPOINTS, vision_feature_layer=-2)
    path = save_hf(model)
    module, params = common.hf.load(path)  # through the common registry
    cfg = module.config
    assert isinstance(module, llava_jax.Llava) and cfg.anyres and "image_newline" in params
    # 400x600 -> 2x2 crops, 6x6 cells unpadded to 4x6; a tall 512x150 slice -> 3x1 crops (9x3 cells); 512x512 -> 2x2
    images = [real_images["coffee"], real_images["astronaut"][:, 200:350], real_images["astronaut"]]
    pixels, sizes = next_inputs(images, PINPOINTS, 42)
    layout = cfg.image_layout(sizes)
    assert layout[:, :2].tolist() == [[2, 2], [3, 1], [2, 2]]
    tokens = cfg.tokens_per_image(sizes)
    assert tokens.tolist() == [9 + 4 * (6 + 1), 9 + 9 * (3 + 1), 9 + 6 * (6 + 1)]  # base + rows * (cols + newline)
    ids, mask = prompts([[tokens[0], tokens[1]], [tokens[2]]], None, np.random.RandomState(2))
    ref = hf_logits(model, ids, mask, pixels, sizes)
    ours = np.zeros((2, 2) + pixels.shape[1:], np.float32)
    ours[0], ours[1, 0] = pixels[:2], pixels[2]
    our_sizes = np.zeros((2, 2, 2), np.int32)
    our_sizes[0], our_sizes[1, 0] = sizes[:2], sizes[2]
    image_mask = np.array([[True, True], [True, False]])
    out = jit_apply(module, params, ids, ours, mask, image_mask, image_layout=cfg.image_layout(our_sizes))
    diff = np.abs(out - ref)[mask.astype(bool)].max()
    print(f"llava_next: max |logits - HF| = {diff:.2e}")
    chex.assert_trees_all_close(np.asarray(out)[mask.astype(bool)], ref[mask.astype(bool)], atol=TOL, rtol=0)
    # host image_sizes (numpy, static under jit) give the same layout
    again = jit_apply(module, params, ids, ours, mask, image_mask, static=dict(image_sizes=our_sizes))
    chex.assert_trees_all_equal(again, out)


@pytest.mark.slow
def test_original_release_layout_gives_the_same_params(save_hf, tmp_path, real_images):
    """liuhaotian-style LM dir (config with mm_* fields) + stage-1 mm_projector.bin + a CLIP tower dir."""
    from safetensors.torch import save_file

    model = hf_llava("llama", 42)
    hf_module, hf_params = llava_jax.load_hf(save_hf(model))
    state = model.state_dict()
    lm_dir, vision_dir = tmp_path / "llava-v1.5-tiny", tmp_path / "clip"
    lm_dir.mkdir()
    lm_state = {("model." + k[len("model.language_model."):]) if k.startswith("model.language_model.") else k: v
                for k, v in state.items() if k.startswith("model.language_model.") or k == "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in lm_state.items()}, str(lm_dir / "model.safetensors"))
    text = model.config.text_config.to_dict()
    lm_config = {**text, "model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
                 "mm_vision_select_feature": "patch", "mm_hidden_size": 24, "mm_use_im_start_end": False,
                 "mm_vision_tower": "openai/clip-vit-large-patch14-336", "image_aspect_ratio": "pad"}
    (lm_dir / "config.json").write_text(json.dumps(lm_config))
    projector = {f"model.mm_projector.{j}.{kind}": state[f"model.multi_modal_projector.linear_{i}.{kind}"]
                 for i, j in ((1, 0), (2, 2)) for kind in ("weight", "bias")}
    torch.save(projector, tmp_path / "mm_projector.bin")
    clip = transformers.CLIPVisionModel(model.config.vision_config)
    clip.load_state_dict(model.model.vision_tower.state_dict())
    clip.save_pretrained(vision_dir)

    module, params = llava_jax.load_original(str(lm_dir), str(tmp_path / "mm_projector.bin"), str(vision_dir))
    assert module.config.image_token_index == -200 and module.config.projector_type == "mlp2x_gelu"
    flat = lambda tree: dict(zip(*zip(*[("/".join(map(str, p)), np.asarray(v))  # noqa: E731
                                         for p, v in __import__("jax").tree_util.tree_leaves_with_path(tree)])))
    a, b = flat(params), flat(hf_params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # same logits with the original's IMAGE_TOKEN_INDEX (-200) placeholders
    tokens = module.config.tokens_per_crop
    ids, mask = prompts([[tokens]], tokens, np.random.RandomState(3))
    pixels = clip_pixels([real_images["chelsea"]], 42)[None]
    ref = jit_apply(hf_module, hf_params, ids, pixels, mask)
    out = jit_apply(module, params, np.where(ids == IMAGE_TOKEN, -200, ids), pixels, mask)
    chex.assert_trees_all_equal(out, ref)
    # a stage-2 dir holding the projector itself loads without the .bin
    save_file({**{k: v.contiguous() for k, v in lm_state.items()}, **projector}, str(lm_dir / "model.safetensors"))
    _, params2 = llava_jax.load_original(str(lm_dir), vision_tower_dir=str(vision_dir))
    assert all(np.array_equal(v, flat(params2)[k]) for k, v in a.items())
    with pytest.raises(FileNotFoundError):
        llava_jax.load_original(str(lm_dir), str(tmp_path / "missing.bin"), str(vision_dir))
    # LLaVA-1's single Linear projector (mm_projector.weight / bias)
    weight, bias = torch.randn(32, 24), torch.randn(32)
    torch.save({"model.mm_projector.weight": weight, "model.mm_projector.bias": bias}, tmp_path / "linear.bin")
    module, params3 = llava_jax.load_original(str(lm_dir), str(tmp_path / "linear.bin"), str(vision_dir),
                                              projector_type="linear")
    assert set(params3["projector"]) == {"linear_1"} and os.path.isdir(vision_dir)
    chex.assert_trees_all_equal(params3["projector"]["linear_1"]["kernel"], weight.numpy().T)
