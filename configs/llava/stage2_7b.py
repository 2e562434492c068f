"""LLaVA-1.5-7B stage 2, visual instruction tuning (Liu et al. 2023b, Table 9): projector + Vicuna trainable, CLIP
frozen, llava_v1_5_mix665k.json in the `vicuna_v1` template (loss on the answers only), 1 epoch, global batch 128,
lr 2e-5, cosine with 3% warmup, weight decay 0. Starts from the stage-1 workdir (`init_from`: its projector, and
the pretrained Vicuna / CLIP it carries):

python -m llava_jax.train --config configs/llava/stage2_7b.py --workdir gs://.../llava7b_s2 \
    --config.init_from=gs://.../llava7b_s1 --config.tokenizer.path=/ckpt/vicuna-7b-v1.5 \
    --config.data.json=/data/llava_v1_5_mix665k.json \
    --config.data.image_dir=/data/llava_images
"""
from configs.llava.paper_base import base_config

NUM_EXAMPLES = 665_298


def get_config():
    config = base_config()
    config.batch_size = 128
    config.total_steps = NUM_EXAMPLES // config.batch_size  # 1 epoch = 5197 steps
    config.data.template = "vicuna_v1"
    config.optimizer = dict(lr=2e-5, schedule="cosine", warmup_steps=int(0.03 * config.total_steps),
                            end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"projector/.*", dict()), (r"lm/.*", dict()), (r".*", dict(frozen=True))))
    return config
