"""Parameter counts of the published LM sizes from `jax.eval_shape` (no memory used) match the model cards."""
import pytest

from common.lm import param_counts
from configs import models

PUBLISHED = {
    # model card / safetensors index totals
    "vicuna_7b": 6_738_415_616,  # lmsys/vicuna-7b-v1.5 (Llama-2-7B)
    "qwen2_7b": 7_615_616_512,  # Qwen/Qwen2-7B: 7.62B
    "mpt_7b": 6_649_286_656,  # mosaicml/mpt-7b: 6.7B
    "tinyllama_1b": 1_100_048_384,  # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T: 1.1B
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published(name):
    count = param_counts(getattr(models, name)())["total"]
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] <= 0.005, (name, count)
