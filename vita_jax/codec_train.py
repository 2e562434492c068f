"""Stage 3.1 of VITA-1.5 (Fu et al. 2025, Sec. 3.1 "codec"): training the speech codec, which the release ships no
trainer for (only its discriminators and GAN losses in `ticodec/models.py`). HiFi-GAN-style:

  generator side: 45 x L1 of log-mels (80 bins, n_fft 1024, hop 240 at 24 kHz) + multi-resolution STFT (spectral
      convergence + log magnitude) + VQ (codebook + 0.25 commitment, both quantizers) + LSGAN adversarial
      + 2 x feature matching, against
  discriminator side: multi-period (periods 2, 3, 5, 7, 11) + multi-scale (3 scales) discriminators, LSGAN.

One optimizer trains both through `common.trainer`: the generator's adversarial terms see the discriminator's params
through stop_gradient and the discriminator's loss sees the reconstruction through stop_gradient, so one gradient of
the summed loss is the simultaneous update of each player (HiFi-GAN alternates D then G within a step; both use
AdamW with the same settings there too). The style BatchNorm's running statistics are not trained: after training
`calibrate` measures them over the data (precise BN), and `export` writes the release layout (codec/model.json +
final.pt) with the voice = the most frequent global tokens of the data.

Config (configs/vita/tiny_stage3_1.py): codec {CodecConfig fields}, discriminator {channel_scale, periods},
loss {mel, stft, vq, adversarial, feature, stft_resolutions}, data {segment_seconds, datasets: {name: {source:
shapes (kind asr | spoken_qa) | librispeech (root) | audio_dir (dir), ...}}}.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.config_sections import config_section, get, has_section, plain, section_fields
from common.data.audio import mel_banks
from common.data.pipeline import task_iterator
from common.data.records import BadRecord
from common.optimizer import FROZEN, group_labels, parse_param_groups
from common.task_utils import graft, restore_config, restore_params
from common.trainer import DataShard, Task
from vita_jax.codec import LRELU_SLOPE, Codec, CodecConfig, pad_to_tokens
from vita_jax.codec_discriminators import (Discriminators, discriminator_loss, feature_matching_loss,
                                           generator_adversarial_loss)
from vita_jax.hf import save_codec
from vita_jax.speech_sources import SegmentTransform, make_speech_source, record_waveform

STYLE_STATS = r"codec/encoder/global_encoder/fn_2/running_.*"


# ----------------------------------------------------------------------------------------------------------------
# Spectral losses
# ----------------------------------------------------------------------------------------------------------------
def stft_magnitude(wav: jax.Array, n_fft: int, hop: int, win: int) -> jax.Array:
    """[B, N] -> |STFT| [B, frames, n_fft / 2 + 1] (reflect padding (n_fft - hop) / 2, periodic Hann of `win`)."""
    p = (n_fft - hop) // 2
    x = jnp.pad(wav, ((0, 0), (p, p)), mode="reflect")
    frames = 1 + (x.shape[1] - n_fft) // hop
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None]
    window = np.zeros(n_fft, np.float32)
    off = (n_fft - win) // 2
    window[off:off + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = jnp.fft.rfft(x[:, idx] * window, axis=-1)
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-9)


def log_mel(wav: jax.Array, cfg: CodecConfig) -> jax.Array:
    """[B, N] -> log mel [B, frames, num_mels] (Kaldi's triangular filters from common.data.audio)."""
    banks = mel_banks(cfg.num_mels, cfg.n_fft, cfg.sampling_rate, cfg.fmin, cfg.fmax or cfg.sampling_rate / 2)
    mag = stft_magnitude(wav, cfg.n_fft, cfg.hop_size, cfg.win_size)
    return jnp.log(jnp.maximum(mag @ jnp.asarray(banks.T, jnp.float32), 1e-5))


def multi_resolution_stft_loss(wav, recon, resolutions: Sequence[Sequence[int]]) -> jax.Array:
    """Mean over (n_fft, hop, win) of spectral convergence + L1 of log magnitudes (Parallel WaveGAN)."""
    total = 0.0
    for n_fft, hop, win in resolutions:
        s, s_hat = stft_magnitude(wav, n_fft, hop, win), stft_magnitude(recon, n_fft, hop, win)
        sc = jnp.linalg.norm((s - s_hat).reshape(s.shape[0], -1), axis=-1) / jnp.linalg.norm(
            s.reshape(s.shape[0], -1), axis=-1)
        total = total + jnp.mean(sc) + jnp.mean(jnp.abs(jnp.log(s) - jnp.log(s_hat)))
    return total / len(resolutions)


def mel_distance(wav, recon, cfg: CodecConfig) -> jax.Array:
    """Mean |log mel - log mel'| per example [B] (the reconstruction metric of the reports)."""
    return jnp.mean(jnp.abs(log_mel(wav, cfg) - log_mel(recon, cfg)), axis=(1, 2))


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CodecLossWeights:
    """config.loss: the codec's loss weights (HiFi-GAN / EnCodec's recipe; adversarial 0 = no GAN, no
    discriminator) and the multi-resolution STFT loss's (fft, hop, window) triples."""

    mel: float = 45.0
    stft: float = 1.0
    vq: float = 1.0
    adversarial: float = 1.0
    feature: float = 2.0
    stft_resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


@dataclasses.dataclass(frozen=True)
class CodeRestart:
    """config.code_restart (given = on): dead-code restarts (`restart_dead_codes`)."""

    decay: float = 0.9  # of the codes' usage EMA, per step
    threshold: float = 0.1  # a code whose share falls below threshold / K restarts


def codec_config_from(config) -> CodecConfig:
    return CodecConfig.from_fields(section_fields(get(config, "codec", {}), CodecConfig, "config.codec"))


def discriminators_from(config) -> Discriminators:
    """config.discriminator: the fields of `Discriminators` (periods, channel_scale, num_scales, grouped)."""
    return Discriminators(**section_fields(get(config, "discriminator", {}), Discriminators, "config.discriminator"))


def segment_samples(config, cfg: CodecConfig) -> int:
    seconds = float(get(config.data, "segment_seconds", cfg.segment_size / cfg.sampling_rate))
    return int(round(seconds * cfg.sampling_rate / cfg.hop_length)) * cfg.hop_length


def make_losses(codec: Codec, disc: Discriminators, weights: CodecLossWeights):
    cfg = codec.config
    resolutions = tuple(tuple(int(x) for x in r) for r in weights.stft_resolutions)
    adversarial = weights.adversarial > 0

    def loss_fn(params, batch, rng):
        del rng
        sg = jax.lax.stop_gradient
        wav = batch["wav"]  # [B, N]
        recon, vq, codes = codec.apply({"params": params["codec"]}, wav, True)
        mel = jnp.mean(jnp.abs(log_mel(wav, cfg) - log_mel(recon, cfg)))
        stft = multi_resolution_stft_loss(wav, recon, resolutions) if weights.stft else jnp.zeros(())
        total = weights.mel * mel + weights.stft * stft + weights.vq * vq
        aux = {"tokens": jnp.asarray(wav.shape[0], jnp.float32), "mel_l1": mel, "stft": stft, "vq": vq,
               "codebook_usage": jnp.mean(jnp.zeros(cfg.n_codes).at[codes.reshape(-1)].set(1.0))}
        if "code_usage" in params:  # dead-code restarts on: perplexity of the codes' usage EMA / K (1 = uniform)
            u = params["code_usage"] / jnp.sum(params["code_usage"])
            aux["code_perplexity"] = jnp.exp(-jnp.sum(u * jnp.log(jnp.maximum(u, 1e-12)))) / cfg.n_codes
        if adversarial:
            d = params["discriminator"]
            real = disc.apply({"params": d}, wav)
            fake_for_d = disc.apply({"params": d}, sg(recon))
            fake_for_g = disc.apply({"params": sg(d)}, recon)
            d_loss = discriminator_loss(real, fake_for_d)
            adv = generator_adversarial_loss(fake_for_g)
            fm = feature_matching_loss(real, fake_for_g)
            total = total + weights.adversarial * adv + weights.feature * fm + d_loss
            aux.update(adversarial=adv, feature=fm, discriminator=d_loss)
        return total, aux

    return loss_fn


def restart_dead_codes(codec: Codec, params, wav, rng, decay: float = 0.9, threshold: float = 0.1):
    """Dead-code restarts (SoundStream / EnCodec): `params["code_usage"]` [K] is an EMA (`decay` per step) of each
    code's share of the batch's frames; a code whose share falls below `threshold` / K is moved onto a random latent
    of this batch (wav [B, N]) and its share reset to 1 / K -> new params. Latents drift under training faster
    than the codes the frames no longer pick (which get no gradient), and would otherwise be left with a few codes."""
    latent, codes = codec.apply({"params": params["codec"]}, wav, True, method="quantizer_inputs")
    flat, codes = latent.reshape(-1, latent.shape[-1]), codes.reshape(-1)  # [N, D], [N]
    k = params["code_usage"].shape[0]
    share = jnp.zeros(k, jnp.float32).at[codes].add(1.0) / codes.shape[0]
    usage = decay * params["code_usage"] + (1 - decay) * share
    dead = usage < threshold / k
    book = params["codec"]["codebook"]
    fresh = jax.lax.stop_gradient(flat)[jax.random.randint(rng, (k,), 0, flat.shape[0])].astype(book.dtype)
    return {**params, "codec": {**params["codec"], "codebook": jnp.where(dead[:, None], fresh, book)},
            "code_usage": jnp.where(dead, 1.0 / k, usage)}


def make_task(config, workdir: str | None = None) -> Task:
    cfg = codec_config_from(config)
    codec, disc = Codec(cfg), discriminators_from(config)
    segment = segment_samples(config, cfg)
    weights = config_section(config, "loss", CodecLossWeights)
    adversarial = weights.adversarial > 0
    datasets = plain(config.data.get("datasets") or {})
    if not datasets:
        raise ValueError("no training data: set config.data.datasets")
    dcfg = plain(config.data)

    restart = config_section(config, "code_restart", CodeRestart) if has_section(config, "code_restart") else None
    if restart:
        groups = parse_param_groups(get(config.optimizer, "param_groups", None))
        if group_labels({"code_usage": 0}, groups)["code_usage"] != FROZEN:
            raise ValueError("config.code_restart needs the optimizer to freeze 'code_usage' (the restarts' usage "
                             "statistics, not learnt): add (r'code_usage', dict(frozen=True)) to param_groups")

    def init_params(rng):
        wav = jnp.zeros((2, segment), jnp.float32)
        params = {"codec": codec.init(jax.random.fold_in(rng, 0), wav)["params"]}
        if adversarial:
            params["discriminator"] = disc.init(jax.random.fold_in(rng, 1), wav)["params"]
        if restart:
            params["code_usage"] = jnp.full((cfg.n_codes,), 1.0 / cfg.n_codes, jnp.float32)  # frozen: not learnt
        return params

    def update_params(params, batches, rng):
        wav = jnp.concatenate([b["wav"] for _, b in sorted(batches.items())])
        return restart_dead_codes(codec, params, wav, rng, restart.decay, restart.threshold)

    def iterator(name, spec, shard: DataShard, split: str, shuffle: bool):
        batch = shard.local_batch(int(spec.get("batch_size") or config.batch_size))
        return task_iterator(name, make_speech_source(spec, split), SegmentTransform(cfg, segment), batch_size=batch,
                             shard=(shard.index, shard.count),
                             seed=config.seed, data_config=dcfg, shuffle=shuffle, num_epochs=None)

    def make_train_data(shard: DataShard):
        return {name: iterator(name, spec, shard, "train", True) for name, spec in datasets.items()}

    def load(params):
        if get(config, "init_from", ""):
            return graft(params, restore_params(config.init_from), what=config.init_from)
        clips = int(get(config, "codebook_init_clips", 0) or 0)
        if not clips:
            return params
        name, spec = sorted(datasets.items())[0]
        source, transform = make_speech_source(spec, "train"), SegmentTransform(cfg, segment)
        waves = []
        for i in range(len(source)):
            try:
                waves.append(transform(source[i])["wav"])
            except BadRecord:
                continue
            if len(waves) == clips:
                break
        return {**params, "codec": init_codebooks_from_data(codec, params["codec"], np.stack(waves),
                                                            int(config.seed))}
    task = Task(init_params=init_params, loss_fn=make_losses(codec, disc, weights), make_train_data=make_train_data,
                dataset_weights={n: float(s.get("weight", 1.0)) for n, s in datasets.items()}, load_pretrained=load,
                update_params=update_params if restart else None, model=codec, model_config=cfg,
                extras={"segment": segment})
    return task


def init_codebooks_from_data(codec: Codec, params, waves: np.ndarray, seed: int = 0) -> dict:
    """Codebooks initialised from the encoder's outputs on `waves` [n, N] (random latent vectors, and style pieces
    with a little noise: a one-pass k-means seeding as SoundStream / EnCodec do), so training does not start with
    every frame on the one code nearest the origin (the release's U(-1/K, 1/K) init collapses this way at first)."""
    rng = np.random.default_rng(seed)
    latent, style = jax.jit(lambda p, w: codec.apply({"params": p}, w, method=lambda m, x: m.encoder(x, True)))(
        params, jnp.asarray(waves, jnp.float32))
    vectors = np.asarray(latent).reshape(-1, latent.shape[-1])  # [n T, D]
    k = params["codebook"].shape[0]
    pick = rng.choice(len(vectors), k, replace=len(vectors) < k)
    codebook = vectors[pick] + 1e-3 * vectors.std() * rng.standard_normal((k, vectors.shape[1]))
    g = params["global_codebooks"]  # [G, K, d]
    pieces = np.asarray(style).reshape(style.shape[0], g.shape[0], g.shape[2])  # [n, G, d]
    rows = rng.integers(0, len(pieces), (g.shape[0], k))
    style_books = np.stack([pieces[rows[i], i] for i in range(g.shape[0])])
    style_books = style_books + 0.1 * pieces.std() * rng.standard_normal(style_books.shape)
    put = lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding)  # noqa: E731
    return {**params, "codebook": put(codebook, params["codebook"]),
            "global_codebooks": put(style_books, params["global_codebooks"])}


# ----------------------------------------------------------------------------------------------------------------
# After training: style statistics, the voice, the release layout
# ----------------------------------------------------------------------------------------------------------------
def calibrate_style_norm(codec: Codec, params, waves: Sequence[np.ndarray]) -> dict:
    """Sets the style BatchNorm's running mean / variance to the statistics of its inputs over `waves` (each
    [N] at the codec's rate, N a multiple of hop) -> new codec params."""
    def features(p, wav):  # the style Dense's output after its LeakyReLU = the norm's input, [B, C]
        _, state = codec.apply({"params": p}, wav, method=lambda m, w: m.encoder(w),
                               capture_intermediates=_is_style_dense, mutable=["intermediates"])
        out = state["intermediates"]["encoder"]["global_encoder"]["fn_0"]["__call__"][0]
        return jax.nn.leaky_relu(out, LRELU_SLOPE)

    feats = jax.jit(features)
    rows = np.concatenate([np.asarray(feats(params, jnp.asarray(w[None], jnp.float32))) for w in waves])  # [n, C]
    norm = dict(params["encoder"]["global_encoder"]["fn_2"])
    norm["running_mean"] = jnp.asarray(rows.mean(0))
    norm["running_var"] = jnp.asarray(rows.var(0, ddof=1) if len(rows) > 1 else np.ones(rows.shape[1], np.float32))
    encoder = dict(params["encoder"])
    encoder["global_encoder"] = {**params["encoder"]["global_encoder"], "fn_2": norm}
    return {**params, "encoder": encoder}


def _is_style_dense(module, method_name) -> bool:
    return module.name == "fn_0" and method_name == "__call__"


def dominant_voice(codec: Codec, params, waves: Sequence[np.ndarray]) -> tuple[int, ...]:
    """The most frequent global token of each style codebook over `waves`: one fixed voice, as VITA-1.5 speaks."""
    enc = jax.jit(lambda p, w: codec.apply({"params": p}, w, method="encode")[1])
    tokens = np.concatenate([np.asarray(enc(params, jnp.asarray(w[None], jnp.float32))) for w in waves])  # [n, G]
    return tuple(int(np.bincount(tokens[:, g]).argmax()) for g in range(tokens.shape[1]))


def export(workdir: str, out_dir: str, num_clips: int = 64, step: int | None = None) -> tuple[CodecConfig, dict]:
    """A stage-3.1 workdir -> the release layout `out_dir/{model.json, final.pt}` (style norm calibrated, the voice
    picked from the training data) -> (config, params)."""
    config = restore_config(workdir)
    task = make_task(config, None)
    codec, cfg = task.model, task.model_config
    params = restore_params(workdir, step)["codec"]
    waves = clips_for_calibration(config, cfg, num_clips)
    params = calibrate_style_norm(codec, params, waves)
    cfg = cfg.replace(global_tokens=dominant_voice(codec, params, waves))
    save_codec(out_dir, params, cfg)
    return cfg, params


def clips_for_calibration(config, cfg: CodecConfig, num_clips: int) -> list[np.ndarray]:
    waves = []
    for spec in plain(config.data.get("datasets") or {}).values():
        source = make_speech_source(spec, "train")
        for i in range(min(len(source), num_clips)):
            try:
                waves.append(pad_to_tokens(record_waveform(source[i], cfg.sampling_rate), cfg.hop_length))
            except BadRecord:
                continue
        if len(waves) >= num_clips:
            break
    if not waves:
        raise ValueError("no usable clips to calibrate the codec's style statistics")
    return waves[:num_clips]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Stage 3.1 codec: export a trained workdir in the release layout "
                                            "(training: python -m vita_jax.train "
                                            "--config configs/vita/tiny_stage3_1.py)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="folder for model.json + final.pt (the release's vita_tts_ckpt/codec)")
    p.add_argument("--num_clips", type=int, default=64)
    args = p.parse_args(argv)
    cfg, _ = export(args.workdir, args.out, args.num_clips)
    print(f"wrote {args.out}/model.json and final.pt (voice {list(cfg.global_tokens)})")


if __name__ == "__main__":
    main()
