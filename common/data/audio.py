"""Audio: loading with sample-rate checks, and a numpy Kaldi-compatible log-mel filterbank
(torchaudio.compliance.kaldi.fbank).

Shapes: waveform float [num_samples] at 16 kHz; fbank float32 [num_frames, num_mel_bins] with
num_frames = 1 + (num_samples - 400) // 160 for the 25 ms / 10 ms defaults (snip_edges).
"""
from __future__ import annotations

import functools
import io
import math
import os

import numpy as np

from common.data.records import CORRUPT_AUDIO, MISSING_AUDIO, WRONG_SAMPLE_RATE, BadRecord

SAMPLE_RATE = 16000
_EPS32 = float(np.finfo(np.float32).eps)


def load_audio(src, expected_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """path / bytes (wav, flac, ogg: whatever libsndfile reads) -> (float32 mono [N] in [-1, 1], sample rate).

    A missing or unreadable file is BadRecord(missing_audio / corrupt_audio); a sample rate other than
    `expected_rate` is BadRecord(wrong_sample_rate) - nothing is resampled silently.
    """
    import soundfile as sf

    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise BadRecord(MISSING_AUDIO, os.fspath(src))
        if os.path.getsize(src) == 0:
            raise BadRecord(CORRUPT_AUDIO, f"empty file {os.fspath(src)}")
        where, f = os.fspath(src), src
    else:
        if not src:
            raise BadRecord(CORRUPT_AUDIO, "empty bytes")
        where, f = "<bytes>", io.BytesIO(bytes(src))
    try:
        data, rate = sf.read(f, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
        raise BadRecord(CORRUPT_AUDIO, f"{where}: {e}") from None
    if expected_rate is not None and rate != expected_rate:
        raise BadRecord(WRONG_SAMPLE_RATE, f"{where}: {rate} Hz, expected {expected_rate} Hz")
    if data.shape[0] == 0:
        raise BadRecord(CORRUPT_AUDIO, f"{where}: no samples")
    return data.mean(axis=1).astype(np.float32), int(rate)


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def _cached_banks_t(num_bins: int, padded: int, sample_rate: float, low: float, high: float, dtype: str) -> np.ndarray:
    # [padded//2+1, bins]
    return np.ascontiguousarray(mel_banks(num_bins, padded, sample_rate, low, high).T.astype(dtype))


@functools.lru_cache(maxsize=16)
def _window(window_type: str, size: int, dtype: str) -> np.ndarray:
    n = np.arange(size, dtype=np.float64)
    if window_type in ("povey", "hanning"):
        w = 0.5 - 0.5 * np.cos(2 * math.pi * n / (size - 1))
        w = w**0.85 if window_type == "povey" else w
    elif window_type == "hamming":
        w = 0.54 - 0.46 * np.cos(2 * math.pi * n / (size - 1))
    elif window_type == "rectangular":
        w = np.ones(size)
    else:
        raise ValueError(f"unsupported window {window_type}")
    return w.astype(dtype)


def mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float,
              high_freq: float) -> np.ndarray:
    """Kaldi's triangular mel filters: float64 [num_bins, padded_window_size // 2 + 1] (last FFT bin gets 0)."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range low={low_freq} high={high_freq} nyquist={nyquist}")
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(fft_bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


def _frames(x: np.ndarray, size: int, shift: int, snip_edges: bool) -> np.ndarray:
    n = x.shape[0]
    if snip_edges:
        if n < size:
            return np.zeros((0, size), x.dtype)
        m = 1 + (n - size) // shift
    else:
        rev = x[::-1]
        m = (n + shift // 2) // shift
        pad = size // 2 - shift // 2
        x = np.concatenate([rev[-pad:], x, rev]) if pad > 0 else np.concatenate([x[-pad:], rev])
    return np.lib.stride_tricks.sliding_window_view(x, size)[::shift][:m]


def fbank(
    waveform: np.ndarray,
    sample_rate: float = SAMPLE_RATE,
    num_mel_bins: int = 80,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    dither: float = 0.0,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    window_type: str = "povey",
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    use_energy: bool = False,
    energy_floor: float = 1.0,
    raw_energy: bool = True,
    use_log_fbank: bool = True,
    use_power: bool = True,
    subtract_mean: bool = False,
    rng: np.random.Generator | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Kaldi fbank, same arguments and defaults as torchaudio.compliance.kaldi.fbank. [N] -> float32 [frames, bins].

    Computed in `dtype` (float32 like torchaudio, ~3x faster than float64). Dither (if nonzero) uses `rng` (numpy),
    so it is random like Kaldi's, not bit-equal to torch.
    """
    x = np.asarray(waveform, dtype).reshape(-1)
    shift = int(sample_rate * frame_shift * 0.001)
    size = int(sample_rate * frame_length * 0.001)
    padded = 1 << (size - 1).bit_length() if round_to_power_of_two else size
    if not 2 <= size <= len(x):
        raise ValueError(f"waveform of {len(x)} samples is shorter than one window ({size})")
    frames = _frames(x, size, shift, snip_edges)  # [m, size]
    if dither != 0.0:
        frames = frames + (rng or np.random.default_rng()).standard_normal(frames.shape).astype(dtype) * dither
    if remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)

    def log_energy(fr):
        e = np.log(np.maximum((fr**2).sum(axis=1), _EPS32))
        return e if energy_floor == 0.0 else np.maximum(e, math.log(energy_floor))

    if use_energy and raw_energy:
        energy = log_energy(frames)
    if preemphasis_coefficient != 0.0:
        prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - preemphasis_coefficient * prev
    frames = frames * _window(window_type, size, dtype)
    if padded != size:
        frames = np.pad(frames, ((0, 0), (0, padded - size)))
    if use_energy and not raw_energy:
        energy = log_energy(frames)
    f = np.fft.rfft(frames, axis=1)  # [m, padded // 2 + 1]
    spec = (f.real**2 + f.imag**2).astype(dtype)
    if not use_power:
        spec = np.sqrt(spec)
    feats = spec @ _cached_banks_t(num_mel_bins, padded, float(sample_rate), float(low_freq), float(high_freq),
                                   dtype)  # [m, bins]
    if use_log_fbank:
        feats = np.log(np.maximum(feats, np.asarray(_EPS32, dtype)))
    if use_energy:
        feats = np.concatenate([energy[:, None], feats], axis=1)
    if subtract_mean:
        feats = feats - feats.mean(axis=0, keepdims=True)
    return feats.astype(np.float32)


def speech_fbank(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 80, dither: float = 0.0,
                 rng=None) -> np.ndarray:
    """The WeNet / VITA audio-encoder input: waveform in [-1, 1] scaled to int16 range, 80-bin fbank, 25/10 ms."""
    return fbank(np.asarray(waveform, np.float32) * np.float32(32768.0), sample_rate, num_mel_bins, dither=dither,
                 energy_floor=0.0, rng=rng)


def num_fbank_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, frame_length: float = 25.0,
                     frame_shift: float = 10.0) -> int:
    size, shift = int(sample_rate * frame_length * 0.001), int(sample_rate * frame_shift * 0.001)
    return 0 if num_samples < size else 1 + (num_samples - size) // shift
