"""A WebSocket server and web page for real-time spoken conversation with VITA-1.5 (the release's `web_demo/server.py`
role, on one device and one model): the page streams the microphone as 16 kHz PCM, the server feeds it to a
`vita_jax.duplex.DuplexEngine` in 80 ms frames and streams back the events and the answer's audio as it is made;
speaking over an answer interrupts it.

    python -m vita_jax.serve --vita_workdir workdirs/vita_mini/stage2_2 --speech_workdir workdirs/vita_mini/stage3_2 \
        [--image scene.png] [--host 127.0.0.1] [--port 8765]
    # then open http://127.0.0.1:8765/ (a microphone needs localhost or HTTPS)

Protocol (one WebSocket at /ws): client -> server: binary int16 PCM at 16 kHz (any length; cut into 80 ms frames),
text JSON {"type": "played" | "stopped", "answer": id, "samples": n} (playback reports, logged); server -> client:
text JSON events {"type": speech_start | speech_end | skipped | interrupted | state | text | done | error, "answer",
"text", "time"} and binary audio packets: a little-endian uint32 answer id, then int16 PCM at 24 kHz.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
from collections.abc import Callable

import numpy as np

from vita_jax.duplex import DuplexConfig, DuplexEngine
from vita_jax.eval import load_model
from vita_jax.speech_train import load_speaker

PAGE = os.path.join(os.path.dirname(__file__), "web", "index.html")


def audio_packet(answer: int, audio: np.ndarray) -> bytes:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    return struct.pack("<I", answer) + pcm.tobytes()


class Session:
    """One browser connection: its own engine (the model and parameters are shared by all)."""

    def __init__(self, engine: DuplexEngine, log: list):
        self.engine, self.log = engine, log
        self.pending = np.zeros(0, np.float32)

    def frames(self, pcm: bytes) -> list[np.ndarray]:
        data = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        self.pending = np.concatenate([self.pending, data])
        n = self.engine.config.frame_samples
        out = []
        while len(self.pending) >= n:
            out.append(self.pending[:n])
            self.pending = self.pending[n:]
        return out

    async def send_events(self, ws, events) -> None:
        for e in events:
            self.log.append({"type": e.kind, "answer": e.answer, "time": e.time})
            if e.kind == "audio":
                await ws.send(audio_packet(e.answer, e.audio))
            elif e.kind != "speech_end":  # the utterance's audio stays on the server
                await ws.send(json.dumps({"type": e.kind, "answer": e.answer, "text": e.text, "time": e.time}))
            else:
                await ws.send(json.dumps({"type": e.kind, "answer": 0, "text": "", "time": e.time}))


def make_handler(engine_factory: Callable[[], DuplexEngine], log: list):
    async def handler(ws):
        session = Session(engine_factory(), log)

        async def pump():  # the answer's events arrive from its worker thread: forward them as they come
            while True:
                await asyncio.sleep(0.02)
                await session.send_events(ws, session.engine.drain())

        pumping = asyncio.create_task(pump())
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    for frame in session.frames(message):
                        await session.send_events(ws, session.engine.feed(frame))
                else:
                    msg = json.loads(message)
                    log.append({"type": f"client_{msg.get('type')}", "answer": int(msg.get("answer", 0)),
                                "samples": int(msg.get("samples", 0))})
        except Exception:  # a closed connection ends the session
            pass
        finally:
            pumping.cancel()
            cancel = session.engine.cancel.get(session.engine.current)
            if cancel is not None:
                cancel.set()

    return handler


def process_request(connection, request):
    """Serves the page at / (anything but /ws); /ws goes on to the WebSocket handshake."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    if request.path.startswith("/ws"):
        return None
    with open(PAGE, "rb") as f:
        body = f.read()
    return Response(200, "OK", Headers({"Content-Type": "text/html; charset=utf-8",
                                        "Content-Length": str(len(body))}), body)


async def serve(engine_factory: Callable[[], DuplexEngine], host: str = "127.0.0.1", port: int = 8765,
                log: list | None = None, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None):
    """Runs until `stop` is set (or forever). `log` collects every event sent and every playback report."""
    from websockets.asyncio.server import serve as ws_serve

    log = [] if log is None else log
    async with ws_serve(make_handler(engine_factory, log), host, port, process_request=process_request,
                        max_size=2**22) as server:
        if ready is not None:
            ready.set()
        await (stop.wait() if stop is not None else server.serve_forever())


def build_engine_factory(vita_workdir: str = "", model_dir: str = "", speech_workdir: str = "", image: str = ""):
    model, params, tok = load_model(vita_workdir or None, model_dir or None)
    speaker = load_speaker(speech_workdir)
    picture = None
    if image:
        from PIL import Image

        picture = np.asarray(Image.open(image).convert("RGB"))
    return lambda: DuplexEngine(model, params, tok, speaker, DuplexConfig(), image=picture)


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="VITA-1.5 real-time voice chat: a WebSocket server and its web page.")
    p.add_argument("--vita_workdir", default="", help="a VITA training workdir (stage 2.2)")
    p.add_argument("--model_dir", default="", help="or a released VITA-1.5 folder")
    p.add_argument("--speech_workdir", required=True, help="a stage-3.2 workdir (speech decoders + codec)")
    p.add_argument("--image", default="", help="a picture the questions are about")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    return p


def main(argv=None) -> None:
    args = argument_parser().parse_args(argv)
    if not (args.vita_workdir or args.model_dir):
        raise SystemExit("pass --vita_workdir or --model_dir")
    factory = build_engine_factory(args.vita_workdir, args.model_dir, args.speech_workdir, args.image)
    print(f"serving on http://{args.host}:{args.port}/", flush=True)
    asyncio.run(serve(factory, args.host, args.port))


if __name__ == "__main__":
    main()
