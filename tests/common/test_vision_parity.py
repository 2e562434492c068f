"""The vision towers loaded from HF checkpoints equal transformers' forward pass (f32, every hidden state,
max abs diff <= 1e-4) on real photographs (scikit-image's astronaut / coffee / chelsea), NHWC input:
CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel and InternVLVisionModel (LayerNorm vs RMSNorm,
qk-norm, qkv bias, final norm), the original InternViT tensor naming, InternVL's pixel shuffle, scan vs
unrolled layers, remat, stochastic depth, sharded loading and clear errors for bad inputs / checkpoints."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
from PIL import Image  # noqa: E402

import common.hf as hf  # noqa: E402
from common.hf.checkpoint import CheckpointError, fill_params, iter_tensors  # noqa: E402
from common.params import abstract_params  # noqa: E402
from common.hf.vision import clip_rule, internvit_rule  # noqa: E402
from common.vision.clip import CLIPVisionConfig, CLIPVisionTransformer, select_features  # noqa: E402
from common.vision.intern_vit import InternViT, InternViTConfig, image_features, pixel_shuffle  # noqa: E402

TOL = 1e-4
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def real_images(size: int, mean, std) -> np.ndarray:
    """[3, size, size, 3] float32: astronaut, coffee, chelsea, bicubic-resized and normalised (NHWC)."""
    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append((np.asarray(img, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return np.stack(out)


def randomize(model, seed: int) -> None:
    """HF initialises cls / position embeddings and biases to zero, norms to one and layer scales to a constant:
    perturb every parameter so each tensor's mapping matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if any(k in name for k in ("class_embedding", "cls_token", "position_embedding")) else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def hf_forward(model, pixels: np.ndarray):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2), output_hidden_states=True)


def run(module, params, pixels, **kwargs):
    """Jitted forward (eager flax applies compile every op separately, which is slow on CPU)."""
    rngs = kwargs.pop("rngs", None)
    fn = jax.jit(lambda p, x, r: module.apply({"params": p}, x, rngs=r, **kwargs))
    return fn(params, jnp.asarray(pixels), rngs)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


# ----------------------------------------------------------------------------------------------
# CLIP

CLIP_CONFIGS = {
    # name: (HF class, vision config kwargs)
    "vision_p14_quick_gelu": ("CLIPVisionModel", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=56,
        patch_size=14)),
    "vision_with_projection_p16_gelu": ("CLIPVisionModelWithProjection", dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6, image_size=64,
        patch_size=16, hidden_act="gelu", projection_dim=24, layer_norm_eps=1e-6)),
    "full_clip_p8_gelu_new": ("CLIPModel", dict(
        hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2, image_size=40,
        patch_size=8, hidden_act="gelu_new")),
}


def build_clip(kind: str, vision_kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionConfig(**vision_kwargs)
    if kind == "CLIPModel":
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=99,
                    max_position_embeddings=16)
        model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision.to_dict(), text_config=text,
                                                               projection_dim=16))
    else:
        model = getattr(transformers, kind)(vision)
    randomize(model, seed)
    return model.float().eval()


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_clip_matches_hf(name, save_hf):
    kind, kwargs = CLIP_CONFIGS[name]
    model = build_clip(kind, kwargs)
    path = save_hf(model)
    module, params = hf.load(path)
    assert isinstance(module, CLIPVisionTransformer)
    pixels = real_images(kwargs["image_size"], CLIP_MEAN, CLIP_STD)
    out = run(module, params, pixels)

    if kind == "CLIPModel":
        tower, projection = model.vision_model, model.visual_projection
    elif kind == "CLIPVisionModelWithProjection":
        tower, projection = model.vision_model, model.visual_projection
    else:
        tower, projection = model, None
    ref = hf_forward(tower, pixels)
    n_layers = kwargs["num_hidden_layers"]
    chex.assert_shape(out.hidden_states, (n_layers + 1, 3, module.config.num_patches + 1, kwargs["hidden_size"]))
    assert len(ref.hidden_states) == n_layers + 1
    pairs = {i: (out.hidden_states[i], ref.hidden_states[i]) for i in range(n_layers + 1)}
    pairs["last"] = (out.last_hidden_state, ref.last_hidden_state)
    pairs["pooled"] = (out.pooled, ref.pooler_output)
    with torch.no_grad():  # open_clip-style tokens: post_layernorm on every token
        pairs["post_norm_tokens"] = (out.post_norm_tokens, tower.post_layernorm(ref.last_hidden_state))
    if projection is not None:
        with torch.no_grad():
            pairs["image_embeds"] = (out.image_embeds, projection(ref.pooler_output))
    else:
        assert out.image_embeds is None
    diffs = {k: max_diff(a, b) for k, (a, b) in pairs.items()}
    print(name, {k: f"{v:.2e}" for k, v in diffs.items()})
    chex.assert_trees_all_close({str(k): f32(a) for k, (a, _) in pairs.items()},
                                {str(k): f32(b) for k, (_, b) in pairs.items()}, atol=TOL, rtol=0)

    # LLaVA's selection: penultimate layer, CLS dropped ('default') or kept ('full').
    feats = select_features(out, -2, "default")
    chex.assert_shape(feats, (3, module.config.num_patches, kwargs["hidden_size"]))
    chex.assert_trees_all_close(f32(feats), f32(ref.hidden_states[-2][:, 1:]), atol=TOL, rtol=0)
    chex.assert_trees_all_close(f32(select_features(out, -2, "full")), f32(ref.hidden_states[-2]), atol=TOL, rtol=0)
    both = select_features(out, [-2, -1], "default")
    assert both.shape[-1] == 2 * kwargs["hidden_size"]


@pytest.mark.slow
def test_clip_scan_unrolled_remat_equal(save_hf):
    kind, kwargs = CLIP_CONFIGS["vision_p14_quick_gelu"]
    path = save_hf(build_clip(kind, kwargs, seed=1))
    module, params = hf.load(path)
    pixels = jnp.asarray(real_images(kwargs["image_size"], CLIP_MEAN, CLIP_STD))
    ref = run(module, params, pixels)

    # Unrolled layers, filled straight from the checkpoint (layers_0 .. layers_{L-1}).
    unrolled = CLIPVisionTransformer(CLIPVisionConfig.from_hf(hf.checkpoint.read_config(path), scan_layers=False))
    abstract = abstract_params(unrolled, pixels[:1])
    assert "layers_0" in abstract["encoder"] and "layers" not in abstract["encoder"]
    unrolled_params = fill_params(iter_tensors(path), clip_rule(unrolled.config), hf.nn.unbox(abstract))
    out = run(unrolled, unrolled_params, pixels)
    chex.assert_trees_all_close(f32(out.hidden_states), f32(ref.hidden_states), atol=1e-5, rtol=0)
    chex.assert_trees_all_close(f32(out.pooled), f32(ref.pooled), atol=1e-5, rtol=0)
    # The unrolled leaves are the slices of the scanned ones.
    chex.assert_trees_all_equal(unrolled_params["encoder"]["layers_1"]["mlp"]["up"]["kernel"],
                                params["encoder"]["layers"]["mlp"]["up"]["kernel"][1])

    # Remat (and output_hidden_states=False) gives the same values, and gradients flow through scan + remat.
    remat = CLIPVisionTransformer(CLIPVisionConfig.from_hf(hf.checkpoint.read_config(path),
                                                           remat_policy="dots_no_batch"))

    def value_and_grad(m):
        def loss(p):
            out = m.apply({"params": p}, pixels, output_hidden_states=False)
            assert out.hidden_states is None
            return jnp.mean(jnp.square(out.last_hidden_state))
        return jax.jit(jax.value_and_grad(loss))(params)

    (v_ref, g_ref), (v_remat, g_remat) = value_and_grad(module), value_and_grad(remat)
    expected = float(jnp.mean(jnp.square(ref.last_hidden_state)))
    chex.assert_trees_all_close((float(v_ref), float(v_remat)), (expected, expected), atol=0, rtol=1e-6)
    chex.assert_trees_all_close(jax.tree.map(f32, g_ref), jax.tree.map(f32, g_remat), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_clip_sharded_load_and_bf16(save_hf):
    kind, kwargs = CLIP_CONFIGS["vision_p14_quick_gelu"]
    path = save_hf(build_clip(kind, kwargs, seed=2))
    module, params = hf.load(path)
    pixels = jnp.asarray(real_images(kwargs["image_size"], CLIP_MEAN, CLIP_STD))
    ref = run(module, params, pixels)

    from common.sharding import activate, make_mesh
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8]) if len(jax.devices()) >= 8 else None
    if mesh is not None:
        module_s, params_s = hf.load(path, mesh=mesh)
        q = params_s["encoder"]["layers"]["attn"]["q"]["kernel"]  # [L, E, H, D]: E over fsdp, H over tensor
        assert q.sharding.spec[1] == "fsdp" and q.sharding.spec[2] == "tensor"
        with activate(mesh):
            out = jax.jit(module_s.apply)({"params": params_s}, pixels[:2])
        chex.assert_trees_all_close(f32(out.hidden_states), f32(ref.hidden_states[:, :2]), atol=TOL, rtol=0)

    module_bf, params_bf = hf.load(path, dtype=jnp.bfloat16)
    assert params_bf["embeddings"]["position_embedding"].dtype == jnp.bfloat16
    out_bf = run(module_bf, params_bf, pixels)
    assert out_bf.last_hidden_state.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(ref.last_hidden_state)))
    chex.assert_trees_all_close(f32(out_bf.last_hidden_state), f32(ref.last_hidden_state), atol=0.1 * scale, rtol=0)


# ----------------------------------------------------------------------------------------------
# InternViT

INTERNVIT_CONFIGS = {
    # 300M-style: LayerNorm, qkv bias, no qk-norm, no final norm (use_mean_pooling)
    "layernorm_qkvbias": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=56,
        patch_size=14, attention_bias=True, norm_type="layer_norm", use_qk_norm=False),
    # 6B-style: RMSNorm, qk-norm, no qkv bias; plus the final LayerNorm (use_mean_pooling=False)
    "rmsnorm_qknorm_finalnorm": dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6, image_size=64,
        patch_size=16, attention_bias=False, norm_type="rms_norm", use_qk_norm=True, use_mean_pooling=False,
        layer_norm_eps=1e-5, layer_scale_init_value=0.5),
    "layernorm_qknorm_p8_mask_token": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, attention_bias=True, use_qk_norm=True, use_mask_token=True),
}


def build_internvit(kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.InternVLVisionModel(transformers.InternVLVisionConfig(**kwargs))
    randomize(model, seed)
    return model.float().eval()


def compare_internvit(module, params, model, kwargs, pixels, name):
    out = run(module, params, pixels)
    ref = hf_forward(model, pixels)
    n_layers = kwargs["num_hidden_layers"]
    chex.assert_shape(out.hidden_states, (n_layers + 1, 3, module.config.num_patches + 1, kwargs["hidden_size"]))
    assert len(ref.hidden_states) == n_layers + 1
    pairs = {i: (out.hidden_states[i], ref.hidden_states[i]) for i in range(n_layers + 1)}
    pairs["last"] = (out.last_hidden_state, ref.last_hidden_state)
    diffs = {k: max_diff(a, b) for k, (a, b) in pairs.items()}
    print(name, {k: f"{v:.2e}" for k, v in diffs.items()})
    chex.assert_trees_all_close({str(k): f32(a) for k, (a, _) in pairs.items()},
                                {str(k): f32(b) for k, (_, b) in pairs.items()}, atol=TOL, rtol=0)
    return out, ref


@pytest.mark.parametrize("name", sorted(INTERNVIT_CONFIGS))
def test_internvit_matches_hf(name, save_hf):
    kwargs = INTERNVIT_CONFIGS[name]
    model = build_internvit(kwargs)
    module, params = hf.load(save_hf(model))
    assert isinstance(module, InternViT)
    assert module.config.final_norm == (not kwargs.get("use_mean_pooling", True))
    pixels = real_images(kwargs["image_size"], IMAGENET_MEAN, IMAGENET_STD)
    out, ref = compare_internvit(module, params, model, kwargs, pixels, name)

    # InternVL's image features (HF InternVLModel.get_image_features before the projector): select layer, drop
    # CLS, square grid, pixel shuffle 0.5, flatten.
    for layer in (-1, -2):
        ref_feats = ref.last_hidden_state if layer == -1 else ref.hidden_states[layer]
        ref_feats = ref_feats[:, 1:]
        side = int(ref_feats.shape[1] ** 0.5)
        ref_grid = ref_feats.reshape(3, side, side, -1)
        ref_ps = transformers.InternVLModel.pixel_shuffle(None, ref_grid, scale_factor=0.5)
        ref_ps = ref_ps.reshape(3, -1, 4 * kwargs["hidden_size"])
        feats = image_features(out, module.config, feature_layer=layer)
        chex.assert_shape(feats, (3, module.config.num_patches // 4, 4 * kwargs["hidden_size"]))
        chex.assert_trees_all_close(f32(feats), f32(ref_ps), atol=TOL, rtol=0)


def to_original_naming(state: dict, hf_config: dict) -> tuple[dict, dict]:
    """HF InternVLVisionModel tensors / config -> the original InternViT remote-code release (intern_vit_6b)."""
    out = {}
    for name, t in state.items():
        t = t.detach().clone()
        if name == "embeddings.cls_token":
            out["embeddings.class_embedding"] = t
        elif name == "embeddings.position_embeddings":
            out["embeddings.position_embedding"] = t
        elif name.startswith("embeddings.patch_embeddings.projection."):
            out["embeddings.patch_embedding." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("encoder.layer."):
            _, _, i, rest = name.split(".", 3)
            if rest.startswith(("attention.q_proj", "attention.k_proj", "attention.v_proj")):
                continue  # fused below
            rest = {"layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
                    "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
                    "lambda_1": "ls1", "lambda_2": "ls2",
                    "attention.projection_layer.weight": "attn.proj.weight",
                    "attention.projection_layer.bias": "attn.proj.bias",
                    "attention.q_norm.weight": "attn.q_norm.weight",
                    "attention.k_norm.weight": "attn.k_norm.weight"}.get(rest, rest)
            out[f"encoder.layers.{i}.{rest}"] = t
    for i in range(hf_config["num_hidden_layers"]):
        base = f"encoder.layer.{i}.attention."
        out[f"encoder.layers.{i}.attn.qkv.weight"] = torch.cat([state[base + p + "_proj.weight"] for p in "qkv"])
        if base + "q_proj.bias" in state:
            out[f"encoder.layers.{i}.attn.qkv.bias"] = torch.cat([state[base + p + "_proj.bias"] for p in "qkv"])
    config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": hf_config["hidden_size"], "intermediate_size": hf_config["intermediate_size"],
        "num_hidden_layers": hf_config["num_hidden_layers"], "num_attention_heads": hf_config["num_attention_heads"],
        "image_size": hf_config["image_size"][0], "patch_size": hf_config["patch_size"][0], "num_channels": 3,
        "qkv_bias": hf_config["attention_bias"], "qk_normalization": hf_config["use_qk_norm"],
        "norm_type": hf_config["norm_type"], "layer_norm_eps": hf_config["layer_norm_eps"], "hidden_act": "gelu",
        "initializer_factor": 0.1, "drop_path_rate": 0.1, "dropout": 0.0, "attention_dropout": 0.0,
        "use_flash_attn": False,
    }
    return out, config


@pytest.mark.parametrize("name", ["layernorm_qkvbias", "rmsnorm_qknorm_finalnorm"])
def test_internvit_original_naming(name, tmp_path):
    kwargs = dict(INTERNVIT_CONFIGS[name], use_mean_pooling=True)  # the original release has no final norm
    model = build_internvit(kwargs, seed=3)
    state, config = to_original_naming(model.state_dict(), model.config.to_dict())
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    module, params = hf.load(str(tmp_path))
    assert module.config.drop_path_rate == 0.1  # training-only: inactive with deterministic=True
    pixels = real_images(kwargs["image_size"], IMAGENET_MEAN, IMAGENET_STD)
    compare_internvit(module, params, model, kwargs, pixels, "original/" + name)


@pytest.mark.slow
def test_internvit_scan_vs_unrolled_and_drop_path(save_hf):
    kwargs = INTERNVIT_CONFIGS["rmsnorm_qknorm_finalnorm"]
    path = save_hf(build_internvit(kwargs, seed=4))
    module, params = hf.load(path)
    pixels = jnp.asarray(real_images(kwargs["image_size"], IMAGENET_MEAN, IMAGENET_STD))
    ref = run(module, params, pixels)
    unrolled = InternViT(InternViTConfig.from_hf(hf.checkpoint.read_config(path), scan_layers=False))
    unrolled_params = fill_params(iter_tensors(path), internvit_rule(unrolled.config, "hf"),
                                  hf.nn.unbox(abstract_params(unrolled, pixels[:1])))
    out = run(unrolled, unrolled_params, pixels)
    chex.assert_trees_all_close(f32(out.hidden_states), f32(ref.hidden_states), atol=1e-5, rtol=0)
    chex.assert_trees_all_close(f32(out.last_hidden_state), f32(ref.last_hidden_state), atol=1e-5, rtol=0)

    # Stochastic depth: only with deterministic=False; rates 0 .. rate linearly (layer 0 never dropped).
    # (deterministic=True with a non-zero rate is covered by test_internvit_original_naming.)
    for scan, p in ((True, params), (False, unrolled_params)):
        dp = InternViT(InternViTConfig.from_hf(hf.checkpoint.read_config(path), drop_path_rate=0.9, scan_layers=scan))
        fn = jax.jit(lambda p, key, dp=dp: dp.apply({"params": p}, pixels, deterministic=False, rngs={"dropout": key}))
        a, b = fn(p, jax.random.key(0)), fn(p, jax.random.key(1))
        # layer 0 has rate 0
        chex.assert_trees_all_close(f32(a.hidden_states[1]), f32(ref.hidden_states[1]), atol=1e-5, rtol=0)
        assert max_diff(a.last_hidden_state, b.last_hidden_state) > 1e-3
        assert max_diff(a.last_hidden_state, ref.last_hidden_state) > 1e-3


# ----------------------------------------------------------------------------------------------
# Pixel shuffle, errors

@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (1, 32, 32, 8), (2, 4, 6, 12)])
def test_pixel_shuffle_matches_hf(shape):
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    ref = transformers.InternVLModel.pixel_shuffle(None, torch.tensor(x), scale_factor=0.5).numpy()
    out = np.asarray(pixel_shuffle(jnp.asarray(x), 0.5))
    chex.assert_shape(out, (shape[0], shape[1] // 2, shape[2] // 2, shape[3] * 4))
    chex.assert_trees_all_equal(out, ref)
    # v1 (InternVL 1.0) omits the final transpose.
    chex.assert_trees_all_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 0.5, "v1")), ref.transpose(0, 2, 1, 3))
    # A 2x2 neighbourhood lands in one token: out[0, 0, 0] holds x[0, 0:2, 0:2] (channel blocks of C).
    c = shape[3]
    block = {tuple(out[0, 0, 0, k * c:(k + 1) * c]) for k in range(4)}
    assert block == {tuple(x[0, i, j]) for i in range(2) for j in range(2)}


def test_bad_inputs_raise():
    clip = CLIPVisionTransformer(CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                                                  num_layers=1, num_heads=4))
    # Shapes only: real `init` compiles every random initializer, which is slow on CPU.
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_params(clip, jnp.zeros((1, 28, 28, 3))))
    params = hf.nn.unbox(params)
    chex.assert_shape(run(clip, params, jnp.zeros((2, 28, 28, 3))).last_hidden_state, (2, 5, 32))
    for bad, match in [(jnp.zeros((28, 28, 3)), "rank 4"), (jnp.zeros((1, 28, 28, 1)), "3 channels"),
                       (jnp.zeros((1, 3, 28, 28)), "NCHW"), (jnp.zeros((1, 32, 32, 3)), "28x28"),
                       (jnp.zeros((1, 28, 28, 3), jnp.uint8), "floating")]:
        with pytest.raises(ValueError, match=match):
            run(clip, params, bad)
    ivit = InternViT(InternViTConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                                     num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="rank 4"):
        jax.eval_shape(ivit.init, jax.random.key(0), jnp.zeros((2, 1, 28, 28, 3)))
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(ivit.init, jax.random.key(0), jnp.zeros((1, 28, 28, 4)))
    with pytest.raises(ValueError, match="does not divide"):
        pixel_shuffle(jnp.zeros((1, 5, 5, 8)), 0.5)
    with pytest.raises(ValueError, match="batch, height, width"):
        pixel_shuffle(jnp.zeros((5, 5, 8)), 0.5)


def test_bad_checkpoints_raise(save_hf, tmp_path):
    kind, kwargs = CLIP_CONFIGS["vision_p14_quick_gelu"]
    path = save_hf(build_clip(kind, kwargs))
    from safetensors.numpy import load_file, save_file
    tensors = load_file(os.path.join(path, "model.safetensors"))
    config = open(os.path.join(path, "config.json")).read()
    for case, mutated in [("unexpected", {**tensors, "vision_model.encoder.layers.0.mystery.weight": np.zeros(3)}),
                          ("missing", {k: v for k, v in tensors.items() if "layers.1.mlp.fc1.weight" not in k})]:
        bad = tmp_path / case
        bad.mkdir()
        save_file(mutated, str(bad / "model.safetensors"))
        (bad / "config.json").write_text(config)
        with pytest.raises(CheckpointError, match=case if case == "unexpected" else "incomplete|missing"):
            hf.load(str(bad))
