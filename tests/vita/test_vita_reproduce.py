"""The VITA miniature's plumbing that needs no training: the ASR data and the text stage 0 share one query (so the
frozen LM of stage 2.1 meets a task it was taught), the ASR data says the answer words too, and the figures file
is read from the reports with None where a figure was not measured; synthesised answers reach the ASR at 16 kHz;
text-only batches hold no audio frames."""
import json

import chex
import numpy as np

from common.data import scene_text
from vita_jax import data as data_lib
from vita_jax import reproduce


def test_repeat_text_and_asr_share_the_query():
    repeat = data_lib.make_source({"source": "shapes_scene_text", "kind": "repeat"}, "train")
    asr = data_lib.ShapesVitaSource("asr", "train", 4)
    for i in range(4):
        user, answer = (turn["value"] for turn in repeat[i]["conversations"])
        assert user == data_lib.ASR_QUERY + answer  # the words on the line after the ASR prompt, repeated
        record = asr[i]
        assert record["conversations"][0]["value"] == data_lib.ASR_QUERY + "<audio>"
        assert record["conversations"][1]["value"] == record["text"]


def test_asr_utterances_include_the_answer_words():
    texts = [scene_text.utterance(np.random.default_rng([0, i])) for i in range(300)]
    words = {w for t in texts for w in t.split()}
    assert {"yes", "no", "two", "three"} <= words  # answers as they are said
    assert any(t.startswith(("what", "how", "where", "is")) for t in texts)  # questions
    assert any(t.startswith("a ") for t in texts)  # captions
    assert all(t == t.lower() and not any(c.isdigit() for c in t) for t in texts)


def test_figures_read_both_reports(tmp_path):
    main = {"asr_wer_after_2.0_ctc": 4.0, "asr_wer_after_2.1": 18.0, "asr_wer_after_2.2": 12.0,
            "image_qa_after_1.3": 50.0, "total_seconds": 600.0, "seed": 0, "scale": 1.0,
            "spoken_qa_after_2.2": {"typed_accuracy": 60.0, "spoken_accuracy": 57.0, "noise_recall": 95.0,
                                    "noise_precision": 90.0, "spoken_state_ok": 100.0, "typed_state_ok": 100.0}}
    (tmp_path / "report.json").write_text(json.dumps(main))
    figures = reproduce.figures(str(tmp_path))
    assert figures["asr_wer_2_1"] == 18.0 and figures["minutes_stages_0_to_2_2"] == 10.0
    assert figures["typed_acc"] == 60.0 and figures["spoken_acc"] == 57.0 and figures["minutes"] is None
    chex.assert_trees_all_close(figures["spoken_over_typed"], 0.95, rtol=1e-7)
    assert figures["speech_out_recognised"] is None and figures["duplex_correct"] is None

    speech = {"total_seconds": 120.0, "spoken_answer_transcript_wer": 30.0,
              "spoken_answer_transcript_wer_espeak_control": 20.0,
              "template_recogniser": {"chance": 0.04, "decoder_true_answers_vs_codec_templates": 0.5},
              "duplex": {"answered_in_speech": 100.0, "transcript_correct": 40.0, "noise_silent": 75.0}}
    (tmp_path / "report_speech.json").write_text(json.dumps(speech))
    reproduce.write_figures(str(tmp_path))
    figures = json.loads((tmp_path / "vita_mini.json").read_text())
    assert figures["speech_out_recognised"] == 50.0 and figures["recogniser_chance"] == 4.0
    assert figures["duplex_correct"] == 40.0 and figures["minutes_stages_3_1_to_3_2"] == 2.0
    assert figures["minutes"] == 12.0
    assert figures["asr_wer_decoder"] == 30.0 and figures["asr_wer_espeak"] == 20.0


def test_synthesised_speech_reaches_the_asr_at_16_khz_and_at_least_a_tenth_of_a_second():
    for_asr = reproduce.for_asr
    chex.assert_shape(for_asr(np.zeros(0, np.float32), 24000), (1600,))  # an empty answer: 0.1 s of silence
    chex.assert_shape(for_asr(np.zeros(1200, np.float32), 24000), (1600,))  # 50 ms -> padded
    wave = for_asr(np.sin(np.arange(48000) / 10).astype(np.float32), 24000)
    chex.assert_shape(wave, (32000,))  # 2 s resampled, not padded
    assert np.abs(wave).max() > 0.5


def test_text_only_batches_hold_no_audio_frames():
    """The text-only data (stage 0, the repeat text mixed into 1.2-1.3) carries 0 audio frames a batch, so the speech
    encoder costs nothing on it; speech data keeps its fixed max_audio_seconds of frames. (With 8 s of padding
    frames a text batch made stage 0's step 4x slower, the same losses.)"""
    from configs import load_config
    from vita_jax.task import make_task

    spec = make_task(load_config("vita/tiny_stage1_2")).batch_spec()
    assert {name: spec[name]["audio_features"].shape[1] for name in spec} == {
        "captions": 0, "conversations": 0, "repeat": 0}
    spec = make_task(load_config("vita/tiny_stage2_2")).batch_spec()
    frames = {name: spec[name]["audio_features"].shape[1] for name in spec}
    assert frames["asr"] == frames["spoken_qa"] == 800, frames
