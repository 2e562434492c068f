"""Shared fields of the tiny Flamingo configs (CPU, bundled shapes data).

Model: a 4-layer, 64-wide Llama-style LM (the tokenizer's ~768 tokens), a 2-layer CLIP ViT on 48 px images with
16 px patches (= the 3x3 grid cells of the shapes scenes) whose last_hidden_state (CLS + 9 patch tokens, as IDEFICS
feeds its perceiver) goes to a 2-layer Perceiver Resampler (8 latents), and a GATED XATTN-DENSE block before every
LM layer.

Frozen parts, as in the paper: the vision tower is pretrained contrastively first (tiny_vision.py, the paper's
App. B.1.3; `init_vision.workdir`), the LM is the text-only "stage 0" run (tiny_stage0.py, `init_lm.workdir`).
Left empty, the ViT stays at its random initialisation (whose tokens expose shape poorly: a linear probe reads the
shape of a single-object image 26-43% of the time, chance 17%).
"""
import ml_collections

from configs.trainer import trainer_config
from flamingo_jax.model import param_groups

IMAGE_SIZE = 48


def model(every: int = 1, gating: str = "tanh") -> dict:
    return dict(
        preset=None,
        lm=dict(vocab_size=None, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=128,
                max_position_embeddings=512, norm="rms", mlp_act="silu", dtype="float32", param_dtype="float32",
                # Recomputing each layer in the backward pass is faster here than keeping its activations, which
                # XLA:CPU stacks into [layers, ...] buffers it zero-fills and copies each step (bench/remat_step.py).
                scan_layers=True, remat_policy="full"),
        vision=dict(image_size=IMAGE_SIZE, patch_size=16, hidden_size=96, intermediate_size=192, num_layers=2,
                    num_heads=4, scan_layers=True),
        resampler=dict(depth=2, num_heads=4, head_dim=24, num_latents=8, ff_mult=2, ff_act="gelu"),
        xattn=dict(num_heads=4, head_dim=16, ff_mult=2, ff_act="gelu", gating=gating),
        cross_attn_every=every, block_position=None, vision_features="last_hidden_state")


def base_config() -> ml_collections.ConfigDict:
    # checkpoint_every: only the final step
    # multi_dataset_mode: the paper's gradient accumulation over all datasets
    config = trainer_config(log_every=50, checkpoint_every=100000, keep_checkpoints=1, async_checkpoints=False)
    config.stage = "flamingo"
    config.model = model()
    config.tokenizer = dict(kind="shapes_bpe", vocab_size=768)
    config.data = dict(num_threads=0, max_skip_fraction=0.05, convert_image_modes=False, pack=False, datasets=dict(
        # LAION-style pairs and MMC4-style documents (at most 6 images), accumulated each step.
        captions=dict(source="shapes_captions", max_len=32, weight=0.5, max_images=1, batch_size=8),
        interleaved=dict(source="shapes_interleaved", max_len=96, weight=1.0, max_images=6, batch_size=8),
    ))
    config.init_lm = dict(workdir="", hf_dir="")
    config.init_vision = dict(workdir="", timm_nfnet="")
    # OpenFlamingo: AdamW, constant lr after warmup, weight decay 0.1 on the gated blocks only; the resampler, the
    # blocks and the <image> / <|endofchunk|> embedding rows train, the rest is frozen. The tiny run uses lr 1e-3
    # (1e-4 at paper scale).
    config.optimizer = dict(lr=1e-3, schedule="constant", warmup_steps=50, b1=0.9, b2=0.999, eps=1e-8,
                            weight_decay=0.1, clip_norm=1.0, param_groups=tuple(
                                (p, dict(frozen=True) if s is None else s) for p, s in param_groups()))
    return config
