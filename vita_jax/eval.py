"""VITA-1.5 evaluation: ASR (word error rate for English, character error rate for Chinese, with jiwer; the paper's
LibriSpeech / AISHELL numbers were measured after stage 2.1, issue #86), spoken question answering (accuracy of
spoken questions vs the same questions typed), image QA accuracy, and the state-token decision of non-awakening
interaction (answer vs stay silent on noise: precision / recall of ☟).

    python -m vita_jax.eval --task asr --workdir W | --model_dir VITA-1.5 [--librispeech DIR] [--num 200]
    python -m vita_jax.eval --task spoken_qa --workdir W [--num 200]
    python -m vita_jax.eval --task image_qa --workdir W

Without --librispeech the ASR set is the bundled held-out espeak speech (`vita_jax.data` 'asr', validation split).
Prints one JSON line of metrics.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.data.audio import speech_fbank
from common.task_utils import load_trained
from common.tokenizers import load_tokenizer
from vita_jax import conversation
from vita_jax import ctc as ctc_lib
from vita_jax import data as data_lib
from vita_jax.hf import load_original
from vita_jax.inference import Request, generate_batch
from vita_jax.task import make_task


def _normalize(text: str) -> str:
    return " ".join(data_lib.load_word_bank().tokenize(text)) if text else ""


def _norm_en(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _batched(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def fbank_batch(records: Sequence[dict]) -> tuple[jax.Array, jax.Array]:
    """Records {audio: [wave, ...]} -> their first clips' fbank frames, zero-padded to the longest ([B, T, 80]
    float32), and the real frame counts ([B] int32)."""
    feats = [speech_fbank(data_lib.checked_waveform(r["audio"][0], 1e9)) for r in records]
    batch = np.zeros((len(feats), max(len(f) for f in feats), feats[0].shape[1]), np.float32)
    for i, f in enumerate(feats):
        batch[i, :len(f)] = f
    return jnp.asarray(batch), jnp.asarray([len(f) for f in feats], jnp.int32)


def _answers(model, params, tokenizer, requests, batch_size, max_new_tokens):
    out = []
    for chunk in _batched(list(requests), batch_size):
        out += generate_batch(model, params, tokenizer, chunk, max_new_tokens=max_new_tokens, tile_slots=1,
                              audio_slots=1)
    return out


def english_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate (%) after lower-casing and dropping punctuation; an empty hypothesis counts as all deletions."""
    import jiwer

    hyps = [_norm_en(h) for h in hyps]
    return 100.0 * jiwer.wer([_norm_en(r) for r in refs], [h if h else "<empty>" for h in hyps])


def evaluate_asr(model, params, tokenizer, records: Sequence[dict], *, language: str = "en", batch_size: int = 16,
                 max_new_tokens: int = 48, prompt: str = data_lib.ASR_QUERY) -> dict:
    """records {audio: [wave or path], text} -> {'wer' or 'cer' (%), 'count', 'predictions'}."""
    import jiwer

    requests = [Request(question=prompt, audio=r["audio"][:1]) for r in records]
    hyps = [conversation.strip_states(a) for a in _answers(model, params, tokenizer, requests, batch_size,
                                                           max_new_tokens)]
    refs = [r["text"] for r in records]
    if language == "zh":
        strip = lambda s: "".join(s.split())  # noqa: E731
        score = jiwer.cer([strip(r) for r in refs], [strip(h) or "-" for h in hyps])
        return {"cer": 100.0 * score, "count": len(refs), "predictions": hyps}
    return {"wer": english_wer(refs, hyps), "count": len(refs), "predictions": hyps}


def evaluate_ctc_asr(model, params, tokenizer, records: Sequence[dict], *, batch_size: int = 16) -> dict:
    """Stage 2.0's own ASR (`vita_jax.ctc`: encoder + CTC head, greedy best path) on records {audio: [wave], text}
    -> {'wer' (%), 'count', 'predictions'}. `model` is the Vita of the stage-2.0 workdir; `params` include ctc_head."""
    if "ctc_head" not in params:
        raise ValueError("these parameters have no ctc_head: evaluate a stage-2.0 (objective 'ctc') workdir")
    ctc_model = ctc_lib.SpeechCTC(model.config)
    sub = {"audio_encoder": params["audio_encoder"], "ctc_head": params["ctc_head"]}
    hyps = []
    for chunk in _batched(list(records), batch_size):
        log_probs, lengths = ctc_model.apply({"params": sub}, *fbank_batch(chunk))
        hyps += [tokenizer.decode(ids) for ids in ctc_lib.greedy_decode(log_probs, lengths, ctc_model.blank_id)]
    return {"wer": english_wer([r["text"] for r in records], hyps), "count": len(records), "predictions": hyps}


def state_decisions(states: Sequence[str | None], is_noise: Sequence[bool]) -> dict:
    """Precision / recall of staying silent (☟) on noise, and the share of real queries answered."""
    silent = np.array([s == "noise" for s in states])
    noise = np.asarray(is_noise, bool)
    tp = int((silent & noise).sum())
    return {"noise_precision": 100.0 * tp / max(int(silent.sum()), 1),
            "noise_recall": 100.0 * tp / max(int(noise.sum()), 1),  # the noise-rejection rate
            "query_answered": 100.0 * float((~silent[~noise]).mean()) if (~noise).any() else 0.0}


def evaluate_spoken_qa(model, params, tokenizer, records: Sequence[dict], *, batch_size: int = 16,
                       max_new_tokens: int = 8) -> dict:
    """Shapes spoken-QA records (image, audio, question, answer, kind): every query asked spoken and typed, every
    noise utterance spoken. -> accuracy (exact answer after normalisation) spoken / typed, the state decisions,
    and whether answers carry the state of their query (☞ spoken, ☜ typed)."""
    queries = [r for r in records if r["kind"] != "noise"]
    spoken = [Request(images=[r["image"]], audio=r["audio"][:1]) for r in records]
    typed = [Request(question=r["question"].capitalize(), images=[r["image"]]) for r in queries]
    spoken_out = _answers(model, params, tokenizer, spoken, batch_size, max_new_tokens)
    typed_out = _answers(model, params, tokenizer, typed, batch_size, max_new_tokens)
    states = [conversation.answer_state(a) for a in spoken_out]
    is_noise = [r["kind"] == "noise" for r in records]
    spoken_q = [a for a, r in zip(spoken_out, records) if r["kind"] != "noise"]
    acc = lambda outs: 100.0 * float(np.mean([_normalize(conversation.strip_states(a)) == _normalize(r["answer"])  # noqa
                                              for a, r in zip(outs, queries)])) if queries else 0.0
    return {"spoken_accuracy": acc(spoken_q), "typed_accuracy": acc(typed_out), **state_decisions(states, is_noise),
            "spoken_state_ok": 100.0 * float(np.mean([conversation.answer_state(a) == "audio" for a in spoken_q]))
            if queries else 0.0,
            "typed_state_ok": 100.0 * float(np.mean([conversation.answer_state(a) == "text" for a in typed_out]))
            if queries else 0.0,
            "count": len(records), "queries": len(queries),
            "predictions": {"spoken": spoken_out, "typed": typed_out}}


def evaluate_image_qa(model, params, tokenizer, records: Sequence[dict], *, batch_size: int = 16,
                      max_new_tokens: int = 8) -> dict:
    """Shapes VQA records (typed question about the image) -> exact-match accuracy."""
    requests = [Request(question=r["conversations"][0]["value"].replace("<image>\n", ""), images=[r["image"]])
                for r in records]
    outs = _answers(model, params, tokenizer, requests, batch_size, max_new_tokens)
    gold = [r["conversations"][1]["value"] for r in records]
    score = [_normalize(conversation.strip_states(a)) == _normalize(g) for a, g in zip(outs, gold)]
    return {"accuracy": 100.0 * float(np.mean(score)), "count": len(records), "predictions": outs}


class TemplateRecogniser:
    """A closed-set spoken-phrase recogniser (phrases in `vita_jax.data.spoken_form`) that depends on no trained model
    (the intelligibility check of synthesised speech when the ASR under test cannot judge): each candidate phrase is
    said `renders` times by the bundled espeak word bank (random speed, pauses, gain), and an utterance is the candidate
    whose rendering is nearest under dynamic time warping (dtw-python, symmetric2 steps, normalised distance) of
    per-utterance mean / variance normalised 80-bin log-mel frames, silence trimmed at both ends. `channel` (16 kHz wave
    -> 16 kHz wave, e.g. a codec's round trip) is applied to the templates, to judge speech made through that channel
    against renderings distorted the same way."""

    def __init__(self, candidates: Sequence[str], renders: int = 3, seed: int = 0, channel=None):
        bank, rng = data_lib.load_word_bank(), np.random.default_rng(seed)
        channel = channel or (lambda wave: wave)
        self.candidates = sorted({data_lib.spoken_form(c) for c in candidates} - {""})
        if len(self.candidates) < 2:
            raise ValueError(f"a closed-set recogniser needs at least two distinct phrases, got {self.candidates}")
        self.templates = [(c, self.features(channel(bank.say(c, rng)))) for c in self.candidates
                          for _ in range(renders)]

    @staticmethod
    def features(wave: np.ndarray, rate: int = data_lib.SAMPLE_RATE) -> np.ndarray:
        """16 kHz waveform [N] -> normalised log-mel frames [T, 80] of its voiced span."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        if wave.size < rate // 20:
            wave = np.pad(wave, (0, rate // 20 - wave.size))
        feats = speech_fbank(wave, rate)  # [T, 80], 10 ms frames
        energy = feats.mean(-1)
        voiced = np.flatnonzero(energy > energy.max() - 4.0)  # within ~17 dB of the loudest frame
        feats = feats[voiced[0]:voiced[-1] + 1]
        return (feats - feats.mean(0)) / (feats.std(0) + 1e-5)

    def recognise(self, wave: np.ndarray) -> str:
        from dtw import dtw

        query = self.features(wave)
        dist = [dtw(query, t, step_pattern="symmetric2", distance_only=True).normalizedDistance
                for _, t in self.templates]
        return self.templates[int(np.argmin(dist))][0]

    def accuracy(self, waves: Sequence[np.ndarray], texts: Sequence[str]) -> dict:
        """Fraction of utterances recognised as the phrase they say, with the predictions and chance level."""
        preds = [self.recognise(w) for w in waves]
        hits = [p == data_lib.spoken_form(t) for p, t in zip(preds, texts)]
        return {"accuracy": float(np.mean(hits)) if hits else 0.0, "chance": 1.0 / len(self.candidates),
                "predictions": preds}


def load_model(workdir: str | None = None, model_dir: str | None = None):
    """-> (Vita, params, tokenizer) from a training workdir of ours or a released VITA-1.5 folder."""
    if model_dir:
        module, params = load_original(model_dir)
        return module, params, load_tokenizer(model_dir)

    module, params, tokenizer, _ = load_trained(workdir, make_task)
    return module, params, tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a VITA-1.5 model (ASR, spoken QA, image QA).")
    parser.add_argument("--task", required=True, choices=("asr", "spoken_qa", "image_qa"))
    parser.add_argument("--workdir", default=None, help="a training workdir of ours")
    parser.add_argument("--model_dir", default=None, help="a released VITA-1.5 folder")
    parser.add_argument("--librispeech", default=None, help="LibriSpeech-layout folder (ASR); default: bundled")
    parser.add_argument("--language", default="en", choices=("en", "zh"), help="en: WER, zh: CER")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=None, help="shapes images (default: the tower's)")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.model_dir):
        parser.error("give exactly one of --workdir and --model_dir")
    model, params, tokenizer = load_model(args.workdir, args.model_dir)
    size = args.image_size or model.config.vision.image_size
    if args.task == "asr":
        source = data_lib.LibriSpeechSource(args.librispeech) if args.librispeech else \
            data_lib.ShapesVitaSource("asr", "validation", args.num, image_size=size)
        records = [source[i] for i in range(min(args.num, len(source)))]
        bad = [r["_bad"][0] for r in records if "_bad" in r]  # unreadable transcript lines: counted, not scored
        records = [r for r in records if "_bad" not in r]
        res = evaluate_asr(model, params, tokenizer, records, language=args.language, batch_size=args.batch_size)
        res["skipped"] = {reason: bad.count(reason) for reason in sorted(set(bad))}
    elif args.task == "spoken_qa":
        source = data_lib.ShapesVitaSource("spoken_qa", "validation", args.num, image_size=size, typed_fraction=0.0)
        res = evaluate_spoken_qa(model, params, tokenizer, [source[i] for i in range(args.num)],
                                 batch_size=args.batch_size)
    else:
        source = data_lib.ShapesVitaSource("vqa", "validation", args.num, image_size=size)
        res = evaluate_image_qa(model, params, tokenizer, [source[i] for i in range(args.num)],
                                batch_size=args.batch_size)
    res.pop("predictions", None)
    print(json.dumps({"task": args.task, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
