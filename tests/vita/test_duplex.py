"""The duplex engine: utterances cut by voice activity from 80 ms frames, an answer streamed as speech, a new
utterance interrupting it in the frame it is detected (nothing of the old answer after), a noise decision staying
silent. (The real model path through the engine, prefill + one decode step per token, runs in
tests/vita/test_bench_vita_latency.py.)"""
import time

import jax
import numpy as np
import pytest

pytest.importorskip("webrtcvad")

from common.data.speech import load_word_bank
from test_codec import FAST
from vita_jax import codec as codec_lib
from vita_jax import data as data_lib
from vita_jax import duplex, tts
from vita_jax import speech_decoder as sd
from vita_jax.task import vita_config_from
from vita_jax.model import Vita
from configs.vita import tiny_base


def silence(seconds):
    return np.zeros(int(16000 * seconds), np.float32)


@pytest.fixture(scope="module")
def parts():
    tok = data_lib.build_tokenizer({"kind": "shapes_bpe", "vocab_size": 1024})
    model = Vita(vita_config_from(tiny_base.model(), tok))
    codec = codec_lib.Codec(FAST)
    cfg = sd.SpeechDecoderConfig(idim=32, num_codes=FAST.n_codes, hidden_size=32, intermediate_size=64,
                                 num_layers=2, num_heads=2)
    table = np.random.default_rng(0).standard_normal((model.config.text.vocab_size, 64)).astype(np.float32)
    speaker = tts.Speaker.from_params(table, sd.SpeechDecoder(cfg), sd.init_params(cfg, jax.random.key(1)), codec,
                                      codec_lib.init_params(FAST, jax.random.key(0)), tok, max_tokens=40,
                                      max_text_pieces=64)
    words = load_word_bank()
    rng = np.random.default_rng(0)
    return tok, model, speaker, words.say("what color is the circle", rng), words.say("how many shapes are there", rng)


class ScriptedStreamer:
    """Stands in for the LLM's token stream: a fixed answer, one token per 10 ms, honouring should_stop."""

    def __init__(self, tok, answer):
        self.ids, self.calls = tok.encode(answer), 0

    def stream(self, input_ids, attention_mask=None, *, prefill_inputs=None, should_stop=None, **_):
        self.calls += 1
        for t in self.ids:
            if should_stop is not None and should_stop():
                return
            time.sleep(0.01)
            yield t


def feed_until(engine, kind, answer, limit=120.0):
    events, start = [], time.time()
    while time.time() - start < limit:
        events += engine.feed(silence(0.08))
        if any(e.kind == kind and e.answer == answer for e in events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event for answer {answer} within {limit} s: {[e.kind for e in events]}")


@pytest.mark.slow
def test_voice_activity_cuts_utterances(parts):
    *_, q1, q2 = parts
    vad = duplex.VoiceActivity()
    stream = np.concatenate([silence(0.5), q1, silence(1.0), q2[:2400], silence(1.0)])
    events = [(i, k, v) for i, f in enumerate(duplex.frames_of(stream)) for k, v in vad.feed(f)]
    assert [k for _, k, _ in events] == ["start", "end", "start", "end"]
    assert abs(len(events[1][2]) / 16000 - len(q1) / 16000) < 0.8  # the utterance, give or take pre-roll / tail
    with pytest.raises(ValueError, match="1280 samples"):
        vad.feed(np.zeros(100))


@pytest.mark.slow
def test_answer_is_spoken_and_a_new_utterance_interrupts_it(parts):
    tok, model, speaker, q1, q2 = parts
    engine = duplex.DuplexEngine(model, None, tok, speaker)
    engine.streamer = ScriptedStreamer(tok, "☞yes, there is a red circle. it is large. it is at the top.")
    events = []
    for f in duplex.frames_of(np.concatenate([silence(0.4), q1, silence(0.6)])):
        events += engine.feed(f)
    assert [e.kind for e in events][:2] == ["speech_start", "speech_end"]
    events += feed_until(engine, "audio", 1)
    assert next(e for e in events if e.kind == "state").text == "audio"
    cut = len(events)
    for f in duplex.frames_of(np.concatenate([q2, silence(0.6)])):
        events += engine.feed(f)
    events += engine.finish()
    kinds = [(e.kind, e.answer) for e in events[cut:]]
    interrupted = kinds.index(("interrupted", 1))
    assert kinds[interrupted - 1] == ("speech_start", 0)  # in the very frame the new speech is detected
    assert all(a != 1 for k, a in kinds[interrupted:] if k in ("audio", "text", "done"))
    assert ("done", 2) in kinds and ("audio", 2) in kinds
    assert not engine.workers[1].is_alive()


def test_noise_stays_silent(parts):
    tok, model, speaker, q1, _ = parts
    engine = duplex.DuplexEngine(model, None, tok, speaker)
    engine.streamer = ScriptedStreamer(tok, "☟")
    events = list(engine.run(duplex.frames_of(np.concatenate([silence(0.3), q1, silence(0.7)]))))
    assert [e.text for e in events if e.kind == "state"] == ["noise"]
    assert not [e for e in events if e.kind == "audio"]
