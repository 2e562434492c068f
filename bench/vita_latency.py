"""VITA-1.5 duplex latency: a spoken question streamed into `vita_jax.duplex.DuplexEngine` as real-time 80 ms frames,
then a second question barging in while the answer plays. One JSON line per trial:

  first_audio_s     end of the user's speech (the last voiced frame) -> the first audio packet of the answer; it
                    includes the VAD's end-of-speech wait (min_silence_ms, the release's 500 ms), the prefill of the
                    spoken query, the answer's first text segment and 30 codec tokens of the speech decoder
  after_endpoint_s  the same from the frame that closed the utterance (what the model and speaker add)
  stop_frames       frames from the one where the barge-in was detected to the last old-answer packet let out
                    (the engine drops them from that frame on: 0 = output stopped within that 80 ms frame)
  worker_stop_s     detection -> the old answer's worker has stopped computing (at its next token / codec step)

    python bench/vita_latency.py [--vita_workdir W --speech_workdir S] [--trials 3] [--warmup 2]

Without workdirs: a VITA and speaker with random weights (`--size tiny`: the miniature's shapes; `--size 7b`:
VITA-1.5's, for a GPU: `--size 7b --dtype bfloat16`), the answer teacher-forced (`--answer`, through the real decode
step, so the compute is the generation's). Numbers are wall-clock on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.provenance import provenance

import jax
import numpy as np


class ForcedAnswer:
    """The engine's token streamer with the answer's tokens forced (`TokenStreamer.stream(forced_tokens=...)`: the
    real prefill and one real decode step per token), so the latency does not depend on what random weights say."""

    def __init__(self, streamer, token_ids):
        self.inner, self.ids = streamer, list(token_ids)

    def stream(self, input_ids, attention_mask=None, **kwargs):
        return self.inner.stream(input_ids, attention_mask, forced_tokens=self.ids, **kwargs)


def stand_in_configs(size: str, dtype: str = "float32", quick_codec: bool = False, tokenizer=None):
    """Random-weights stand-ins -> (VitaConfig, SpeechDecoderConfig, CodecConfig); `tokenizer` sizes the tiny
    vocabulary (default: the shapes BPE).

      tiny  the miniature's shapes (configs/vita/tiny_*.py), shapes vocabulary
      7b    VITA-1.5's: Qwen2.5-7B (vocab 152064) + InternViT-300M + the 24-layer speech encoder
            (vita_jax.presets.vita_1_5), the decoder at the release's reported size (NAR 2 + AR 4 layers of 896,
            14 heads, MLP 4864, reading 3584-d embeddings as 4 pieces) and the release codec (HiFi-GAN V1, 512 wide)
    """
    from configs.vita import tiny_base, tiny_stage3_1, tiny_stage3_2
    from vita_jax import codec as codec_lib
    from vita_jax import presets as presets
    from vita_jax import speech_decoder as sd
    from vita_jax.task import vita_config_from

    if size == "tiny":
        from vita_jax import data as data_lib

        tok = tokenizer or data_lib.build_tokenizer({"kind": "shapes_bpe", "vocab_size": 1024})
        vita = vita_config_from(tiny_base.model(), tok)
        vita = vita.replace(text=vita.text.replace(dtype=dtype, param_dtype=dtype))
        decoder = sd.SpeechDecoderConfig(**{**tiny_stage3_2.get_config().decoder, "dtype": dtype,
                                            "param_dtype": dtype})
        codec = codec_lib.CodecConfig(**tiny_stage3_1.codec())
    elif size == "7b":
        vita = presets.vita_1_5(dtype)
        decoder = sd.SpeechDecoderConfig(dtype=dtype, param_dtype=dtype)
        codec = codec_lib.CodecConfig()
    else:
        raise SystemExit(f"unknown --size {size!r}: tiny or 7b")
    if quick_codec:
        codec = codec.replace(resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    return vita, decoder, codec


def build(args):
    from vita_jax import data as data_lib
    from vita_jax import duplex

    if args.vita_workdir:
        from vita_jax.eval import load_model
        from vita_jax.speech_train import load_speaker

        model, params, tok = load_model(args.vita_workdir)
        speaker = load_speaker(args.speech_workdir)
    else:
        import flax.linen as nn

        from vita_jax import codec as codec_lib
        from vita_jax import speech_decoder as sd
        from vita_jax import tts
        from vita_jax.model import Vita, init_params

        tok = data_lib.build_tokenizer({"kind": "shapes_bpe", "vocab_size": 1024})  # ids < every stand-in's vocab
        vita_cfg, dcfg, ccfg = stand_in_configs(args.size, args.dtype, args.quick_codec, tok)
        model = Vita(vita_cfg)
        params = jax.jit(lambda key: nn.unbox(init_params(model, key)))(jax.random.key(0))  # made on the device
        decoder_params = jax.jit(lambda key: sd.init_params(dcfg, key))(jax.random.key(1))
        speaker = tts.Speaker.from_params(params["lm"]["embed"]["embedding"], sd.SpeechDecoder(dcfg), decoder_params,
                                          codec_lib.Codec(ccfg), codec_lib.init_params(ccfg, jax.random.key(2)), tok,
                                          max_tokens=args.max_codes,  # segments of up to 32 LLM tokens:
                                          max_text_pieces=32 * (vita_cfg.text.hidden_size // dcfg.idim))
    engine = duplex.DuplexEngine(model, params, tok, speaker, duplex.DuplexConfig(max_new_tokens=args.max_new_tokens))
    if not args.vita_workdir:
        engine.streamer = ForcedAnswer(engine.streamer, tok.encode(args.answer))
    return engine


def trial(engine, q1, q2, frame_s: float) -> dict:
    from vita_jax import duplex

    silence = lambda s: np.zeros(int(16000 * s), np.float32)  # noqa: E731
    first = duplex.frames_of(np.concatenate([silence(0.4), q1]))
    speech_end = time.perf_counter()
    events = []
    start = time.perf_counter()
    i = 0

    def feed(frame):
        nonlocal i
        delay = start + i * frame_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        i += 1
        out = engine.feed(frame)
        events.extend(out)
        return out

    for f in first:
        feed(f)
    speech_end = time.perf_counter()  # the last frame holding speech has been fed
    answer = None
    limit = time.perf_counter() + 600
    while time.perf_counter() < limit:
        out = feed(silence(frame_s))
        ended = [e for e in out if e.kind == "speech_end"]
        if ended and answer is None:
            answer, endpoint = engine.current, ended[0].wall
        audio = [e for e in events if e.kind == "audio" and e.answer == answer and answer]
        if audio:
            first_audio = audio[0].wall
            break
        if any(e.kind in ("done", "error") and e.answer == answer for e in events if answer):
            raise SystemExit(f"the answer ended without audio: {[(e.kind, e.text) for e in events]}")
    else:
        raise SystemExit("no audio within 600 s")
    old = answer
    barge = None
    for f in duplex.frames_of(np.concatenate([q2, silence(0.6)])):
        out = feed(f)
        if barge is None and any(e.kind == "interrupted" for e in out):
            barge = (i, time.perf_counter())
    worker = engine.workers[old]
    worker.join(60)
    late = [e for e in events if e.kind == "audio" and e.answer == old and e.wall > barge[1]]
    engine.finish()
    return {"first_audio_s": first_audio - speech_end, "after_endpoint_s": first_audio - endpoint,
            "stop_frames": len(late),
            "worker_stop_s": max(0.0, engine.ended_at[old] - barge[1]) if old in engine.ended_at else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vita_workdir", default="")
    p.add_argument("--speech_workdir", default="")
    p.add_argument("--answer", default="☞yes, there is a red circle. it is large.")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed trials first (they compile every shape)")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--max_codes", type=int, default=120)
    p.add_argument("--size", default="tiny", choices=("tiny", "7b"), help="random-weights stand-in (no workdirs)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="stand-in LLM and decoder compute / parameter dtype (bfloat16 on a GPU, as the release)")
    p.add_argument("--quick_codec", action="store_true",
                   help="one resblock per codec stage (quick to compile: the bench's own test)")
    args = p.parse_args(argv)
    if bool(args.vita_workdir) != bool(args.speech_workdir):
        raise SystemExit("pass both --vita_workdir and --speech_workdir, or neither")
    from common.data.speech import load_word_bank

    words = load_word_bank()
    rng = np.random.default_rng(0)
    q1, q2 = words.say("what color is the circle", rng), words.say("how many shapes are there", rng)
    engine = build(args)
    for _ in range(args.warmup):
        trial(engine, q1, q2, 0.08)
    for n in range(args.trials):
        row = trial(engine, q1, q2, 0.08)
        print(json.dumps({**provenance(), "bench": "vita_duplex_latency", "trial": n, "backend": jax.default_backend(),
                          "device": jax.devices()[0].device_kind, "host": platform.node(),
                          "model": args.vita_workdir or f"{args.size}-random", "dtype": args.dtype,
                          **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
