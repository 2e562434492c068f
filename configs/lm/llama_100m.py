"""A ~110M-parameter Llama (12 layers, width 768, 12 heads, tied 32k embedding), GPT-2-small scale.

Byte-level data until the tokenized data layer lands: set `--config.data.source=text_file
--config.data.path=...`. On a TPU v4-8: `--config.mesh.fsdp=-1 --config.peak_flops=275e12`.
"""
import ml_collections

from configs.lm import tiny


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.total_steps = 20000
    config.batch_size = 256  # x 1024 tokens = 262k tokens a step
    config.log_every = 50
    config.checkpoint_every = 1000
    config.eval_every = 1000
    config.eval_batches = 16
    config.mesh = dict(data=1, fsdp=-1, tensor=1)
    config.model = dict(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12,
                        intermediate_size=2048, max_position_embeddings=2048, tie_word_embeddings=True,
                        norm="rms", norm_eps=1e-5, mlp_act="silu", rope_theta=10000.0,
                        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="dots")
    config.data = dict(source="bundled", seq_len=1024, num_sentences=200000, corpus_seed=0, eval_fraction=0.01)
    config.optimizer.update(lr=6e-4, warmup_steps=1000, end_lr_ratio=0.1, b2=0.95, weight_decay=0.1)
    return config
