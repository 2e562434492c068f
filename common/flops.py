"""Matmul FLOPs of a JAX function, counted from its jaxpr: every dot_general and convolution, a multiply-add as
2 FLOPs, loop bodies (scan) times their trip count. The count the analytic formulas (`common.lm.
matmul_flops_per_token`, `common.vision.clip.matmul_flops_per_image`) stand for, and what gives the FLOPs of towers
without one (NFNet's grouped convolutions). XLA's `cost_analysis()` is no substitute: it counts a scanned body once."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax._src.interpreters import partial_eval as pe  # no public DCE; its rules reach into scan / pjit bodies
from jax.extend import core as jex_core


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs[d] for d in lhs_contract)
    batch = math.prod(lhs[d] for d in lhs_batch)
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
    return 2.0 * batch * contract * lhs_free * rhs_free


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    k_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
    per_output = math.prod(kernel[d] for d in k_spec[1:])  # in features (per group) x kernel window
    return 2.0 * math.prod(out) * per_output / max(1, eqn.params.get("batch_group_count", 1))


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        elif name == "while":
            body = _jaxpr_flops(eqn.params["body_jaxpr"].jaxpr)
            if body:
                raise ValueError("a while loop with matmuls in its body has no static trip count; FLOPs unknown")
        else:
            for sub in _sub_jaxprs(eqn.params):  # pjit, remat, custom_vjp / jvp, shard_map, ...
                total += _jaxpr_flops(sub)
    return total


def _sub_jaxprs(params: dict[str, Any]):
    for value in params.values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


def matmul_flops(fn: Callable, *args, **kwargs) -> float:
    """FLOPs of the matmuls and convolutions `fn(*args, **kwargs)` runs (arguments may be ShapeDtypeStructs),
    after dead-code elimination (as XLA drops them: e.g. a custom_vjp's cotangents for frozen weights)."""
    jaxpr = jax.make_jaxpr(fn)(*args, **kwargs).jaxpr
    jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return _jaxpr_flops(jaxpr)
