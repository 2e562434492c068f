"""Real-time duplex interaction with VITA-1.5 on one device (Fu et al. 2025, Sec. 3.2 "non-awakening interaction"
and "audio interrupt"; the release's `web_demo/server.py` runs two full model copies on two GPUs for it).

Audio comes in as 80 ms frames (16 kHz). Voice activity (WebRTC's VAD, 20 ms decisions, a frame is voiced when
most of its four are) opens an utterance after `start_frames` voiced frames (with `preroll_frames` kept before)
and closes it after `min_silence_ms` of silence (the release: 500 ms); clips shorter than `min_utterance_s` are
dropped (the release: 1 s). A closed utterance starts an answer on a worker thread: the model prefills the spoken
query (+ the current image), streams text tokens (`common.generate.TokenStreamer`), and its first token, the state
token, decides: ☟ = not addressed to the assistant, stay silent; ☞ / ☜ = answer, and the text is spoken as it comes
(`vita_jax.tts.Speaker`: first packet after 30 codec tokens).

Interruption: a new utterance starting while an answer is computed or still playing (its audio sent so far, at real
time) cancels it in the very frame the speech is detected
(its audio is dropped from then on, as the release drops a stale llm_id's audio), and its worker stops at the next
token or codec step; the same model and parameters then answer the new utterance with a fresh KV cache. One model,
one set of weights, no second copy.

    engine = DuplexEngine(model, params, tokenizer, speaker, image=frame)
    for frame in frames_80ms:                 # float32 [1280] at 16 kHz
        for event in engine.feed(frame):      # speech_start / speech_end / interrupted / state / text / audio / done
            ...
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any
from collections.abc import Iterable, Iterator

import numpy as np

from common.data.audio import SAMPLE_RATE
from common.generate import TokenStreamer
from vita_jax import conversation
from vita_jax.inference import GenerationAdapter, Request, answer_generation_config, build_batch, prefill_inputs

FRAME_MS = 80


@dataclasses.dataclass(frozen=True)
class DuplexConfig:
    frame_ms: int = FRAME_MS
    vad_aggressiveness: int = 2  # webrtcvad 0 (least) .. 3 (most aggressive at calling audio non-speech)
    start_frames: int = 2  # voiced frames in a row that open an utterance (160 ms)
    preroll_frames: int = 2  # frames kept from before the opening
    min_silence_ms: int = 500
    min_utterance_s: float = 1.0
    max_utterance_s: float = 20.0
    max_new_tokens: int = 64
    max_tiles: int = 1

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000


@dataclasses.dataclass
class Event:
    """kind: speech_start | speech_end | skipped (too short) | interrupted | state | text | audio | done.
    time: seconds of input fed when it was emitted; answer: the answer's id (0 for input events)."""

    kind: str
    time: float
    answer: int = 0
    text: str = ""
    audio: np.ndarray | None = None  # 'audio': float32 at the speaker's rate (24 kHz); 'speech_end': the utterance
    wall: float = dataclasses.field(default_factory=time.perf_counter)


class VoiceActivity:
    """80 ms frames -> utterance boundaries (see the module doc)."""

    def __init__(self, config: DuplexConfig = DuplexConfig()):
        import webrtcvad

        self.config = config
        self.vad = webrtcvad.Vad(config.vad_aggressiveness)
        self.history: list[np.ndarray] = []
        self.voiced_run = 0
        self.silent_run = 0
        self.active = False
        self.utterance: list[np.ndarray] = []

    def voiced(self, frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1, 1) * 32767).astype(np.int16)
        sub = SAMPLE_RATE * 20 // 1000
        votes = [self.vad.is_speech(pcm[i:i + sub].tobytes(), SAMPLE_RATE) for i in range(0, len(pcm) - sub + 1, sub)]
        return sum(votes) * 2 > len(votes)

    def feed(self, frame: np.ndarray) -> list[tuple[str, Any]]:
        """-> [("start", None)] when an utterance opens, [("end", waveform)] when it closes, else []."""
        cfg = self.config
        frame = np.asarray(frame, np.float32).reshape(-1)
        if frame.size != cfg.frame_samples:
            raise ValueError(f"frames must be {cfg.frame_samples} samples ({cfg.frame_ms} ms at 16 kHz), got "
                             f"{frame.size}")
        voiced = self.voiced(frame)
        events: list[tuple[str, Any]] = []
        if not self.active:
            self.history = (self.history + [frame])[-(cfg.preroll_frames + cfg.start_frames):]
            self.voiced_run = self.voiced_run + 1 if voiced else 0
            if self.voiced_run >= cfg.start_frames:
                self.active, self.silent_run = True, 0
                self.utterance = list(self.history)
                events.append(("start", None))
            return events
        self.utterance.append(frame)
        self.silent_run = 0 if voiced else self.silent_run + 1
        too_long = len(self.utterance) * cfg.frame_ms / 1000 >= cfg.max_utterance_s
        if self.silent_run * cfg.frame_ms >= cfg.min_silence_ms or too_long:
            events.append(("end", np.concatenate(self.utterance)))
            self.active, self.voiced_run, self.history, self.utterance = False, 0, [], []
        return events


class DuplexEngine:
    """The streaming loop: `feed` 80 ms frames, get events back (see the module doc). `image`: the current camera
    frame or picture (uint8 [H, W, 3]) the questions are about, or None."""

    def __init__(self, model, params, tokenizer, speaker, config: DuplexConfig = DuplexConfig(), image=None):
        self.model, self.params, self.tokenizer, self.speaker, self.config = model, params, tokenizer, speaker, config
        self.image = image
        self.vad = VoiceActivity(config)
        gen = answer_generation_config(tokenizer, config.max_new_tokens)
        self.streamer = TokenStreamer(GenerationAdapter(model), params, gen, model.config.text)
        self.pad_id = gen.pad_token_id
        self.frames = 0
        self.outputs: queue.Queue = queue.Queue()
        self.current = 0  # id of the answer allowed to emit
        self.next_id = 1
        self.cancel: dict[int, threading.Event] = {}
        self.workers: dict[int, threading.Thread] = {}
        self.model_lock = threading.Lock()  # one answer computes at a time: the one model, one cache
        self.ended_at: dict[int, float] = {}  # answer id -> perf_counter() when its worker stopped computing
        self.playing_until = 0.0  # perf_counter() when the current answer's audio sent so far ends, played in real time
        self.audio_rate = speaker.codec_decoder.codec.config.sampling_rate

    @property
    def now(self) -> float:
        return self.frames * self.config.frame_ms / 1000

    def set_image(self, image) -> None:
        self.image = image

    def feed(self, frame: np.ndarray) -> list[Event]:
        self.frames += 1
        events: list[Event] = []
        for kind, value in self.vad.feed(frame):
            if kind == "start":
                events.append(Event("speech_start", self.now))
                busy = self.current and (self.workers[self.current].is_alive()
                                         or time.perf_counter() < self.playing_until)
                if busy and not self.cancel[self.current].is_set():
                    self.cancel[self.current].set()  # its audio is dropped from this frame on
                    events.append(Event("interrupted", self.now, self.current))
                self.current = 0  # nothing plays while the user speaks
            else:
                if len(value) < self.config.min_utterance_s * SAMPLE_RATE:
                    events.append(Event("skipped", self.now, text=f"{len(value) / SAMPLE_RATE:.2f} s < "
                                                                   f"{self.config.min_utterance_s} s"))
                    continue
                events.append(Event("speech_end", self.now, audio=value))
                self._start_answer(value)
        return events + self.drain()

    def drain(self) -> list[Event]:
        """Events the answer workers produced since the last call (a cancelled answer's are dropped)."""
        out = []
        while True:
            try:
                ev = self.outputs.get_nowait()
            except queue.Empty:
                return out
            if ev.answer == self.current and not self.cancel[ev.answer].is_set():
                ev.time = self.now
                if ev.kind == "audio":
                    start = max(self.playing_until, time.perf_counter())
                    self.playing_until = start + len(ev.audio) / self.audio_rate
                out.append(ev)

    def _start_answer(self, utterance: np.ndarray) -> None:
        answer_id, self.next_id = self.next_id, self.next_id + 1
        self.cancel[answer_id] = threading.Event()
        self.current = answer_id
        worker = threading.Thread(target=self._answer, args=(answer_id, utterance, self.image), daemon=True)
        self.workers[answer_id] = worker
        worker.start()

    def _answer(self, answer_id: int, utterance: np.ndarray, image) -> None:
        stop = self.cancel[answer_id]
        put = lambda kind, **kw: self.outputs.put(Event(kind, 0.0, answer_id, **kw))  # noqa: E731
        with self.model_lock:
            if stop.is_set():
                return
            try:
                request = Request(images=[image] if image is not None else [], audio=[utterance])
                batch = build_batch(self.model, self.tokenizer, [request], max_tiles=self.config.max_tiles,
                                    pad_id=self.pad_id)
                prefill = prefill_inputs(batch)
                tokens: list[int] = []
                text = ""
                state_seen = False

                def deltas() -> Iterator[str]:
                    nonlocal text, state_seen
                    for token in self.streamer.stream(batch["input_ids"], batch["attention_mask"],
                                                      prefill_inputs=prefill, should_stop=stop.is_set):
                        tokens.append(token)
                        new = conversation.decode_answer(self.tokenizer, tokens)
                        delta, text = new[len(text):], new
                        if not state_seen and text:
                            state_seen = True
                            state = conversation.answer_state(text)
                            put("state", text=state or "")
                            if state == "noise":
                                return
                        if delta:
                            put("text", text=delta)
                            yield delta

                spoken = False
                for _, audio in self.speaker.speak_stream(deltas(), should_stop=stop.is_set):
                    spoken = True
                    put("audio", audio=audio)
                if not stop.is_set():
                    put("done", text=text if text or spoken else "")
            except Exception as e:  # reported as an event, never a silent dead thread
                put("error", text=f"{type(e).__name__}: {e}")
            finally:
                self.ended_at[answer_id] = time.perf_counter()

    def finish(self, timeout: float = 120.0) -> list[Event]:
        """Waits for the running answer to end -> its remaining events."""
        worker = self.workers.get(self.current)
        if worker is not None:
            worker.join(timeout)
        return self.drain()

    def run(self, frames: Iterable[np.ndarray], realtime: bool = False) -> Iterator[Event]:
        """Feeds frames (paced at real time when `realtime`), then waits for the last answer."""
        start = time.perf_counter()
        for i, frame in enumerate(frames):
            if realtime:
                delay = start + i * self.config.frame_ms / 1000 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield from self.feed(frame)
        yield from self.finish()


def frames_of(wave: np.ndarray, frame_samples: int = SAMPLE_RATE * FRAME_MS // 1000) -> list[np.ndarray]:
    """float32 [N] at 16 kHz -> 80 ms frames (the last zero-padded)."""
    wave = np.asarray(wave, np.float32).reshape(-1)
    pad = (-len(wave)) % frame_samples
    wave = np.pad(wave, (0, pad))
    return [wave[i:i + frame_samples] for i in range(0, len(wave), frame_samples)]
