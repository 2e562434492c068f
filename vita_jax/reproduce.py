"""The VITA-1.5 miniature (paper Fig. 3, progressive training, at toy scale on 2 CPU cores): a tiny VITA trained
through a text stage 0 (its LM's own pre-training, standing in for Qwen2) -> 1.1 -> 1.2 -> 1.3 -> 2.0 (the speech
encoder's CTC pre-training, standing in for the release's ASR-trained encoder) -> 2.1 -> 2.2 on the bundled shapes
scenes and their real espeak speech, then measured: ASR word error rate on held-out spoken utterances (stage 2.0's
CTC head, then after 2.1, where the paper measures it, and after 2.2), spoken-question accuracy against the same
questions typed, image-QA accuracy, and the state-token decision on noise (recall / precision of ☟).

    python -m vita_jax.reproduce --workdir workdirs/vita_mini [--scale 1.0] [--num_eval 96] [--config.a.b=value]
    python -m vita_jax.reproduce --workdir workdirs/vita_mini --speech   # then stages 3.1-3.2 (speech output)

`--speech` also runs the duplex engine end to end (`evaluate_duplex`). Each stage runs the
configs/vita/tiny_stage*.py config (steps x scale), from the previous stage's workdir. Writes WORKDIR/report.json
(report_speech.json), WORKDIR/vita_mini.json (the headline figures) and prints a table; docs/reproductions/vita.md
records a run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.data.audio import load_audio
from common.train import train
from configs import apply_overrides, load_config, split_config_overrides
from vita_jax import codec as codec_lib
from vita_jax import conversation
from vita_jax import data as data_lib
from vita_jax.codec_train import export, mel_distance
from vita_jax.conversation import strip_states
from vita_jax.duplex import DuplexEngine, frames_of
from vita_jax.eval import (TemplateRecogniser, evaluate_asr, evaluate_ctc_asr, evaluate_image_qa, evaluate_spoken_qa,
                           load_model)
from vita_jax.hf import load_codec
from vita_jax.inference import Request, generate_batch
from vita_jax.speech_train import load_speaker, text_use
from vita_jax.task import make_task
from vita_jax.train import make_task_for
from vita_jax.tts import resample

STAGES = (("0", 600), ("1_1", 100), ("1_2", 300), ("1_3", 100), ("2_0", 600), ("2_1", 300), ("2_2", 100))
SPEECH_STAGES = (("3_1", 250), ("3_2", 1600))  # the codec, then the speech decoders on the stage-2.2 LLM


def stage_config(name: str, steps: int, scale: float, seed: int, overrides: Sequence[str] = ()):
    """configs/vita/tiny_stage<name>.py for a miniature run: steps x scale, one checkpoint at the end, warm-up at
    most a quarter of the run, then the command line's `--config.a.b=value` overrides (applied to every stage)."""
    config = load_config(f"vita/tiny_stage{name}")
    config.seed = seed
    config.total_steps = max(2, int(round(steps * scale)))
    config.checkpoint_every = config.total_steps
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.total_steps // 4)
    apply_overrides(config, overrides)
    return config


def run_stages(workdir: str, scale: float = 1.0, seed: int = 0, stages=STAGES,
               overrides: Sequence[str] = ()) -> dict:
    times, previous = {}, None
    for name, steps in stages:
        config = stage_config(name, steps, scale, seed, overrides)
        config.init_from = previous or ""
        stage_dir = os.path.join(workdir, f"stage{name}")
        start = time.time()
        result = train(config, stage_dir, make_task)
        if result.preempted:
            raise SystemExit(f"stage {name} was preempted: not evaluating a half-trained model")
        times[name] = time.time() - start
        previous = stage_dir
    return times


def run_speech_stages(workdir: str, scale: float = 1.0, seed: int = 0, overrides: Sequence[str] = ()) -> dict:
    """Stages 3.1 (codec, exported to stage3_1/codec in the release layout) and 3.2 (decoders reading stage 2.2's
    LLM embeddings)."""
    times = {}
    for name, steps in SPEECH_STAGES:
        config = stage_config(name, steps, scale, seed, overrides)
        if name == "3_2":
            config.codec_from = os.path.join(workdir, "stage3_1", "codec")
            config.text_from = os.path.join(workdir, "stage2_2")
        stage_dir = os.path.join(workdir, f"stage{name}")
        start = time.time()
        result = train(config, stage_dir, make_task_for)
        if result.preempted:
            raise SystemExit(f"stage {name} was preempted: not evaluating a half-trained model")
        if name == "3_1":
            export(stage_dir, os.path.join(stage_dir, "codec"))
        times[name] = time.time() - start
    return times


def codec_round_trip(codec, cparams):
    """-> round_trip(16 kHz wave [n]) = (the codec's input [1, N] at its rate, its reconstruction [1, N], that back at
    16 kHz [n]): encode + decode, jitted once."""
    rate, hop = codec.config.sampling_rate, codec.config.hop_length
    encode_decode = jax.jit(lambda p, w: codec.apply({"params": p}, codec.apply({"params": p}, w, method="encode")[0],
                                                      method="decode"))

    def round_trip(wave16k):
        wav = jnp.asarray(codec_lib.pad_to_tokens(resample(wave16k, data_lib.SAMPLE_RATE, rate)[None], hop))
        rec = encode_decode(cparams, wav)
        return wav, rec, resample(np.asarray(rec[0]), rate, data_lib.SAMPLE_RATE)[:len(wave16k)]

    return round_trip


def answer_phrases(image_size: int) -> list[str]:
    """The answers the spoken-QA data asks for (the template recogniser's closed set)."""
    vocabulary = data_lib.ShapesVitaSource("spoken_qa", "train", 400, image_size=image_size, typed_fraction=0.0)
    return [true_answer(vocabulary[i]) for i in range(len(vocabulary))]


def spoken_queries(image_size: int, count: int, pool: int, kind: str = "spoken") -> list[dict]:
    """The first `count` records of `kind` ("spoken" questions, or "noise" clips) among `pool` held-out spoken-QA
    records."""
    qa = data_lib.ShapesVitaSource("spoken_qa", "validation", pool, image_size=image_size, typed_fraction=0.0)
    found = []
    for i in range(pool):  # records are made on access (scene, speech): stop at the count
        if len(found) == count:
            break
        if (record := qa[i]).get("kind") == kind:
            found.append(record)
    return found


def true_answer(record: dict) -> str:
    return conversation.strip_states(record["conversations"][-1]["value"])


def evaluate_speech(workdir: str, num_eval: int = 48) -> dict:
    """Codec: mel distance of resynthesised held-out speech, and our stage-2.1 ASR's WER on it vs on the original.
    Speech out: spoken questions answered by stage 2.2, spoken by stage 3.2, transcribed by the same ASR: WER of the
    transcript against the text answer."""
    out = {}
    codec, cparams = load_codec(os.path.join(workdir, "stage3_1", "codec"))
    rate = codec.config.sampling_rate
    model, params, tok = load_model(os.path.join(workdir, "stage2_2"))
    asr_model, asr_params, asr_tok = load_model(os.path.join(workdir, "stage2_1"))  # the judge: stage 2.1's ASR
    size = model.config.vision.image_size
    asr = data_lib.ShapesVitaSource("asr", "validation", num_eval, image_size=size)
    records = [asr[i] for i in range(num_eval)]

    round_trip = codec_round_trip(codec, cparams)

    def through_codec(wave16k):
        return round_trip(wave16k)[2]

    resynth, mels = [], []
    for r in records:
        wav, rec, back = round_trip(r["audio"][0])
        mels.append(float(mel_distance(wav, rec, codec.config)[0]))
        resynth.append({**r, "audio": [back]})
    out["codec_mel_distance"] = float(np.mean(mels))
    out["asr_wer_original"] = evaluate_asr(asr_model, asr_params, asr_tok, records)["wer"]
    out["asr_wer_resynthesised"] = evaluate_asr(asr_model, asr_params, asr_tok, resynth)["wer"]

    out["decoder_text_use"] = text_use(os.path.join(workdir, "stage3_2"))  # teacher-forced: own vs another's text
    speaker = load_speaker(os.path.join(workdir, "stage3_2"), max_tokens=160)  # 4 s: answers are 1-3 words
    queries = spoken_queries(size, num_eval // 2, pool=4 * num_eval)
    answers = [conversation.strip_states(a) for a in generate_batch(
        model, params, tok, [Request(images=[r["image"]], audio=r["audio"][:1]) for r in queries], max_new_tokens=16)]

    def say(texts):  # -> 16 kHz waves (at least 0.1 s), seconds of 24 kHz speech
        waves, seconds = [], []
        for i, text in enumerate(texts):
            audio = speaker.say(text, rng=jax.random.key(i)) if text.strip() else np.zeros(0, np.float32)
            seconds.append(len(audio) / rate)
            waves.append(for_asr(audio, rate))
        return waves, seconds

    spoken, durations = say(answers)
    res = evaluate_asr(asr_model, asr_params, asr_tok, [{"audio": [w], "text": a or "-"}
                                                        for w, a in zip(spoken, answers)])
    out["spoken_answer_transcript_wer"] = res["wer"]
    out["spoken_answer_seconds"] = float(np.mean(durations)) if durations else 0.0
    out["spoken_answer_examples"] = list(zip(answers[:4], res["predictions"][:4]))
    # The control: the same answers said by espeak through the same ASR (what a perfect speech decoder would score),
    # and how many distinct transcripts the ASR gave (an ASR that says one thing to all makes the WER meaningless)
    bank, espeak_rng = data_lib.load_word_bank(), np.random.default_rng(2)
    control = [{"audio": [bank.say(data_lib.spoken_form(a), espeak_rng)], "text": a}
               for a in answers if data_lib.spoken_form(a)]
    out["spoken_answer_transcript_wer_espeak_control"] = evaluate_asr(asr_model, asr_params, asr_tok,
                                                                      control)["wer"] if control else None
    out["spoken_answer_distinct_transcripts"] = len(set(res["predictions"]))
    out["spoken_answer_distinct_answers"] = len(set(answers))

    # Intelligibility without the part-1 ASR: a closed-set template recogniser over the answer vocabulary, on the
    # true answers said by espeak (original, through the codec) and by the speech decoder, and on the model's answers
    phrases = answer_phrases(size)
    by_espeak = TemplateRecogniser(phrases)
    by_codec = TemplateRecogniser(phrases, channel=through_codec)
    truths = [true_answer(r) for r in queries]
    rng = np.random.default_rng(1)
    said = [bank.say(data_lib.spoken_form(t), rng) for t in truths]
    resaid = [through_codec(w) for w in said]
    decoded, decoded_seconds = say(truths)
    score = lambda rec, waves, texts: rec.accuracy(waves, texts)["accuracy"]  # noqa: E731
    decoded_result = by_codec.accuracy(decoded, truths)
    out["template_recogniser"] = {
        "chance": 1.0 / len(by_espeak.candidates),
        "espeak_original": score(by_espeak, said, truths),
        "espeak_through_codec": score(by_espeak, resaid, truths),
        "espeak_through_codec_vs_codec_templates": score(by_codec, resaid, truths),
        "decoder_true_answers_vs_codec_templates": decoded_result["accuracy"],
        "decoder_model_answers_vs_codec_templates": score(by_codec, spoken, answers),
        "decoder_true_answer_seconds": float(np.mean(decoded_seconds)),
        "espeak_true_answer_seconds": float(np.mean([len(w) / data_lib.SAMPLE_RATE for w in said])),
        "examples": list(zip(truths[:6], decoded_result["predictions"][:6])),
    }
    return out


def for_asr(audio: np.ndarray, rate: int) -> np.ndarray:
    """Synthesised speech at `rate` -> the ASR's 16 kHz wave, zero-padded to at least 0.1 s (an empty answer too)."""
    wave = resample(audio, rate, data_lib.SAMPLE_RATE) if len(audio) else np.zeros(0, np.float32)
    return np.pad(wave, (0, max(0, data_lib.SAMPLE_RATE // 10 - len(wave))))


def evaluate_duplex(workdir: str, num_queries: int = 24, num_noise: int = 8) -> dict:
    """End to end through `vita_jax.duplex`: held-out spoken questions about a held-out scene and held-out noise
    clips, written as 16 kHz WAV files, read back and fed as 80 ms frames (with 0.3 s of silence before and 1 s
    after) to one `DuplexEngine` (stage 2.2's model, stage 3.2's speaker; the scene is the engine's image). Each
    spoken answer is transcribed by stage 2.1's ASR. A query counts as answered when audio came back, and as correct
    when that transcript equals the true answer (as said: '2' -> 'two'); a noise clip counts as met with silence when
    no audio came back."""
    import soundfile

    model, params, tok = load_model(os.path.join(workdir, "stage2_2"))
    asr_model, asr_params, asr_tok = load_model(os.path.join(workdir, "stage2_1"))
    speaker = load_speaker(os.path.join(workdir, "stage3_2"), max_tokens=160)
    size = model.config.vision.image_size
    pool = 8 * (num_queries + num_noise)
    queries, noise = (spoken_queries(size, num_queries, pool), spoken_queries(size, num_noise, pool, kind="noise"))
    folder = os.path.join(workdir, "duplex_eval")
    os.makedirs(folder, exist_ok=True)
    engine = DuplexEngine(model, params, tok, speaker)
    rate = engine.audio_rate
    silence = lambda seconds: np.zeros(int(seconds * data_lib.SAMPLE_RATE), np.float32)  # noqa: E731
    results = []
    for i, record in enumerate(queries + noise):
        path = os.path.join(folder, f"{i:03d}_{record['kind']}.wav")
        soundfile.write(path, record["audio"][0], data_lib.SAMPLE_RATE)
        wave, _ = load_audio(path)
        engine.set_image(record["image"])
        events = list(engine.run(frames_of(np.concatenate([silence(0.3), wave, silence(1.0)]))))
        audio = [e.audio for e in events if e.kind == "audio"]
        states = [e.text for e in events if e.kind == "state"]
        results.append({"kind": record["kind"], "question": record["question"], "answer": record.get("answer", ""),
                        "text": "".join(e.text for e in events if e.kind == "text"),
                        "state": states[0] if states else None,
                        "errors": [e.text for e in events if e.kind == "error"],
                        "speech": np.concatenate(audio) if audio else np.zeros(0, np.float32)})
    spoken = [r for r in results if r["kind"] == "spoken" and len(r["speech"])]
    waves = [for_asr(r["speech"], rate) for r in spoken]
    transcripts = evaluate_asr(asr_model, asr_params, asr_tok, [{"audio": [w], "text": r["answer"] or "-"}
                                                                for w, r in zip(waves, spoken)])["predictions"]
    same = lambda a, b: data_lib.spoken_form(a) == data_lib.spoken_form(b)  # noqa: E731
    correct = [same(t, r["answer"]) for t, r in zip(transcripts, spoken)]
    asked = [r for r in results if r["kind"] == "spoken"]
    noise_results = [r for r in results if r["kind"] == "noise"]
    return {
        "queries": len(asked), "noise_clips": len(noise_results),
        "answered_in_speech": 100.0 * len(spoken) / max(len(asked), 1),
        "text_answer_correct": 100.0 * np.mean([same(strip_states(r["text"]), r["answer"]) for r in asked]),
        "transcript_correct": 100.0 * sum(correct) / max(len(asked), 1),
        "noise_silent": 100.0 * np.mean([len(r["speech"]) == 0 for r in noise_results]) if noise_results else None,
        "errors": sum(len(r["errors"]) for r in results),
        "examples": [(r["question"], r["answer"], strip_states(r["text"]), t)
                     for r, t in zip(spoken[:6], transcripts[:6])]}


def evaluate(workdir: str, num_eval: int = 96) -> dict:
    out = {}
    model, params, tok = load_model(os.path.join(workdir, "stage1_3"))
    size = model.config.vision.image_size
    vqa = data_lib.ShapesVitaSource("vqa", "validation", num_eval, image_size=size)
    out["image_qa_after_1.3"] = evaluate_image_qa(model, params, tok, [vqa[i] for i in range(num_eval)])["accuracy"]
    asr = data_lib.ShapesVitaSource("asr", "validation", num_eval, image_size=size)
    asr_records = [asr[i] for i in range(num_eval)]
    model, params, tok = load_model(os.path.join(workdir, "stage2_0"))
    res = evaluate_ctc_asr(model, params, tok, asr_records)
    out["asr_wer_after_2.0_ctc"] = res["wer"]
    out["asr_examples_2_0_ctc"] = list(zip([r["text"] for r in asr_records[:3]], res["predictions"][:3]))
    for stage in ("2_1", "2_2"):
        model, params, tok = load_model(os.path.join(workdir, f"stage{stage}"))
        res = evaluate_asr(model, params, tok, asr_records)
        out[f"asr_wer_after_{stage.replace('_', '.')}"] = res["wer"]
        out[f"asr_examples_{stage}"] = list(zip([r["text"] for r in asr_records[:3]], res["predictions"][:3]))
    qa = data_lib.ShapesVitaSource("spoken_qa", "validation", num_eval, image_size=size, typed_fraction=0.0)
    res = evaluate_spoken_qa(model, params, tok, [qa[i] for i in range(num_eval)])
    res.pop("predictions")
    out["spoken_qa_after_2.2"] = res
    out["image_qa_after_2.2"] = evaluate_image_qa(model, params, tok, [vqa[i] for i in range(num_eval)])["accuracy"]
    return out


def stages_report(workdir: str, scale: float = 1.0, seed: int = 0, num_eval: int = 96,
                  overrides: Sequence[str] = ()) -> dict:
    """Stages 0-2.2 on WORKDIR, then `evaluate` on NUM_EVAL held-out samples of each kind -> WORKDIR/report.json's
    content; also (re)writes WORKDIR/vita_mini.json (`figures`)."""
    start = time.time()
    times = run_stages(workdir, scale, seed, overrides=overrides)
    report = {"stage_seconds": times, **evaluate(workdir, num_eval), "total_seconds": time.time() - start,
              "scale": scale, "seed": seed, "num_eval": num_eval}
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    write_figures(workdir)
    return report


def speech_report(workdir: str, scale: float = 1.0, seed: int = 0, num_eval: int = 48,
                  overrides: Sequence[str] = ()) -> dict:
    """Stages 3.1-3.2 on WORKDIR's stage 2.2, then their measures (`evaluate_speech` on up to 48 held-out samples,
    `evaluate_duplex` on up to 24 spoken questions and 8 noise clips) -> WORKDIR/report_speech.json's content."""
    start = time.time()
    times = run_speech_stages(workdir, scale, seed, overrides)
    report = {"stage_seconds": times, **evaluate_speech(workdir, min(num_eval, 48)),
              "duplex": evaluate_duplex(workdir, min(num_eval, 24), min(num_eval, 8)),
              "total_seconds": time.time() - start, "scale": scale, "seed": seed}
    with open(os.path.join(workdir, "report_speech.json"), "w") as f:
        json.dump(report, f, indent=1)
    write_figures(workdir)
    return report


def speech_rows(report: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of a `speech_report`, as the command line and the main job's report print them."""
    recogniser, duplex = report["template_recogniser"], report["duplex"]
    return [("codec mel distance (mean absolute log-mel difference)", f"{report['codec_mel_distance']:.3f}"),
            ("ASR WER original / resynthesised (%)",
             f"{report['asr_wer_original']:.1f} / {report['asr_wer_resynthesised']:.1f}"),
            ("spoken answer: transcript WER vs text answer, espeak control (%)",
             f"{report['spoken_answer_transcript_wer']:.1f}, {report['spoken_answer_transcript_wer_espeak_control']}"),
            ("distinct answers / transcripts", f"{report['spoken_answer_distinct_answers']} / "
                                               f"{report['spoken_answer_distinct_transcripts']}"),
            ("decoder text use: loss gain of own over another's text", f"{report['decoder_text_use']['gain']:.3f}"),
            ("decoder's true answers recognised (template, %; chance)",
             f"{100 * recogniser['decoder_true_answers_vs_codec_templates']:.1f}; {100 * recogniser['chance']:.1f}"),
            ("spoken answer length (s)", f"{report['spoken_answer_seconds']:.2f}"),
            ("duplex: queries answered in speech / transcript correct / noise met with silence (%)",
             f"{duplex['answered_in_speech']:.1f} / {duplex['transcript_correct']:.1f} / "
             + ("-" if duplex["noise_silent"] is None else f"{duplex['noise_silent']:.1f}")),
            ("train seconds per stage", ", ".join(f"{k.replace('_', '.')}: {v:.0f}"
                                                   for k, v in report["stage_seconds"].items())),
            ("total time (min)", f"{report['total_seconds'] / 60:.1f}")]


def figures(workdir: str) -> dict:
    """The miniature's headline figures (issue targets) from WORKDIR/report.json and, once `--speech` ran,
    report_speech.json; None where a figure was not measured. Small: docs/reproductions/results/vita_mini.json
    is a copy."""
    def read(name):
        path = os.path.join(workdir, name)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    main_report, speech = read("report.json"), read("report_speech.json")
    qa = main_report.get("spoken_qa_after_2.2", {})
    recogniser, duplex = speech.get("template_recogniser", {}), speech.get("duplex", {})
    typed, spoken = qa.get("typed_accuracy"), qa.get("spoken_accuracy")
    recognised = recogniser.get("decoder_true_answers_vs_codec_templates")
    minutes = lambda report: report["total_seconds"] / 60 if "total_seconds" in report else None  # noqa: E731
    parts = [minutes(main_report), minutes(speech)]
    return {  # the keys first, then the diagnostics behind them
        "asr_wer_2_1": main_report.get("asr_wer_after_2.1"),
        "typed_acc": typed, "spoken_acc": spoken,
        "noise_recall": qa.get("noise_recall"), "noise_precision": qa.get("noise_precision"),
        "speech_out_recognised": 100.0 * recognised if recognised is not None else None,
        "asr_wer_decoder": speech.get("spoken_answer_transcript_wer"),
        "asr_wer_espeak": speech.get("spoken_answer_transcript_wer_espeak_control"),
        "duplex_correct": duplex.get("transcript_correct"),
        "minutes": sum(parts) if None not in parts else None,  # stages 0-3.2 with their evaluations
        "asr_wer_after_2_0_ctc": main_report.get("asr_wer_after_2.0_ctc"),
        "asr_wer_after_2_2": main_report.get("asr_wer_after_2.2"),
        "image_qa_after_1_3": main_report.get("image_qa_after_1.3"),
        "spoken_over_typed": spoken / typed if typed and spoken is not None else None,
        "state_correct_spoken": qa.get("spoken_state_ok"), "state_correct_typed": qa.get("typed_state_ok"),
        "recogniser_chance": 100.0 * recogniser["chance"] if "chance" in recogniser else None,
        "duplex_answered_in_speech": duplex.get("answered_in_speech"),
        "duplex_noise_silent": duplex.get("noise_silent"),
        "minutes_stages_0_to_2_2": parts[0], "minutes_stages_3_1_to_3_2": parts[1],
        "seed": main_report.get("seed"), "scale": main_report.get("scale"),
    }


def write_figures(workdir: str) -> None:
    with open(os.path.join(workdir, "vita_mini.json"), "w") as f:
        json.dump(figures(workdir), f, indent=1)
        f.write("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train the tiny VITA through stages 1.1-2.2 and measure it.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_eval", type=int, default=96)
    parser.add_argument("--speech", action="store_true",
                        help="run stages 3.1-3.2 (speech output) on WORKDIR's trained stage 2.2 and measure them")
    argv, overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.speech:
        report = speech_report(args.workdir, args.scale, args.seed, args.num_eval, overrides)
        print("| measure | value |\n|---|---|")
        for k, v in speech_rows(report):
            print(f"| {k} | {v} |")
        return 0
    report = stages_report(args.workdir, args.scale, args.seed, args.num_eval, overrides)
    qa = report["spoken_qa_after_2.2"]
    rows = [("image QA accuracy after 1.3 / 2.2 (%)",
             f"{report['image_qa_after_1.3']:.1f} / {report['image_qa_after_2.2']:.1f}"),
            ("ASR WER after 2.1 / 2.2 (%)", f"{report['asr_wer_after_2.1']:.1f} / {report['asr_wer_after_2.2']:.1f}"),
            ("spoken vs typed question accuracy (%)", f"{qa['spoken_accuracy']:.1f} vs {qa['typed_accuracy']:.1f}"),
            ("noise rejection: recall / precision of ☟ (%)", f"{qa['noise_recall']:.1f} / {qa['noise_precision']:.1f}"),
            ("real queries answered (%)", f"{qa['query_answered']:.1f}"),
            ("total time (min)", f"{report['total_seconds'] / 60:.1f}")]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
