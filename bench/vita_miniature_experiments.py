"""Time-boxed experiments on a finished VITA miniature run (docs/reproductions/vita.md): retrain one stage from that
run's workdirs with config overrides, then measure it the way the reproduction does. One JSON line per experiment.

    # stage 2.1 from the run's stage 2.0: ASR WER on the 96 held-out clips
    python bench/vita_miniature_experiments.py --run workdirs/vita_mini --stage 2_1 --steps 900 \
        --out workdirs/exp21 optimizer.lr=1e-2
    # stage 3.2 on the run's codec and stage-2.2 table: the decoder's true answers recognised (template recogniser)
    python bench/vita_miniature_experiments.py --run workdirs/vita_mini --stage 3_2 --steps 800 \
        --out workdirs/exp32 decoder.hidden_size=64 decoder.idim=64 decoder.intermediate_size=256
    # --steps 0 measures the run's own stage
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from common.provenance import provenance
from common.train import train
from vita_jax import data as data_lib
from vita_jax.eval import TemplateRecogniser, evaluate_asr, load_model
from vita_jax.hf import load_codec
from vita_jax.reproduce import answer_phrases, codec_round_trip, for_asr, spoken_queries, stage_config, true_answer
from vita_jax.speech_train import load_speaker, text_use
from vita_jax.train import make_task_for


def asr_wer(workdir: str, num_eval: int = 96) -> dict:
    model, params, tok = load_model(workdir)
    asr = data_lib.ShapesVitaSource("asr", "validation", num_eval, image_size=model.config.vision.image_size)
    records = [asr[i] for i in range(num_eval)]
    res = evaluate_asr(model, params, tok, records)
    return {"asr_wer": res["wer"], "examples": list(zip([r["text"] for r in records[:3]], res["predictions"][:3]))}


def decoder_recognised(workdir: str, codec_dir: str, num_answers: int = 48, image_size: int = 84) -> dict:
    codec, cparams = load_codec(codec_dir)
    round_trip = codec_round_trip(codec, cparams)
    recogniser = TemplateRecogniser(answer_phrases(image_size), channel=lambda wave: round_trip(wave)[2])
    truths = [true_answer(r) for r in spoken_queries(image_size, num_answers, pool=8 * num_answers)]
    speaker = load_speaker(workdir, max_tokens=160)
    rate = codec.config.sampling_rate
    waves = [for_asr(speaker.say(t, rng=jax.random.key(i)), rate) for i, t in enumerate(truths)]
    res = recogniser.accuracy(waves, truths)
    return {"recognised": res["accuracy"], "answers": len(truths), "chance": res["chance"],
            "text_use_gain": text_use(workdir)["gain"], "examples": list(zip(truths[:6], res["predictions"][:6]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished `vita_jax.reproduce` workdir (with --speech for 3_2)")
    ap.add_argument("--stage", required=True, choices=("2_1", "3_2"))
    ap.add_argument("--steps", type=int, required=True, help="0: measure the run's own stage")
    ap.add_argument("--out", default="", help="the experiment's workdir (needed when --steps > 0)")
    ap.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    args = ap.parse_args(argv)
    workdir, train_s = os.path.join(args.run, f"stage{args.stage}"), 0.0
    if args.steps:
        config = stage_config(args.stage, args.steps, 1.0, 0, args.overrides)
        if args.stage == "2_1":
            config.init_from = os.path.join(args.run, "stage2_0")
        else:
            config.codec_from = os.path.join(args.run, "stage3_1", "codec")
            config.text_from = os.path.join(args.run, "stage2_2")
        start = time.time()
        train(config, args.out, make_task_for)
        workdir, train_s = args.out, time.time() - start
    measured = (asr_wer(workdir) if args.stage == "2_1" else
                decoder_recognised(workdir, os.path.join(args.run, "stage3_1", "codec")))
    line = {"bench": "vita_miniature_experiment", "stage": args.stage, "steps": args.steps,
            "overrides": args.overrides, "train_s": round(train_s), **measured, **provenance()}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
