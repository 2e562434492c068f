"""NFNet-F0 .. F6 (common/vision/nfnet.py) against timm's `dm_nfnet_f*` (the public PyTorch implementation that
carries DeepMind's converted NFNet-F weights): parameter counts, feature parity through the timm-weight converter,
the loaders, and the encoder inside Flamingo.

timm imports torchvision when its package is imported (transforms, FrozenBatchNorm2d), and PyPI's torchvision does
not import beside torch 2.13.0+cpu: timm is installed with --no-deps and torchvision is stubbed for the duration of
that import only (nothing of it runs in NormFreeNet).
"""
import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import json
import sys
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from common.hf.checkpoint import CheckpointError
from common.hf.vision import convert_timm_nfnet, load_timm_nfnet
from common.vision.nfnet import PUBLISHED_PARAMS, NFNet, NFNetConfig, avg_pool_2x2, nfnet_f, standardize_weight


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty `torchvision.*` packages whose attributes are placeholder classes (InterpolationMode.NEAREST etc.)."""

    class _Placeholder(type):
        def __getattr__(cls, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return f"{cls.__name__}.{attr}"

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def getattr_(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return self._Placeholder(attr, (), {})
        module.__getattr__ = getattr_
        return module

    def exec_module(self, module):
        pass


def _purge(*packages):
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        del sys.modules[name]


def import_timm_nfnet():
    try:
        return importlib.import_module("timm.models.nfnet")
    except (ImportError, OSError, RuntimeError, AttributeError):  # torchvision absent or broken next to this torch
        _purge("timm", "torchvision")
    stub = _TorchvisionStub()
    sys.meta_path.insert(0, stub)
    try:
        return importlib.import_module("timm.models.nfnet")
    finally:
        sys.meta_path.remove(stub)
        _purge("torchvision")  # nobody else sees the stub (transformers probes for torchvision)


tn = import_timm_nfnet()

# A reduced NFNet (same code paths: deep stem, grouped convs, SE, skip gains, shortcut pools, final conv) for the
# unrolled layout and the loaders; widths / groups shrunk so it runs in a blink.
TINY_TIMM = dict(depths=(1, 2, 3, 2), channels=(32, 64, 96, 96), stem_chs=16, group_size=16, num_features=192)
TINY = NFNetConfig(depths=(1, 2, 3, 2), widths=(32, 64, 96, 96), stem_width=16, group_width=16, image_size=64,
                   num_classes=7)


# The smallest NFNet with every part (one block per stage) for the encoder inside Flamingo.
MICRO_TIMM = dict(depths=(1, 1, 1, 1), channels=(32, 32, 32, 32), stem_chs=16, group_size=16, num_features=64)
MICRO = NFNetConfig(depths=(1, 1, 1, 1), widths=(32, 32, 32, 32), stem_width=16, group_width=16, image_size=64,
                    num_classes=0, features="last_stage")


@pytest.fixture(scope="module")
def tiny_timm():
    return timm_model("dm_nfnet_f0", num_classes=7, **TINY_TIMM)


def count(config: NFNetConfig) -> int:
    shapes = jax.eval_shape(lambda: NFNet(config).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def timm_model(name: str = "dm_nfnet_f0", num_classes: int = 1000, seed: int = 0, **cfg_overrides):
    """timm's NormFreeNet with every gain, bias and skip gain randomised (at init the skip gains are 0, which would
    zero every residual branch), in eval mode."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(tn.model_cfgs[name], **cfg_overrides)
    model = tn.NormFreeNet(cfg, num_classes=num_classes).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain"):
                p.uniform_(0.2, 1.0)
            elif name.endswith(".gain"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif name == "head.fc.weight":
                p.normal_(0.0, 0.05)
    return model


def torch_forward(model, pixels_nhwc: np.ndarray) -> dict:
    """timm's forward_features (final conv + act), the last stage's output (hooked) and the logits, as NHWC."""
    got = {}
    hook = model.stages.register_forward_hook(lambda m, i, o: got.__setitem__("last_stage", o))
    with torch.no_grad():
        x = torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2).copy())
        features = model.forward_features(x)
        logits = model.forward_head(features)
    hook.remove()
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    return {"feature_map": nhwc(features), "last_stage": nhwc(got["last_stage"]), "logits": logits.numpy()}


def max_diffs(out, ref: dict) -> dict:
    return {k: float(np.abs(np.asarray(getattr(out, k)) - v).max()) for k, v in ref.items()}


def run(config: NFNetConfig, params, pixels: np.ndarray):
    return jax.jit(NFNet(config).apply)({"params": params}, jnp.asarray(pixels))


# ----------------------------------------------------------------------------------------------------------------
# timm's dm_nfnet_f0 .. f6 with the 1000-class head (sum of numel over parameters(), built on the meta device).
TIMM_PARAMS = {0: 71_489_284, 1: 132_634_256, 2: 193_779_228, 3: 254_924_200, 4: 316_069_172, 5: 377_214_144,
               6: 438_359_116}


@pytest.mark.slow
def test_param_counts_match_published_and_timm():
    """F0 .. F6 with the 1000-class head: equal to timm's dm_nfnet_f* (F0 rebuilt here on the meta device; all seven
    were checked the same way) and to the NFNet paper's counts rounded to 0.1M (71.5M .. 438.4M); F6 without the
    head is Flamingo's "435M"."""
    with torch.device("meta"):
        f0 = tn.NormFreeNet(tn.model_cfgs["dm_nfnet_f0"], num_classes=1000)
    assert sum(p.numel() for p in f0.parameters()) == TIMM_PARAMS[0]
    for variant in range(7):
        ours = count(nfnet_f(variant, num_classes=1000))
        assert ours == TIMM_PARAMS[variant], (variant, ours)
        assert round(ours / 1e5) == round(PUBLISHED_PARAMS[variant] / 1e5), (variant, ours)
    f6 = nfnet_f(6)
    assert count(f6) == 435_286_116 == TIMM_PARAMS[6] - (3072 * 1000 + 1000)
    assert (f6.depths, f6.widths, f6.final_width, f6.image_size) == ((7, 14, 42, 21), (256, 512, 1536, 1536), 3072,
                                                                     448)
    assert [f6.mid_width(w) // f6.group_width for w in f6.widths] == [1, 2, 6, 6]  # groups of 128 channels


@pytest.mark.slow
def test_f0_matches_timm():
    """Full NFNet-F0 (random weights, randomised gains / skip gains) vs timm in float32 on a 40 x 72 batch (odd
    grids 5 x 9 -> 3 x 5 -> 2 x 3: 'SAME' stride-2 padding and ceil-mode shortcut pooling)."""
    model = timm_model("dm_nfnet_f0")
    config = nfnet_f(0, num_classes=1000)
    params = convert_timm_nfnet(model.state_dict(), config)
    pixels = np.random.RandomState(0).randn(2, 40, 72, 3).astype(np.float32)
    out = run(config, params, pixels)
    ref = torch_forward(model, pixels)
    diffs = max_diffs(out, ref)
    print("NFNet-F0 vs timm max abs diff:", diffs)  # measured <= 1.1e-5 (features of magnitude ~5)
    chex.assert_shape(out.feature_map, (2, 2, 3, 3072))
    chex.assert_shape(out.last_stage, (2, 2, 3, 1536))
    chex.assert_trees_all_close({k: np.asarray(getattr(out, k)) for k in ref}, ref, atol=1e-4, rtol=0)
    chex.assert_trees_all_equal(np.asarray(out.tokens), np.asarray(out.feature_map).reshape(2, 6, 3072))


@pytest.mark.slow
def test_unrolled_blocks_and_loaders_match_timm(tmp_path, tiny_timm):
    """The reduced NFNet, unrolled (`block_i`) and loaded from a timm hub-style safetensors directory, equals timm;
    a .pth file gives the same weights in the scanned layout (whose forward test_f0_matches_timm checks); the
    classifier is dropped for a headless encoder; load_timm_nfnet reads the hub's config.json."""
    from safetensors.torch import save_file

    pixels = np.random.RandomState(1).randn(2, 40, 56, 3).astype(np.float32)
    state = {k: v.contiguous() for k, v in tiny_timm.state_dict().items()}
    (tmp_path / "hub").mkdir()
    save_file(state, str(tmp_path / "hub" / "model.safetensors"))
    torch.save(state, tmp_path / "weights.pth")

    unrolled = dataclasses.replace(TINY, scan_blocks=False)
    module, params = load_timm_nfnet(str(tmp_path / "hub"), config=unrolled)
    assert module.config == unrolled and "block_2" in params["stages_2"] and "blocks" not in params["stages_2"]
    out, ref = run(unrolled, params, pixels), torch_forward(tiny_timm, pixels)
    chex.assert_trees_all_close({k: np.asarray(getattr(out, k)) for k in ref}, ref, atol=1e-5, rtol=0)

    _, scanned = load_timm_nfnet(str(tmp_path / "weights.pth"), config=TINY)
    kernel = scanned["stages_2"]["blocks"]["conv2"]["kernel"]  # [depth-1, kh, kw, in/groups, out]
    chex.assert_shape(kernel, (2, 3, 3, 16, 48))
    chex.assert_trees_all_equal(kernel[1], params["stages_2"]["block_2"]["conv2"]["kernel"])
    chex.assert_trees_all_equal(kernel[1], state["stages.2.2.conv2.weight"].numpy().transpose(2, 3, 1, 0))
    _, headless = load_timm_nfnet(str(tmp_path / "weights.pth"), config=TINY, num_classes=0, features="last_stage")
    assert set(scanned) - set(headless) == {"head"}

    hub = {"architecture": "dm_nfnet_f3", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 320, 320]}}
    assert NFNetConfig.from_timm(hub) == nfnet_f(3, num_classes=1000, image_size=320)
    (tmp_path / "hub" / "config.json").write_text(json.dumps({**hub, "architecture": "dm_nfnet_f0"}))
    with pytest.raises(CheckpointError, match="shape"):  # the reduced weights are not F0's
        load_timm_nfnet(str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="dm_nfnet"):
        NFNetConfig.from_timm({"architecture": "nfnet_l0"})


def test_converter_errors(tiny_timm):
    state = dict(tiny_timm.state_dict())
    with pytest.raises(CheckpointError, match="unexpected"):
        convert_timm_nfnet({**state, "stages.0.0.mystery.weight": torch.zeros(1)}, TINY)
    with pytest.raises(CheckpointError, match="missing"):
        convert_timm_nfnet({k: v for k, v in state.items() if "conv2b" not in k}, TINY)
    with pytest.raises(CheckpointError, match="head/kernel"):
        convert_timm_nfnet(state, dataclasses.replace(TINY, num_classes=10))
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_timm_nfnet({**state, "stages.1.5.conv1.weight": torch.zeros(1)}, TINY)


def test_layers_and_input_checks():
    # DeepMind's standardisation: gain * (W - mean) / sqrt(max(N * var, eps)), per output channel.
    w = np.random.RandomState(0).randn(3, 3, 4, 5).astype(np.float32)
    gain = np.linspace(0.5, 1.5, 5).astype(np.float32)
    n = 3 * 3 * 4
    mean, var = w.reshape(n, 5).mean(0), w.reshape(n, 5).var(0)
    chex.assert_trees_all_close(standardize_weight(jnp.asarray(w), jnp.asarray(gain), 1e-4, "deepmind"),
                                (w - mean) * gain / np.sqrt(np.maximum(n * var, 1e-4)), atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(standardize_weight(jnp.asarray(w), jnp.asarray(gain), 1e-5, "timm"),
                                (w - mean) * gain / np.sqrt(n * (var + 1e-5)), atol=1e-6, rtol=1e-5)
    # Ceil-mode 2x2 pooling averages only the pixels inside the image.
    x = jnp.arange(15.0).reshape(1, 3, 5, 1)
    chex.assert_trees_all_close(np.asarray(avg_pool_2x2(x)[0, :, :, 0]),
                                np.asarray([[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]), rtol=1e-7)
    # Betas: 1 / sqrt(expected variance), reset after each stage's first block.
    betas, _ = nfnet_f(0).betas_and_rates()
    chex.assert_trees_all_close(np.asarray(betas[1]), np.asarray([1.0 / np.sqrt(1.04), 1.0 / np.sqrt(1.04)]), rtol=1e-7)
    chex.assert_trees_all_close(np.asarray(betas[2][:3]),
                                np.asarray([1.0 / np.sqrt(1.08), 1.0 / np.sqrt(1.04), 1.0 / np.sqrt(1.08)]), rtol=1e-7)

    params = jax.eval_shape(lambda: NFNet(TINY).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
    specs = nn.get_partition_spec(params)
    assert tuple(specs["stem"]["conv1"]["kernel"]) == ("conv_height", "conv_width", "channels", "conv_out")
    assert tuple(specs["stages_1"]["blocks"]["conv1"]["kernel"])[0] == "layers"
    assert tuple(specs["stages_1"]["blocks"]["skip_gain"]) == ("layers",)
    from common.sharding import make_mesh, params_sharding
    shardings = params_sharding(params, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    assert all(sh.is_fully_replicated for sh in jax.tree.leaves(shardings))  # a frozen encoder, replicated
    # Training mode (stochastic depth + head dropout) traces with a dropout rng.
    train = dataclasses.replace(TINY, drop_path_rate=0.1, drop_rate=0.2)
    out = jax.eval_shape(lambda p: NFNet(train).apply({"params": p}, jnp.zeros((2, 64, 64, 3)), deterministic=False,
                                                      rngs={"dropout": jax.random.key(1)}), nn.unbox(params))
    chex.assert_shape(out.logits, (2, 7))
    chex.assert_shape(out.tokens, (2, 4, 192))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: NFNet(TINY).init(jax.random.key(0), jnp.zeros((1, 3, 64, 64))))
    with pytest.raises(ValueError, match="0 .. 6"):
        nfnet_f(7)
    with pytest.raises(ValueError, match="features"):
        nfnet_f(0, features="pooled")


@pytest.mark.slow
def test_flamingo_with_nfnet_encoder(tmp_path):
    """A tiny Flamingo on a one-block-per-stage NFNet with timm weights grafted under 'vision' by the task's
    init_vision: encode_vision = timm's last-stage grid flattened row-major, and frozen (no gradient reaches the
    encoder, while the resampler gets one)."""
    import ml_collections

    from common.config_sections import config_section
    from common.lm import LMConfig
    from flamingo_jax.gated_cross_attention import GatedXAttnConfig
    from flamingo_jax.model import Flamingo, FlamingoConfig
    from flamingo_jax.perceiver_resampler import ResamplerConfig
    from flamingo_jax.task import InitVision, load_vision

    vision = MICRO
    micro_timm = timm_model("dm_nfnet_f0", num_classes=3, **MICRO_TIMM)
    lm = LMConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=32)
    cfg = FlamingoConfig(lm=lm, xattn=GatedXAttnConfig(num_heads=2, head_dim=8),
                         resampler=ResamplerConfig(width=32, depth=1, num_heads=2, head_dim=8, num_latents=4),
                         vision=vision, image_token_id=5, vision_features="feature_map")
    assert cfg.media_width == 32
    with pytest.raises(ValueError, match="does not fit"):
        cfg.replace(vision_features="patches")

    model = Flamingo(cfg)
    pixels = jnp.asarray(np.random.RandomState(2).randn(2, 1, 64, 64, 3).astype(np.float32))  # [B, N, H, W, C]
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((2, 4), jnp.int32),
                                                 pixel_values=pixels))["params"]
    rng = np.random.RandomState(0)  # host-side random params: no init program to compile
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: np.ones(a.shape, a.dtype) if getattr(path[-1], "key", "") == "scale" else
        np.asarray(rng.standard_normal(a.shape) * 0.1, a.dtype), nn.unbox(abstract))

    # The encoder's weights from a timm checkpoint (the classifier dropped), through the training task's hook.
    torch.save(micro_timm.state_dict(), tmp_path / "micro.pth")
    config = ml_collections.ConfigDict({"init_vision": {"timm_nfnet": str(tmp_path / "micro.pth")}})
    params = load_vision(params, config_section(config, "init_vision", InitVision), cfg)
    assert float(params["vision"]["stages_2"]["block_0"]["skip_gain"]) == micro_timm.stages[2][0].skipinit_gain.item()
    assert "head" not in params["vision"]

    @jax.jit
    def features_and_grads(p):
        feats = model.apply({"params": p}, pixels, method="encode_vision")  # [B, N, T, S, D]
        media = lambda q: jnp.sum(model.apply({"params": q}, pixels, method="encode_media") ** 2)  # noqa: E731
        return feats, jax.grad(media)(p)

    feats, grads = features_and_grads(params)
    chex.assert_shape(feats, (2, 1, 1, 4, 32))  # S = 2 x 2 grid, D = the last stage's width
    ref = torch_forward(micro_timm, np.asarray(pixels[:, 0]))["last_stage"]  # [B, 2, 2, 32]
    chex.assert_trees_all_close(np.asarray(feats[:, 0, 0]), ref.reshape(2, 4, 32), atol=1e-5, rtol=1e-7)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["vision"]))  # frozen
    assert all(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(grads["resampler"]))
