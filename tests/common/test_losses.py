"""common.losses.next_token_loss: the logits form and the fused LM-head form (chunked over positions, custom VJP)
equal the plain log-softmax cross-entropy and its autodiff gradients, with padding masks and chunks that do not divide
the positions; the aux counts the targets and their argmax accuracy; the trainer's tasks get the same loss fused from
the LM's final hidden states as from its logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chex

from common.lm import DecoderLM, LMConfig, head_kernel
from common.losses import next_token_loss, shifted_next_token_loss


def reference_loss(hidden, kernel, targets, mask):
    logits = jnp.einsum("bte,ev->btv", hidden, kernel, precision="highest")
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = mask.astype(jnp.float32)
    return -jnp.sum(picked * weights) / jnp.sum(weights)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [4, 7, 1024])
def test_fused_head_loss_and_gradients_equal_log_softmax_autodiff(chunk_size):
    rng = np.random.RandomState(0)
    b, t, e, v = 3, 9, 16, 50
    hidden = jnp.asarray(rng.randn(b, t, e), jnp.float32)
    kernel = jnp.asarray(rng.randn(e, v) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.randint(0, v, (b, t)), jnp.int32)
    mask = jnp.asarray(rng.rand(b, t) > 0.3)
    mask = mask.at[0, 1:].set(True)
    fused = lambda h, k: next_token_loss(h, targets, mask, kernel=k, chunk_size=chunk_size)[0]  # noqa: E731
    ref = lambda h, k: reference_loss(h, k, targets, mask)  # noqa: E731
    (loss, grads), (ref_loss, ref_grads) = jax.value_and_grad(fused, (0, 1))(hidden, kernel), \
        jax.value_and_grad(ref, (0, 1))(hidden, kernel)
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        chex.assert_trees_all_close(g, r, rtol=1e-4, atol=1e-6)
    # The logits form: same value and gradient with respect to the logits.
    logits = jnp.einsum("bte,ev->btv", hidden, kernel, precision="highest")
    loss_logits, g_logits = jax.value_and_grad(lambda x: next_token_loss(x, targets, mask)[0])(logits)
    ref_g = jax.grad(lambda x: reference_loss(x, jnp.eye(v), targets, mask))(logits)
    chex.assert_trees_all_close(loss_logits, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(g_logits, ref_g, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_masked_targets_do_not_count_even_out_of_vocabulary_ids():
    """Padding targets (e.g. -100 or the pad id) carry no loss or gradient, whatever their value."""
    rng = np.random.RandomState(1)
    hidden = jnp.asarray(rng.randn(2, 6, 8), jnp.float32)
    kernel = jnp.asarray(rng.randn(8, 20), jnp.float32)
    targets = jnp.asarray(rng.randint(0, 20, (2, 6)), jnp.int32)
    mask = jnp.ones((2, 6), bool).at[1, 3:].set(False)
    padded = targets.at[1, 3:].set(-100)
    base = next_token_loss(hidden, targets, mask, kernel=kernel, chunk_size=5)[0]
    chex.assert_trees_all_close(next_token_loss(hidden, padded, mask, kernel=kernel, chunk_size=5)[0], base, rtol=1e-6)
    grad = jax.grad(lambda h: next_token_loss(h, padded, mask, kernel=kernel, chunk_size=5)[0])(hidden)
    chex.assert_tree_all_finite(grad)
    assert np.all(grad[1, 3:] == 0)  # positions 3.. predict the masked targets
    with pytest.raises(ValueError, match="do not match"):
        next_token_loss(hidden[:, :5], targets, mask, kernel=kernel)


@pytest.mark.parametrize("chunk_size", [3, 256])
def test_aux_counts_targets_and_accuracy_in_both_forms(chunk_size):
    rng = np.random.RandomState(2)
    hidden = jnp.asarray(rng.randn(2, 7, 8), jnp.float32)
    kernel = jnp.asarray(rng.randn(8, 11), jnp.float32)
    logits = hidden @ kernel
    targets = jnp.argmax(logits, axis=-1).at[0, :3].set((jnp.argmax(logits, axis=-1)[0, :3] + 1) % 11)  # 3 wrong
    mask = jnp.ones((2, 7), bool).at[1, 5:].set(False)  # 12 counted, 3 of them wrong
    for aux in (next_token_loss(logits, targets, mask)[1],
                next_token_loss(hidden, targets, mask, kernel=kernel, chunk_size=chunk_size)[1]):
        chex.assert_trees_all_close(aux, {"tokens": 12.0, "accuracy": 9 / 12}, rtol=1e-6)


def test_fused_loss_from_the_lm_hidden_states_equals_the_loss_of_its_logits():
    """What the trainer's tasks do (`return_hidden` + `head_kernel`) gives the loss and gradients of the logits,
    for tied and untied heads."""
    for tied in (True, False):
        cfg = LMConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                       intermediate_size=32, max_position_embeddings=32, tie_word_embeddings=tied)
        model = DecoderLM(cfg)
        ids = jnp.asarray(np.random.RandomState(3).randint(0, 40, (2, 9)), jnp.int32)
        mask = jnp.ones(ids.shape, bool).at[1, :4].set(False)
        params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                              model.init(jax.random.PRNGKey(0), ids)["params"],
                              is_leaf=lambda x: hasattr(x, "value"))

        def from_logits(p):
            return shifted_next_token_loss(model.apply({"params": p}, ids), ids, mask)

        def fused(p):
            hidden = model.apply({"params": p}, ids, return_hidden=True)
            return shifted_next_token_loss(hidden, ids, mask, kernel=head_kernel(p, cfg), chunk_size=3)

        (want, want_aux), want_grads = jax.value_and_grad(from_logits, has_aux=True)(params)
        (got, got_aux), got_grads = jax.value_and_grad(fused, has_aux=True)(params)
        chex.assert_trees_all_close((got, got_aux), (want, want_aux), rtol=1e-5)
        chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_tasks_lm_loss_setting_fused_or_logits_gives_one_loss():
    """`lm_loss: fused` (the default) and `lm_loss: logits` are the same loss and gradients through a task's loss_fn;
    another value is refused when the config is built."""
    import configs
    from common.lm_task import make_task
    from common.trainer import DataShard
    from configs.trainer import trainer_config

    results = []
    for form in ("fused", "logits"):
        config = configs.load_config("lm/tiny", [f"lm_loss={form}", "batch_size=2"])
        task = make_task(config)
        params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, task.init_params(jax.random.key(0)),
                              is_leaf=lambda x: hasattr(x, "value"))
        batch = jax.tree.map(jnp.asarray, next(task.make_train_data(DataShard(0, 1))["text"]))
        results.append(jax.value_and_grad(task.loss_fn, has_aux=True)(params, batch, jax.random.key(1)))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lm_loss must be 'fused' or 'logits'"):
        trainer_config(lm_loss="chunked")
