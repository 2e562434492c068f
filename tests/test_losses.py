"""common.losses.next_token_loss: the logits form and the fused LM-head form (chunked, custom VJP) equal the plain
log-softmax cross-entropy and its autodiff gradients, with padding masks and chunks that do not divide the tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.losses import next_token_loss


def reference_loss(hidden, kernel, targets, mask):
    logits = jnp.einsum("bte,ev->btv", hidden, kernel, precision="highest")[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:].astype(jnp.float32)
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
    fused = lambda h, k: next_token_loss(h, targets, mask, kernel=k, chunk_size=chunk_size)  # noqa: E731
    ref = lambda h, k: reference_loss(h, k, targets, mask)  # noqa: E731
    (loss, grads), (ref_loss, ref_grads) = jax.value_and_grad(fused, (0, 1))(hidden, kernel), \
        jax.value_and_grad(ref, (0, 1))(hidden, kernel)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    # The logits form: same value and gradient with respect to the logits.
    logits = jnp.einsum("bte,ev->btv", hidden, kernel, precision="highest")
    loss_logits, g_logits = jax.value_and_grad(lambda x: next_token_loss(x, targets, mask))(logits)
    ref_g = jax.grad(lambda x: reference_loss(x, jnp.eye(v), targets, mask))(logits)
    np.testing.assert_allclose(loss_logits, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(g_logits, ref_g, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_masked_targets_do_not_count_even_out_of_vocabulary_ids():
    """Padding targets (e.g. -100 or the pad id) carry no loss or gradient, whatever their value."""
    rng = np.random.RandomState(1)
    hidden = jnp.asarray(rng.randn(2, 6, 8), jnp.float32)
    kernel = jnp.asarray(rng.randn(8, 20), jnp.float32)
    targets = jnp.asarray(rng.randint(0, 20, (2, 6)), jnp.int32)
    mask = jnp.ones((2, 6), bool).at[1, 3:].set(False)
    padded = targets.at[1, 3:].set(-100)
    base = next_token_loss(hidden, targets, mask, kernel=kernel, chunk_size=5)
    np.testing.assert_allclose(next_token_loss(hidden, padded, mask, kernel=kernel, chunk_size=5), base, rtol=1e-6)
    grad = jax.grad(lambda h: next_token_loss(h, padded, mask, kernel=kernel, chunk_size=5))(hidden)
    assert np.all(np.isfinite(grad)) and np.all(grad[1, 3:] == 0)  # positions 3.. predict masked targets 4..
    with pytest.raises(ValueError, match="do not match"):
        next_token_loss(hidden[:, :5], targets, mask, kernel=kernel)
