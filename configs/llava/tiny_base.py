"""Shared fields of the tiny LLaVA configs (CPU, bundled shapes data): a 3-layer 128-wide Llama-style LM, a 2-layer
CLIP ViT on 48 px images with 16 px patches (= the 3x3 grid cells of the shapes scenes: 9 image tokens), the
mlp2x_gelu projector, the byte-level BPE tokenizer built from the bundled text.

The tower stays frozen at its random initialisation in every stage (as CLIP stays frozen in the paper). At init a
pre-LN ViT's residual stream is dominated by its patch embedding, a random linear projection of each 16x16x3 cell,
which preserves the cell's colour and silhouette (Johnson-Lindenstrauss), so its features carry the image content
and only the projector has to learn to read them; see the README's LLaVA section.
"""
import ml_collections

from configs.trainer import trainer_config

IMAGE_SIZE = 48


def model() -> dict:
    return dict(
        preset=None,
        text=dict(vocab_size=None, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=256,
                  max_position_embeddings=256, norm="rms", mlp_act="silu", dtype="float32", param_dtype="float32",
                  scan_layers=True, remat_policy="none"),
        vision=dict(image_size=IMAGE_SIZE, patch_size=16, hidden_size=128, intermediate_size=256, num_layers=2,
                    num_heads=4, scan_layers=True),
        projector_type="mlp2x_gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_token_index=None)


def shapes(kind: str, max_len: int, **extra) -> dict:
    return dict(source="shapes", kind=kind, max_len=max_len, image_size=IMAGE_SIZE, **extra)


def base_config() -> ml_collections.ConfigDict:
    config = trainer_config(total_steps=200, batch_size=32, log_every=20, keep_checkpoints=1, async_checkpoints=False)
    config.model = model()
    config.tokenizer = dict(kind="shapes_bpe", vocab_size=1024)
    config.data = dict(template="vicuna_v1", text_only=False, pad_to_square=True, over_length="skip",
                       pack=False, num_threads=0,
                       max_skip_fraction=0.05, convert_image_modes=False, datasets={})
    config.init_from = ""
    config.init_exclude = ()
    config.init_checkpoint = dict(lm="", vision="")
    config.lora = dict(rank=0, alpha=0.0, targets=())
    config.eval_vqa = dict(num_questions=0, split="validation", max_new_tokens=8)
    return config
