"""Streaming speech output of VITA-1.5 (Fu et al. 2025, Sec. 3.1; the release's `llm2tts.py::llm2TTS.run` and
`web_demo/server.py::tts_worker`): answer text -> LLM token embeddings -> NAR + AR decoder -> codec tokens -> 24 kHz
audio, chunk by chunk while the tokens are still being generated.

  text segment --clean (state tokens off, lowercase)--> ids --LLM embedding table--> [n, D] --pieces--> [n D/idim, idim]
  --CodeGenerator (one token a step)--> windows of left + chunk + right tokens (first 0 + 20 + 10, then 10 + 40 + 10)
  --codec.decode--> audio with the context trimmed --split at a quiet point (min-energy window of 2401 samples in
  the second half, when quieter than the threshold; else held back)--> chunks of float32 in [-1, 1]

The last window decodes exactly the tokens left. Every packet of an answer's first sentence loses its leading samples
of |x| <= 0.03, as the release's server trims them. The first packet of an answer therefore needs 30 generated tokens
and carries up to 0.5 s of audio. Text is cut for speech at punctuation (`, ， . 。 ? \\n ？ ! ！ 、`, at least 5
characters), and each segment is synthesised on its own, as the release does. `resample` moves audio between the
codec's 24 kHz and the speech encoder's 16 kHz (soxr).
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vita_jax.codec import Codec
from vita_jax.speech_decoder import CodeGenerator, text_pieces

SPEECH_PUNCTUATION = frozenset(",，.。?\n？!！、")
NOT_SPOKEN = ("☞", "☟", "☜", "<unk>", "<|im_end|>")


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 [N] at rate_in -> rate_out (soxr, high quality)."""
    if rate_in == rate_out:
        return np.asarray(wave, np.float32)
    import soxr

    return soxr.resample(np.asarray(wave, np.float32), rate_in, rate_out).astype(np.float32)


def clean_for_speech(text: str) -> str:
    """What the release speaks of an answer: state tokens and specials removed, markdown bold removed, lowercased.
    (Its Chinese verbalisation of equation symbols — '-' read as 减 etc. — is not ported: it mangles English.)"""
    for token in NOT_SPOKEN:
        text = text.replace(token, "")
    return text.replace("**", " ").lower()


class SentenceSplitter:
    """Text deltas -> segments for speech: cut after a punctuation mark once a segment has >= min_chars characters."""

    def __init__(self, min_chars: int = 5):
        self.min_chars, self.pending = min_chars, ""

    def feed(self, delta: str) -> list[str]:
        out = []
        for ch in delta:
            self.pending += ch
            if ch in SPEECH_PUNCTUATION and len(self.pending) >= self.min_chars:
                out.append(self.pending)
                self.pending = ""
        return out

    def flush(self) -> list[str]:
        rest, self.pending = self.pending, ""
        return [rest] if rest.strip() else []


def split_for_speech(text: str, min_chars: int = 5) -> list[str]:
    s = SentenceSplitter(min_chars)
    return s.feed(text) + s.flush()


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """The release's streaming settings (first sentence / later sentences)."""

    first_chunk: int = 20
    chunk: int = 40
    padding: int = 10  # tokens of context on each side of a window
    first_threshold: float = 0.1  # mean |x| below which a chunk may be split at its quietest point
    threshold: float = 0.015
    window: int = 2401  # samples of the energy window
    # The release's server drops the leading samples at or under this from every packet of the first sentence
    # (web_demo/server.py, tts_worker); first_trim_first_packet_only=True trims only the answer's first packet.
    first_trim: float = 0.03
    first_trim_first_packet_only: bool = False
    top_k: int = 2
    temperature: float = 1.0


def split_at_quiet_point(buffer: np.ndarray, syn: np.ndarray, window: int, threshold: float):
    """The release's `find_min_sum_index`: -> (new buffer, audio to emit or None). Index arithmetic kept as upstream
    (its second window end uses the already shifted start)."""
    length = len(syn)
    mid = length // 2
    if length < window:
        return np.concatenate([buffer, syn]), None
    sums = np.convolve(np.abs(syn), np.ones(window, np.float32), mode="valid")  # [L - N + 1]
    start = max(mid - window // 2, 0)
    rel = int(np.argmin(sums[start:]))
    min_sum = float(sums[start + rel])
    start_index = max(0, rel + start)
    end_index = min(length, rel + window + start_index)
    split = int(np.argmin(np.abs(syn[start_index:end_index]))) + start_index
    if min_sum / window < threshold:
        return syn[split:].copy(), np.concatenate([buffer, syn[:split]])
    return np.concatenate([buffer, syn]), None


class ChunkedCodecDecoder:
    """Codec tokens (an iterator, as they are generated) -> audio chunks, the release's windowing; one compiled decode
    per window length."""

    def __init__(self, codec: Codec, codec_params, global_tokens=None, config: StreamConfig = StreamConfig()):
        self.codec, self.config = codec, config
        self.hop = codec.config.hop_length
        tokens = codec.config.global_tokens if global_tokens is None else global_tokens
        self.global_tokens = jnp.asarray(np.asarray(tokens, np.int32)[None])
        self._decode = jax.jit(lambda p, c, g: codec.apply({"params": p}, c, g, method="decode"))
        self.params = codec_params

    def decode(self, tokens: list[int]) -> np.ndarray:
        """tokens -> audio [len * hop]."""
        return np.asarray(self._decode(self.params, jnp.asarray([tokens], jnp.int32), self.global_tokens)[0])

    def stream(self, tokens: Iterable[int], first_sentence: bool = False) -> Iterator[np.ndarray]:
        cfg, hop = self.config, self.hop
        chunk = cfg.first_chunk if first_sentence else cfg.chunk
        threshold = cfg.first_threshold if first_sentence else cfg.threshold
        left, right = 0, cfg.padding
        window: list[int] = []
        buffer = np.zeros(0, np.float32)
        trim = first_sentence

        def emit(audio):
            nonlocal trim
            if trim:
                loud = np.nonzero(np.abs(audio) > cfg.first_trim)[0]
                audio = audio[loud[0]:] if loud.size else audio
                trim = not cfg.first_trim_first_packet_only
            return audio

        for token in tokens:
            window.append(int(token))
            if len(window) == left + chunk + right:
                syn = self.decode(window)[left * hop: len(window) * hop - right * hop]
                left = cfg.padding
                window = window[-(left + right):]
                buffer, out = split_at_quiet_point(buffer, syn, cfg.window, threshold)
                if out is not None and out.size:
                    yield emit(out)
        if window:
            # Exactly the tokens left, as the release decodes them: padding the window to fewer compiled shapes would
            # change the kept samples (the codec's convolutions look several tokens ahead). One compile per length.
            syn = self.decode(window)[left * hop:]
            audio = np.concatenate([buffer, syn])
            if audio.size:
                yield emit(audio)
        elif buffer.size:
            yield emit(buffer)


class Speaker:
    """Answer text -> streamed 24 kHz audio: the LLM's embedding table, the speech decoder and the codec together.

    embed: token ids [n] -> LLM input embeddings [n, D] (e.g. `lambda ids: table[ids]`); tokenizer: the LLM's."""

    def __init__(self, generator: CodeGenerator, codec_decoder: ChunkedCodecDecoder, embed: Callable, tokenizer,
                 config: StreamConfig = StreamConfig()):
        self.generator, self.codec_decoder, self.embed, self.tokenizer = generator, codec_decoder, embed, tokenizer
        self.config = config

    @classmethod
    def from_params(cls, embedding_table, decoder, decoder_params, codec: Codec, codec_params, tokenizer,
                    config: StreamConfig = StreamConfig(), global_tokens=None, max_tokens: int = 1000,
                    max_text_pieces: int = 512) -> Speaker:
        """embedding_table: the LLM's input embeddings [V, D] (a VITA tree's `lm/embed/embedding`), what the decoder
        reads."""
        table = np.asarray(embedding_table, np.float32)
        return cls(CodeGenerator(decoder, decoder_params, max_tokens, max_text_pieces),
                   ChunkedCodecDecoder(codec, codec_params, global_tokens, config), lambda ids: table[ids],
                   tokenizer, config)

    def pieces(self, text: str) -> np.ndarray:
        """A segment -> decoder input [n * D / idim, idim] (empty when nothing is left to speak)."""
        ids = self.tokenizer.encode(clean_for_speech(text))
        if not len(ids):
            return np.zeros((0, self.generator.config.idim), np.float32)
        emb = np.asarray(self.embed(np.asarray(ids)), np.float32)[None]  # [1, n, D]
        return np.asarray(text_pieces(emb, self.generator.config.idim)[0])

    def codes(self, text: str, rng: Any = None, should_stop=None) -> Iterator[int]:
        pieces = self.pieces(text)
        if not len(pieces):
            return iter(())
        return self.generator.stream(pieces, rng=rng, top_k=self.config.top_k, temperature=self.config.temperature,
                                     should_stop=should_stop)

    def speak(self, text: str, first_sentence: bool = True, rng: Any = None, should_stop=None) -> Iterator[np.ndarray]:
        """One segment -> audio chunks (24 kHz float32)."""
        if not clean_for_speech(text).strip():
            return
        yield from self.codec_decoder.stream(self.codes(text, rng, should_stop), first_sentence)

    def speak_stream(self, deltas: Iterable[str], rng: Any = None,
                     should_stop=None) -> Iterator[tuple[str, np.ndarray]]:
        """Text as it is generated (deltas) -> (segment, audio chunk) pairs; the first segment uses the short first
        chunk. `should_stop()` true ends it at the next token."""
        rng = jax.random.key(0) if rng is None else rng
        splitter = SentenceSplitter()
        first, index = True, 0

        def segments():
            for delta in deltas:
                yield from splitter.feed(delta)
            yield from splitter.flush()

        for seg in segments():
            if should_stop is not None and should_stop():
                return
            if not clean_for_speech(seg).strip():
                continue
            for audio in self.speak(seg, first, jax.random.fold_in(rng, index), should_stop):
                yield seg, audio
            first, index = False, index + 1

    def say(self, text: str, rng: Any = None) -> np.ndarray:
        """The whole answer as one 24 kHz waveform."""
        chunks = [a for _, a in self.speak_stream([text], rng)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
