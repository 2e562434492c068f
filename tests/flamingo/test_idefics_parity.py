"""IDEFICS v1 (HF `IdeficsForVisionText2Text`, random weights) -> `flamingo_jax.load_hf`: logits equal within 1e-4
for several configurations (cross_layer_interval, alpha_type, qk_layer_norms, perceiver on / off); and back:
`flamingo_jax.save_hf` writes a directory transformers loads with the same logits, and refuses a Flamingo that
IDEFICS cannot express."""
import chex
import numpy as np
import pytest
import torch
from flamingo_testlib import jit_apply
from transformers import IdeficsConfig, IdeficsForVisionText2Text

from common.hf.checkpoint import CheckpointError
import flamingo_jax
from flamingo_jax import Flamingo, load_hf
from flamingo_jax.hf import idefics_text_time

V, IMG = 50, 51  # base vocabulary; <fake_token_around_image> = 50, <image> = 51 (additional vocabulary of 2)
CONFIGS = {
    "every1_float_perceiver": dict(cross_layer_interval=1, alpha_type="float", qk_layer_norms=False,
                                   use_resampler=True),
    "every2_vector_qknorm_perceiver": dict(cross_layer_interval=2, alpha_type="vector", qk_layer_norms=True,
                                           use_resampler=True, qk_layer_norms_perceiver=True),
    "every2_no_perceiver": dict(cross_layer_interval=2, alpha_type="float", qk_layer_norms=False, use_resampler=False),
}


def build_idefics(cross_layer_interval, alpha_type, qk_layer_norms, use_resampler, qk_layer_norms_perceiver=False):
    config = IdeficsConfig(
        vocab_size=V, additional_vocab_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, cross_layer_interval=cross_layer_interval, alpha_type=alpha_type,
        qk_layer_norms=qk_layer_norms, use_resampler=use_resampler, alpha_initializer="zeros", initializer_range=0.1,
        vision_config=dict(embed_dim=24, image_size=16, patch_size=8, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4),
        perceiver_config=dict(use_resampler=use_resampler, resampler_n_latents=4, resampler_depth=2,
                              resampler_n_heads=2, resampler_head_dim=8,
                              qk_layer_norms_perceiver=qk_layer_norms_perceiver))
    torch.manual_seed(0)
    model = IdeficsForVisionText2Text(config).eval()
    # Zero-initialised gates would hide the whole cross-attention path: fill the alphas (and 1-d norms / biases, so a
    # swapped tensor cannot hide behind init values) with random values.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.copy_(torch.randn_like(p))
            elif p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_idefics_logits_match(name, save_hf):
    model = build_idefics(**CONFIGS[name])
    ours, params = load_hf(save_hf(model))
    assert ours.config.image_token_id == IMG and ours.config.cross_attn_every == CONFIGS[name]["cross_layer_interval"]
    ids = np.array([[1, 7, IMG, 9, 10, IMG, 12, 2, 14], [3, IMG, 5, 6, 7, 8, IMG, 51, 4]])
    ids[1, 7] = 20
    rng = np.random.RandomState(0)
    px = rng.randn(2, 2, 16, 16, 3).astype(np.float32)  # [B, N, H, W, C]
    text_time = np.asarray(idefics_text_time(ids, IMG, eos_token_id=2))  # IDEFICS: no image after </s>
    assert text_time[0, 8] == 0 and text_time[0, 7] == 2
    image_attention_mask = torch.tensor(np.eye(3)[text_time][..., 1:], dtype=torch.long)  # [B, T, N] one-hot
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px).permute(0, 1, 4, 2, 3),
                    image_attention_mask=image_attention_mask).logits.numpy()
    out = np.asarray(jit_apply(ours)(params, ids, px, text_time=text_time))
    chex.assert_shape([out, ref], (2, 9, V + 2))
    diff = np.abs(out - ref).max()
    print(f"{name}: max |diff| {diff:.2e} (logits up to {np.abs(ref).max():.2f})")
    chex.assert_trees_all_close(out, ref, atol=1e-4, rtol=0)
    # HF's own input: the same image_attention_mask as the reference was given
    masked = np.asarray(jit_apply(ours)(params, ids, px, image_attention_mask=image_attention_mask.numpy()))
    chex.assert_trees_all_close(masked, ref, atol=1e-4, rtol=0)
    # the images matter: other pixels change the logits after the first image
    other = np.asarray(jit_apply(ours)(params, ids, px[:, ::-1], text_time=text_time))
    assert np.abs(other - out).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["every2_vector_qknorm_perceiver", "every2_no_perceiver"])
def test_saved_idefics_loads_in_transformers_with_the_same_logits(name, save_hf, tmp_path):
    """load_hf -> save_hf -> transformers: the logits of the original model, from one embedding of the whole
    vocabulary (additional_vocab_size 0) instead of the decoupled one; load_hf reads the export back exactly."""
    model = build_idefics(**CONFIGS[name])
    ours, params = load_hf(save_hf(model))
    out_dir = str(tmp_path / "export")
    flamingo_jax.save_hf(out_dir, ours, params)
    exported = IdeficsForVisionText2Text.from_pretrained(out_dir).eval()
    assert exported.config.additional_vocab_size == 0 and exported.config.cross_layer_interval == \
        CONFIGS[name]["cross_layer_interval"]
    ids = np.array([[1, 7, IMG, 9, 10, IMG, 12, 2, 14], [3, IMG, 5, 6, 7, 8, IMG, 20, 4]])
    px = np.random.RandomState(1).randn(2, 2, 16, 16, 3).astype(np.float32)
    mask = torch.tensor(np.eye(3)[np.asarray(idefics_text_time(ids, IMG, eos_token_id=2))][..., 1:], dtype=torch.long)
    inputs = dict(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px).permute(0, 1, 4, 2, 3),
                  image_attention_mask=mask)
    with torch.no_grad():
        want, got = model(**inputs).logits.numpy(), exported(**inputs).logits.numpy()
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=0)
    again, params_again = load_hf(out_dir)
    assert again.config == ours.config
    chex.assert_trees_all_close(params_again, params, atol=0, rtol=0)


def test_save_refuses_a_flamingo_idefics_cannot_express(tmp_path):
    """An OpenFlamingo-style Flamingo (LayerNorm + GELU blocks, GELU resampler; the tiny configs') has no IDEFICS
    counterpart: the error names what differs, and nothing is written."""
    from configs.flamingo.tiny_base import model as tiny_model
    from flamingo_jax.task import flamingo_config_from

    fields = tiny_model()
    fields["lm"]["vocab_size"], fields["image_token_id"] = 64, 5
    cfg = flamingo_config_from(fields)
    expected = r"no IDEFICS counterpart: xattn.ff_act: 'gelu' \(IDEFICS: 'silu'\); xattn.ff_gated"
    with pytest.raises(CheckpointError, match=expected):
        flamingo_jax.save_hf(str(tmp_path / "out"), Flamingo(cfg), {})
    assert not (tmp_path / "out").exists()


def test_idefics_text_time_matches_the_processor():
    from transformers.models.idefics.processing_idefics import image_attention_mask_for_packed_input_ids_pt

    class Tok:
        eos_token_id = 2

        def convert_tokens_to_ids(self, token):
            return IMG

    ids = np.array([[1, 7, IMG, 9, 2, 10, IMG, 12, 2, 14, 15], [IMG, 3, 4, 5, IMG, 2, 6, 7, 8, IMG, 9]])
    ref, _ = image_attention_mask_for_packed_input_ids_pt(torch.tensor(ids), Tok())
    chex.assert_trees_all_equal(np.asarray(idefics_text_time(ids, IMG, 2)), ref.numpy() + 1)
