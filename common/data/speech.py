"""Real 16 kHz speech without a TTS at run time: a committed bank of word recordings (espeak-ng, made once) and an
assembler that strings words into utterances with natural-ish pauses, gain and speed variation.

Assets: `assets/words.flac` (all words, 16 kHz mono int16, concatenated) and `assets/words.json` ({word: [start,
end]} sample offsets). `build_word_bank()` regenerates them; it is the only code here that needs espeak-ng + sox.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from common.data.audio import SAMPLE_RATE

ASSET_DIR = os.path.join(os.path.dirname(__file__), "assets")

# Every word a spoken question, a noise utterance or a test transcript uses.
VOCABULARY = sorted(
    set(
        "how many shapes are there is a what shape the object color where small or large at top bottom left right "
        "middle center this in image yes no big one two three four five six seven eight nine zero and of picture "
        "circle square triangle diamond star cross red green blue yellow purple orange white black".split()
    )
)


class WordBank:
    """word -> int16 recording; `say(text, rng)` -> float32 [N] in [-1, 1] at 16 kHz."""

    def __init__(self, audio: np.ndarray, index: dict[str, list[int]], sample_rate: int = SAMPLE_RATE):
        self.audio = audio
        self.index = index
        self.sample_rate = sample_rate
        self.words = set(index)

    def word(self, w: str) -> np.ndarray:
        s, e = self.index[w]
        return self.audio[s:e].astype(np.float32) / 32768.0

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def say(self, text: str, rng: np.random.Generator | None = None) -> np.ndarray:
        """Concatenates the words of `text` (unknown words raise KeyError) with 40-160 ms pauses, 100-250 ms of
        silence around the utterance, and (with rng) a random gain and a +-8% speed change per utterance."""
        rng = rng or np.random.default_rng(0)
        words = self.tokenize(text)
        missing = [w for w in words if w not in self.index]
        if missing:
            raise KeyError(f"words not in the word bank: {missing}")
        sr = self.sample_rate
        pieces = [np.zeros(int(sr * rng.uniform(0.1, 0.25)), np.float32)]
        for i, w in enumerate(words):
            pieces.append(self.word(w))
            if i < len(words) - 1:
                pieces.append(np.zeros(int(sr * rng.uniform(0.04, 0.16)), np.float32))
        pieces.append(np.zeros(int(sr * rng.uniform(0.1, 0.25)), np.float32))
        x = np.concatenate(pieces)
        speed = rng.uniform(0.92, 1.08)
        if abs(speed - 1.0) > 1e-3:  # linear-interpolation resample: faster/slower speech (pitch moves too)
            n = int(len(x) / speed)
            x = np.interp(np.arange(n) * speed, np.arange(len(x)), x).astype(np.float32)
        x = x * np.float32(rng.uniform(0.5, 1.0))
        x = x + rng.normal(0, 1e-3, size=x.shape).astype(np.float32)  # a little background noise
        return np.clip(x, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_word_bank(asset_dir: str = ASSET_DIR) -> WordBank:
    import soundfile as sf

    flac, index = os.path.join(asset_dir, "words.flac"), os.path.join(asset_dir, "words.json")
    if not (os.path.isfile(flac) and os.path.isfile(index)):
        raise FileNotFoundError(f"word bank missing in {asset_dir}: run common.data.speech.build_word_bank()")
    audio, sr = sf.read(flac, dtype="int16")
    with open(index) as f:
        idx = json.load(f)
    return WordBank(audio, idx, sr)


def build_word_bank(out_dir: str = ASSET_DIR, voice: str = "en-us", speed: int = 150, words=VOCABULARY) -> dict:
    """Records every word once with espeak-ng, resamples to 16 kHz with sox, trims silence, writes words.flac/json.

    Deterministic for a given espeak-ng version. Run once by a developer: `python -m common.data.speech`.
    """
    import soundfile as sf

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed to build the word bank (apt-get install espeak-ng sox)")
    os.makedirs(out_dir, exist_ok=True)
    chunks, index, pos = [], {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for w in words:
            raw, out = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "out.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, w], check=True)
            # 16 kHz mono 16-bit; trim leading/trailing silence below 0.5% amplitude.
            subprocess.run(
                ["sox", raw, "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", out, "silence", "1", "0.01", "0.5%",
                 "reverse", "silence", "1", "0.01", "0.5%", "reverse"],
                check=True,
            )
            a, sr = sf.read(out, dtype="int16")
            assert sr == SAMPLE_RATE and len(a) > 0, w
            chunks.append(a)
            index[w] = [pos, pos + len(a)]
            pos += len(a)
    audio = np.concatenate(chunks)
    sf.write(os.path.join(out_dir, "words.flac"), audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    with open(os.path.join(out_dir, "words.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    load_word_bank.cache_clear()
    return index


if __name__ == "__main__":
    idx = build_word_bank()
    print(f"wrote {len(idx)} words to {ASSET_DIR}")
