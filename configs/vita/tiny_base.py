"""Shared fields of the tiny VITA configs (CPU, bundled shapes scenes and their espeak speech): a 2-layer 64-wide
Qwen2-style LM, a 2-layer InternViT on 84 px tiles (36 patches -> 9 tokens per tile after the pixel shuffle), a
2-layer 64-wide speech encoder, the shapes BPE tokenizer with ChatML specials and the state characters."""
import ml_collections

from configs import trainer

from vita_jax.model import STAGE_TRAINABLE

IMAGE_SIZE = 84  # 6 x 6 patches of 14 px -> 3 x 3 tokens after the pixel shuffle: one per scene grid cell


def model() -> dict:
    return dict(
        preset=None,
        text=dict(vocab_size=None, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  max_position_embeddings=512, norm_eps=1e-6, rope_theta=1e6, qkv_bias=True),
        vision=dict(image_size=IMAGE_SIZE, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=2),
        audio=dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, dropout_rate=0.0,
                   positional_dropout_rate=0.0))


def shapes(kind: str, max_len: int, **extra) -> dict:
    return dict(source="shapes", kind=kind, max_len=max_len, image_size=IMAGE_SIZE, **extra)


def repeat_text(batch_size: int = 8, weight: float = 0.5) -> dict:
    """Text-only "Convert the speech to text.\n<words>" -> "<words>" (stage 0's repeat data), mixed into the vision
    stages so that the LM keeps the copy skill the frozen LM of stage 2.1 needs: without it stages 1.2-1.3 erase it
    (exact copies of 32 held-out utterances: 27 after stage 0, 0 after 1.3); with it, 11 after stage 0 and 15 after
    1.3 (docs/reproductions/vita.md)."""
    return dict(source="shapes_scene_text", kind="repeat", max_len=144, batch_size=batch_size, weight=weight)


def stage_groups(stage: str) -> tuple:
    """The optimizer param groups of a stage: its trainable parameters, everything else frozen."""
    return tuple((pattern, dict()) for pattern in STAGE_TRAINABLE[stage]) + ((r".*", dict(frozen=True)),)


def trainer_config(total_steps: int = 200, batch_size: int = 16, log_every: int = 20) -> ml_collections.ConfigDict:
    """The trainer's fields every tiny VITA stage shares (CPU, data-parallel mesh, one checkpoint at the end)."""
    return trainer.trainer_config(total_steps=total_steps, batch_size=batch_size, log_every=log_every,
                                  keep_checkpoints=1, async_checkpoints=False)


def base_config(stage: str) -> ml_collections.ConfigDict:
    config = trainer_config()
    config.model = model()
    config.tokenizer = dict(kind="shapes_bpe", vocab_size=1024)
    config.data = dict(max_tiles=1, max_audio_seconds=8.0, over_length="skip", num_threads=0,
                       max_skip_fraction=0.05, convert_image_modes=False, datasets={})
    config.init_from = ""
    config.init_exclude = ()
    config.init_checkpoint = ""
    config.lora = dict(rank=0, alpha=0.0, targets=())
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=10, end_lr_ratio=0.1, b1=0.9, b2=0.98,
                            weight_decay=0.0, clip_norm=1.0, param_groups=stage_groups(stage))
    return config
