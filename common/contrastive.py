"""Contrastive image-text pretraining of a vision encoder: a CLIP-style dual encoder (Radford et al. 2021, Sec. 2.3
and Fig. 3's pseudo-code) — the way Flamingo's vision encoder is made before it is frozen (Alayrac et al. 2022,
Sec. 2.1 "pretrained ... using a contrastive objective", App. B.1.3: NFNet-F6 + a text encoder, two-term
contrastive loss over the batch, learned temperature).

    encoder = DualEncoder(DualEncoderConfig(vision=CLIPVisionConfig(...) | NFNetConfig(...), text=LMConfig(...)))
    image_embeds, text_embeds, logit_scale = encoder.apply({"params": p}, pixels, input_ids, attention_mask)
    loss, aux = contrastive_loss(image_embeds, text_embeds, logit_scale)

Image side: CLIP's pooled (post-LN CLS) or NFNet's global average pool -> linear projection -> L2 normalise.
Text side: a `common.lm.DecoderLM` (causal, as CLIP's text transformer) read at each text's last real token (the
eos, CLIP's pooling) after the final norm -> linear projection -> L2 normalise. Shapes: B batch, T tokens,
P projection width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from common.layers import Linear
from common.lm import DecoderLM, LMConfig
from common.sharding import constrain, with_partitioning
from common.vision import CLIPVisionConfig, build_vision_tower


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
    vision: Any  # common.vision.clip.CLIPVisionConfig (projection_dim ignored) | common.vision.nfnet.NFNetConfig
    text: LMConfig
    projection_dim: int = 128
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    max_logit_scale: float = math.log(100.0)  # CLIP clips the scale at 100


class DualEncoder(nn.Module):
    """`apply({"params": p}, pixels [B, H, W, C], input_ids [B, T], attention_mask [B, T])
    -> (image_embeds [B, P], text_embeds [B, P], logit_scale [])`, embeddings unit-norm. Param tree:
    {vision: the tower's own tree (grafts into a Flamingo / LLaVA vision tower), image_projection, text: a
    DecoderLM tree, text_projection, logit_scale}."""

    config: DualEncoderConfig

    def setup(self):
        cfg = self.config
        vision = cfg.vision
        if hasattr(vision, "projection_dim") and vision.projection_dim is not None:
            vision = dataclasses.replace(vision, projection_dim=None)  # our own image_projection instead
        self.vision = build_vision_tower(vision)
        self.text = DecoderLM(cfg.text)
        self.image_projection = Linear(cfg.projection_dim, ("embed",), ("mlp",), name="image_projection")
        self.text_projection = Linear(cfg.projection_dim, ("embed",), ("mlp",), name="text_projection")
        self.logit_scale = self.param("logit_scale", with_partitioning(
            nn.initializers.constant(cfg.init_logit_scale), ()), (), jnp.float32)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """[B, H, W, C] -> unit-norm [B, P]."""
        is_vit = isinstance(self.config.vision, CLIPVisionConfig)  # NFNet takes pixels alone
        out = self.vision(pixels, output_hidden_states=False) if is_vit else self.vision(pixels)
        pooled = out.pooled.astype(jnp.float32)  # [B, D]: CLIP's post-LN CLS / NFNet's global average pool
        return _unit(self.image_projection(pooled))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """[B, T] token ids (right padded) -> unit-norm [B, P], read at each row's last real token."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        hidden = self.text(input_ids, attention_mask, return_hidden=True)  # [B, T, E], after the final norm
        last = jnp.maximum(jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)  # [B]
        pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)  # [B, E]
        return _unit(self.text_projection(pooled))

    def __call__(self, pixels: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None):
        image = constrain(self.encode_image(pixels), ("act_batch", "act_embed"))
        text = constrain(self.encode_text(input_ids, attention_mask), ("act_batch", "act_embed"))
        scale = jnp.minimum(self.logit_scale, self.config.max_logit_scale)
        return image, text, jnp.exp(scale)


def _unit(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                     valid: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """CLIP's symmetric InfoNCE over the batch: mean of image->text and text->image cross-entropies, the matching
    pair on the diagonal. valid [B] bool (optional) drops padded rows as anchors and as negatives.
    Returns (loss, {'tokens': number of pairs, 'i2t_accuracy', 't2i_accuracy'})."""
    logits = logit_scale * image_embeds @ text_embeds.T  # [B_image, B_text]
    b = logits.shape[0]
    labels = jnp.arange(b)
    if valid is None:
        valid = jnp.ones((b,), bool)
    neg = jnp.finfo(logits.dtype).min
    logits = jnp.where(valid[None, :] & valid[:, None] | jnp.eye(b, dtype=bool), logits, neg)
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)  # [B]
    w = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    loss = jnp.sum(w * (i2t + t2i)) / (2 * n)
    aux = {"tokens": jnp.sum(w),
           "i2t_accuracy": jnp.sum(w * (jnp.argmax(logits, 1) == labels)) / n,
           "t2i_accuracy": jnp.sum(w * (jnp.argmax(logits, 0) == labels)) / n}
    return loss, aux
