"""The layers' own backward passes (common/layers.py): `dense` keeps no input for a frozen kernel;
`layer_norm` / `rms_norm` keep their input and row statistics. Gradients equal
autodiff of the plain formulas, and the saved residuals are what the docstrings say."""
import contextlib
import io
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import print_saved_residuals

from common.layers import dense, layer_norm, rms_norm

RNG = np.random.default_rng(0)
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def saved_residuals(f, *args) -> list[tuple[tuple[int, ...], object]]:
    """(shape, dtype) of each value the backward pass of f keeps (jax's print_saved_residuals, parsed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, *args)
    found = []
    for line in out.getvalue().splitlines():
        m = re.match(r"(\w+)\[([\d,]*)\]", line)
        if m:
            found.append((tuple(int(d) for d in m.group(2).split(",") if d), DTYPES.get(m.group(1), m.group(1))))
    return found


def arr(*shape, scale=1.0, shift=0.0):
    return jnp.asarray(RNG.normal(size=shape) * scale + shift, jnp.float32)


def layer_norm_reference(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + (0.0 if bias is None else bias)


def rms_norm_reference(x, scale, eps=1e-6):
    return x * jax.lax.rsqrt((x**2).mean(-1, keepdims=True) + eps) * scale


class NormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_norm_gradients_equal_autodiff(self):
        x, scale, bias, weights = arr(3, 7, 32, scale=3.0, shift=1.0), arr(32), arr(32), arr(3, 7, 32)
        ours = self.variant(jax.grad(lambda x, s, b: (layer_norm(x, s, b, 1e-5, jnp.float32) * weights).sum(),
                                     argnums=(0, 1, 2)))(x, scale, bias)
        expected = jax.grad(lambda x, s, b: (layer_norm_reference(x, s, b) * weights).sum(), argnums=(0, 1, 2))(
            x, scale, bias)
        chex.assert_trees_all_close(ours, expected, atol=1e-5)
        ours = self.variant(jax.grad(lambda x, s: (rms_norm(x, s, 1e-6, jnp.float32) * weights).sum(),
                                     argnums=(0, 1)))(x, scale)
        expected = jax.grad(lambda x, s: (rms_norm_reference(x, s) * weights).sum(), argnums=(0, 1))(x, scale)
        chex.assert_trees_all_close(ours, expected, atol=1e-5)

    def test_norms_keep_input_and_row_statistics_only(self):
        """bf16 input [B, T, E]: the residuals are the bf16 input and [B, T, 1] statistics, no float32 [B, T, E]."""
        x = arr(4, 16, 64).astype(jnp.bfloat16)
        scale = arr(64)
        for f in (lambda x, s: layer_norm(x, s, None, 1e-5, jnp.bfloat16),
                  lambda x, s: rms_norm(x, s, 1e-6, jnp.bfloat16)):
            shapes = saved_residuals(lambda x, s: f(x, s).astype(jnp.float32).sum(), x, scale)
            assert ((4, 16, 64), jnp.bfloat16) in shapes, shapes  # the input itself
            assert all(shape[-1] == 1 or shape == (64,) or dtype == jnp.bfloat16 for shape, dtype in shapes), shapes


class DenseTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_equal_dot_general_with_frozen_parts(self):
        x, kernel, weights = arr(2, 5, 3, 4), arr(3, 4, 6, 7), arr(2, 5, 6, 7)
        reference = lambda x, k: (jnp.einsum("btij,ijmn->btmn", x, k) * weights).sum()  # noqa: E731
        ours = lambda x, k: (dense(x, k, 2) * weights).sum()  # noqa: E731
        chex.assert_trees_all_close(self.variant(jax.grad(ours, argnums=(0, 1)))(x, kernel),
                                    jax.grad(reference, argnums=(0, 1))(x, kernel), atol=1e-5)
        frozen_kernel = lambda f: lambda x, k: f(x, jax.lax.stop_gradient(k))  # noqa: E731
        chex.assert_trees_all_close(self.variant(jax.grad(frozen_kernel(ours)))(x, kernel),
                                    jax.grad(frozen_kernel(reference))(x, kernel), atol=1e-5)
        frozen_input = lambda f: lambda x, k: f(jax.lax.stop_gradient(x), k)  # noqa: E731
        chex.assert_trees_all_close(self.variant(jax.grad(frozen_input(ours), argnums=1))(x, kernel),
                                    jax.grad(frozen_input(reference), argnums=1)(x, kernel), atol=1e-5)

    def test_frozen_kernel_keeps_no_input(self):
        """A frozen kernel's matmul keeps the kernel (for the input's gradient), not its input; a trained one keeps
        its input too; a constant input's matmul keeps only the input."""
        x, kernel = arr(8, 64).astype(jnp.bfloat16), arr(64, 32).astype(jnp.bfloat16)

        def saved(freeze_kernel, freeze_input=False):
            def f(x, k):
                k = jax.lax.stop_gradient(k) if freeze_kernel else k
                x = jax.lax.stop_gradient(x) if freeze_input else x
                return dense(x, k, 1).astype(jnp.float32).sum()
            return sorted(map(str, saved_residuals(f, x, kernel)))

        assert saved(True) == [str(((64, 32), jnp.bfloat16))], saved(True)
        assert saved(False) == sorted(map(str, [((8, 64), jnp.bfloat16), ((64, 32), jnp.bfloat16)])), saved(False)
        assert saved(False, freeze_input=True) == [str(((8, 64), jnp.bfloat16))], saved(False, True)
