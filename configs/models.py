"""Published model sizes as configs of this library's modules (the checkpoints' own config.json values).

`load_hf` reads configs from checkpoints; these presets serve `jax.eval_shape` size checks, benchmarks
and paper-scale training configs that start from scratch.
"""
from common.lm import LMConfig


def vicuna_7b(**overrides) -> LMConfig:
    """Vicuna-7B v1.5 = Llama-2-7B architecture (lmsys/vicuna-7b-v1.5): 6.74B parameters."""
    return LMConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                    intermediate_size=11008, max_position_embeddings=4096, norm_eps=1e-5, rope_theta=10000.0
                    ).replace(**overrides)


def qwen2_7b(**overrides) -> LMConfig:
    """Qwen2-7B (Qwen/Qwen2-7B): GQA 28 / 4 heads, qkv bias, untied head; 7.62B parameters."""
    return LMConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                    intermediate_size=18944, max_position_embeddings=131072, norm_eps=1e-6, qkv_bias=True,
                    rope_theta=1000000.0).replace(**overrides)


def mpt_7b(**overrides) -> LMConfig:
    """MPT-7B (mosaicml/mpt-7b): ALiBi, bias-free LayerNorm, GELU MLP x4, tied embeddings; 6.65B parameters."""
    return LMConfig(vocab_size=50432, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=16384,
                    max_position_embeddings=2048, norm="layer", norm_eps=1e-5, norm_bias=False, mlp_act="gelu",
                    mlp_gated=False, position="alibi", tie_word_embeddings=True).replace(**overrides)


def tinyllama_1b(**overrides) -> LMConfig:
    """TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T): Llama-2 architecture, GQA 32 / 4
    heads; 1.10B parameters. The accelerator benchmark's larger model."""
    return LMConfig(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                    intermediate_size=5632, max_position_embeddings=2048, norm_eps=1e-5).replace(**overrides)


def llama_100m(**overrides) -> LMConfig:
    """A ~100M-parameter Llama (d 768, 8 layers, vocab 32000) used by the benchmarks."""
    return LMConfig(vocab_size=32000, hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=12,
                    intermediate_size=2048, max_position_embeddings=2048, norm_eps=1e-5).replace(**overrides)
