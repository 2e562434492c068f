"""Speech for the codec and the speech decoder (VITA-1.5 stages 3.1 / 3.2): the record sources (the family's
datasets, or every .wav / .flac under a folder) and a record's first clip as a float32 waveform at a given rate,
cropped to fixed segments for codec training. Bad audio is a `BadRecord` (counted and skipped by the pipeline).
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from common.data.audio import load_audio
from common.data.records import CORRUPT_AUDIO, BadRecord
from vita_jax import data as data_lib
from vita_jax.codec import CodecConfig
from vita_jax.tts import resample


class AudioDirSource:
    """Every .wav / .flac under a folder (any rate; resampled by the transform)."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"audio folder {root!r} does not exist")
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith((".wav", ".flac")))
        if not self.files:
            raise ValueError(f"no .wav / .flac files under {root!r}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return {"audio": [self.files[index]]}


def make_speech_source(spec: dict, split: str = "train"):
    if spec.get("source") == "audio_dir":
        return AudioDirSource(spec["root"])
    return data_lib.make_source(spec, split)


def record_waveform(record: dict, rate: int) -> np.ndarray:
    """A record's first clip (waveform at 16 kHz, or a file at any rate) -> float32 [N] at `rate`."""
    audio = (record.get("audio") or [None])[0]
    if audio is None:
        raise BadRecord(data_lib.EMPTY_AUDIO, "the record has no audio")
    if isinstance(audio, np.ndarray):
        wave, src_rate = audio.astype(np.float32).reshape(-1), data_lib.SAMPLE_RATE
    else:
        wave, src_rate = load_audio(audio, expected_rate=None)
    if wave.size == 0 or float(np.abs(wave).max()) <= 1e-6:
        raise BadRecord(data_lib.EMPTY_AUDIO, "silent or empty audio")
    if not np.isfinite(wave).all():
        raise BadRecord(CORRUPT_AUDIO, "non-finite samples")
    return resample(wave, src_rate, rate)


class SegmentTransform:
    """record -> {"wav": float32 [segment]}: a crop (deterministic per clip) at the codec's rate, zero-padded when
    the clip is shorter."""

    def __init__(self, cfg: CodecConfig, segment: int):
        if segment % cfg.hop_length:
            raise ValueError(f"segment of {segment} samples is not a multiple of the {cfg.hop_length}-sample token")
        self.cfg, self.segment = cfg, segment

    def __call__(self, record: dict) -> dict:
        wave = record_waveform(record, self.cfg.sampling_rate)
        if wave.size > self.segment:
            start = zlib.crc32(wave[:64].tobytes()) % (wave.size - self.segment + 1)
            wave = wave[start:start + self.segment]
        return {"wav": np.pad(wave, (0, self.segment - wave.size)).astype(np.float32)}
