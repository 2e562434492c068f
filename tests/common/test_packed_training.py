"""Training on packed rows follows the same loss curve as training on padded rows (tiny scale, the LM core): every
step takes the same samples, once padded one per row (common.data.pipeline.Collate) and once packed by the library's
packer (common.data.packing through build_dataset), the loss being the mean over target tokens; 30 Adam steps of both
stay within float noise of each other while the loss falls."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common.data.packing import PackingSpec, packed_model_inputs
from common.data.pipeline import Collate, build_dataset
from common.lm import DecoderLM, LMConfig
from common.losses import shifted_next_token_loss
from common.params import random_params

pytestmark = pytest.mark.slow  # a (short) training

ROW, VOCAB, SAMPLES_PER_STEP, STEPS = 48, 32, 8, 30
CFG = LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
               max_position_embeddings=ROW, attention_block_size=16)


def progression(rng) -> dict:
    """A learnable sample: an arithmetic progression mod VOCAB of random start, step and length (4..40 tokens)."""
    n, start, step = int(rng.integers(4, 41)), int(rng.integers(1, VOCAB)), int(rng.integers(1, 4))
    ids = ((start + step * np.arange(n)) % (VOCAB - 1) + 1).astype(np.int32)
    return {"input_ids": ids, "loss_mask": np.arange(n) > 0}


def layouts(group):
    """The same samples as padded rows and as packed rows (the library's packer, one emission)."""
    source = list(group)
    padded, _ = build_dataset(source, dict, batch_size=len(group), shuffle=False, collate=Collate(ROW, 0))
    packed, _ = build_dataset(source, dict, batch_size=len(group), shuffle=False, drop_remainder=False,
                              packing=PackingSpec(ROW, num_bins=len(group)))
    packed = list(packed)
    assert len(packed) == 1
    return next(iter(padded)), packed[0]


def loss_fn(model, params, batch):
    logits = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                         **packed_model_inputs(batch))
    ids = batch["input_ids"]
    return shifted_next_token_loss(logits, ids, batch["loss_mask"])[0]


def test_packed_and_padded_training_follow_the_same_loss_curve():
    rng = np.random.default_rng(0)
    groups = [[progression(rng) for _ in range(SAMPLES_PER_STEP)] for _ in range(STEPS)]
    model = DecoderLM(CFG)
    init = random_params(model, jnp.zeros((1, ROW), jnp.int32))
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    curves, rows = {}, {}
    for layout in ("padded", "packed"):
        params, opt_state, losses, used = init, optimizer.init(init), [], 0
        for group in groups:
            batch = layouts(group)[layout == "packed"]
            used += int(np.asarray(batch["attention_mask"]).any(axis=1).sum())
            params, opt_state, loss = step(params, opt_state, {k: jnp.asarray(v) for k, v in batch.items()})
            losses.append(float(loss))
        curves[layout], rows[layout] = np.asarray(losses), used
    assert rows["packed"] < 0.7 * rows["padded"], rows  # the same samples in far fewer rows
    chex.assert_trees_all_close(curves["packed"], curves["padded"], atol=2e-3)
    assert curves["packed"][-5:].mean() < curves["packed"][:5].mean() - 0.5, curves["packed"]
