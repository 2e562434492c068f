"""Paper Flamingo-3B (Alayrac et al. 2022, App. B.1): Chinchilla-style 1.4B LM (24 layers, width 2048) frozen,
NFNet-F6 features (width 1536) frozen, resampler (6 layers, 64 latents) and a gated block before every layer, squared
ReLU FFWs; trains the resampler and the blocks only (the paper freezes the embeddings too); AdamW lr 1e-4 with a
linear warmup (5000 steps) then constant, weight decay 0.1 on the blocks; the paper's accumulation over M3W,
ALIGN, LTIP and VTP (weights 1.0, 0.2, 0.2, 0.03). The preset's frozen NFNet-F6 (common/vision/nfnet.py, 320 x 320
inputs -> 100 tokens of width 1536) is loaded from timm's dm_nfnet_f6 checkpoint (ImageNet weights converted from
DeepMind's; Flamingo's contrastively trained F6 is not public) through `init_vision.timm_nfnet`. Caveat: those
weights were trained on ImageNet-normalised pixels, while the Flamingo data transforms normalise with CLIP's
statistics. Point the datasets at your data.
"""
from configs.flamingo.open_flamingo_9b import get_config as _of9b
from flamingo_jax.model import param_groups


def get_config():
    config = _of9b()
    config.model = dict(preset="flamingo-3b", lm=dict(remat_policy="full", dtype="bfloat16"),
                        vision=dict(dtype="bfloat16"), resampler=dict(dtype="bfloat16"))
    config.tokenizer = dict(kind="dir", path="/path/to/sentencepiece_32k")
    config.init_lm = dict(workdir="", hf_dir="/path/to/chinchilla_1.4b")
    config.init_vision = dict(timm_nfnet="/path/to/timm/dm_nfnet_f6.dm_in1k")
    config.data.datasets = dict(
        m3w=dict(source="interleaved_jsonl", jsonl="/path/to/m3w.jsonl", image_dir="/path/to/m3w_images",
                 max_len=256, weight=1.0, max_images=5, batch_size=256),
        ltip=dict(source="coco_captions", annotations="/path/to/ltip.json", image_dir="/path/to/ltip_images",
                  max_len=32, weight=0.2, max_images=1, batch_size=1024),
    )
    config.optimizer.param_groups = tuple((p, dict(frozen=True) if s is None else s) for p, s in param_groups(False))
    return config
