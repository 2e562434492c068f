"""Flamingo training as a `common.trainer.Task` (Alayrac et al. 2022, Sec. 2.4 and App. B.1.2 / OpenFlamingo's
train.py): the vision encoder and the LM are frozen; the Perceiver Resampler, the GATED XATTN-DENSE blocks and
(OpenFlamingo, optional) the input-embedding rows of the new <image> / <|endofchunk|> tokens train; weight decay
only on the gated blocks. Several datasets
(LAION-style image-caption pairs, MMC4-style interleaved documents) are combined by the paper's gradient
accumulation over all datasets each step (`multi_dataset_mode='accumulate'`, weights `dataset_weights`) or, for the
paper's ablation, one dataset per step (`'round_robin'`).

`config.stage='lm'` trains instead the bare LM (common.lm.DecoderLM, no blocks) on text-only datasets: the tiny
configs' stand-in for the paper's text-pretrained LM ("stage 0"; configs/flamingo/tiny_stage0.py).
`config.stage='contrastive'` pretrains the vision encoder as a CLIP-style dual encoder on image-text pairs
(`common.contrastive`; the paper's App. B.1.3, configs/flamingo/tiny_vision.py); `init_vision.workdir` then grafts
it into the Flamingo, frozen.

Config (ml_collections; configs/flamingo/*.py):
  stage      'flamingo' | 'lm' | 'contrastive'
  model      {preset: None | a flamingo_jax.presets.CONFIGS name (then lm / vision / resampler hold field overrides of
             the preset's, e.g. dtype), lm: LMConfig fields (vocab_size None = the
             tokenizer's, rounded up to 64), vision: CLIPVisionConfig fields | None, vision_width, resampler:
             ResamplerConfig fields (width = the vision width), xattn: GatedXAttnConfig fields (gating 'tanh' |
             'none'), cross_attn_every, block_position, vision_features}
  tokenizer  {kind: 'shapes_bpe' | 'dir', vocab_size, path}
  data       {datasets: {name: {source, max_len, weight, max_images, ...}} (flamingo_jax.data.make_source), image_size,
             num_threads, max_skip_fraction, convert_image_modes (False: greyscale / RGBA / CMYK / 16-bit / palette
             images are skipped and counted; True: converted to RGB; a dataset spec may override it)}
  init_lm    (InitLM) {workdir: a stage-'lm' training workdir | hf_dir: an HF LM checkpoint}: the frozen LM's weights;
             vocabulary rows it lacks start at the mean of its rows (`resize_vocab`), and so do those of the special
             tokens named in `mean_init_tokens` (e.g. ('image',): never seen by a text-only LM). In stage 'lm',
             init_lm.workdir (a stage-'lm' workdir of the same model) is where the text pretraining continues from,
             e.g. on another data mix
  init_vision (InitVision) {workdir: a stage-'contrastive' training workdir | timm_nfnet: a timm dm_nfnet_f*
             checkpoint}: the frozen vision encoder's weights
  contrastive (ContrastiveSettings) {text: LMConfig fields of the dual encoder's text tower (vocab_size None = the
             tokenizer's), projection_dim}: stage 'contrastive' only
  Sections are read typed (common.config_sections): a field a section does not have is an error.
  optimizer  common.optimizer fields; param_groups from `flamingo_jax.model.param_groups` (see the configs); a
             group's `rows` may name '<image>' and '<|endofchunk|>' (the task's `named_rows`)
"""
from __future__ import annotations

import dataclasses
import logging

import flax
import jax
import jax.numpy as jnp
import numpy as np

import common.hf
from common.config_sections import config_section, get, plain
from common.contrastive import DualEncoder, DualEncoderConfig, contrastive_loss
from common.data.packing import packed_model_inputs, packing_from_config
from common.data.pipeline import Collate
from common.hf.vision import load_timm_nfnet
from common.lm import DecoderLM, LMConfig, layer_param_location
from common.task_data import MediaShapes, TaskData
from common.task_utils import graft, keep_tokenizer, lm_loss_fn, restore_params
from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN, padded_vocab_size
from common.trainer import Task
from common.vision.clip import CLIPVisionConfig
from common.vision.nfnet import NFNetConfig
from flamingo_jax import data as data_lib
from flamingo_jax.gated_cross_attention import GatedXAttnConfig
from flamingo_jax.model import Flamingo, FlamingoConfig, train_flops_per_example
from flamingo_jax.perceiver_resampler import ResamplerConfig
from flamingo_jax.presets import CONFIGS as PRESETS

log = logging.getLogger("flamingo_jax.task")


@dataclasses.dataclass(frozen=True)
class InitLM:
    """config.init_lm: where the frozen LM's weights come from (at most one of the two; empty = random)."""

    workdir: str = ""  # a stage-'lm' training workdir
    hf_dir: str = ""  # an HF LM checkpoint
    mean_init_tokens: tuple[str, ...] = ()  # special tokens whose embedding rows restart at the mean

    def __post_init__(self):
        if self.workdir and self.hf_dir:
            raise ValueError(f"init_lm: give workdir or hf_dir, not both ({self.workdir!r}, {self.hf_dir!r})")


@dataclasses.dataclass(frozen=True)
class InitVision:
    """config.init_vision: where the frozen vision encoder's weights come from (at most one; empty = random)."""

    workdir: str = ""  # a stage-'contrastive' training workdir
    timm_nfnet: str = ""  # a timm dm_nfnet_f* checkpoint (directory or weights file)

    def __post_init__(self):
        if self.workdir and self.timm_nfnet:
            raise ValueError(f"init_vision: give workdir or timm_nfnet, not both ({self.workdir!r}, "
                             f"{self.timm_nfnet!r})")


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """config.contrastive (stage 'contrastive'): the dual encoder's text tower and its projection."""

    text: dict = dataclasses.field(default_factory=dict)  # LMConfig fields (vocab_size None = the tokenizer's)
    projection_dim: int = 128


def flamingo_config_from(model_config, tokenizer=None) -> FlamingoConfig:
    """config.model -> FlamingoConfig (vocabulary and <image> id from the tokenizer where not given)."""
    m = plain(model_config)
    if m.get("preset"):
        cfg = PRESETS[m["preset"]]()
        if m.get("lm"):
            cfg = cfg.replace(lm=cfg.lm.replace(**m["lm"]))
        for part in ("vision", "resampler", "xattn"):  # e.g. {"dtype": "bfloat16"}: the frozen tower, the resampler
            if m.get(part):
                cfg = cfg.replace(**{part: dataclasses.replace(getattr(cfg, part), **m[part])})
        return cfg
    lm = dict(m["lm"])
    if lm.get("vocab_size") is None:
        if tokenizer is None:
            raise ValueError("model.lm.vocab_size is None: a tokenizer is needed to size the vocabulary")
        lm["vocab_size"] = padded_vocab_size(tokenizer)
    vision = CLIPVisionConfig(**m["vision"]) if m.get("vision") else None
    width = m.get("vision_width") or (vision.hidden_size if vision is not None else None)
    resampler = ResamplerConfig(width=width, **m["resampler"]) if m.get("resampler") is not None else None
    image_id = m.get("image_token_id")
    if image_id is None:
        image_id = data_lib.special_ids(tokenizer)["image"]
    return FlamingoConfig(lm=LMConfig(**lm), xattn=GatedXAttnConfig(**m.get("xattn", {})), resampler=resampler,
                          vision=vision, vision_width=m.get("vision_width"), image_token_id=int(image_id),
                          cross_attn_every=int(m.get("cross_attn_every", 1)), block_position=m.get("block_position"),
                          vision_features=m.get("vision_features", "post_norm_patches"))


# ----------------------------------------------------------------------------------------------------------------
# The frozen LM's weights
# ----------------------------------------------------------------------------------------------------------------
def lm_to_grouped(lm_params, lm_config: LMConfig, every: int) -> dict:
    """A bare DecoderLM's params (decoder/layers [L, ...] or layers_i) -> the grouped layout of a Flamingo LM with a
    block every `every` layers (decoder/groups/layer_j [G, ...] or groups_g/layer_j), without the blocks."""
    flat = flax.traverse_util.flatten_dict(lm_params)
    out, layers = {}, {}
    for path, value in flat.items():
        if path[0] != "decoder":
            out[path] = value
        elif path[1] == "layers":
            for i in range(lm_config.num_layers):
                layers[(i,) + path[2:]] = np.asarray(value)[i]
        else:
            layers[(int(path[1].split("_")[1]),) + path[2:]] = value
    for (i, *rest), value in layers.items():
        prefix, index = layer_param_location(lm_config, i, every)
        if index:
            out.setdefault((*prefix, *rest), [None] * (lm_config.num_layers // every))[index[0]] = value
        else:
            out[(*prefix, *rest)] = value
    out = {k: (np.stack(v) if isinstance(v, list) else v) for k, v in out.items()}
    return flax.traverse_util.unflatten_dict(out)


def resize_vocab(lm, vocab_size: int, mean_rows=()) -> dict:
    """A bare LM's params with the embedding [V, E] (and an untied lm_head kernel [E, V]) resized to `vocab_size`
    tokens. Rows the checkpoint lacks (the tokens the Flamingo tokenizer adds, the padding to a multiple of 64) and the
    rows in `mean_rows` (tokens the checkpoint never trained on, e.g. <image> in stage 0) start at the mean of its
    other rows, as transformers' `resize_token_embeddings` (mean_resizing, which OpenFlamingo calls) does. A
    checkpoint with more tokens than `vocab_size` is refused: their rows would be lost."""
    lm = dict(lm)
    for path, vocab_axis in ((("embed", "embedding"), 0), (("lm_head", "kernel"), 1)):
        if path[0] not in lm:
            continue
        table = np.asarray(lm[path[0]][path[1]])
        have = table.shape[vocab_axis]
        if have > vocab_size:
            raise ValueError(f"the LM checkpoint's {'/'.join(path)} has {have} tokens, more than the model's "
                             f"vocab_size {vocab_size}: set model.lm.vocab_size or use the checkpoint's tokenizer")
        table = np.moveaxis(table, vocab_axis, 0)  # [V, E]
        trained = np.setdiff1d(np.arange(have), np.asarray(mean_rows, np.int64))
        mean = table[trained].mean(axis=0, keepdims=True)
        out = np.concatenate([table, np.repeat(mean, vocab_size - have, axis=0)]).astype(table.dtype)
        out[[r for r in mean_rows if r < have]] = mean
        lm[path[0]] = dict(lm[path[0]], **{path[1]: np.moveaxis(out, 0, vocab_axis)})
    return lm


def load_lm(params, init: InitLM, cfg: FlamingoConfig, mean_rows=()):
    """config.init_lm {workdir | hf_dir} -> the Flamingo params with the frozen LM's weights in place (vocabulary
    resized by `resize_vocab`; `mean_rows`: token ids whose rows restart at the mean)."""
    if init.workdir:
        lm = restore_params(init.workdir)
    elif init.hf_dir:
        _, lm = common.hf.load(init.hf_dir, dtype=cfg.lm.param_dtype)
        lm = jax.tree.map(np.asarray, lm)
    else:
        return params
    lm = resize_vocab(lm, cfg.lm.vocab_size, mean_rows)
    return graft(params, lm_to_grouped(lm, cfg.lm, cfg.cross_attn_every), prefix="lm/", strict=True,
                 what=f"init_lm {init.workdir or init.hf_dir}")


def mismatched_tensors(params, source) -> list[str]:
    """Paths ("a/b/kernel") of the tensors that only one of the two trees has, or that differ in shape."""
    want = {k: tuple(np.shape(v)) for k, v in flax.traverse_util.flatten_dict(params).items()}
    got = {k: tuple(np.shape(v)) for k, v in flax.traverse_util.flatten_dict(source).items()}
    return sorted("/".join(k) for k in set(want) | set(got) if want.get(k) != got.get(k))


def continue_lm(params, workdir: str):
    """Stage 'lm' params <- a stage-'lm' workdir's final params, which must be the same model (every tensor, in
    both directions)."""
    source = restore_params(workdir)
    diff = mismatched_tensors(params, source)
    if diff:
        raise ValueError(f"init_lm.workdir {workdir!r} holds another LM than model.lm: {len(diff)} mismatched "
                         f"tensors, e.g. {diff[:4]}")
    return graft(params, source, strict=True, what=workdir)


def load_vision(params, init: InitVision, cfg: FlamingoConfig):
    """config.init_vision {workdir: a stage-'contrastive' workdir | timm_nfnet: a timm dm_nfnet_f* checkpoint
    (directory or weights file)} -> the Flamingo params with the frozen vision encoder's weights in place (the dual
    encoder's projection / the ImageNet classifier are dropped)."""
    if init.workdir:
        vision = restore_params(init.workdir)["vision"]
        diff = mismatched_tensors(params["vision"], vision)
        if diff:  # a different tower: refuse rather than leave part of it at its random init
            raise ValueError(f"init_vision.workdir {init.workdir!r} holds a different vision tower than "
                             f"model.vision: {len(diff)} mismatched tensors, e.g. {diff[:4]}")
        return graft(params, vision, prefix="vision/", what=init.workdir)
    if not init.timm_nfnet:
        return params

    if not isinstance(cfg.vision, NFNetConfig):
        raise ValueError(f"init_vision.timm_nfnet needs an NFNet vision encoder, the model has {type(cfg.vision)}")
    _, vision = load_timm_nfnet(init.timm_nfnet, config=cfg.vision)
    return graft(params, jax.tree.map(np.asarray, vision), prefix="vision/", what=init.timm_nfnet)


def dual_encoder_config(config, cfg: FlamingoConfig, tokenizer) -> DualEncoderConfig:
    """config.contrastive + the Flamingo's vision encoder -> the dual encoder that pretrains it."""
    c = config_section(config, "contrastive", ContrastiveSettings)
    if cfg.vision is None:
        raise ValueError("stage 'contrastive' needs model.vision (the encoder it pretrains)")
    text = dict(c.text)
    if not text:
        raise ValueError("stage 'contrastive' needs contrastive.text (the text tower's LMConfig fields)")
    if text.get("vocab_size") is None:
        text["vocab_size"] = padded_vocab_size(tokenizer)
    return DualEncoderConfig(vision=cfg.vision, text=LMConfig(**text),
                             projection_dim=c.projection_dim)


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------
def example_batch(cfg: FlamingoConfig, length: int = 8, num_media: int = 1):
    ids = jnp.zeros((1, length), jnp.int32)
    if cfg.vision is None:
        return ids, {"vision_features": jnp.zeros((1, num_media, 1, 4, cfg.media_width), jnp.float32)}
    s = cfg.vision.image_size
    return ids, {"pixel_values": jnp.zeros((1, num_media, s, s, cfg.vision.num_channels), jnp.float32)}


def new_token_rows(tokenizer) -> dict[str, int]:
    """{'<image>': id, '<|endofchunk|>': id}: the embedding rows `param_groups('new_tokens')` trains."""
    ids = data_lib.special_ids(tokenizer)
    return {IMAGE_TOKEN: ids["image"], END_OF_CHUNK_TOKEN: ids["eoc"]}


def make_task(config, workdir: str | None = None, tokenizer=None) -> Task:
    """The Flamingo task of `config`; `tokenizer` (default: built from config.tokenizer) may be a stand-in that
    only sizes the vocabulary when the task is only planned (common.aot)."""
    tokenizer = tokenizer or data_lib.build_tokenizer(get(config, "tokenizer", None), workdir)
    cfg = flamingo_config_from(config.model, tokenizer)
    stage = get(config, "stage", "flamingo")
    if stage not in ("flamingo", "lm", "contrastive"):
        raise ValueError(f"stage must be 'flamingo', 'lm' or 'contrastive', got {stage!r}")
    if stage == "contrastive":
        model = DualEncoder(dual_encoder_config(config, cfg, tokenizer))
    else:
        model = Flamingo(cfg) if stage == "flamingo" else DecoderLM(cfg.lm)
    datasets = plain(config.data.datasets)
    dcfg = plain(config.data)
    image_size = cfg.vision.image_size if cfg.vision is not None else int(dcfg.get("image_size", 64))
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    keep_tokenizer(tokenizer, workdir)

    def init_params(rng):
        if stage == "lm":
            return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
        ids, kw = example_batch(cfg)
        if stage == "contrastive":  # one image per pair: [1, 1, H, W, C] -> [1, H, W, C]
            return model.init(rng, kw["pixel_values"][:, 0], ids)["params"]
        return model.init(rng, ids, **kw)["params"]

    def model_inputs(batch):
        """Keyword inputs of the model (Flamingo, or the bare LM of stage lm) for a collated or packed batch."""
        packed = packed_model_inputs(batch)  # packed rows: attention, positions and media stay per sample
        if stage == "lm" or "images" not in batch:
            packed.pop("image_segment_ids", None)
            return {"attention_mask": batch["attention_mask"], **packed}
        return {"attention_mask": batch["attention_mask"], "pixel_values": batch["images"], **packed}

    def contrastive_loss_fn(params, batch, rng):
        del rng  # no dropout
        image, text, scale = model.apply({"params": params}, batch["images"][:, 0], batch["input_ids"],
                                         batch["attention_mask"])  # one image per pair: images [B, 1, H, W, C]
        return contrastive_loss(image, text, scale, valid=batch["attention_mask"].any(axis=1))

    def packing_for(spec):
        """`pack: true` (stages flamingo / lm): several samples per row; image slots per row default to twice a
        sample's max_images."""
        if stage == "contrastive":
            return None
        images = None if "text" in spec["source"] else 2 * int(spec.get("max_images", 1))
        return packing_from_config(spec, dcfg, pad_id, images)

    def make_transform(spec):
        return (data_lib.make_pair_transform(spec, tokenizer, image_size) if stage == "contrastive" else
                data_lib.make_transform(spec, tokenizer, image_size))

    image = (image_size, image_size, 3)
    data = TaskData(
        config, {name: {"raw_image_size": image_size,
                        "convert_image_modes": bool(dcfg.get("convert_image_modes", False)), **spec}
                 for name, spec in datasets.items()},
        make_source=data_lib.make_source, make_transform=make_transform,
        collate_for=lambda spec: Collate(int(spec["max_len"]), pad_id, max_images=spec.get("max_images", 1) if
                                         "text" not in spec["source"] else None),
        packing_for=packing_for,
        media_shapes=lambda spec: MediaShapes(
            images=None if "text" in spec["source"] else (int(spec.get("max_images", 1)),) + image))

    loss_fn = (contrastive_loss_fn if stage == "contrastive" else
               lm_loss_fn(model, cfg.lm, model_inputs, lm_path="" if stage == "lm" else "lm",
                          fused=data.settings.lm_loss == "fused"))

    if stage == "flamingo" and cfg.vision is not None:  # frozen parts: forward (+ activation backward) only
        flops = {name: train_flops_per_example(cfg, int(spec["max_len"]), 0 if "text" in spec["source"] else
                                               int(spec.get("max_images", 1)))["total"]
                 for name, spec in datasets.items()}
    else:  # the LM (stage lm), the text tower (contrastive; its vision side not counted)
        flops = data.lm_flops_per_example(model.config.text if stage == "contrastive" else cfg.lm)

    load = None
    init_lm = config_section(config, "init_lm", InitLM)
    if stage == "flamingo" and (init_lm.workdir or init_lm.hf_dir):
        ids = data_lib.special_ids(tokenizer)
        mean_rows = [ids[name] for name in init_lm.mean_init_tokens]
        load = lambda params: load_lm(params, init_lm, cfg, mean_rows)  # noqa: E731
    if stage == "lm" and init_lm.workdir:  # continue an LM's text pretraining (e.g. on another mix)
        load = lambda params: continue_lm(params, init_lm.workdir)  # noqa: E731
    elif stage == "lm" and init_lm.hf_dir:
        raise ValueError("stage 'lm' continues from init_lm.workdir only; hf_dir initialises a Flamingo's frozen LM")
    init_vision = config_section(config, "init_vision", InitVision)
    if stage == "flamingo" and (init_vision.workdir or init_vision.timm_nfnet):
        load_first = load or (lambda params: params)
        load = lambda params: load_vision(load_first(params), init_vision, cfg)  # noqa: E731

    return Task(init_params=init_params, loss_fn=loss_fn, make_train_data=data.train_data,
                dataset_weights=data.weights, flops_per_example=flops, load_pretrained=load,
                make_eval_data=data.eval_data if data.eval_batches else None, named_rows=new_token_rows(tokenizer),
                batch_spec=data.batch_spec, model=model, model_config=cfg, tokenizer=tokenizer,
                extras={"stage": stage})
