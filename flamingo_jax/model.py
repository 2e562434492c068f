"""The Flamingo model (Alayrac et al. 2022, Sec. 2 / Fig. 3): a frozen vision encoder (NFNet-F6 in the paper,
common/vision/nfnet.py; CLIP ViT-L/14 in OpenFlamingo / IDEFICS), a Perceiver Resampler, and a frozen decoder LM
interleaved with GATED XATTN-DENSE blocks (common/lm.py's `block` extension point), conditioned on interleaved images /
videos.

Shapes: B batch, N media per sample, T frames (video), H x W x C pixels (NHWC), S vision tokens per frame, Dv vision
width, R latents, L text tokens, V vocabulary.
  pixel_values [B, N, H, W, C] (images) or [B, N, T, H, W, C] (video)
  -> vision features [B, N, T, S, Dv] (frozen) -> media [B, N, R, Dv] -> logits [B, L, V] (float32).

Param tree: {vision: <the encoder's tree>, resampler: <PerceiverResampler>, lm: {embed, decoder: {groups: {layer_j,
block}} (leading [G] axis when scanned; `groups_{g}` unrolled), final_norm, [lm_head]}}.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.flops import matmul_flops
from common.lm import DecoderLM, KVCache, LMConfig, matmul_flops_per_token
from common.params import abstract_params as abstract
from common.sharding import constrain
from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN
from common.vision import build_vision_tower
from common.vision.clip import CLIPVisionConfig, matmul_flops_per_image
from common.vision.nfnet import NFNetConfig
from flamingo_jax.gated_cross_attention import (GatedCrossAttentionBlock, GatedXAttnConfig, MediaInputs,
                                                media_segments_from_ids, text_time_from_ids)
from flamingo_jax.perceiver_resampler import PerceiverResampler, ResamplerConfig

VISION_FEATURES = ("post_norm_patches", "last_hidden_state", "patches", "feature_map")


@dataclasses.dataclass(frozen=True)
class FlamingoConfig:
    lm: LMConfig
    xattn: GatedXAttnConfig
    resampler: ResamplerConfig | None  # None: the blocks attend to the raw vision tokens (IDEFICS use_resampler=False)
    vision: Any = None  # CLIPVisionConfig | NFNetConfig | None (then pass vision_features / media)
    image_token_id: int = 0  # the <image> token
    cross_attn_every: int = 1  # one gated block per `cross_attn_every` LM layers
    # Position of the block inside each group of `cross_attn_every` layers. None -> every - 1: OpenFlamingo
    # (before layer i with (i + 1) % every == 0); 0: IDEFICS (before layer i with i % interval == 0).
    block_position: int | None = None
    # Which vision tokens feed the resampler: "post_norm_patches" (open_clip `output_tokens`: post-LN, CLS dropped;
    # OpenFlamingo), "last_hidden_state" (CLS included, no post-LN; IDEFICS), "patches" (last hidden, CLS dropped),
    # "feature_map" (NFNet: its grid flattened, `NFNetOutput.tokens`; which grid: NFNetConfig.features).
    vision_features: str = "post_norm_patches"
    vision_width: int | None = None  # Dv; None -> from the vision config

    def __post_init__(self):
        if self.vision_features not in VISION_FEATURES:
            raise ValueError(f"vision_features must be one of {VISION_FEATURES}, got {self.vision_features!r}")
        if self.vision is not None:
            if isinstance(self.vision, NFNetConfig) != (self.vision_features == "feature_map"):
                raise ValueError(f"vision_features {self.vision_features!r} does not fit a "
                                 f"{type(self.vision).__name__}: 'feature_map' is the NFNet's (flattened final grid), "
                                 "the others are the CLIP ViT's")
        if self.resampler is not None and self.resampler.width != self.media_width:
            raise ValueError(f"resampler width {self.resampler.width} != vision width {self.media_width}")

    @property
    def media_width(self) -> int:
        if self.vision_width is not None:
            return self.vision_width
        if self.vision is None:
            raise ValueError("FlamingoConfig needs vision or vision_width")
        return getattr(self.vision, "feature_width", None) or self.vision.hidden_size

    @property
    def position(self) -> int:
        return self.cross_attn_every - 1 if self.block_position is None else self.block_position

    @property
    def num_blocks(self) -> int:
        return self.lm.num_layers // self.cross_attn_every

    def replace(self, **changes) -> FlamingoConfig:
        return dataclasses.replace(self, **changes)


class Flamingo(nn.Module):
    """`apply({"params": p}, input_ids, pixel_values=None, attention_mask=None, ...) -> logits [B, L, V]`."""

    config: FlamingoConfig

    def setup(self):
        cfg = self.config
        if cfg.vision is not None:
            self.vision = build_vision_tower(cfg.vision)
        if cfg.resampler is not None:
            self.resampler = PerceiverResampler(cfg.resampler)
        xattn = dataclasses.replace(cfg.xattn, dtype=cfg.xattn.dtype or cfg.lm.dtype,
                                    param_dtype=cfg.xattn.param_dtype or cfg.lm.param_dtype)
        self.lm = DecoderLM(cfg.lm, block=functools.partial(GatedCrossAttentionBlock, xattn),
                            block_every=cfg.cross_attn_every, block_position=cfg.position)

    # -- vision side ------------------------------------------------------------------------------------------
    def encode_vision(self, pixel_values: jax.Array) -> jax.Array:
        """[B, N, H, W, C] or [B, N, T, H, W, C] -> frozen vision features [B, N, T, S, Dv] (no gradient)."""
        cfg = self.config
        if cfg.vision is None:
            raise ValueError("this Flamingo has no vision encoder: pass vision_features or media instead")
        if pixel_values.ndim == 5:
            pixel_values = pixel_values[:, :, None]  # images are 1-frame videos
        if pixel_values.ndim != 6:
            raise ValueError("pixel_values must be [B, N, H, W, C] (images) or [B, N, T, H, W, C] (video), "
                             f"got rank {pixel_values.ndim} shape {tuple(pixel_values.shape)}")
        b, n, t = pixel_values.shape[:3]
        frames = pixel_values.reshape((b * n * t,) + pixel_values.shape[3:])  # [B*N*T, H, W, C]
        if cfg.vision_features == "feature_map":
            tokens = self.vision(frames).tokens  # NFNet grid [B*N*T, h, w, Dv] flattened -> [B*N*T, S, Dv]
        else:
            out = self.vision(frames, output_hidden_states=False)
            if cfg.vision_features == "post_norm_patches":
                tokens = out.post_norm_tokens[:, 1:]
            elif cfg.vision_features == "patches":
                tokens = out.last_hidden_state[:, 1:]
            else:
                tokens = out.last_hidden_state
        tokens = jax.lax.stop_gradient(tokens)  # the vision encoder is frozen
        return tokens.reshape((b, n, t) + tokens.shape[1:])  # [B, N, T, S, Dv]

    def resample(self, vision_features: jax.Array) -> jax.Array:
        """[B, N, T, S, Dv] (or [B, N, S, Dv]) -> media [B, N, R, Dv]; without a resampler the frames' tokens are
        concatenated: [B, N, T*S, Dv]."""
        if vision_features.ndim not in (4, 5):
            raise ValueError(f"vision features must be [B, N, T, S, Dv] or [B, N, S, Dv], got shape "
                             f"{tuple(vision_features.shape)}")
        if self.config.resampler is not None:
            return self.resampler(vision_features)
        if vision_features.ndim == 5:
            b, n, t, s, d = vision_features.shape
            vision_features = vision_features.reshape(b, n, t * s, d)
        return vision_features

    def encode_media(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values -> media [B, N, R, Dv] (cache these for few-shot evaluation / generation)."""
        return self.resample(self.encode_vision(pixel_values))

    # -- full model -------------------------------------------------------------------------------------------
    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, *, vision_features: jax.Array | None = None,
                 media: jax.Array | None = None, position_ids: jax.Array | None = None, cache: KVCache | None = None,
                 media_seen: jax.Array | None = None, text_time: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, image_segment_ids: jax.Array | None = None,
                 image_attention_mask: jax.Array | None = None, return_hidden: bool = False):
        """Float32 logits [B, L, V] (with `cache`: (logits, new cache)).

        Give the images as exactly one of pixel_values ([B, N, H, W, C] / [B, N, T, H, W, C]), vision_features
        (the frozen encoder's output [B, N, T, S, Dv], e.g. cached for RICES) or media (resampled [B, N, R, Dv],
        e.g. cached across generation steps); none = text only (no token sees an image; the dense branch of
        every block still applies, as in OpenFlamingo). media_seen [B]: <image> tokens already in `cache`.
        text_time [B, L] overrides the per-token image index computed from the <image> tokens.
        image_attention_mask [B, L, N] (HF IDEFICS' input: 1 where a token may attend to an image) replaces the mask
        text_time implies; a token that may attend to no image gets a zero cross-attention output.
        Packed rows (several samples per row, `common.data.packing`): segment_ids [B, L] (0 = padding) keep every
        sample's attention and positions to itself and restart text_time per sample, the row's media numbered across
        its samples in order; image_segment_ids [B, N] name each medium's sample (default: read from where the
        <image> tokens stand), and a token cross-attends only to media of its own sample.
        """
        cfg = self.config
        given = [x is not None for x in (pixel_values, vision_features, media)]
        if sum(given) > 1:
            raise ValueError("pass at most one of pixel_values, vision_features and media")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if pixel_values is not None:
            media = self.encode_media(pixel_values)
        elif vision_features is not None:
            media = self.resample(vision_features)
        elif media is None:  # text only: one dummy medium nobody attends to
            r = cfg.resampler.num_latents if cfg.resampler is not None else 1
            media = jnp.zeros((input_ids.shape[0], 1, r, cfg.media_width), jnp.dtype(cfg.lm.dtype))
            if text_time is None:
                text_time = jnp.zeros(input_ids.shape, jnp.int32)
        if media.ndim != 4 or media.shape[0] != input_ids.shape[0] or media.shape[-1] != cfg.media_width:
            raise ValueError(f"media must be [B={input_ids.shape[0]}, N, R, Dv={cfg.media_width}], got shape "
                             f"{tuple(media.shape)}")
        if text_time is None:
            text_time = text_time_from_ids(input_ids, cfg.image_token_id, media_seen, segment_ids)
            seen = 0 if media_seen is None else jnp.asarray(media_seen, jnp.int32).reshape(-1)
            _check_media_count(count_media(input_ids, cfg.image_token_id) + seen, media.shape[1])
        elif text_time.shape != input_ids.shape:
            raise ValueError(f"text_time must be [B, L] = {tuple(input_ids.shape)}, got {tuple(text_time.shape)}")
        media = constrain(media, ("act_batch", None, "act_media", "act_embed"))
        media_segment_ids = None
        if segment_ids is not None:
            media_segment_ids = (media_segments_from_ids(input_ids, cfg.image_token_id, segment_ids, media.shape[1])
                                 if image_segment_ids is None else jnp.asarray(image_segment_ids, jnp.int32))
        visible = None
        if image_attention_mask is not None:
            visible = jnp.asarray(image_attention_mask).astype(bool)
            if visible.shape != input_ids.shape + (media.shape[1],):
                raise ValueError(f"image_attention_mask must be [B, L, N] = {input_ids.shape + (media.shape[1],)}, "
                                 f"got {tuple(visible.shape)}")
        inputs = MediaInputs(media=media, text_time=text_time.astype(jnp.int32), segment_ids=segment_ids,
                             media_segment_ids=media_segment_ids, visible=visible)
        return self.lm(input_ids, attention_mask, position_ids=position_ids, segment_ids=segment_ids, cache=cache,
                       block_inputs=inputs, return_hidden=return_hidden)


class FlamingoForGeneration(Flamingo):
    """Flamingo with the `(input_ids, attention_mask, *, position_ids, cache, **inputs)` signature of
    `common.generate` (same parameters): give `media=` (cached, every call) and, for the one-token decode steps,
    `media_seen=` (the prompt's <image> count: new tokens attend to the last image, OpenFlamingo's cached media)."""

    def __call__(self, input_ids, attention_mask=None, **kwargs):  # type: ignore[override]
        return super().__call__(input_ids, attention_mask=attention_mask, **kwargs)


def _check_media_count(media_counts: jax.Array, num_media: int) -> None:
    """Raises when a row has more <image> tokens (media_counts [B], media_seen included) than media were given
    (only for concrete, non-traced inputs)."""
    try:
        counts = np.asarray(media_counts)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    bad = np.nonzero(counts > num_media)[0]
    if bad.size:
        raise ValueError(f"sample {int(bad[0])} has {int(counts[bad[0]])} <image> tokens (counting media_seen) but "
                         f"only {num_media} media were given per sample")


def count_media(input_ids: jax.Array, image_token_id: int) -> jax.Array:
    """[B, L] -> [B] number of <image> tokens (the `media_seen` for the next cached call)."""
    return jnp.sum(input_ids == image_token_id, axis=-1, dtype=jnp.int32)


# -- trainable parameters -------------------------------------------------------------------------------------------
RESAMPLER_PATTERN = r"resampler/.*"
BLOCK_PATTERN = r"lm/decoder/groups(_\d+)?/block/.*"
EMBED_PATTERN = r"lm/embed/.*"
# OpenFlamingo's `apply_decay`: inside the gated blocks, the tanh gates, the LayerNorms and biases get no decay.
BLOCK_NO_DECAY_PATTERN = r"lm/decoder/groups(_\d+)?/block/(alpha_[^/]*|[^/]*norm/.*|.*/bias)"


NEW_TOKENS = (IMAGE_TOKEN, END_OF_CHUNK_TOKEN)  # Flamingo's added special tokens (row names: Task.named_rows)
EMBEDDINGS = ("new_tokens", "all", "frozen")


def _embeddings_mode(train_embeddings: bool | str) -> str:
    mode = {True: "all", False: "frozen"}.get(train_embeddings, train_embeddings)  # type: ignore[arg-type]
    if mode not in EMBEDDINGS:
        raise ValueError(f"train_embeddings must be one of {EMBEDDINGS} (or a bool), got {train_embeddings!r}")
    return mode


def trainable_param_patterns(train_embeddings: bool | str = "new_tokens") -> list[str]:
    """Regexes ('/'-joined param paths, `re.fullmatch`) of what Flamingo trains: the resampler, the gated blocks
    and (unless 'frozen') the LM input embedding matrix, of which `param_groups` trains only the new <image> /
    <|endofchunk|> rows by default. Everything else (vision encoder, LM body, LM head) is frozen."""
    return [RESAMPLER_PATTERN, BLOCK_PATTERN] + ([EMBED_PATTERN] if _embeddings_mode(train_embeddings) != "frozen"
                                                 else [])


def param_groups(train_embeddings: bool | str = "new_tokens") -> list[tuple[str, dict | None]]:
    """`common.optimizer` param groups for OpenFlamingo's recipe: weight decay (the optimizer's, 0.1 there) on the
    gated blocks' kernels only (not their gates, norms or biases), none on the resampler / embeddings, everything
    else frozen. train_embeddings: 'new_tokens' (OpenFlamingo, which masks the input-embedding gradient to the
    <image> and <|endofchunk|> rows, and IDEFICS' decoupled additional embedding: those rows alone train, by name,
    resolved through the task's tokenizer), 'all' (True) or 'frozen' (False)."""
    mode = _embeddings_mode(train_embeddings)
    groups: list[tuple[str, dict | None]] = [(BLOCK_NO_DECAY_PATTERN, {"wd_mult": 0.0}),
                                             (BLOCK_PATTERN, {"wd_mult": 1.0}), (RESAMPLER_PATTERN, {"wd_mult": 0.0})]
    if mode == "all":
        groups.append((EMBED_PATTERN, {"wd_mult": 0.0}))
    elif mode == "new_tokens":
        groups.append((EMBED_PATTERN, {"wd_mult": 0.0, "rows": NEW_TOKENS}))
    return groups + [(r".*", None)]


def block_param_location(config: FlamingoConfig, index: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(path, leaf index) of gated block `index`'s params: ('lm', 'decoder', 'groups', 'block'), (index,) when
    scanned, else ('lm', 'decoder', f'groups_{index}', 'block'), ()."""
    if not 0 <= index < config.num_blocks:
        raise ValueError(f"block {index} out of range [0, {config.num_blocks})")
    if config.lm.scan_layers:
        return ("lm", "decoder", "groups", "block"), (index,)
    return ("lm", "decoder", f"groups_{index}", "block"), ()


@functools.lru_cache(maxsize=16)  # traces the tower (seconds for an NFNet); asked once per dataset of a task
def vision_forward_flops(vision_config) -> float:
    """Forward FLOPs of one image (frame) through the vision tower: the matmul count for a CLIP ViT, the count from
    the forward's jaxpr (`common.flops`) for any other tower (an NFNet's convolutions)."""
    if isinstance(vision_config, CLIPVisionConfig):
        return matmul_flops_per_image(vision_config)
    tower, x = build_vision_tower(vision_config), _one_image(vision_config)
    return matmul_flops(tower.apply, jax.eval_shape(tower.init, jax.random.key(0), x), x)


def _one_image(vision_config) -> jax.ShapeDtypeStruct:
    size = vision_config.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return jax.ShapeDtypeStruct((1, h, w, vision_config.num_channels), jnp.float32)


def train_flops_per_example(config: FlamingoConfig, seq_len: int, num_media: int, frames: int = 1) -> dict[str, float]:
    """Model FLOPs of one training example (seq_len tokens, num_media images of `frames` frames each) under the
    Flamingo recipe, by part, a multiply-add counted as 2 (matmuls only, recomputation not counted, as MFU is):

      vision: the frozen tower's forward alone (no gradient flows into it);
      resampler, blocks: trained, forward + backward (activations and weights) = 3x forward;
      lm: the frozen LM's forward, plus the backward to its activations for the head and every layer from the first
        gated block up (the layers below it carry no gradient): 1x forward for the weight matmuls (no weight
        gradients), 2x for attention's scores and values (their four backward products all reach activations);
      total: their sum.
    """
    lm = config.lm
    per_token = matmul_flops_per_token(lm, seq_len)
    head = 2.0 * lm.hidden_size * lm.vocab_size
    layer = (per_token - head) / lm.num_layers
    attention_core = 2 * 2 * lm.num_heads * lm.dim_per_head * seq_len  # QK^T and AV per token, as per_token counts
    layer_backward = layer + attention_core  # activations only
    layers_with_grad = lm.num_layers - min(config.position, lm.num_layers)
    width = config.media_width
    if config.vision is None:
        raise ValueError("without a vision tower the number of vision tokens per frame is not known; "
                         "FLOPs need a vision config")
    vision_tokens = frames * _vision_tokens(config.vision, config.vision_features)  # per medium, all frames
    out = {"vision": vision_forward_flops(config.vision) * num_media * frames, "resampler": 0.0}
    tokens_per_medium = vision_tokens
    if config.resampler is not None:
        rc = config.resampler
        inner, latents = rc.num_heads * rc.head_dim, rc.num_latents
        keys = vision_tokens + latents  # keys / values: concat(media, latents)
        per_layer = (2 * latents * width * inner + 2 * keys * width * 2 * inner + 2 * 2 * latents * keys * inner
                     + 2 * latents * inner * width + 2 * 2 * latents * width * rc.ff_mult * width)
        out["resampler"] = 3.0 * num_media * rc.depth * per_layer
        tokens_per_medium = latents
    x, e = config.xattn, lm.hidden_size
    inner = x.num_heads * x.head_dim
    media_tokens = num_media * tokens_per_medium
    ff = x.ff_intermediate_size or x.ff_mult * e
    per_block = (2 * media_tokens * width * 2 * inner + 2 * seq_len * e * inner + 2 * 2 * seq_len * media_tokens * inner
                 + 2 * seq_len * inner * e + 2 * seq_len * e * ff * (3 if x.ff_gated else 2))
    out["blocks"] = 3.0 * config.num_blocks * per_block
    out["lm"] = seq_len * (lm.num_layers * layer + head) + seq_len * (layers_with_grad * layer_backward + head)
    out["total"] = sum(out.values())
    return out


@functools.lru_cache(maxsize=16)
def _vision_tokens(vision_config, vision_features: str) -> int:
    """Tokens per frame the vision side hands on (S), from the tower's abstract output."""
    tower, x = build_vision_tower(vision_config), _one_image(vision_config)
    out = jax.eval_shape(lambda x: tower.init_with_output(jax.random.key(0), x)[0], x)
    tokens = out.tokens if vision_features == "feature_map" else out.last_hidden_state
    return int(np.prod(tokens.shape[1:-1])) - (vision_features in ("post_norm_patches", "patches"))


def example_inputs(config: FlamingoConfig, batch: int = 1, length: int = 8, num_media: int = 1,
                   frames: int | None = None) -> tuple[tuple, dict]:
    """(args, kwargs) for `Flamingo.init` / `jax.eval_shape`: pixels when there is a vision encoder, else features."""
    ids = jnp.zeros((batch, length), jnp.int32)
    if config.vision is not None:
        size = config.vision.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch, num_media) + ((frames,) if frames else ()) + (h, w, config.vision.num_channels)
        return (ids,), {"pixel_values": jnp.zeros(shape, jnp.float32)}
    feats = jnp.zeros((batch, num_media, frames or 1, 4, config.media_width), jnp.float32)
    return (ids,), {"vision_features": feats}


def init_params(model: Flamingo, rng: jax.Array, **kwargs) -> Any:
    """Random (boxed) params; gates start at 0."""
    args, kw = example_inputs(model.config, **kwargs)
    return model.init(rng, *args, **kw)["params"]


def abstract_params(config: FlamingoConfig, **kwargs) -> Any:
    """Boxed ShapeDtypeStructs of every parameter (jax.eval_shape: no memory used); kwargs go to example_inputs."""
    args, kw = example_inputs(config, **kwargs)
    return abstract(Flamingo(config), *args, **kw)


def param_counts(config: FlamingoConfig) -> dict[str, int]:
    """Parameter counts per part from `jax.eval_shape` (no memory): vision, resampler, xattn (gated blocks),
    lm (the LM without blocks), total."""
    shapes = nn.unbox(abstract_params(config))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    counts = {"vision": 0, "resampler": 0, "xattn": 0, "lm": 0}
    for path, leaf in flat:
        keys = [getattr(k, "key", str(k)) for k in path]
        size = int(np.prod(leaf.shape))
        if keys[0] == "lm" and "block" in keys:
            counts["xattn"] += size
        else:
            counts[keys[0]] += size
    counts["total"] = sum(counts.values())
    return counts
