"""Tiny Flamingo's vision pretraining: the paper pretrains its vision encoder (NFNet-F6) as a dual encoder with a
two-term contrastive loss on image-text pairs and then freezes it (Alayrac et al. 2022, Sec. 2.1, App. B.1.3);
here the tiny configs' 2-layer CLIP ViT is pretrained the same way on the bundled shapes captions, with a 2-layer
causal text tower read at its eos (CLIP's), before `tiny.py` grafts it in through `init_vision.workdir`, frozen.

python -m flamingo_jax.train --config configs/flamingo/tiny_vision.py --workdir workdirs/flamingo_tiny_vision
"""
from configs.flamingo.tiny_base import base_config


def get_config():
    config = base_config()
    config.stage = "contrastive"
    config.total_steps = 600
    config.batch_size = 128
    config.contrastive = dict(projection_dim=64, text=dict(
        vocab_size=None, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128,
        max_position_embeddings=64, norm="rms", mlp_act="silu", scan_layers=True, remat_policy="none"))
    config.data.datasets = dict(
        captions=dict(source="shapes_captions", max_len=32, weight=1.0, max_images=1, batch_size=128, max_objects=1))
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=50, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                            eps=1e-6, weight_decay=0.1, clip_norm=1.0, param_groups=())
    return config
