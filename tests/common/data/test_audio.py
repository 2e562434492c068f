"""Kaldi fbank vs torchaudio.compliance.kaldi.fbank on real speech; audio loading and the word bank."""
import importlib.util
import os

import chex
import numpy as np
import pytest
import torch

from common.data import audio as A
from common.data.records import BadRecord
from common.data.speech import VOCABULARY, load_word_bank


def _kaldi_reference():
    """torchaudio's kaldi module when torchaudio imports beside this torch, else the vendored copy of the same file."""
    try:
        import torchaudio.compliance.kaldi as kaldi

        return kaldi
    except Exception:
        path = os.path.join(os.path.dirname(__file__), "torchaudio_kaldi_reference.py")
        spec = importlib.util.spec_from_file_location("_torchaudio_kaldi_ref", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


@pytest.fixture(scope="module")
def speech():
    wb = load_word_bank()
    return wb.say("what color is the large circle at the top left", np.random.default_rng(3))


def test_word_bank_covers_vocabulary_and_is_speech(speech):
    wb = load_word_bank()
    assert set(VOCABULARY) <= wb.words and wb.sample_rate == 16000
    assert speech.dtype == np.float32 and 1.5 < len(speech) / 16000 < 6
    # speech has energy well above the pauses
    frames = speech[: len(speech) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(1))
    assert rms.max() > 20 * np.median(np.sort(rms)[:10])
    with pytest.raises(KeyError):
        wb.say("supercalifragilistic")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_mel_bins=80),
        dict(num_mel_bins=80, energy_floor=0.0),
        dict(num_mel_bins=40, use_energy=True, window_type="hamming", low_freq=60, high_freq=-400),
        dict(num_mel_bins=80, snip_edges=False, preemphasis_coefficient=0.0, remove_dc_offset=False),
    ],
)
def test_fbank_matches_torchaudio(speech, kwargs):
    kaldi = _kaldi_reference()
    wave = speech * 32768.0
    ref = kaldi.fbank(torch.from_numpy(wave)[None], sample_frequency=16000, dither=0.0, **kwargs).numpy()
    ours = A.fbank(wave, 16000, **kwargs)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    chex.assert_trees_all_close(ours, ref, atol=1e-3, rtol=0)


def test_speech_fbank_shape(speech):
    f = A.speech_fbank(speech)
    chex.assert_shape(f, (A.num_fbank_frames(len(speech)), 80))
    chex.assert_tree_all_finite(f)


def test_load_audio_and_bad_audio(tmp_path, speech):
    import soundfile as sf

    good = tmp_path / "a.flac"
    sf.write(good, speech, 16000)
    x, sr = A.load_audio(str(good))
    assert sr == 16000 and np.abs(x - speech).max() < 1e-3
    wrong = tmp_path / "b.wav"
    sf.write(wrong, speech, 8000)
    with pytest.raises(BadRecord) as e:
        A.load_audio(str(wrong))
    assert e.value.reason == "wrong_sample_rate"
    (tmp_path / "c.flac").write_bytes(b"not audio at all")
    with pytest.raises(BadRecord) as e:
        A.load_audio(str(tmp_path / "c.flac"))
    assert e.value.reason == "corrupt_audio"
    with pytest.raises(BadRecord) as e:
        A.load_audio(str(tmp_path / "missing.flac"))
    assert e.value.reason == "missing_audio"
