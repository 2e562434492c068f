"""The vision-language connector of LLaVA and VITA-1.5 (Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.1:
a linear map W from CLIP features to the word-embedding space; LLaVA-1.5, Liu et al. 2023b, Sec. 3.1: a two-layer MLP
`mlp2x_gelu`; VITA-1.5 uses the same mlp2x_gelu on InternViT's pixel-shuffled 4096-wide tokens). HF
`LlavaMultiModalProjector` = linear_1 -> act -> linear_2, with biases.

Types: `linear` (one Linear) or `mlp{N}x_{act}` (N Linears with the activation between them; the original's
`mlp2x_gelu`). The activation of the MLP can be overridden (HF's `projector_hidden_act`).

Params: linear_1 {kernel [D_v, E], bias [E]}, linear_2..N {kernel [E, E], bias [E]}. Logical axes: the first
kernel is column-parallel ("embed" -> "mlp"), the following alternate ("mlp" -> "embed", "embed" -> "mlp"), so a
two-layer MLP is one Megatron pair (tensor-parallel hidden width, no all-gather between the two matmuls).
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax

from common.layers import Linear, activation, dtype_of
from common.sharding import constrain

_MLP_RE = re.compile(r"mlp(\d+)x_(\w+)")


def parse_projector_type(projector_type: str) -> tuple[int, str | None]:
    """'linear' -> (1, None); 'mlp2x_gelu' -> (2, 'gelu'). Raises ValueError for anything else."""
    if projector_type == "linear":
        return 1, None
    match = _MLP_RE.fullmatch(projector_type)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector type {projector_type!r}; "
                         "use 'linear' or 'mlp<N>x_<act>' (e.g. mlp2x_gelu)")
    return int(match.group(1)), match.group(2)


class Projector(nn.Module):
    """[..., D_v] vision features -> [..., E] LM embeddings."""

    out_features: int
    projector_type: str = "mlp2x_gelu"
    act: str | None = None  # overrides the activation named in projector_type (HF projector_hidden_act)
    use_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        depth, type_act = parse_projector_type(self.projector_type)
        act = activation(self.act or type_act or "gelu")
        axes = (("embed",), ("mlp",))
        for i in range(depth):
            in_axes, out_axes = (axes if i % 2 == 0 else axes[::-1])
            x = Linear(self.out_features, in_axes, out_axes, use_bias=self.use_bias, dtype=dtype_of(self.dtype),
                       param_dtype=dtype_of(self.param_dtype), name=f"linear_{i + 1}")(x)  # [..., D_in] -> [..., E]
            if i < depth - 1:
                x = constrain(act(x), ("act_batch", "act_length", "act_mlp") if x.ndim == 3 else (None,) * x.ndim)
        return x
