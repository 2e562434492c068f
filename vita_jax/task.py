"""VITA-1.5 training as a `common.trainer.Task` (Fu et al. 2025, Sec. 3.2 and Fig. 3, "progressive training"):
  1.1 vision alignment: the projector (captions);            1.2 vision understanding: tower + projector + LLM;
  1.3 vision SFT: projector + LLM (QA / conversations);       2.1 audio alignment: speech encoder + adapter on ASR,
      LLM frozen (the release has no code for it);            2.2 audio SFT: adapter + projector + LLM on spoken and
      typed questions, noise samples answered with ☟ alone (the release's finetuneTaskNeg script).
The stage's trainable parameters are the optimizer's param groups (`vita_jax.model.STAGE_TRAINABLE`; everything else
frozen, no optimizer state), set by the stage configs in configs/vita/. LoRA on the LLM is optional (config.lora).

Config (ml_collections; configs/vita/*.py):
  model      {preset: None | 'vita_1_5', text: LMConfig fields (vocab_size None = the tokenizer's), vision:
             InternViTConfig fields, audio: SpeechEncoderConfig fields}
  tokenizer  {kind: 'shapes_bpe' (vocab_size) | 'dir' (path: a release folder)}; saved to WORKDIR at the first start.
  data       {max_tiles, max_audio_seconds, max_audio_frames, over_length, num_threads, max_skip_fraction,
              convert_image_modes, datasets: {name: {source: shapes (kind, size, seed, image_size, typed_fraction)
              | vita_json (json, image_dir, audio_dir) | librispeech (root), max_len, weight?, batch_size?}}}
  init_from  a workdir of the previous stage (its params copied in by path and shape); init_checkpoint: a released
             VITA-1.5 folder (vita_jax.load_original) for paper-scale fine-tuning.
  objective  'lm' (default: next-token loss on the answers) | 'ctc' (stage 2.0, `vita_jax.ctc`: the speech encoder +
             a CTC head on ASR data; data.cmvn_utterances > 0 first sets the encoder's global CMVN from that many
             training utterances).
"""
from __future__ import annotations


import logging

import jax.numpy as jnp

from common.data.packing import packed_model_inputs, packing_from_config
from common.data.pipeline import Collate
from common.lm import LMConfig
from common.config_sections import get, plain
from common.task_data import MediaShapes, TaskData
from common.task_utils import graft, init_params_fn, keep_tokenizer, lm_loss_fn, lora_config_from, restore_params
from common.tokenizers import padded_vocab_size
from common.trainer import Task
from common.vision.intern_vit import InternViTConfig
from vita_jax import ctc as ctc_lib
from vita_jax import conversation
from vita_jax import data as data_lib
from vita_jax import presets
from vita_jax.hf import load_original
from vita_jax.model import Vita, VitaConfig, example_inputs
from vita_jax.speech_encoder import SpeechEncoderConfig

log = logging.getLogger(__name__)


def vita_config_from(model_config, tokenizer=None) -> VitaConfig:
    m = plain(model_config)
    text, vision, audio = (dict(m.get(k) or {}) for k in ("text", "vision", "audio"))
    if m.get("preset"):
        base = getattr(presets, m["preset"])()
        return base.replace(text=base.text.replace(**text),
                            vision=InternViTConfig(**{**vars(base.vision), **vision}),
                            audio=base.audio.replace(**audio))
    if text.get("vocab_size") is None:
        if tokenizer is None:
            raise ValueError("model.text.vocab_size is None: a tokenizer is needed to size the vocabulary")
        text["vocab_size"] = padded_vocab_size(tokenizer)
    return VitaConfig(text=LMConfig(**text), vision=InternViTConfig(**vision), audio=SpeechEncoderConfig(**audio))


def model_inputs(batch) -> dict:
    """Collated (or packed) batch -> keyword inputs of Vita (no audio input for a batch without audio frames)."""
    kwargs = dict(attention_mask=batch["attention_mask"], pixel_values=batch["images"], image_mask=batch["image_mask"])
    if "audio_features" in batch and batch["audio_features"].shape[1]:
        kwargs.update(input_features=batch["audio_features"], feature_attention_mask=batch["audio_mask"])
    kwargs.update(packed_model_inputs(batch))  # packed rows: attention, positions, tiles and clips stay per sample
    if "input_features" not in kwargs:
        kwargs.pop("audio_segment_ids", None)
    return kwargs


TEXT_ONLY_SOURCES = ("shapes_scene_text",)


def has_audio(spec) -> bool:
    """Whether a dataset's records carry speech (its batches then hold a fixed number of audio frames; the others
    hold 0 and the speech encoder costs nothing on them)."""
    spec = plain(spec)
    source = spec.get("source", "shapes")
    if source == "shapes":
        return spec.get("kind") in ("asr", "spoken_qa")
    return source not in TEXT_ONLY_SOURCES


def make_transform(config, tokenizer, cfg: VitaConfig, spec) -> data_lib.VitaSampleTransform:
    d, spec = plain(config.data), plain(spec)
    return data_lib.VitaSampleTransform(
        tokenizer, cfg, int(spec["max_len"]), max_tiles=int(spec.get("max_tiles", d.get("max_tiles", 1))),
        max_audio_seconds=float(d.get("max_audio_seconds", 30.0)),
        over_length=spec.get("over_length", d.get("over_length", "skip")),
        convert_image_modes=bool(d.get("convert_image_modes", False)))


def cmvn_from_data(params, config, tokenizer, cfg: VitaConfig):
    """The encoder's global CMVN from the first data.cmvn_utterances training utterances of the first speech
    dataset (`vita_jax.ctc.cmvn_statistics`, WeNet's recipe)."""
    count = int(get(config, "data", {}).get("cmvn_utterances", 0) or 0)
    datasets = plain(config.data.get("datasets") or {})
    speech = [spec for _, spec in sorted(datasets.items()) if has_audio(spec)]
    if not speech:
        raise ValueError("data.cmvn_utterances is set but no dataset carries speech")
    source = data_lib.make_source(speech[0], "train")
    transform = make_transform(config, tokenizer, cfg, speech[0])
    features = []
    for index in range(min(count, len(source))):
        try:
            features.append(transform(source[index])["audio_features"])
        except data_lib.BadRecord:
            continue  # the pipeline skips and counts them; the statistics simply leave them out
    mean, istd = ctc_lib.cmvn_statistics(features)
    log.info("global CMVN from %d utterances (%d frames)", len(features), sum(len(f) for f in features))
    return ctc_lib.with_cmvn(params, mean, istd)


def load_pretrained_weights(params, config):
    init_from = get(config, "init_from", "")
    if init_from:
        params = graft(params, restore_params(init_from), exclude=tuple(get(config, "init_exclude", ()) or ()),
                       what=f"workdir {init_from}")
    release = get(config, "init_checkpoint", "")
    if release:
        _, released = load_original(release)
        params = graft(params, released, what=f"VITA-1.5 folder {release}")
    return params


def make_task(config, workdir: str | None = None, tokenizer=None) -> Task:
    """The VITA task of `config`; `tokenizer` (default: built from config.tokenizer) may be a stand-in that only
    sizes the vocabulary when the task is only planned (common.aot)."""
    tokenizer = tokenizer or data_lib.build_tokenizer(get(config, "tokenizer", None), workdir)
    keep_tokenizer(tokenizer, workdir)
    cfg = vita_config_from(config.model, tokenizer)
    model = Vita(cfg)
    lcfg = lora_config_from(config)
    datasets = plain(config.data.get("datasets") or {})
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    dcfg = plain(config.data)
    # fixed audio frames per batch (static shapes): at least max_audio_seconds of fbank frames (longer clips are
    # skipped as too_long by the transform, never cut by the collation)
    max_frames = max(int(dcfg.get("max_audio_frames", 0) or 0), int(float(dcfg.get("max_audio_seconds", 30.0)) * 100))
    dropout = cfg.audio.dropout_rate > 0 or cfg.audio.positional_dropout_rate > 0 or cfg.vision.drop_path_rate > 0
    tile = (cfg.vision.image_size, cfg.vision.image_size, cfg.vision.num_channels)

    def packing_for(spec):
        """`pack: true`: several samples per row; per row by default 4x a sample's tiles and, for speech data,
        4 clips of max_audio_frames each."""
        tiles = 4 * int(spec.get("max_tiles_per_sample", 1))
        return packing_from_config(spec, dcfg, pad_id, tiles, 4 if has_audio(spec) else None,
                                   max_frames if has_audio(spec) else None)

    data = TaskData(
        config, datasets, make_source=data_lib.make_source,
        make_transform=lambda spec: make_transform(config, tokenizer, cfg, spec),
        collate_for=lambda spec: Collate(int(spec["max_len"]), pad_id,
                                         max_images=int(spec.get("max_tiles_per_sample", 1)),
                                         max_audio_frames=max_frames if has_audio(spec) else None),
        packing_for=packing_for,
        media_shapes=lambda spec: MediaShapes(  # a batch without speech holds 0 audio frames
            images=(int(spec.get("max_tiles_per_sample", 1)),) + tile,
            audio=(max_frames if has_audio(spec) else 0, cfg.audio.input_dim)))

    objective = get(config, "objective", "lm")
    if objective not in ("lm", "ctc"):
        raise ValueError(f"objective must be 'lm' or 'ctc', got {objective!r}")
    ctc_head = None
    if objective == "ctc":
        if any(spec.get("pack", dcfg.get("pack")) for spec in datasets.values()):
            raise ValueError("objective 'ctc' reads one clip per row: packing (pack: true) is not supported with it")
        loss_fn, ctc_head = _ctc_loss_fn(cfg, tokenizer, dropout)
    else:
        loss_fn = lm_loss_fn(model, cfg.text, model_inputs, lcfg, dropout=dropout,
                             fused=data.settings.lm_loss == "fused")
    flops = data.lm_flops_per_example(cfg.text) if objective == "lm" else 0.0  # the LM's; not counted for CTC

    cmvn = int(dcfg.get("cmvn_utterances", 0) or 0) > 0
    pretrained = bool(get(config, "init_from", "") or get(config, "init_checkpoint", ""))
    load = None
    if cmvn or pretrained:
        def load(params):
            params = load_pretrained_weights(params, config) if pretrained else params
            return cmvn_from_data(params, config, tokenizer, cfg) if cmvn else params

    return Task(init_params=init_params_fn(model, example_inputs(cfg), lcfg, extra_params=ctc_head),
                loss_fn=loss_fn, make_train_data=data.train_data, dataset_weights=data.weights,
                flops_per_example=flops, load_pretrained=load,
                make_eval_data=data.eval_data if data.eval_batches else None, batch_spec=data.batch_spec,
                model=model, model_config=cfg, tokenizer=tokenizer, lora_config=lcfg)


def _ctc_loss_fn(cfg: VitaConfig, tokenizer, dropout: bool):
    """(loss_fn, rng -> {'ctc_head': params}) of stage 2.0: the speech encoder + a CTC head over the LM's vocabulary
    on the transcripts (the answer tokens, state tokens and end of text left out); the encoder's parameters are
    Vita's own (shared by path)."""
    ctc_model = ctc_lib.SpeechCTC(cfg)
    not_transcript = [tokenizer.token_to_id(t) for t in conversation.STATE_TOKENS.values()] + [tokenizer.eos_id]

    def head_params(rng):
        frames = jnp.zeros((1, 16, cfg.audio.input_dim), jnp.float32)
        return {"ctc_head": ctc_model.init(rng, frames, jnp.array([16]))["params"]["ctc_head"]}

    def loss_fn(params, batch, rng):
        lengths = batch["audio_mask"].astype(jnp.int32).sum(-1)  # [B] fbank frames
        log_probs, frames = ctc_model.apply(
            {"params": {"audio_encoder": params["audio_encoder"], "ctc_head": params["ctc_head"]}},
            batch["audio_features"], lengths, deterministic=not dropout,
            rngs={"dropout": rng} if dropout else None)  # [B, T', V + 1]
        labels, paddings = ctc_lib.transcript_labels(batch["input_ids"], batch["loss_mask"], not_transcript)
        return ctc_lib.ctc_loss(log_probs, frames, labels, paddings, ctc_model.blank_id)

    return loss_fn, head_params
