"""A tiny Llama-style LM (2 layers, width 64, GQA) on the bundled byte-level corpus: trains on CPU in a minute.

python -m common.train --config configs/lm/tiny.py --workdir /tmp/lm_tiny [--config.total_steps=50 ...]
"""
import ml_collections

from configs.trainer import trainer_config


def get_config() -> ml_collections.ConfigDict:
    # batch_size: global, in sequences
    # grad_accum_steps: micro-batches summed inside one step
    # mesh: -1: the remaining devices
    # multi_dataset_mode: or 'round_robin' (one dataset per step)
    # peak_flops: per device, for MFU; 0 = not reported
    config = trainer_config(total_steps=300, checkpoint_every=100, eval_every=100, eval_batches=4)

    config.model = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=128, max_position_embeddings=256, norm="rms", mlp_act="silu",
                        dtype="float32", param_dtype="float32", scan_layers=True, remat_policy="none")
    config.data = dict(source="bundled", seq_len=64, num_sentences=20000, corpus_seed=0, eval_fraction=0.05)
    config.optimizer = dict(
        lr=3e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1, decay_steps=None,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
        # (regex on 'a/b/c' parameter paths, {lr_mult, wd_mult, frozen}); the first full match wins.
        param_groups=((r".*(norm|bias).*", dict(wd_mult=0.0)),))
    return config
