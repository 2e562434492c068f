"""Your own data in the LLaVA JSON format (llava_instruct_150k / mix665k layout: [{id, image, conversations:
[{from: human|gpt, value}]}], `<image>` marking the image in the human turn; records without `image` are text-only),
trained as stage 2 (projector + LM, tower frozen, vicuna_v1, loss on the answers only) on the tiny model:

python -m llava_jax.train --config configs/llava/own_data.py --workdir workdirs/llava_mine \
    --config.data.json=/path/to/data.json --config.data.image_dir=/path/to/images \
    [--config.init_from=workdirs/llava_tiny_s1] [--config.total_steps=1000]

For a real LM use configs/llava/stage2_7b.py (or stage2_lora_7b.py) with the same two data fields.
"""
from configs.llava.tiny_base import base_config


def get_config():
    config = base_config()
    config.total_steps = 500
    config.batch_size = 16
    config.checkpoint_every = 250
    config.data.template = "vicuna_v1"
    config.data.json = ""
    config.data.image_dir = ""
    config.data.max_len = 256
    config.optimizer = dict(lr=1e-3, schedule="cosine", warmup_steps=15, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"projector/.*", dict()), (r"lm/.*", dict()), (r".*", dict(frozen=True))))
    return config
