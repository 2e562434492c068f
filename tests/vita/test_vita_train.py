"""VITA-1.5 training stages through the one trainer (configs/vita/tiny_stage*.py at micro size): each stage trains
exactly its parameter groups (the rest bit-identical, the CMVN statistics never), chains from the previous stage's
workdir, and the data transform expands placeholders, masks answers only and skips bad audio per reason."""
import os

import chex
import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from common.data.records import BadRecord

from configs import load_config

pytestmark = pytest.mark.slow  # trainings


def micro(config, steps: int = 2, batch: int = 2):
    config.model.text.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=48)
    config.model.vision.update(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=1,
                               num_heads=1)
    config.model.audio.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
    for spec in config.data.datasets.values():
        spec.image_size = 28
        spec.size = 64
    config.total_steps, config.batch_size, config.log_every, config.checkpoint_every = steps, batch, 1, steps
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    return config


def flat(params):
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(nn.unbox(params)).items()}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """1.1 -> 2.1 -> 2.2 (each from the previous workdir); the initial params of each are recorded. Trained once per
    test session: under xdist the workers share the base temp dir, and the first one trains while the others wait."""
    import pickle

    from filelock import FileLock

    from common.train import train
    from vita_jax.task import make_task, restore_params

    base = tmp_path_factory.getbasetemp()  # under xdist: this run's gw<N> folder, whose parent is the run's
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "vita_train_stages", shared / "vita_train_stages.pkl"
    with FileLock(str(shared / "vita_train_stages.lock")):
        if done.exists():
            with open(done, "rb") as f:
                return pickle.load(f)
        out = {}
        previous = None
        for stage in ("1_1", "2_1", "2_2"):
            config = micro(load_config(f"vita/tiny_stage{stage}"))
            config.init_from = str(previous) if previous else ""
            workdir = root / stage
            task = make_task(config, workdir=str(workdir))
            start = jax.jit(task.init_params)(jax.random.key(config.seed))
            if task.load_pretrained is not None:
                start = task.load_pretrained(nn.unbox(start))
            result = train(config, str(workdir), make_task)
            out[stage] = (flat(start), flat(restore_params(str(workdir))), result)
            previous = workdir
        out["root"] = root
        with open(done, "wb") as f:
            pickle.dump(out, f)
    return out


@pytest.mark.parametrize("stage,trained", [("1_1", ("projector",)), ("2_1", ("audio_encoder", "audio_adapter")),
                                           ("2_2", ("audio_adapter", "projector", "lm"))])
def test_each_stage_trains_its_groups_only(stages, stage, trained):
    start, end, result = stages[stage]
    chex.assert_tree_all_finite([row["loss"] for row in result.metrics if "loss" in row])
    for path in start:
        changed = not np.array_equal(start[path], end[path])
        expect = path.split("/")[0] in trained and "global_cmvn" not in path
        if expect:
            assert changed or path.endswith("bias") and "lm/" in path, f"stage {stage}: {path} did not train"
        else:
            assert not changed, f"stage {stage}: {path} changed but is frozen"


def test_stages_chain_from_the_previous_workdir(stages):
    end_11, start_21 = stages["1_1"][1], stages["2_1"][0]
    assert all(np.array_equal(end_11[p], start_21[p]) for p in end_11 if p.startswith("projector/"))


def test_eval_cli_and_metrics_on_a_trained_workdir(stages, capsys):
    """`python -m vita_jax.eval` on stage 2.2's workdir: every task runs on held-out bundled samples and reports
    metrics in range; a perfect transcript scores WER 0 and a wrong one > 0 (jiwer)."""
    import json

    from vita_jax import eval as vita_eval

    workdir = str(stages["root"] / "2_2")
    for task, keys in (("asr", ("wer",)), ("spoken_qa", ("spoken_accuracy", "typed_accuracy", "noise_recall")),
                       ("image_qa", ("accuracy",))):
        assert vita_eval.main(["--task", task, "--workdir", workdir, "--num", "4", "--batch_size", "4"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res["task"] == task and all(0.0 <= res[k] <= 100.0 or k == "wer" and res[k] >= 0 for k in keys)
    # A LibriSpeech-layout folder: the unreadable transcript line is counted as skipped, the rest scored.
    import soundfile as sf

    from common.data.speech import load_word_bank

    chapter = stages["root"] / "libri" / "7" / "70"
    chapter.mkdir(parents=True, exist_ok=True)
    sf.write(chapter / "7-70-0000.flac", load_word_bank().say("red circle", np.random.default_rng(0)), 16000)
    (chapter / "7-70.trans.txt").write_bytes(b"7-70-0000 RED CIRCLE\n7-70-0001 CAF\xc9\n")
    assert vita_eval.main(["--task", "asr", "--workdir", workdir, "--librispeech", str(stages["root"] / "libri")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 1 and res["skipped"] == {"non_utf8_text": 1}
    refs = [{"text": "a red circle", "audio": [np.zeros(16000, np.float32)]}]

    class Echo:  # stands in for the model: generation is monkeypatched below
        pass

    original = vita_eval._answers
    try:
        vita_eval._answers = lambda *a, **k: ["☞a red circle"]
        assert vita_eval.evaluate_asr(Echo(), None, None, refs)["wer"] == 0.0
        vita_eval._answers = lambda *a, **k: ["☞a blue circle"]
        assert vita_eval.evaluate_asr(Echo(), None, None, refs)["wer"] == pytest.approx(100 / 3)
    finally:
        vita_eval._answers = original


def test_transform_expands_masks_and_states():
    from vita_jax import data
    from vita_jax.presets import tiny

    tok = data.shapes_tokenizer(1024)
    cfg = tiny(vocab_size=1024)
    transform = data.VitaSampleTransform(tok, cfg, max_len=256)
    src = data.ShapesVitaSource("spoken_qa", size=40, image_size=56)
    kinds = set()
    for i in range(40):
        record = src[i]
        ex = transform(record)
        kinds.add(record["kind"])
        ids, mask = ex["input_ids"], ex["loss_mask"]
        assert (ids == cfg.image_token_index).sum() == cfg.tokens_per_tile
        chex.assert_shape(ex["images"], (1, 56, 56, 3))
        answer = tok.decode([int(t) for t in ids[mask]])
        if record["kind"] == "noise":
            assert answer == "☟<|im_end|>" and (ids == cfg.audio_token_index).sum() > 0
        elif record["kind"] == "spoken":
            assert answer.startswith("☞") and (ids == cfg.audio_token_index).sum() == cfg.audio_tokens(
                len(ex["audio_features"]))
        else:
            assert answer.startswith("☜") and len(ex["audio_features"]) == 0
    assert kinds == {"noise", "spoken", "typed"}


def test_bad_audio_is_skipped_per_reason(tmp_path):
    import soundfile as sf

    from vita_jax import data

    wave = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.5
    sf.write(tmp_path / "rate.wav", wave, 8000)
    cases = {"wrong_sample_rate": str(tmp_path / "rate.wav"), "empty_audio": np.zeros(100, np.float32),
             "clipped_audio": np.clip(wave * 10, -1, 1), "too_long": np.tile(wave, 12),
             "missing_audio": str(tmp_path / "nope.wav")}
    for reason, audio in cases.items():
        with pytest.raises(BadRecord) as e:
            data.checked_waveform(audio, max_seconds=10.0)
        assert e.value.reason == reason
    chex.assert_shape(data.checked_waveform(wave, 10.0), (16000,))


def test_librispeech_layout_through_the_pipeline(tmp_path):
    """A LibriSpeech-layout folder (real espeak speech) -> ASR batches; a file at 8 kHz and a transcript line that is
    not UTF-8 are skipped and counted per reason; the transcript (lower-cased) is the only target."""
    import soundfile as sf

    from common.data import pipeline as P
    from common.data.records import SkipCounter
    from common.data.speech import load_word_bank
    from vita_jax import data
    from vita_jax.presets import tiny

    bank, rng = load_word_bank(), np.random.default_rng(0)
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    texts = ["red circle", "how many shapes", "blue square"]
    for i, text in enumerate(texts):
        sf.write(chapter / f"19-198-{i:04d}.flac", bank.say(text, rng), 16000)
    sf.write(chapter / "19-198-0003.flac", bank.say("yes", rng)[::2], 8000)
    lines = [f"19-198-{i:04d} {t.upper()}".encode() for i, t in enumerate(texts)] + [b"19-198-0003 YES",
                                                                                      b"19-198-0004 CAF\xc9"]
    (chapter / "19-198.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    src = data.LibriSpeechSource(str(tmp_path))
    assert len(src) == 5 and src[0]["text"] == "red circle" and src[1]["audio"][0].endswith("19-198-0001.flac")

    tok, cfg = data.shapes_tokenizer(1024), tiny(vocab_size=1024)
    transform = data.VitaSampleTransform(tok, cfg, max_len=256)
    ds, counter = P.build_dataset([src[i] for i in range(len(src))], transform, batch_size=1, shuffle=False,
                                  collate=P.Collate(256, 0), counter=SkipCounter(1.0))
    batches = list(ds)
    assert counter.summary()["by_reason"] == {"wrong_sample_rate": 1, "non_utf8_text": 1} and len(batches) == 3
    b = batches[0]
    assert b["audio_features"].shape[2] == 80 and b["audio_mask"].sum() > 50
    assert tok.decode([int(t) for t in b["input_ids"][0][b["loss_mask"][0]]]) == "☞red circle<|im_end|>"


def test_lora_stage_trains_the_adapters_and_the_projector_only(tmp_path):
    """Stage 2.2 with LoRA on the LLM (config.lora): the adapters, the projector and the audio adapter train, the
    LLM's base weights stay bit-identical, and the trained workdir evaluates with the adapters merged."""
    from common.train import train
    from vita_jax.eval import load_model
    from vita_jax.task import make_task, restore_params

    config = micro(load_config("vita/tiny_stage2_2"))
    config.init_from = ""
    config.lora = dict(rank=4, alpha=8.0, targets=("q", "v", "gate"))
    config.optimizer.param_groups = ((r"lora/.*", dict()), (r"projector/.*", dict()), (r"audio_adapter/.*", dict()),
                                     (r".*", dict(frozen=True)))
    task = make_task(config, workdir=str(tmp_path))
    start = flat(jax.jit(task.init_params)(jax.random.key(config.seed)))
    train(config, str(tmp_path), make_task)
    end = flat(restore_params(str(tmp_path)))
    changed = {p for p in start if not np.array_equal(start[p], end[p])}
    assert any(p.startswith("lora/") for p in changed) and any(p.startswith("projector/") for p in changed)
    assert not any(p.startswith(("lm/", "vision_tower/", "audio_encoder/")) for p in changed)
    model, params, _ = load_model(str(tmp_path))
    assert "lora" not in params and set(params) == {"vision_tower", "projector", "audio_encoder", "audio_adapter", "lm"}


def test_english_wer_normalises_and_counts_an_empty_transcript_as_all_errors():
    from vita_jax.eval import english_wer

    assert english_wer(["A red circle."], ["a red, circle"]) == 0.0
    assert english_wer(["a red circle", "two"], ["", "two"]) == pytest.approx(100 * 3 / 4)
