"""Llama-2-7B (32 layers, width 4096, 32 heads, 32k vocabulary) trained from scratch on next-token prediction, the
LM core at the size the multimodal families build on (Vicuna-7B in LLaVA-1.5 has this architecture).

Point it at your text (`--config.data.source=text_file --config.data.path=...`; the bundled corpus is byte-level).
Plan it on a slice first: `python -m mmlm_jax.plan --config configs/lm/llama2_7b.py --topology v5p-8` (docs/tpu.md).
"""
import ml_collections

from configs.lm import tiny


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.total_steps = 250000
    config.batch_size = 256  # x 2048 tokens = 524k tokens a step
    config.grad_accum_steps = 4
    config.log_every = 50
    config.checkpoint_every = 1000
    config.eval_every = 1000
    config.eval_batches = 16
    config.mesh = dict(data=1, fsdp=-1, tensor=1)
    config.model = dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                        intermediate_size=11008, max_position_embeddings=4096, norm="rms", norm_eps=1e-5,
                        mlp_act="silu", rope_theta=10000.0, dtype="bfloat16", param_dtype="float32",
                        scan_layers=True, remat_policy="full", attention_impl="xla")
    config.data = dict(source="bundled", seq_len=2048, num_sentences=20000, corpus_seed=0, eval_fraction=0.05)
    config.optimizer.update(lr=3e-4, warmup_steps=2000, end_lr_ratio=0.1, b2=0.95, weight_decay=0.1)
    return config
