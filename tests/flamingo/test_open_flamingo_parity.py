"""Our resampler / gated block / whole model against the PyTorch references: open_flamingo 2.0.1's own modules
(open_clip stubbed: only its factory imports it), flamingo-pytorch's, and `load_open_flamingo` against an
OpenFlamingo `Flamingo` built around tiny HF models (GPT-NeoX LM, CLIP vision tower)."""
import sys
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))  # open_flamingo/__init__ imports its factory
from flamingo_pytorch import GatedCrossAttentionBlock as FPGatedBlock  # noqa: E402
from flamingo_pytorch import PerceiverResampler as FPResampler  # noqa: E402
from open_flamingo.src import helpers as of_helpers  # noqa: E402

from flamingo_jax import load_open_flamingo  # noqa: E402
from flamingo_jax.hf import block_names, open_clip_style_encoder, resampler_rule, torch_params  # noqa: E402
from flamingo_jax.gated_cross_attention import GatedCrossAttentionBlock, GatedXAttnConfig, MediaInputs  # noqa: E402
from flamingo_jax.perceiver_resampler import PerceiverResampler, ResamplerConfig  # noqa: E402
from common.hf.checkpoint import Target  # noqa: E402

TOL = 1e-5  # float32 modules of a few layers; the torch-vs-float64 error is of the same size


def _np(t):
    return t.detach().numpy()


def _resampler(torch_module, cfg, x_torch, x_ours):
    ours = PerceiverResampler(cfg)
    abstract = nn.unbox(jax.eval_shape(ours.init, jax.random.key(0), x_ours)["params"])
    params = torch_params(resampler_rule(cfg, "open_flamingo", prefix=()), torch_module.state_dict(), abstract)
    with torch.no_grad():
        ref = _np(torch_module(x_torch))
    return np.asarray(jax.jit(ours.apply)({"params": params}, x_ours)), ref


def test_open_flamingo_resampler_with_frame_and_media_embeddings():
    torch.manual_seed(0)
    ref_module = of_helpers.PerceiverResampler(dim=24, depth=2, dim_head=8, heads=2, num_latents=4,
                                               max_num_media=3, max_num_frames=2).eval()
    x = torch.randn(2, 3, 2, 5, 24)  # [B, T_img, F, v, D]
    cfg = ResamplerConfig(width=24, depth=2, num_heads=2, head_dim=8, num_latents=4, max_frames=2, max_media=3)
    out, ref = _resampler(ref_module, cfg, x, jnp.asarray(_np(x)))
    chex.assert_shape(out, (2, 3, 4, 24))
    chex.assert_trees_all_close(out, ref, atol=TOL, rtol=0)


def test_flamingo_pytorch_resampler():
    torch.manual_seed(1)
    ref_module = FPResampler(dim=24, depth=2, dim_head=8, heads=2, num_latents=4, num_media_embeds=3).eval()
    x = torch.randn(2, 3, 5, 24)  # [B, N, S, D]
    cfg = ResamplerConfig(width=24, depth=2, num_heads=2, head_dim=8, num_latents=4, max_media=3)
    out, ref = _resampler(ref_module, cfg, x, jnp.asarray(_np(x)))
    chex.assert_trees_all_close(out, ref, atol=TOL, rtol=0)


def _block(torch_module, cfg, text, media, media_locations):
    ids = media_locations.astype(np.int32)
    ours = GatedCrossAttentionBlock(cfg)
    text_time = np.cumsum(ids, -1).astype(np.int32)
    inputs = MediaInputs(jnp.asarray(_np(media)), jnp.asarray(text_time))
    abstract = nn.unbox(jax.eval_shape(ours.init, jax.random.key(0), jnp.asarray(_np(text)), inputs)["params"])
    names = block_names(cfg, "open_flamingo")

    def rule(name, tensor):
        entry = names.get(name)
        if entry is None:
            return None
        entries = entry if isinstance(entry, list) else [entry]
        return [Target(inner, (), transform or (lambda a: a)) for inner, transform in entries]

    params = torch_params(rule, torch_module.state_dict(), abstract)
    with torch.no_grad():
        ref = _np(torch_module(text, media, media_locations=torch.tensor(media_locations)))
    return np.asarray(jax.jit(ours.apply)({"params": params}, jnp.asarray(_np(text)), inputs)), ref


LOCATIONS = np.array([[0, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 1, 0]], bool)  # the <image> tokens


@pytest.mark.parametrize("immediate", [True, False])
def test_open_flamingo_gated_block(immediate):
    torch.manual_seed(2)
    ref_module = of_helpers.GatedCrossAttentionBlock(dim=32, dim_visual=24, dim_head=8, heads=2,
                                                     only_attend_immediate_media=immediate).eval()
    with torch.no_grad():
        ref_module.attn_gate.fill_(0.7)
        ref_module.ff_gate.fill_(-0.4)
    text, media = torch.randn(2, 8, 32), torch.randn(2, 2, 4, 24)
    # openflamingo_zeroing reproduces its handling of tokens before the first image exactly (see the config)
    cfg = GatedXAttnConfig(num_heads=2, head_dim=8, only_attend_immediate_media=immediate, openflamingo_zeroing=True)
    out, ref = _block(ref_module, cfg, text, media, LOCATIONS)
    chex.assert_trees_all_close(out, ref, atol=TOL, rtol=0)
    if immediate:  # identical to the default zeroing when attending to the immediate image only
        out_default, _ = _block(ref_module, GatedXAttnConfig(num_heads=2, head_dim=8), text, media, LOCATIONS)
        chex.assert_trees_all_close(out_default, out, atol=1e-6, rtol=1e-7)


def test_flamingo_pytorch_gated_block():
    torch.manual_seed(3)
    ref_module = FPGatedBlock(dim=32, dim_head=8, heads=2).eval()  # media width = text width there
    with torch.no_grad():
        ref_module.attn_gate.fill_(0.5)
        ref_module.ff_gate.fill_(0.9)
    text, media = torch.randn(2, 8, 32), torch.randn(2, 2, 4, 32)
    out, ref = _block(ref_module, GatedXAttnConfig(num_heads=2, head_dim=8), text, media, LOCATIONS)
    chex.assert_trees_all_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.slow
def test_load_open_flamingo_matches_the_reference_model(tmp_path, save_hf):
    from open_flamingo.src.flamingo import Flamingo as OFFlamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance
    from transformers import CLIPVisionConfig, CLIPVisionModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    vocab = 40
    lm = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25)).eval()
    lm_dir = save_hf(lm)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=16, patch_size=8)).eval()
    clip_dir = save_hf(clip)

    encoder = open_clip_style_encoder(clip)
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("gpt_neox.layers")
    lm.resize_token_embeddings(vocab + 3)  # <|endofchunk|>, <image>, <PAD>
    image = vocab + 1
    reference = OFFlamingo(encoder, lm, eoc_token_id=vocab, media_token_id=image, vis_dim=24,
                           cross_attn_every_n_layers=2).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn_like(p))
    # checkpoint.pt as OpenFlamingo saves it: the trainable tensors (blocks appear under both of their names).
    state = {k: v for k, v in reference.state_dict().items()
             if k.startswith("perceiver.") or "gated_cross_attn" in k or k == "lang_encoder.gpt_neox.embed_in.weight"}
    assert any(".gated_cross_attn_layer." in k for k in state) and any("gated_cross_attn_layers." in k for k in state)
    torch.save(state, tmp_path / "checkpoint.pt")

    model, params = load_open_flamingo(str(tmp_path / "checkpoint.pt"), lm_dir, clip_dir)
    assert model.config.image_token_id == image and model.config.cross_attn_every == 2
    ids = np.array([[image, 5, 6, 7, vocab, image, 9, 10], [3, 4, image, 5, 6, 7, 8, 9]])
    px = torch.randn(2, 2, 1, 3, 16, 16)  # [B, T_img, F, C, H, W]
    with torch.no_grad():
        ref = reference(px, torch.tensor(ids), attention_mask=torch.ones(2, 8, dtype=torch.long)).logits.numpy()
    ours = np.asarray(jax.jit(lambda p, i, x: model.apply({"params": p}, i, x))(
        params, ids, jnp.asarray(_np(px[:, :, 0].permute(0, 1, 3, 4, 2)))))
    # The new rows of the untied head (not in checkpoint.pt) are random in the reference, the mean row in ours.
    diff = np.abs(ours[..., :vocab] - ref[..., :vocab]).max()
    print(f"open_flamingo full model: max |diff| {diff:.2e} (logits up to {np.abs(ref).max():.2f})")
    chex.assert_trees_all_close(ours[..., :vocab], ref[..., :vocab], atol=1e-4, rtol=0)
