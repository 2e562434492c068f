"""Time-boxed experiments on a finished VITA miniature run (docs/reproductions/vita.md): retrain one stage from that
run's workdirs with config overrides, then measure it the way the reproduction does. One JSON line per experiment.

    # stage 2.1 from the run's stage 2.0: ASR WER on the 96 held-out clips
    python bench/vita_miniature_experiments.py --run workdirs/vita_mini --stage 2_1 --steps 900 \
        --out workdirs/exp21 optimizer.lr=1e-2
    # stage 3.2 on the run's codec and stage-2.2 table: the decoder's true answers recognised (template recogniser)
    python bench/vita_miniature_experiments.py --run workdirs/vita_mini --stage 3_2 --steps 800 \
        --out workdirs/exp32 decoder.hidden_size=64 decoder.idim=64 decoder.intermediate_size=256
    # stage 2.1 with the adapter's last layer fitted (least squares) to say what the CTC head hears as LM embeddings
    python bench/vita_miniature_experiments.py --run workdirs/vita_mini --stage 2_1 --steps 300 \
        --out workdirs/exp21ctc --adapter_init ctc
    # --steps 0 measures the run's own stage
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from common.layers import activation
from common.provenance import provenance
from common.train import train
from vita_jax import data as data_lib
from vita_jax.eval import TemplateRecogniser, evaluate_asr, fbank_batch, load_model
from vita_jax.model import Vita
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


def ctc_projected_adapter(params, stage2_0: str, num_utterances: int = 512, batch_size: int = 16,
                          ridge: float = 1e-3) -> tuple[dict, dict]:
    """The adapter's last layer (`audio_adapter/project`) fitted by ridge least squares so that each 12.5 Hz token
    starts as what stage 2.0's CTC head hears there, said in the LM's input embeddings: per adapter token n, over
    the two encoder frames it strides over, sum_v p(v) E[v] (the blank adds nothing), divided by the non-blank
    mass when that exceeds 1. The conv + norm before it stay as they are. -> (params, {fit r2, tokens})."""
    model, trained, _ = load_model(stage2_0)
    cfg = model.config
    head = trained["ctc_head"]
    embedding = np.asarray(params["lm"]["embed"]["embedding"], np.float64)  # [V, E]
    vocab = embedding.shape[0]
    source = data_lib.ShapesVitaSource("asr", "train", num_utterances, image_size=cfg.vision.image_size)
    act = activation(cfg.audio.adapter_act)
    inputs, targets = [], []
    for start in range(0, num_utterances, batch_size):
        chunk = [source[i] for i in range(start, min(start + batch_size, num_utterances))]
        (_, token_lengths), state = model.apply({"params": params}, *fbank_batch(chunk), method=Vita.audio_features,
                                                capture_intermediates=True, mutable=["intermediates"])
        inter = state["intermediates"]
        hidden, enc_lengths = inter["audio_encoder"]["__call__"][0]  # [B, T', D]
        normed = np.asarray(act(inter["audio_adapter"]["norm"]["__call__"][0]), np.float64)  # [B, N, 2D]
        logits = hidden @ head["kernel"] + head["bias"]  # [B, T', V + 1]
        probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), -1), np.float64)
        said = probs[..., :vocab] @ embedding  # [B, T', E]: blank -> 0
        mass = probs[..., :vocab].sum(-1)  # [B, T']
        count = normed.shape[1]
        pad = 2 * count - said.shape[1]
        said = np.pad(said, ((0, 0), (0, max(pad, 0)), (0, 0)))[:, :2 * count]
        mass = np.pad(mass, ((0, 0), (0, max(pad, 0))))[:, :2 * count]
        target = said.reshape(len(chunk), count, 2, -1).sum(2) / np.maximum(
            mass.reshape(len(chunk), count, 2).sum(2), 1.0)[..., None]  # [B, N, E]
        for row, n in enumerate(np.asarray(token_lengths)):
            inputs.append(normed[row, :n])
            targets.append(target[row, :n])
    z = np.concatenate(inputs)
    z = np.concatenate([z, np.ones((len(z), 1))], 1)  # [tokens, 2D + 1]
    y = np.concatenate(targets)  # [tokens, E]
    gram = z.T @ z
    weights = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), z.T @ y)
    residual = y - z @ weights
    r2 = 1.0 - float((residual ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    project = dict(params["audio_adapter"]["project"])
    project["kernel"] = jnp.asarray(weights[:-1], project["kernel"].dtype)
    project["bias"] = jnp.asarray(weights[-1], project["bias"].dtype)
    params = {**params, "audio_adapter": {**params["audio_adapter"], "project": project}}
    return params, {"fit_r2": r2, "tokens": len(y), "target_rms": float(np.sqrt((y ** 2).mean())),
                    "embedding_rms": float(np.sqrt((embedding ** 2).mean()))}


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
    ap.add_argument("--adapter_init", choices=("", "ctc"), default="",
                    help="2_1: fit the adapter's last layer to project the CTC head's outputs onto the LM's embeddings")
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
        make_task, fit = make_task_for, {}
        if args.adapter_init:
            def make_task(config, workdir=None, tokenizer=None):
                task = make_task_for(config, workdir, tokenizer)
                load = task.load_pretrained

                def load_and_fit(params):
                    params, info = ctc_projected_adapter(load(params), config.init_from)
                    fit.update(info)
                    print("adapter fit:", json.dumps(info), flush=True)
                    return params
                return dataclasses.replace(task, load_pretrained=load_and_fit)
        train(config, args.out, make_task)
        workdir, train_s = args.out, time.time() - start
    measured = (asr_wer(workdir) if args.stage == "2_1" else
                decoder_recognised(workdir, os.path.join(args.run, "stage3_1", "codec")))
    line = {"bench": "vita_miniature_experiment", "stage": args.stage, "steps": args.steps,
            "overrides": args.overrides, "train_s": round(train_s),
            "adapter_init": args.adapter_init, **({"adapter_fit": fit} if fit else {}), **measured, **provenance()}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
