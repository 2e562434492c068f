"""LLaVA training as a `common.trainer.Task` (Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.2 "Training";
LLaVA-1.5, Liu et al. 2023b, Sec. 3 / Appendix hyper-parameters): stage 1 feature alignment (projector only, the
`plain` template, captions) and stage 2 end-to-end visual instruction tuning (projector + LLM, vision tower frozen,
`vicuna_v1` conversations; loss on the assistant answers only), plus the LoRA variant of stage 2 (adapters on the
LLM's linear layers, frozen base; `common.lora`).

Config (ml_collections; see configs/llava/*.py):
  model      {preset: None | 'llava_v1_5_7b' | 'llava_v1_5_13b', text: LMConfig fields, vision: CLIPVisionConfig
             fields, projector_type, vision_feature_layer, vision_feature_select_strategy, image_token_index}
             text.vocab_size None = the tokenizer's (rounded up to a multiple of 64); image_token_index None = the
             tokenizer's `<image>` id (HF style), or e.g. -200 (the original release: a placeholder outside the vocab).
  tokenizer  {kind: 'shapes_bpe' | 'dir', path, vocab_size}; saved to WORKDIR/tokenizer.json at the first start.
  data       {template, text_only, pad_to_square, over_length, num_threads, max_skip_fraction, convert_image_modes
              (False: greyscale / RGBA / CMYK / 16-bit / palette images are skipped and counted; True: converted),
              datasets: {name: {source: 'shapes' (kind, size, seed, image_size, max_rounds) | 'llava_json' (json,
                                image_dir), max_len, template?, weight?, batch_size?}},
              json + image_dir + max_len: your own LLaVA JSON data (replaces datasets)}
  init_from        a training workdir (e.g. the stage-1 run): its latest params are copied in (matching paths and
                   shapes; `init_exclude` regexes skip some) before training.
  init_checkpoint  (InitCheckpoint) {lm: HF LM dir (Vicuna), vision: HF CLIP dir}: pretrained weights for
                   paper-scale stage 1.
  lora       (common.lora.LoraSettings) {rank: 0 = off, alpha, targets}: adapters under params['lora'] (LLM only).
  eval_vqa   (EvalVQA) {num_questions: 0 = off, split, image_size, template, max_new_tokens}: held-out
             short-answer VQA accuracy at eval_every.
Sections are read typed (common.config_sections): a field a section does not have is an error.
Trainable parameters are chosen by optimizer.param_groups (regexes; the stage configs freeze the rest).
"""
from __future__ import annotations

import dataclasses
import logging

import common.hf
from common import lora as lora_lib
from common.config_sections import config_section
from common.config_sections import get as _get
from common.config_sections import plain as _plain
from common.data.packing import packed_model_inputs, packing_from_config
from common.data.pipeline import Collate
from common.lm import LMConfig
from common.task_data import MediaShapes, TaskData
from common.task_utils import graft, init_params_fn, keep_tokenizer, lm_loss_fn, lora_config_from, restore_params
from common.tokenizers import IMAGE_TOKEN, padded_vocab_size
from common.trainer import Task
from common.vision.clip import CLIPVisionConfig
from llava_jax import data as data_lib
from llava_jax import presets
from llava_jax.eval import evaluate_shapes_vqa
from llava_jax.model import Llava, LlavaConfig, example_inputs

log = logging.getLogger("llava_jax.task")


@dataclasses.dataclass(frozen=True)
class InitCheckpoint:
    """config.init_checkpoint: pretrained HF checkpoints for paper-scale stage 1 (empty = not loaded)."""

    lm: str = ""  # an HF LM folder (Vicuna)
    vision: str = ""  # an HF CLIP folder


@dataclasses.dataclass(frozen=True)
class EvalVQA:
    """config.eval_vqa: held-out short-answer VQA accuracy on the shapes scenes at every eval_every."""

    num_questions: int = 0  # 0 = off
    split: str = "validation"
    image_size: int = 0  # 0 = the vision tower's
    template: str = ""  # "" = data.template (or vicuna_v1)
    max_new_tokens: int = 8


def llava_config_from(model_config, tokenizer=None) -> LlavaConfig:
    """config.model -> LlavaConfig (vocabulary and image token from the tokenizer where left None)."""
    m = _plain(model_config)
    preset = m.get("preset")
    text = dict(m.get("text") or {})
    vision = dict(m.get("vision") or {})
    if "rope_scaling" in text and text["rope_scaling"] is not None:
        text["rope_scaling"] = tuple(tuple(item) for item in text["rope_scaling"])
    fields = {k: m[k] for k in ("projector_type", "vision_feature_layer", "vision_feature_select_strategy",
                                "projector_act", "projector_bias") if m.get(k) is not None}
    if isinstance(fields.get("vision_feature_layer"), list):
        fields["vision_feature_layer"] = tuple(fields["vision_feature_layer"])
    image_token_index = m.get("image_token_index")
    if preset:
        base = getattr(presets, preset)()
        text_cfg = base.text.replace(**text)
        vision_cfg = CLIPVisionConfig(**{**vars(base.vision), **vision}) if vision else base.vision
        cfg = base.replace(text=text_cfg, vision=vision_cfg, **fields)
    else:
        if text.get("vocab_size") is None:
            if tokenizer is None:
                raise ValueError("model.text.vocab_size is None: a tokenizer is needed to size the vocabulary")
            text["vocab_size"] = padded_vocab_size(tokenizer)
        cfg = LlavaConfig(text=LMConfig(**text), vision=CLIPVisionConfig(**vision), **fields)
    if image_token_index is None:
        if tokenizer is None or tokenizer.token_to_id(IMAGE_TOKEN) is None:
            raise ValueError("model.image_token_index is None and the tokenizer has no <image> token")
        image_token_index = tokenizer.token_to_id(IMAGE_TOKEN)
    cfg = cfg.replace(image_token_index=int(image_token_index))
    if tokenizer is not None and 0 <= cfg.image_token_index and cfg.image_token_index >= cfg.text.vocab_size:
        raise ValueError(f"image_token_index {cfg.image_token_index} >= vocab_size {cfg.text.vocab_size}")
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------------------------------------------
def load_pretrained_weights(params, config, cfg: LlavaConfig, ckpt: InitCheckpoint):
    """init_from (a workdir) and config.init_checkpoint {lm, vision} (HF dirs, `ckpt`), applied in that order."""
    init_from = _get(config, "init_from", "")
    if init_from:
        params = graft(params, restore_params(init_from), exclude=tuple(_get(config, "init_exclude", ()) or ()),
                       what=f"workdir {init_from}")
    if ckpt.lm:
        _, lm_params = common.hf.load(ckpt.lm, dtype=cfg.text.param_dtype)
        params = graft(params, lm_params, prefix="lm/", what=f"LM checkpoint {ckpt.lm}")
    if ckpt.vision:
        _, vision_params = common.hf.load(ckpt.vision, dtype=cfg.vision.param_dtype)
        params = graft(params, vision_params, prefix="vision_tower/", what=f"vision checkpoint {ckpt.vision}")
    return params


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------
def make_transform(config, tokenizer, cfg: LlavaConfig, spec) -> data_lib.LlavaSampleTransform:
    dcfg = _plain(config.data)
    spec = _plain(spec)
    return data_lib.LlavaSampleTransform(
        tokenizer, spec.get("template", dcfg.get("template", "vicuna_v1")),
        image_token_id=tokenizer.token_to_id(IMAGE_TOKEN), tokens_per_image=cfg.tokens_per_crop,
        placeholder_id=cfg.image_token_index, image_size=cfg.vision.image_size, max_len=int(spec["max_len"]),
        over_length=spec.get("over_length", dcfg.get("over_length", "skip")),
        pad_to_square=bool(dcfg.get("pad_to_square", True)),
        text_only=bool(spec.get("text_only", dcfg.get("text_only", False))),
        convert_image_modes=bool(spec.get("convert_image_modes", dcfg.get("convert_image_modes", False))))


def model_inputs(batch) -> dict:
    """Collated (or packed) batch -> keyword inputs of Llava (images only when present)."""
    kwargs = {"attention_mask": batch["attention_mask"]}
    if "images" in batch:
        kwargs.update(pixel_values=batch["images"], image_mask=batch["image_mask"])
    kwargs.update(packed_model_inputs(batch))  # packed rows: attention, positions and images stay per sample
    return kwargs


def make_task(config, workdir: str | None = None, tokenizer=None) -> Task:
    """The LLaVA task of `config`; `tokenizer` (default: built from config.tokenizer) may be a stand-in that only
    sizes the vocabulary when the task is only planned (common.aot)."""
    tokenizer = tokenizer or data_lib.build_tokenizer(_get(config, "tokenizer", None), workdir)
    keep_tokenizer(tokenizer, workdir)
    cfg = llava_config_from(config.model, tokenizer)
    model = Llava(cfg)
    lcfg = lora_config_from(config)
    dcfg = _plain(config.data)
    datasets = _plain(config.data.get("datasets") or {})
    if dcfg.get("json"):  # users' own data: one LLaVA JSON file + its image folder
        datasets = {"own": dict(source="llava_json", json=dcfg["json"], image_dir=dcfg.get("image_dir", ""),
                                max_len=int(dcfg.get("max_len", 2048)))}
    if not datasets:
        raise ValueError("no training data: set config.data.datasets, or config.data.json + config.data.image_dir")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    text_only = lambda spec: spec.get("text_only", dcfg.get("text_only", False))  # noqa: E731
    image = example_inputs(cfg)[1].shape[2:]  # one image: [S, S, C] (anyres: [crops, S, S, C])

    def packing_for(spec):
        """`pack: true` (data-wide or per dataset): several samples per row of max_len, image slots per row by
        default as many as whole images the row's tokens can hold."""
        images = None if text_only(spec) else max(1, int(spec["max_len"]) // (cfg.tokens_per_crop + 1))
        return packing_from_config(spec, dcfg, pad_id, images)

    data = TaskData(
        config, datasets, make_source=data_lib.make_source,
        make_transform=lambda spec: make_transform(config, tokenizer, cfg, spec),
        collate_for=lambda spec: Collate(int(spec["max_len"]), pad_id, max_images=int(spec.get("max_images", 1))),
        packing_for=packing_for,
        media_shapes=lambda spec: MediaShapes(
            images=None if text_only(spec) else (int(spec.get("max_images", 1)),) + image))

    eval_vqa = config_section(config, "eval_vqa", EvalVQA)

    def evaluate(params, step):
        params = lora_lib.merge_in_tree(params, lcfg)
        res = evaluate_shapes_vqa(model, params, tokenizer, num_questions=eval_vqa.num_questions,
                                  split=eval_vqa.split, image_size=eval_vqa.image_size or cfg.vision.image_size,
                                  template=eval_vqa.template or dcfg.get("template", "vicuna_v1"),
                                  max_new_tokens=eval_vqa.max_new_tokens)
        return {"vqa_accuracy": res["accuracy"]}

    load = None
    ckpt = config_section(config, "init_checkpoint", InitCheckpoint)
    if _get(config, "init_from", "") or ckpt.lm or ckpt.vision:
        load = lambda params: load_pretrained_weights(params, config, cfg, ckpt)  # noqa: E731

    return Task(init_params=init_params_fn(model, example_inputs(cfg), lcfg),
                loss_fn=lm_loss_fn(model, cfg.text, model_inputs, lcfg, fused=data.settings.lm_loss == "fused"),
                make_train_data=data.train_data, dataset_weights=data.weights,
                flops_per_example=data.lm_flops_per_example(cfg.text),
                load_pretrained=load, make_eval_data=data.eval_data if data.eval_batches else None,
                evaluate=evaluate if eval_vqa.num_questions else None, batch_spec=data.batch_spec,
                model=model, model_config=cfg, tokenizer=tokenizer, lora_config=lcfg)
