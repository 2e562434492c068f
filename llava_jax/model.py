"""LLaVA (Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.1, Fig. 1), LLaVA-1.5 (Liu et al. 2023b, "Improved
Baselines with Visual Instruction Tuning", Sec. 3) and LLaVA-NeXT anyres: CLIP ViT features of a chosen layer,
projected into the word-embedding space, replace the image placeholder tokens of the prompt; any `common.lm`
decoder (Llama / Vicuna, Mistral, Qwen2) reads the result.

Placeholders follow HF semantics: the prompt holds, for every image, as many `image_token_index` tokens as that image
has feature tokens (the processor expands `<image>`; see `llava_jax.conversation.expand_image_tokens`). Within a
sample the k-th placeholder receives the k-th feature token of that sample's images taken in slot order.

Batches with several images per sample, and different counts per sample, are static-shape:
    pixel_values [B, N, H, W, C] (LLaVA) or [B, N, P, H, W, C] (NeXT: P crops, base first), padded slots zero;
    image_mask   [B, N] bool, True for real images (default all True; a [B, H, W, C] / [B, P, H, W, C] input is N=1);
    image_sizes  [B, N, 2] (height, width) for NeXT, or `image_layout` [B, N, 6] from `llava_jax.anyres.image_layout`
                 (traceable, for use under jit).
Every slot runs through the tower (static shapes); masked slots own no placeholders.

Param tree: {vision_tower: CLIP (common/vision/clip.py), projector: {linear_1, linear_2}, lm: DecoderLM
(common/lm.py), image_newline [E] (NeXT only)}.
Shapes: B batch, T tokens, N image slots, P crops, F feature tokens per crop, D_v vision width, E LM width.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.layers import dtype_of
from common.lm import DecoderLM, KVCache, LMConfig
from common.multimodal import check_counts, concrete, gather_rows, placeholder_slots, placeholders_in_own_segment
from common.params import abstract_params as abstract
from common.params import counts_by_part
from common.projector import Projector, parse_projector_type
from common.sharding import constrain, with_partitioning
from common.vision.clip import CLIPVisionConfig, CLIPVisionTransformer, select_features
from llava_jax import anyres


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    text: LMConfig
    vision: CLIPVisionConfig
    image_token_index: int = 32000  # HF llava-1.5; the original release uses IMAGE_TOKEN_INDEX = -200
    vision_feature_layer: int | tuple[int, ...] = -2  # a tuple concatenates those layers on the feature axis
    vision_feature_select_strategy: str = "default"  # "default"/"patch": drop CLS; "full"/"cls_patch": keep it
    projector_type: str = "mlp2x_gelu"  # "linear" (LLaVA-1) | "mlp<N>x_<act>" (LLaVA-1.5: mlp2x_gelu)
    projector_act: str | None = None  # overrides the activation of projector_type (HF projector_hidden_act)
    projector_bias: bool = True
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None  # set: LLaVA-NeXT anyres (spatial_unpad)

    def __post_init__(self):
        parse_projector_type(self.projector_type)
        if self.vision_feature_select_strategy not in ("default", "patch", "full", "cls_patch"):
            raise ValueError(f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}")
        if self.anyres:
            if self.keeps_cls:
                raise ValueError("LLaVA-NeXT anyres needs the 'default' select strategy (the crop grid has no CLS)")
            for h, w in self.image_grid_pinpoints:
                if h % self.vision.image_size or w % self.vision.image_size:
                    raise ValueError(f"pinpoint {(h, w)} is not a multiple of the crop size {self.vision.image_size}")

    @property
    def anyres(self) -> bool:
        return self.image_grid_pinpoints is not None

    @property
    def keeps_cls(self) -> bool:
        return self.vision_feature_select_strategy in ("full", "cls_patch")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def grid_side(self) -> int:
        """S: patches per crop side."""
        return self.vision.image_size // self.vision.patch_size

    @property
    def tokens_per_crop(self) -> int:
        """F: feature tokens of one crop (576 for ViT-L/14-336 without CLS)."""
        return self.vision.num_patches + int(self.keeps_cls)

    @property
    def max_crops(self) -> int:
        return anyres.max_crops(self.image_grid_pinpoints, self.vision.image_size) if self.anyres else 1

    def image_layout(self, image_sizes) -> np.ndarray:
        """Host-side anyres layout [..., 6] for image_sizes [..., 2] (height, width)."""
        return anyres.image_layout(image_sizes, self.image_grid_pinpoints, self.vision.image_size,
                                   self.vision.patch_size)

    def tokens_per_image(self, image_sizes=None) -> np.ndarray | int:
        """Placeholder tokens each image needs: F for LLaVA; base + unpadded grid + newlines for NeXT."""
        if not self.anyres:
            return self.tokens_per_crop
        return anyres.tokens_per_image(self.image_layout(image_sizes), self.grid_side)

    def replace(self, **changes) -> LlavaConfig:
        return dataclasses.replace(self, **changes)


class Llava(nn.Module):
    """`apply({"params": p}, input_ids, pixel_values, attention_mask, image_mask, image_sizes)` -> float32 logits
    [B, T, V] (see the module docstring for the image inputs; `cache` / `return_hidden` pass through to DecoderLM)."""

    config: LlavaConfig

    def setup(self):
        cfg = self.config
        self.vision_tower = CLIPVisionTransformer(cfg.vision)
        self.projector = Projector(cfg.text.hidden_size, cfg.projector_type, cfg.projector_act, cfg.projector_bias,
                                   dtype=cfg.text.dtype, param_dtype=cfg.text.param_dtype)
        self.lm = DecoderLM(cfg.text)
        if cfg.anyres:
            std = 1.0 / np.sqrt(cfg.text.hidden_size)
            self.image_newline = self.param("image_newline", with_partitioning(nn.initializers.normal(std), ("embed",)),
                                            (cfg.text.hidden_size,), dtype_of(cfg.text.param_dtype))

    # ------------------------------------------------------------------------------------------------------
    def image_features(self, pixels: jax.Array) -> jax.Array:
        """[M, H, W, C] crops -> projected features [M, F, E] (frozen-tower features of the chosen layer(s))."""
        out = self.vision_tower(pixels, output_hidden_states=True)
        feats = select_features(out, self.config.vision_feature_layer, self.config.vision_feature_select_strategy)
        return self.projector(feats)  # [M, F, D_v * layers] -> [M, F, E]

    def embed(self, input_ids, pixel_values=None, image_mask=None, image_sizes=None, *, image_layout=None,
              segment_ids=None, image_segment_ids=None):
        """Token embeddings with the image features scattered into the placeholders: [B, T, E], plus a [B] bool
        telling whether each sample's placeholder count matched its feature count (always True when checked eagerly:
        a mismatch with concrete inputs raises ValueError). Packed rows: with segment_ids [B, T] and
        image_segment_ids [B, N] every placeholder must take its features from an image of its own segment (else
        the row is marked as not ok)."""
        cfg = self.config
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
        batch = ids.shape[0]
        is_ph = ids == cfg.image_token_index  # [B, T]
        # The placeholder id may lie outside the vocabulary (the original's -200): embed a harmless id there.
        text = self.lm.embed_tokens(jnp.where(is_ph, 0, ids))  # [B, T, E]
        num_ph = is_ph.sum(axis=1)  # [B]

        if pixel_values is None:
            counts = concrete(num_ph)
            if counts is not None and counts.any():
                raise ValueError(f"input_ids hold image placeholders (id {cfg.image_token_index}; per sample "
                                 f"{counts.tolist()}) but no pixel_values were given")
            return text, num_ph == 0

        pixels, image_mask, layout = self._normalize_images(pixel_values, image_mask, image_sizes, image_layout, batch)
        n_slots, n_crops = pixels.shape[1], pixels.shape[2]
        lengths = self._tokens_per_image(layout) * image_mask  # [B, N]
        check_counts(is_ph, lengths, "image", cfg.image_token_index, "Expand each <image> into tokens_per_image "
                     "copies (llava_jax.conversation.expand_image_tokens) and mask unused image slots.")

        crops = pixels.reshape((-1,) + pixels.shape[3:])  # [B, N, P, H, W, C] -> [B*N*P, H, W, C]
        feats = self.image_features(crops.astype(jnp.float32))  # [B*N*P, F, E]
        f = feats.shape[1]
        table = feats.reshape(batch, n_slots * n_crops * f, -1).astype(text.dtype)  # [B, N*P*F, E]
        extra = self.image_newline if cfg.anyres else jnp.zeros((table.shape[-1],), table.dtype)
        table = jnp.concatenate([table, jnp.broadcast_to(extra.astype(table.dtype), (batch, 1, table.shape[-1]))],
                                axis=1)  # [B, N*P*F + 1, E]; the last row is image_newline
        newline_row = n_slots * n_crops * f

        # k-th placeholder of a sample -> (image slot n, token t within that image) -> row of the table (anyres: the
        # base image's rows, then the stitched grid row by row with image_newline closing each row).
        slot, t = placeholder_slots(is_ph, lengths)  # [B, T] each
        if not cfg.anyres:
            row = (slot * n_crops) * f + t
        else:
            lay = jnp.take_along_axis(layout, slot[..., None], axis=1)  # [B, T, 6]
            cols, top, left = lay[..., 1], lay[..., 2], lay[..., 4]
            width = lay[..., 5] - left  # unpadded cells per row
            side = cfg.grid_side
            t_grid = jnp.maximum(t - f, 0)
            r, c = t_grid // (width + 1), t_grid % (width + 1)
            gy, gx = top + r, left + c  # cell of the stitched [rows*S, cols*S] grid
            crop = 1 + (gy // side) * cols + gx // side
            grid_row = (slot * n_crops + crop) * f + (gy % side) * side + gx % side
            row = jnp.where(t < f, (slot * n_crops) * f + t, jnp.where(c == width, newline_row, grid_row))
        x = gather_rows(text, is_ph, table, row)
        ok = num_ph == lengths.sum(axis=1)  # [B]
        if segment_ids is not None and image_segment_ids is not None:  # packed rows: features stay in their sample
            ok &= placeholders_in_own_segment(is_ph, slot, segment_ids, image_segment_ids)
        return constrain(x, ("act_batch", "act_length", "act_embed")), ok

    def __call__(self, input_ids, pixel_values=None, attention_mask=None, image_mask=None, image_sizes=None, *,
                 image_layout=None, position_ids=None, segment_ids=None, image_segment_ids=None,
                 cache: KVCache | None = None, return_hidden: bool = False):
        """Float32 logits [B, T, V] (with `cache`: (logits, cache)). Outside jit a sample whose placeholder count
        differs from its images' feature count raises ValueError; under jit (where nothing can be raised) that
        sample's outputs are NaN, so a loss over it fails loudly instead of training on misplaced features.
        Packed rows (several samples per row, `common.data.packing`): segment_ids [B, T] (0 = padding) keep every
        sample's attention and positions to itself; image_segment_ids [B, N] name each image slot's sample."""
        x, ok = self.embed(input_ids, pixel_values, image_mask, image_sizes, image_layout=image_layout,
                           segment_ids=segment_ids, image_segment_ids=image_segment_ids)
        out = self.lm(attention_mask=attention_mask, inputs_embeds=x, position_ids=position_ids,
                      segment_ids=segment_ids, cache=cache, return_hidden=return_hidden)
        poison = lambda a: jnp.where(ok[:, None, None], a, jnp.nan).astype(a.dtype)  # noqa: E731
        if cache is None:
            return poison(out)
        return poison(out[0]), out[1]

    # ------------------------------------------------------------------------------------------------------
    def _normalize_images(self, pixel_values, image_mask, image_sizes, image_layout, batch):
        """-> pixels [B, N, P, H, W, C], image_mask [B, N] int32, layout [B, N, 6] int32 (NeXT) or None."""
        cfg = self.config
        pixels = jnp.asarray(pixel_values)
        base_rank = 5 if cfg.anyres else 4  # one image per sample: [B, (P,) H, W, C]
        if pixels.ndim == base_rank:
            pixels = pixels[:, None]
        if pixels.ndim != base_rank + 1:
            want = "[B, N, P, H, W, C] (or [B, P, H, W, C])" if cfg.anyres else "[B, N, H, W, C] (or [B, H, W, C])"
            raise ValueError(f"pixel_values must be {want} NHWC, got shape {tuple(pixel_values.shape)}")
        if not cfg.anyres:
            pixels = pixels[:, :, None]  # P = 1
        if pixels.shape[0] != batch:
            raise ValueError(f"pixel_values batch {pixels.shape[0]} != input_ids batch {batch}")
        n_slots = pixels.shape[1]
        if image_mask is None:
            image_mask = jnp.ones((batch, n_slots), jnp.int32)
        else:
            image_mask = jnp.asarray(image_mask)
            if image_mask.ndim == 1:  # per-sample image counts [B]
                image_mask = jnp.arange(n_slots)[None, :] < image_mask[:, None]
            if image_mask.shape != (batch, n_slots):
                raise ValueError(f"image_mask must be [B, N] = {(batch, n_slots)} (or counts [B]), "
                                 f"got {image_mask.shape}")
            image_mask = image_mask.astype(jnp.int32)
        layout = None
        if cfg.anyres:
            if image_layout is None:
                if image_sizes is None:
                    raise ValueError("LLaVA-NeXT needs image_sizes [B, N, 2] (height, width) or image_layout")
                sizes = concrete(image_sizes)
                if sizes is None:
                    raise ValueError("image_sizes is traced (inside jit): compute image_layout = "
                                     "config.image_layout(image_sizes) outside jit and pass image_layout=")
                if sizes.ndim == 2:
                    sizes = sizes[:, None]
                if sizes.shape != (batch, n_slots, 2):
                    raise ValueError(f"image_sizes must be [B, N, 2] = {(batch, n_slots, 2)}, got {sizes.shape}")
                image_layout = cfg.image_layout(sizes)
                crops = image_layout[..., 0] * image_layout[..., 1] + 1  # [B, N] crops each image needs
                mask = concrete(image_mask)
                if mask is not None and (crops * mask).max(initial=0) > pixels.shape[2]:
                    raise ValueError(f"an image needs {(crops * mask).max()} crops but pixel_values has "
                                     f"P={pixels.shape[2]}")
            layout = jnp.asarray(image_layout, jnp.int32)
            if layout.ndim == 2:
                layout = layout[:, None]
            if layout.shape != (batch, n_slots, 6):
                raise ValueError(f"image_layout must be [B, N, 6] = {(batch, n_slots, 6)}, got {layout.shape}")
        return pixels, image_mask, layout

    def _tokens_per_image(self, layout) -> jax.Array:
        cfg = self.config
        if not cfg.anyres:
            return jnp.asarray(cfg.tokens_per_crop, jnp.int32)
        h, w = layout[..., 3] - layout[..., 2], layout[..., 5] - layout[..., 4]
        return cfg.tokens_per_crop + h * (w + 1)  # [B, N]



def example_inputs(config: LlavaConfig, batch: int = 1, length: int = 8) -> tuple:
    """Arguments for `Llava.init` (shapes only; the one image slot is masked, so no placeholders are needed)."""
    size = config.vision.image_size
    crops = (config.max_crops,) if config.anyres else ()
    pixels = jnp.zeros((batch, 1) + crops + (size, size, config.vision.num_channels), jnp.float32)
    sizes = np.full((batch, 1, 2), size, np.int32) if config.anyres else None
    return (jnp.zeros((batch, length), jnp.int32), pixels, None, jnp.zeros((batch, 1), bool), sizes)


def init_params(module: Llava, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names)."""
    return module.init(rng, *example_inputs(module.config))["params"]


def abstract_params(config: LlavaConfig) -> Any:
    """Boxed ShapeDtypeStructs of every parameter (jax.eval_shape: no memory used)."""
    return abstract(Llava(config), *example_inputs(config))


def param_counts(config: LlavaConfig) -> dict[str, int]:
    """Parameters per part (vision_tower, projector, lm, image_newline when anyres) and 'total'."""
    return counts_by_part(abstract_params(config))


def trainable_patterns(stage: int | str, config: LlavaConfig | None = None) -> Sequence[str]:
    """Regexes (full match on '/'-joined param paths, as common/optimizer.py's param groups) of the trainable
    parameters: stage 1 (feature alignment) = projector (+ image_newline); stage 2 (visual instruction tuning) =
    projector + LM (+ image_newline). The vision tower is frozen in both."""
    newline = ["image_newline"] if config is None or config.anyres else []
    if stage in (1, "1", "pretrain"):
        return ["projector/.*", *newline]
    if stage in (2, "2", "finetune"):
        return ["projector/.*", "lm/.*", *newline]
    raise ValueError(f"unknown stage {stage!r}; use 1 (pretrain) or 2 (finetune)")


def frozen_patterns(stage: int | str) -> Sequence[str]:
    """Complement of trainable_patterns: stage 1 freezes tower + LM, stage 2 the tower only."""
    return ["vision_tower/.*", "lm/.*"] if stage in (1, "1", "pretrain") else ["vision_tower/.*"]
