"""Tiny LLaVA stage 1, feature alignment (paper Sec. 4.2): projector only (LM and tower frozen), bundled captions in
the `plain` template (`<image>` placeholders + caption), lr 1e-3, cosine with 3% warmup, no weight decay, as the
paper; steps and batch scaled down for a CPU. Starts from the stage-0 workdir (`init_from`).

python -m llava_jax.train --config configs/llava/tiny_stage1.py --workdir workdirs/llava_tiny_s1 \
    --config.init_from=workdirs/llava_tiny_s0
"""
from configs.llava.tiny_base import base_config, shapes


def get_config():
    config = base_config()
    config.total_steps = 300
    config.batch_size = 32
    config.init_from = "workdirs/llava_tiny_s0"
    config.data.template = "plain"
    config.data.datasets = dict(captions=shapes("captions", 56))
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=5, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"projector/.*", dict()), (r".*", dict(frozen=True))))
    return config
