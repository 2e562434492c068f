"""Tiny LLaVA stage 2, visual instruction tuning (paper Sec. 4.2): projector + LM trainable, tower frozen, bundled
conversations (vicuna_v1, loss on the answers only) plus short-answer VQA (LLaVA-1.5's mix: "Answer the question
using a single word or phrase."), cosine with 3% warmup, no weight decay. Starts from the stage-1 workdir
(`init_from`); pointing `init_from` at the stage-0 workdir instead gives the "stage 2 only" ablation (projector from
scratch).

python -m llava_jax.train --config configs/llava/tiny_stage2.py --workdir workdirs/llava_tiny_s2 \
    --config.init_from=workdirs/llava_tiny_s1
"""
from configs.llava.tiny_base import base_config, shapes


def get_config():
    config = base_config()
    config.total_steps = 300
    config.batch_size = 16
    config.init_from = "workdirs/llava_tiny_s1"
    config.data.template = "vicuna_v1"
    config.data.datasets = dict(conversations=shapes("conversations", 120, max_rounds=2, batch_size=8),
                                vqa=shapes("vqa", 72))
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=4, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"projector/.*", dict()), (r"lm/.*", dict()), (r".*", dict(frozen=True))))
    return config
