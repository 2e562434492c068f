"""LLaVA-1.5-7B stage 2 with LoRA (the released finetune_lora.sh): adapters r=128, alpha=256 on every linear layer of
Vicuna (q, k, v, o, gate, up, down), base LM and CLIP frozen (no gradient, no optimizer state), projector trained
with lr 2e-5 and the adapters with 2e-4, batch 128, cosine with 3% warmup, weight decay 0. `llava_jax.hf.
export(workdir, out_dir)` merges the adapters into a plain checkpoint.

python -m llava_jax.train --config configs/llava/stage2_lora_7b.py --workdir gs://.../llava7b_lora \
    --config.init_from=gs://.../llava7b_s1 --config.tokenizer.path=/ckpt/vicuna-7b-v1.5 \
    --config.data.json=/data/llava_v1_5_mix665k.json \
    --config.data.image_dir=/data/llava_images
"""
from configs.llava.stage2_7b import get_config as stage2_config


def get_config():
    config = stage2_config()
    config.lora = dict(rank=128, alpha=256.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    config.optimizer.lr = 2e-4
    config.optimizer.param_groups = ((r"lora/.*", dict()), (r"projector/.*", dict(lr_mult=0.1)),
                                     (r".*", dict(frozen=True)))
    return config
