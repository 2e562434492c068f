"""Stage 3.2 of VITA-1.5 (Fu et al. 2025, Sec. 3.1 / Fig. 3 "NAR + AR speech decoder training", LLM frozen): the
speech decoders learn to turn the LLM's text embeddings into the codec's tokens of that text spoken. The release ships
the loss (`LLM2TTSCodecAR.forward`: CE over codes + eos, pad ignored) but no trainer or data.

  text --clean, LLM tokenizer--> ids [B, n] --frozen LLM embedding table--> [B, n, D] --pieces--> [B, n D/idim, idim]
  speech (24 kHz) --frozen codec encoder--> codes [B, T]         --decoder (teacher forcing)--> CE(codes + eos)

The parameter tree holds the decoder (trained) and, frozen, the LLM's embedding table and the codec, so a workdir is
everything `vita_jax.tts.Speaker` needs. Config (configs/vita/tiny_stage3_2.py; release scale: stage3_2_7b.py):
decoder {SpeechDecoderConfig fields}, codec_from (a codec folder in the release layout: `python -m
vita_jax.codec_train --out`; without it a random codec of config.codec's CodecConfig fields, the tiny one by default:
plumbing tests and ahead-of-time plans), text_from (a VITA workdir: its LLM embedding table and tokenizer; without it
a random N(0, 1) table [vocab, text_width]), text_norm (none | unit_std: `normalise_text_table`), data
{max_text_tokens, max_speech_seconds, datasets: {name: {source: shapes (sentences and short answers with their espeak
speech; answer_fraction) | librispeech (root: transcripts + flac) | tts_json (json: [{"text", "audio"}], audio_dir)}}},
scheduled_sampling (probability of feeding the decoder its own prediction instead of a true code in training; 0 = pure
teacher forcing, the release's: `own_predictions_mixed_in`; a loss called without an rng, as in evaluation, is
teacher-forced).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from common.config_sections import config_section, get, plain
from common.data import shapes
from common.data.pipeline import task_iterator
from common.data.records import MALFORMED, TOO_LONG, BadRecord
from common.data.speech import load_word_bank
from common.flops import matmul_flops
from common.task_utils import keep_tokenizer, restore_config, restore_params
from common.tokenizers import SAVED_TOKENIZER_FILE
from common.trainer import DataShard, Task
from vita_jax import data as data_lib
from vita_jax.codec import Codec, CodecConfig
from vita_jax.codec import init_params as init_codec
from vita_jax.hf import load_codec
from vita_jax.presets import TINY_CODEC_FIELDS
from vita_jax.speech_decoder import SpeechDecoder, SpeechDecoderConfig
from vita_jax.speech_decoder import init_params as init_decoder
from vita_jax.speech_sources import record_waveform
from vita_jax.tts import Speaker, StreamConfig, clean_for_speech


class ShapesSpeechSource:
    """(text, speech) pairs from the shapes world: a caption of one object, or a short spoken answer ('yes',
    'two', 'red') with probability `answer_fraction`, said by the bundled espeak word bank (16 kHz)."""

    def __init__(self, split: str = "train", size: int = 2000, seed: int = 0, answer_fraction: float = 0.5):
        if not 0.0 <= answer_fraction <= 1.0:
            raise ValueError(f"answer_fraction must be in [0, 1], got {answer_fraction}")
        self.size, self.seed, self.answer_fraction = size, seed, answer_fraction
        self._offset = {"train": 0, "validation": 10_000_000, "test": 20_000_000}[split]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self._offset + int(index), 77])
        objs = shapes.random_scene(rng, 1, 1)
        if rng.random() < 1.0 - self.answer_fraction:
            text = shapes.caption(objs, rng)
        else:
            text = shapes.vqa_question(shapes.random_scene(rng), rng)[1]
        return {"text": text, "audio": [load_word_bank().say(data_lib.spoken_form(text), rng)]}


class TtsJsonSource:
    """A JSON list of {"text": ..., "audio": path (relative to audio_dir)}."""

    def __init__(self, path: str, audio_dir: str = ""):
        with open(path) as f:
            self.items = json.load(f)
        self.audio_dir = audio_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if not isinstance(item, dict) or "text" not in item or "audio" not in item:
            return {"_bad": MALFORMED, "_detail": f"item {index} lacks text / audio"}
        return {"text": item["text"], "audio": [os.path.join(self.audio_dir, item["audio"])]}


def make_source(spec: dict, split: str = "train"):
    source = spec.get("source", "shapes")
    if source == "shapes":
        return ShapesSpeechSource(split, int(spec.get("size", 2000)), int(spec.get("seed", 0)),
                                  float(spec.get("answer_fraction", 0.5)))
    if source == "librispeech":
        return data_lib.LibriSpeechSource(spec["root"])  # records carry `text` (the transcript) and the flac
    if source == "tts_json":
        return TtsJsonSource(spec["json"], spec.get("audio_dir", ""))
    raise ValueError(f"unknown stage-3.2 data source {source!r}; use shapes, librispeech or tts_json")


class SpeechPairTransform:
    """record -> {text_ids [max_text], text_len, wav [max_samples] at 24 kHz, wav_len}; too long text or speech is
    skipped as too_long, silent audio as empty_audio."""

    def __init__(self, tokenizer, sample_rate: int, hop: int, max_text: int, max_seconds: float):
        self.tokenizer, self.rate, self.hop, self.max_text = tokenizer, sample_rate, hop, max_text
        self.max_samples = int(max_seconds * sample_rate) // hop * hop

    def __call__(self, record: dict) -> dict:
        if "_bad" in record:
            raise BadRecord(record["_bad"], record.get("_detail", ""))
        ids = self.tokenizer.encode(clean_for_speech(str(record.get("text", ""))))
        if not len(ids):
            raise BadRecord(MALFORMED, "no text")
        if len(ids) > self.max_text:
            raise BadRecord(TOO_LONG, f"{len(ids)} text tokens > {self.max_text}")
        wave = record_waveform(record, self.rate)
        if wave.size > self.max_samples:
            raise BadRecord(TOO_LONG, f"{wave.size / self.rate:.1f} s of speech > {self.max_samples / self.rate} s")
        text = np.zeros(self.max_text, np.int32)
        text[:len(ids)] = ids
        wav = np.zeros(self.max_samples, np.float32)
        wav[:wave.size] = wave
        return {"text_ids": text, "text_len": np.int32(len(ids)), "wav": wav, "wav_len": np.int32(wave.size)}


def decoder_config_from(config) -> SpeechDecoderConfig:
    return config_section(config, "decoder", SpeechDecoderConfig)


def code_targets(codes, code_lengths, cfg: SpeechDecoderConfig):
    """codes [B, T], lengths [B] -> targets [B, T + 1] (codes, eos at the length, pad after) and their mask."""
    b, t = codes.shape
    slots = jnp.arange(t + 1)[None]
    padded = jnp.concatenate([codes, jnp.zeros((b, 1), codes.dtype)], axis=1)
    targets = jnp.where(slots < code_lengths[:, None], padded, cfg.pad)
    targets = jnp.where(slots == code_lengths[:, None], cfg.eos, targets)
    return targets, slots <= code_lengths[:, None]


def own_predictions_mixed_in(decoder: SpeechDecoder, params, text, text_lengths, codes, code_lengths,
                             probability: float, rng: jax.Array) -> jax.Array:
    """Parallel scheduled sampling (Bengio et al. 2015; Duckworth et al. 2019, one extra pass): a teacher-forced
    pass without gradient gives the decoder's own greedy code at every position, and each input code is replaced by
    it with `probability` (special tokens it predicts are not fed). Training on its own mistakes counters the
    free-running drift of a decoder only ever fed true codes. codes [B, T] -> input codes [B, T]."""
    logits = jax.lax.stop_gradient(decoder.apply({"params": params}, text, text_lengths, codes, code_lengths))
    own = jnp.argmax(logits[:, :-1], -1).astype(codes.dtype)  # [B, T]: position t's prediction of codes[:, t]
    swap = jax.random.bernoulli(rng, probability, codes.shape) & (own < decoder.config.num_codes)
    return jnp.where(swap, own, codes)


def normalise_text_table(table: np.ndarray, text_norm: str) -> np.ndarray:
    """The frozen LLM embedding table [V, D] the decoder reads: as it is ("none", the release, whose Qwen2 table has
    std ~0.015) or scaled to unit standard deviation ("unit_std"; a tiny LLM's table at its init scale of 0.02 is
    read about half as well in stage 3.2: docs/reproductions/vita.md). The workdir stores the table it trained on,
    so `load_speaker` reads the same one."""
    if text_norm == "none":
        return table
    if text_norm == "unit_std":
        std = float(table.std())
        if not std > 0:
            raise ValueError("text_norm=unit_std: the embedding table is constant")
        return (table / std).astype(np.float32)
    raise ValueError(f"unknown text_norm {text_norm!r}; use none or unit_std")


def make_task(config, workdir: str | None = None, tokenizer=None) -> Task:
    """`tokenizer` replaces the config's (the planner's stand-in for a tokenizer folder that is not on the host)."""
    if tokenizer is None:
        tokenizer = data_lib.build_tokenizer(get(config, "tokenizer", None), workdir)
    text_from = get(config, "text_from", "")
    if text_from and os.path.isfile(os.path.join(text_from, SAVED_TOKENIZER_FILE)):
        tokenizer = data_lib.build_tokenizer(None, text_from)  # the LLM's own vocabulary
    keep_tokenizer(tokenizer, workdir)
    cfg = decoder_config_from(config)
    decoder = SpeechDecoder(cfg)
    codec_from = get(config, "codec_from", "")
    codec_params = None  # without codec_from: a random codec, made in init_params (abstract when planning)
    if codec_from:
        codec, codec_params = load_codec(codec_from)
        codec_params = jax.tree.map(np.asarray, codec_params)
    else:  # plumbing tests (the tiny codec) and ahead-of-time plans (config.codec: the release's fields)
        codec_fields = get(config, "codec", None)  # {}: the release's CodecConfig defaults; absent: the tiny codec
        codec = Codec(CodecConfig.from_fields(TINY_CODEC_FIELDS if codec_fields is None else plain(codec_fields)))
    if cfg.num_codes != codec.config.n_codes:
        raise ValueError(f"decoder.num_codes={cfg.num_codes} but the codec has {codec.config.n_codes} codes")
    table = None  # without text_from: a random N(0, 1) table [vocab, text_width], made in init_params
    if text_from:
        table = np.asarray(restore_params(text_from)["lm"]["embed"]["embedding"], np.float32)
        table = normalise_text_table(table, get(config, "text_norm", "none"))
    table_shape = table.shape if table is not None else (tokenizer.vocab_size,
                                                         int(get(config, "text_width", 0) or 0) or cfg.idim)
    if table_shape[1] % cfg.idim:
        raise ValueError(f"the LLM's embedding width {table_shape[1]} is not a multiple of decoder.idim {cfg.idim}")
    pieces_per_token = table_shape[1] // cfg.idim
    scheduled_sampling = float(get(config, "scheduled_sampling", 0.0) or 0.0)
    if not 0.0 <= scheduled_sampling < 1.0:
        raise ValueError(f"scheduled_sampling is a probability in [0, 1), got {scheduled_sampling}")
    dcfg = plain(config.data)
    max_text = int(dcfg.get("max_text_tokens", 32))
    datasets = plain(dcfg.get("datasets") or {})
    if not datasets:
        raise ValueError("no training data: set config.data.datasets")

    def init_params(rng):
        decoder_rng, table_rng, codec_rng = jax.random.split(rng, 3)
        text_embed = (jnp.asarray(table) if table is not None
                      else jax.random.normal(table_rng, table_shape, jnp.float32))  # unit std already
        frozen_codec = (jax.tree.map(jnp.asarray, codec_params) if codec_params is not None
                        else init_codec(codec.config, codec_rng))
        return {"decoder": init_decoder(cfg, decoder_rng), "text_embed": text_embed, "codec": frozen_codec}

    def loss_fn(params, batch, rng):
        sg = jax.lax.stop_gradient
        emb = sg(params["text_embed"])[batch["text_ids"]]  # [B, n, D]
        b, n, d = emb.shape
        text = emb.reshape(b, n * pieces_per_token, cfg.idim)  # the release's reshape(-1, idim)
        text_len = batch["text_len"] * pieces_per_token
        codes, _ = codec.apply({"params": sg(params["codec"])}, batch["wav"], method="encode")  # [B, T]
        code_len = -(-batch["wav_len"] // codec.config.hop_length)
        targets, mask = code_targets(codes, code_len, cfg)
        inputs = codes
        if scheduled_sampling > 0 and rng is not None:  # some of its own predictions in place of the true codes
            inputs = own_predictions_mixed_in(decoder, params["decoder"], text, text_len, codes, code_len,
                                              scheduled_sampling, rng)
        logits = decoder.apply({"params": params["decoder"]}, text, text_len, inputs, code_len)  # [B, T + 1, V]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        tokens = jnp.maximum(mask.sum(), 1)
        loss = jnp.sum(nll * mask) / tokens
        predicted = jnp.argmax(logits, -1)
        accuracy = jnp.sum((predicted == targets) * mask) / tokens
        ends = targets == cfg.eos  # [B, T + 1]: one slot per example, where it must stop
        eos_accuracy = jnp.sum((predicted == cfg.eos) & ends) / jnp.maximum(ends.sum(), 1)
        return loss, {"tokens": mask.sum().astype(jnp.float32), "accuracy": accuracy, "eos_accuracy": eos_accuracy}

    transform = SpeechPairTransform(tokenizer, codec.config.sampling_rate, codec.config.hop_length, max_text,
                                    float(dcfg.get("max_speech_seconds", 4.0)))

    def iterator(name, spec, shard: DataShard, split: str, shuffle: bool):
        batch = shard.local_batch(int(spec.get("batch_size") or config.batch_size))
        return task_iterator(name, make_source(spec, split), transform, batch_size=batch,
                             shard=(shard.index, shard.count),
                             seed=config.seed, data_config=dcfg, shuffle=shuffle, num_epochs=None)

    def make_train_data(shard: DataShard):
        return {name: iterator(name, spec, shard, "train", True) for name, spec in datasets.items()}

    def pairs_spec(batch: int) -> dict:  # a batch as SpeechPairTransform collates it, full length
        return {"text_ids": jax.ShapeDtypeStruct((batch, transform.max_text), jnp.int32),
                "text_len": jax.ShapeDtypeStruct((batch,), jnp.int32),
                "wav": jax.ShapeDtypeStruct((batch, transform.max_samples), jnp.float32),
                "wav_len": jax.ShapeDtypeStruct((batch,), jnp.int32)}

    def batch_spec():  # each dataset's global batch (ahead-of-time plans)
        return {name: pairs_spec(int(spec.get("batch_size") or config.batch_size)) for name, spec in datasets.items()}

    def flops_per_example() -> float:  # the decoder's forward and backward (3x), the frozen codec encoder's forward
        one = pairs_spec(1)
        decoder_shapes = jax.eval_shape(lambda: init_decoder(cfg, jax.random.key(0)))  # shapes only: no table made
        codec_shapes = (codec_params if codec_params is not None
                        else jax.eval_shape(lambda: init_codec(codec.config, jax.random.key(0))))
        codes = jax.ShapeDtypeStruct((1, transform.max_samples // codec.config.hop_length), jnp.int32)
        text = jax.ShapeDtypeStruct((1, max_text * pieces_per_token, cfg.idim), jnp.float32)
        decode = matmul_flops(lambda p, t, tl, c, cl: decoder.apply({"params": p}, t, tl, c, cl),
                              decoder_shapes, text, one["text_len"], codes, one["wav_len"])
        encode = matmul_flops(lambda p, w: codec.apply({"params": p}, w, method="encode"), codec_shapes, one["wav"])
        return 3 * decode + encode

    task = Task(init_params=init_params, loss_fn=loss_fn, make_train_data=make_train_data,
                dataset_weights={n: float(s.get("weight", 1.0)) for n, s in datasets.items()},
                model=decoder, tokenizer=tokenizer, extras={"codec": codec, "transform": transform},
                flops_per_example=flops_per_example(), batch_spec=batch_spec)
    return task


def text_use(workdir: str, num_pairs: int = 32, split: str = "validation", step: int | None = None) -> dict:
    """Does a trained decoder read its text? Teacher-forced loss on held-out (text, speech) pairs with each pair's own
    text against another pair's text (the batch rolled by one) and the code accuracies: a decoder that ignores its
    text (a code language model) scores the same on both; `gain` is the loss it loses without its own text."""
    config = restore_config(workdir)
    task = make_task(config, workdir)
    source = make_source(next(iter(plain(config.data.datasets).values())), split)  # make_task: at least one
    pairs = []
    for i in range(len(source)):
        try:
            pairs.append(task.extras["transform"](source[i]))
        except BadRecord:
            continue
        if len(pairs) == num_pairs:
            break
    if len(pairs) < 2:
        raise ValueError(f"text_use needs at least 2 usable {split} pairs, found {len(pairs)}")
    batch = {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}
    other = {**batch, "text_ids": np.roll(batch["text_ids"], 1, 0), "text_len": np.roll(batch["text_len"], 1, 0)}
    params = restore_params(workdir, step)
    loss = jax.jit(lambda p, b: task.loss_fn(p, b, None))
    out = {}
    for name, b in (("own", batch), ("other", other)):
        value, metrics = loss(params, {k: jnp.asarray(v) for k, v in b.items()})
        out[name] = {"loss": float(value), "accuracy": float(metrics["accuracy"]),
                     "eos_accuracy": float(metrics["eos_accuracy"])}
    out["gain"] = out["other"]["loss"] - out["own"]["loss"]
    out["pairs"] = len(pairs)
    return out


def load_speaker(workdir: str, step: int | None = None, stream_config=None, max_tokens: int = 400):
    """A stage-3.2 workdir -> `vita_jax.tts.Speaker` (decoder, the frozen LLM embedding table and codec it holds)."""
    config = restore_config(workdir)
    cfg = decoder_config_from(config)
    codec_from = get(config, "codec_from", "")
    codec = load_codec(codec_from)[0] if codec_from else make_task(config, None).codec
    params = restore_params(workdir, step)
    return Speaker.from_params(params["text_embed"], SpeechDecoder(cfg), params["decoder"], codec, params["codec"],
                               data_lib.build_tokenizer(None, workdir), stream_config or StreamConfig(),
                               max_tokens=max_tokens)
