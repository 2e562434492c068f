"""LLaVA-1.5-7B stage 1, feature alignment (Liu et al. 2023b, Table 9): projector only (Vicuna and CLIP frozen),
LCS-558K captions (blip_laion_cc_sbu_558k.json) in the `plain` template, 1 epoch, global batch 256, lr 1e-3,
cosine with 3% warmup, weight decay 0. Pretrained Vicuna-7B v1.5 and CLIP ViT-L/14-336 come from HF dirs:

python -m llava_jax.train --config configs/llava/stage1_7b.py --workdir gs://.../llava7b_s1 \
    --config.init_checkpoint.lm=/ckpt/vicuna-7b-v1.5 --config.tokenizer.path=/ckpt/vicuna-7b-v1.5 \
    --config.init_checkpoint.vision=/ckpt/clip-vit-large-patch14-336 \
    --config.data.json=/data/blip_laion_cc_sbu_558k.json \
    --config.data.image_dir=/data/LLaVA-Pretrain/images
"""
from configs.llava.paper_base import base_config

NUM_EXAMPLES = 558_128


def get_config():
    config = base_config()
    config.batch_size = 256
    config.total_steps = NUM_EXAMPLES // config.batch_size  # 1 epoch = 2180 steps
    config.data.template = "plain"
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=int(0.03 * config.total_steps),
                            end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"projector/.*", dict()), (r".*", dict(frozen=True))))
    return config
