"""`vita_jax.serve` end to end in headless Chromium: the page captures a fake microphone (a WAV of two spoken
questions), streams it over the WebSocket, plays the first answer as it arrives, and the second question interrupts
it: the page stops that answer and plays the next one. The LLM's token stream is scripted (a fixed answer), the rest
is real: VAD, engine, speaker, server, page, browser audio."""
import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # the browser
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]

from test_duplex import ScriptedStreamer, parts, silence  # noqa: E402, F401  (parts: the shared fixture)
from vita_jax import duplex, serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_plays_an_answer_and_a_second_question_interrupts_it(parts, tmp_path):  # noqa: F811
    tok, model, speaker, q1, q2 = parts
    wav = np.concatenate([silence(0.5), q1, silence(3.5), q2, silence(6.0)])
    speaker.say("☞yes, there is a red circle. it is large.")  # compiled before the clock starts
    sf.write(tmp_path / "mic.wav", wav, 16000, subtype="PCM_16")

    def factory():
        engine = duplex.DuplexEngine(model, None, tok, speaker)
        engine.streamer = ScriptedStreamer(tok, "☞yes, there is a red circle. it is large. it is at the top. "
                                                "there is one shape.")
        return engine

    log, port = [], free_port()
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(
        serve.serve(factory, "127.0.0.1", port, log, ready, stop)), daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not ready.is_set() and time.time() < deadline:
        time.sleep(0.05)
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={tmp_path / 'mic.wav'}%noloop",
         "--autoplay-policy=no-user-gesture-required", f"http://127.0.0.1:{port}/?autostart"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            kinds = [(e["type"], e["answer"]) for e in log]
            if ("client_played", 2) in kinds:
                break
            time.sleep(0.2)
    finally:
        browser.kill()
        browser.wait()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    kinds = [(e["type"], e["answer"]) for e in log]
    assert ("client_played", 1) in kinds, str(kinds)  # the page played the first answer
    assert ("interrupted", 1) in kinds, str(kinds)
    cut = kinds.index(("interrupted", 1))  # the second question interrupted it ...
    assert ("client_stopped", 1) in kinds[cut:] or ("client_stopped", 0) in kinds[cut:]  # ... the page stopped it
    assert ("audio", 1) not in kinds[cut:]  # no packet of it was sent after
    assert ("client_played", 2) in kinds[cut:]  # and played the second answer


def test_page_is_served(tmp_path):
    assert "getUserMedia" in open(serve.PAGE).read()
    pkt = serve.audio_packet(7, np.array([0.5, -1.5], np.float32))
    assert int.from_bytes(pkt[:4], "little") == 7 and np.frombuffer(pkt[4:], "<i2").tolist() == [16383, -32767]
    assert os.path.isfile(serve.PAGE)
