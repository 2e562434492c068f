"""OpenFlamingo-9B (Awadalla et al. 2023): CLIP ViT-L/14 + MPT-7B, a gated block every 4th layer; OpenFlamingo's
recipe: AdamW lr 1e-4, 5000 warmup steps then constant, weight decay 0.1 on the gated cross-attention only; trains
the resampler, the blocks and the <image> / <|endofchunk|> input-embedding rows; LAION-2B
`<image>{caption}<|endofchunk|>{eos}` (32 tokens) and MMC4 documents (up to 6 images, 256 tokens) with gradients
accumulated over both datasets each step.

Point the datasets at your data (coco_captions / interleaved_jsonl sources, see flamingo_jax/data.py), the tokenizer
at the MPT-7B checkpoint directory and init_lm.hf_dir at its weights (CLIP weights: extend init_lm or convert with
flamingo_jax.hf). Global batch: LAION 1536 / MMC4 768 on 64 GPUs in the release; set batch sizes per dataset.
"""

from configs.trainer import trainer_config
from flamingo_jax.model import param_groups


def get_config():
    config = trainer_config(total_steps=250000, batch_size=512, log_every=100, checkpoint_every=2000,
                            mesh=dict(data=1, fsdp=-1, tensor=1))
    config.stage = "flamingo"
    config.model = dict(preset="open-flamingo-9b", lm=dict(remat_policy="full", dtype="bfloat16"),
                        vision=dict(dtype="bfloat16"), resampler=dict(dtype="bfloat16"))
    config.tokenizer = dict(kind="dir", path="/path/to/mpt-7b")
    config.data = dict(num_threads=2, max_skip_fraction=0.05, convert_image_modes=False, pack=False, datasets=dict(
        laion=dict(source="coco_captions", annotations="/path/to/captions.json", image_dir="/path/to/images",
                   max_len=32, weight=0.2, max_images=1, batch_size=1024),
        mmc4=dict(source="interleaved_jsonl", jsonl="/path/to/mmc4.jsonl", image_dir="/path/to/mmc4_images",
                  max_len=256, weight=1.0, max_images=6, batch_size=512),
    ))
    config.init_lm = dict(workdir="", hf_dir="/path/to/mpt-7b")
    config.optimizer = dict(lr=1e-4, schedule="constant", warmup_steps=5000, b1=0.9, b2=0.999, eps=1e-8,
                            weight_decay=0.1, clip_norm=1.0, param_groups=tuple(
                                (p, dict(frozen=True) if s is None else s) for p, s in param_groups()))
    return config
