"""VITA-1.5 at paper scale (Qwen2.5-7B + InternViT-300M + the 24-layer speech encoder), one config for every stage:
`--config=configs/vita/stage_7b.py:2.2`. The stage picks the trainable parameters (paper Fig. 3) and the release's
script settings where it has them (finetuneTaskNeg_qwen_nodes.sh for 2.2: lr 2e-5 class, bf16); data are your own
VITA JSON files (`--config.data.datasets='{"sft": {"source": "vita_json", "json": ..., "image_dir": ...,
"audio_dir": ..., "max_len": 6200}}'`); init_checkpoint a released VITA-1.5 folder or init_from the previous stage.
The 6200-token context of the release (tokenizer_model_max_length) and bf16 parameters need a TPU pod slice or GPUs:
mesh fsdp over all devices by default.
"""
import ml_collections

from configs.trainer import trainer_config
from configs.vita.tiny_base import stage_groups

LR = {"1.1": 1e-3, "1.2": 2e-5, "1.3": 2e-5, "2.1": 1e-4, "2.2": 2e-5}


def get_config(stage: str = "2.2") -> ml_collections.ConfigDict:
    if stage not in LR:
        raise ValueError(f"unknown VITA stage {stage!r}; use one of {sorted(LR)}")
    config = trainer_config(total_steps=10000, batch_size=128, checkpoint_every=500,
                            mesh=dict(data=1, fsdp=-1, tensor=1))
    config.model = dict(preset="vita_1_5", text=dict(dtype="bfloat16", param_dtype="float32", remat_policy="dots",
                                                     max_position_embeddings=32768),
                        vision=dict(dtype="bfloat16", remat_policy="full"),
                        audio=dict(dtype="bfloat16", remat_policy="dots"))
    config.tokenizer = dict(kind="dir", path="VITA-1.5")
    config.data = dict(max_tiles=12, max_audio_seconds=30.0, max_audio_frames=3000, over_length="skip",
                       num_threads=8, max_skip_fraction=0.01, convert_image_modes=True, datasets={})
    config.init_from = ""
    config.init_exclude = ()
    config.init_checkpoint = "VITA-1.5"
    config.lora = dict(rank=0, alpha=0.0, targets=())
    config.optimizer = dict(lr=LR[stage], schedule="cosine", warmup_steps=300, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                            weight_decay=0.0, clip_norm=1.0, param_groups=stage_groups(stage))
    return config
