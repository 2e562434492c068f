"""The main job's report follows from its own figures: the names-task verdict from the accuracies it prints, one loss
panel per family (colours cannot repeat across families), the speech-out part's figures and a voice-chat command
that the server's own parser accepts."""
import json
import os

from mmlm_jax.demo import names_verdict, plot_loss_curves, vita_speech_markdown, voice_chat_command, what_works
from vita_jax.serve import argument_parser


def test_names_verdict_follows_the_figures():
    formed = names_verdict({0: 29.7, 4: 47.7, 8: 46.9})
    assert "29.7 / 47.7 / 46.9%" in formed and "learnt in context" in formed and "+18.0 points at 4 shots" in formed
    flat = names_verdict({0: 31.0, 4: 33.5, 8: 30.2})
    assert "did not form" in flat and "+2.5 points" in flat
    assert "no 0-shot baseline" in names_verdict({4: 50.0})


def test_one_loss_panel_per_family(tmp_path):
    def run(name, losses):
        workdir = tmp_path / name
        os.makedirs(workdir)
        with open(workdir / "metrics.jsonl", "w") as f:
            for step, loss in enumerate(losses, 1):
                f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        return str(workdir)

    panels = {"Flamingo": {"vision": run("v", [3, 2]), "main": run("m", [4, 3])},
              "LLaVA": {"stage 1": run("s1", [5, 4])},
              "VITA": {"stage 1.1": str(tmp_path / "missing")}}  # a run that did not happen draws nothing
    out = tmp_path / "loss.png"
    assert plot_loss_curves(panels, str(out)) == ["Flamingo", "LLaVA"]
    assert out.stat().st_size > 0


SPEECH_REPORT = {  # the fields of vita_jax.reproduce.speech_report the report prints
    "codec_mel_distance": 0.41, "asr_wer_original": 20.0, "asr_wer_resynthesised": 25.0,
    "spoken_answer_transcript_wer": 60.0, "spoken_answer_transcript_wer_espeak_control": 30.0,
    "spoken_answer_distinct_answers": 9, "spoken_answer_distinct_transcripts": 7,
    "decoder_text_use": {"gain": 1.13}, "spoken_answer_seconds": 0.8,
    "template_recogniser": {"decoder_true_answers_vs_codec_templates": 0.354, "chance": 0.032},
    "duplex": {"answered_in_speech": 100.0, "transcript_correct": 12.5, "noise_silent": None},
    "stage_seconds": {"3_1": 60.0, "3_2": 300.0}, "total_seconds": 540.0}


def test_speech_out_part_reports_its_figures_and_the_voice_chat_command():
    lines = what_works(None, None, None, SPEECH_REPORT)
    assert any("recognised 35.4% of the time" in line and "chance 3.2%" in line and "12.5%" in line
               for line in lines)
    text = "\n".join(vita_speech_markdown(SPEECH_REPORT, "workdirs/demo"))
    assert "| codec mel distance (mean absolute log-mel difference) | 0.410 |" in text
    assert "noise met with silence (%) | 100.0 / 12.5 / - |" in text
    assert "3.1: 60, 3.2: 300" in text and "| total time (min) | 9.0 |" in text
    command = voice_chat_command("workdirs/demo").split()
    assert command[:3] == ["python", "-m", "vita_jax.serve"]
    args = argument_parser().parse_args(command[3:])  # the flags the server takes
    assert args.vita_workdir == "workdirs/demo/vita/stage2_2" and args.speech_workdir == "workdirs/demo/vita/stage3_2"
    assert args.image == "workdirs/demo/report/vita_scene.png"
