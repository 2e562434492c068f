"""The main job on the embedded default data: trains the tiny Flamingo, LLaVA and VITA on the bundled shapes data
(images and real espeak speech) on CPU, evaluates them (Flamingo's few-shot table and image-reliance diagnostics;
LLaVA's held-out question accuracy and sample chat answers on held-out images; VITA's image QA, ASR WER, spoken vs
typed question accuracy and noise rejection, then its speech out: the codec and speech decoders trained and judged by
a recogniser and our ASR, and the duplex engine answering held-out spoken questions in speech) and writes a report
folder (markdown + PNG plots) whose path it prints. The report opens with what works and ends with the command that
opens the voice chat on the job's own VITA workdirs.

    python -m mmlm_jax.demo [--workdir workdirs/demo] [--scale 1.0] [--skip flamingo,llava,vita,vita_speech]

Re-running with the same workdir resumes: finished trainings are reused from their checkpoints.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from common.task_utils import restore_config
from flamingo_jax import reproduce as flamingo_reproduce
from llava_jax import reproduce as llava_reproduce
from llava_jax.hf import load_workdir
from llava_jax.eval import shapes_vqa_items, vqa_prompt
from llava_jax.inference import generate_batch
from vita_jax import reproduce as vita_reproduce


def _metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curves(panels: dict[str, dict[str, str]], out_png: str) -> list[str]:
    """One panel per family, one line per training run in it: loss against step, from each workdir's
    metrics.jsonl (colours distinct within a panel). Returns the panels drawn (those with at least one run)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {panel: {label: rows for label, workdir in runs.items()
                      if (rows := [r for r in _metrics(workdir) if r.get("loss") is not None and "step" in r])}
              for panel, runs in panels.items()}
    curves = {panel: runs for panel, runs in curves.items() if runs}
    if not curves:
        return []
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (panel, runs) in zip(axes[0], curves.items()):
        for label, rows in runs.items():
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=label)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return list(curves)


def plot_accuracy_vs_shots(rows: dict[str, dict[int, float]], out_png: str, ylabel: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, by_shots in rows.items():
        shots = sorted(by_shots)
        ax.plot(shots, [by_shots[s] for s in shots], marker="o", label=label)
    ax.set_xlabel("number of shots")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


MAIN_FLAMINGO = "tiny_keyed"


def run_flamingo(workdir: str, scale: float) -> tuple[dict, str]:
    # The reproduction's main variant alone: the keyed recipe's stage 0 and Flamingo (no ablations).
    argv = ["--workdir", workdir, "--recipe", "keyed", "--variants", MAIN_FLAMINGO, "--main_extra_eval", "1"]
    if scale != 1.0:
        argv += ["--scale", str(scale), "--num_queries", str(max(8, int(128 * scale)))]
    report = flamingo_reproduce.main(argv)
    return report, flamingo_reproduce.markdown(report, [0, 4, 8])


def run_llava(workdir: str, scale: float, num_questions: int) -> dict:
    llava_reproduce.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
    stages = ("stage0", "stage1", "stage2")
    train_seconds = {stage: llava_reproduce.train_stage(stage, workdir, scale) for stage in stages}
    results = {stage: llava_reproduce.evaluate_stage(stage, workdir, num_questions) for stage in ("stage1", "stage2")}
    # Sample chat answers of the instruction-tuned model on held-out images.
    module, params, tokenizer, _, _ = load_workdir(os.path.join(workdir, "stage2"))
    items = shapes_vqa_items(6, "test", module.config.vision.image_size, seed=123)
    answers = generate_batch(module, params, tokenizer, [([it["image"]], vqa_prompt(it["question"])) for it in items],
                             max_new_tokens=8)
    samples = []
    for i, (item, answer) in enumerate(zip(items, answers)):
        from PIL import Image
        image_name = f"llava_sample_{i}.png"
        Image.fromarray(item["image"]).resize((144, 144), Image.NEAREST).save(os.path.join(workdir, image_name))
        samples.append({"image": image_name, "question": item["question"], "answer": answer,
                        "reference": max(set(item["answers"]), key=item["answers"].count)})
    return {"train_seconds": train_seconds, "eval": results, "samples": samples}


def run_vita(workdir: str, scale: float) -> dict:
    """VITA's stages 0-2.2 and their evaluation, as `vita_jax.reproduce` runs them (WORKDIR/report.json and
    vita_mini.json, the miniature's headline figures, written there too)."""
    return vita_reproduce.stages_report(workdir, scale, num_eval=max(4, int(96 * min(1.0, scale * 4))))


def run_vita_speech(workdir: str, scale: float, report_dir: str) -> dict:
    """VITA's speech out on the trained stage 2.2: stages 3.1 (codec) and 3.2 (speech decoders), measured, and the
    duplex engine end to end on held-out spoken questions; writes a held-out scene for the voice chat's --image."""
    from PIL import Image

    report = vita_reproduce.speech_report(workdir, scale, num_eval=max(4, int(48 * min(1.0, scale * 4))))
    image_size = int(restore_config(os.path.join(workdir, "stage2_2")).model.vision.image_size)
    scene = vita_reproduce.spoken_queries(image_size, 1, pool=8)[0]["image"]
    Image.fromarray(np.asarray(scene)).save(os.path.join(report_dir, "vita_scene.png"))
    return report


def voice_chat_command(workdir_arg: str) -> str:
    """The command that opens the voice chat on the main job's own VITA workdirs (relative to where it was run)."""
    vita = os.path.join(workdir_arg, "vita")
    return (f"python -m vita_jax.serve --vita_workdir {vita}/stage2_2 --speech_workdir {vita}/stage3_2 "
            f"--image {os.path.join(workdir_arg, 'report', 'vita_scene.png')}")


def what_works(flamingo: dict | None, llava: dict | None, vita: dict | None,
               vita_speech: dict | None = None) -> list[str]:
    """The report's opening lines, computed from the measurements (whichever way they fall)."""
    lines = ["## What works", ""]
    if llava:
        s1, s2 = llava["eval"]["stage1"]["vqa_accuracy"], llava["eval"]["stage2"]["vqa_accuracy"]
        verdict = "the paper's direction" if s2 > s1 else "NOT the paper's direction"
        lines.append(f"- **LLaVA**: feature alignment + instruction tuning {s2:.1f}% vs alignment alone {s1:.1f}% on "
                     f"held-out short-answer questions ({verdict}).")
    if flamingo:
        main = flamingo["variants"][MAIN_FLAMINGO]
        cap = main.get("image_reliance", {}).get("losses", {}).get("captions")
        if cap:
            reads = "reads the images for captions" if cap["own"] < 0.9 * cap["other"] else \
                "does NOT read the images for captions yet"
            lines.append(f"- **Flamingo** {reads}: captions loss {cap['own']:.3f} with each sample's own images vs "
                         f"{cap['other']:.3f} with another sample's.")
        names = main["results"].get("names", {}).get("random", {})
        if names:
            lines.append("- " + names_verdict({int(k): float(v) for k, v in names.items()}))
    if vita:
        qa = vita["spoken_qa_after_2.2"]
        lines.append(f"- **VITA**: image QA {vita['image_qa_after_1.3']:.1f}% after stage 1.3; ASR WER "
                     f"{vita['asr_wer_after_2.1']:.1f}% after 2.1 and {vita['asr_wer_after_2.2']:.1f}% after 2.2; "
                     f"spoken vs typed questions {qa['spoken_accuracy']:.1f}% vs {qa['typed_accuracy']:.1f}%; "
                     f"noise rejected {qa['noise_recall']:.1f}% of the time (docs/reproductions/vita.md).")
    if vita_speech:
        recogniser, duplex = vita_speech["template_recogniser"], vita_speech["duplex"]
        recognised, chance = (100 * recogniser[k] for k in ("decoder_true_answers_vs_codec_templates", "chance"))
        lines.append(f"- **VITA speech out**: the true answers said by the speech decoder are recognised "
                     f"{recognised:.1f}% of the time by a closed-set recogniser (chance {chance:.1f}%); through the "
                     f"duplex engine, {duplex['transcript_correct']:.1f}% of held-out spoken questions get a spoken "
                     "answer that our ASR transcribes as the right one.")
    return lines + [""]


def names_verdict(accuracy_by_shots: dict[int, float], margin: float = 10.0) -> str:
    """The names-task line of "What works", from its own figures: the image-to-name link counts as formed when some
    k-shot accuracy beats the 0-shot one (where the names cannot be known) by at least `margin` points."""
    shots = sorted(accuracy_by_shots)
    figures = " / ".join(f"{accuracy_by_shots[k]:.1f}" for k in shots)
    head = f"Flamingo's in-context names task ({' / '.join(map(str, shots))} shots): {figures}%"
    zero = accuracy_by_shots.get(0)
    best = max((k for k in shots if k > 0), key=lambda k: accuracy_by_shots[k], default=None)
    if zero is None or best is None:
        return head + " (no 0-shot baseline to compare with)."
    gain = accuracy_by_shots[best] - zero
    if gain >= margin:
        return (f"{head}: the names are learnt in context, {gain:+.1f} points at {best} shots over 0 shots "
                "(docs/reproductions/flamingo.md).")
    return (f"{head}: the image-to-name link did not form in this run ({gain:+.1f} points at best over 0 shots; it "
            "forms on some seeds, docs/reproductions/flamingo.md).")


def vita_speech_markdown(speech: dict, workdir_arg: str) -> list[str]:
    return (["## VITA-1.5 speech out: stages 3.1 (codec) -> 3.2 (speech decoders), duplex engine", "",
             "| measure | value |", "| --- | --- |"] +
            [f"| {measure} | {value} |" for measure, value in vita_reproduce.speech_rows(speech)] +
            ["", "Talk to it (then open the printed address; a microphone needs localhost or HTTPS):", "",
             f"    {voice_chat_command(workdir_arg)}", ""])


def vita_markdown(vita: dict) -> list[str]:
    qa = vita["spoken_qa_after_2.2"]
    times = vita["stage_seconds"]
    return ["## VITA-1.5: stages 0 -> 1.1 -> 1.2 -> 1.3 -> 2.0 -> 2.1 -> 2.2", "",
            "| measure | value |", "| --- | --- |",
            f"| image QA accuracy after 1.3 / 2.2 (%) | {vita['image_qa_after_1.3']:.1f} / "
            f"{vita['image_qa_after_2.2']:.1f} |",
            f"| ASR WER after 2.1 / 2.2 (%) | {vita['asr_wer_after_2.1']:.1f} / {vita['asr_wer_after_2.2']:.1f} |",
            f"| spoken vs typed question accuracy (%) | {qa['spoken_accuracy']:.1f} vs {qa['typed_accuracy']:.1f} |",
            f"| answers with the right state, spoken ☞ / typed ☜ (%) | {qa['spoken_state_ok']:.1f} / "
            f"{qa['typed_state_ok']:.1f} |",
            f"| noise rejection: recall / precision of ☟ (%) | {qa['noise_recall']:.1f} / "
            f"{qa['noise_precision']:.1f} |",
            f"| held-out samples per measure | {vita['num_eval']} |",
            "| train seconds per stage | " +
            ", ".join(f"{k.replace('_', '.')}: {v:.0f}" for k, v in times.items()) + " |",
            "", "Sample transcripts after 2.2 (reference -> ASR): " +
            "; ".join(f"'{ref}' -> '{hyp}'" for ref, hyp in vita.get("asr_examples_2_2", [])), ""]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every training's steps (0.05: smoke test)")
    parser.add_argument("--num_questions", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: flamingo, llava, vita, "
                                                   "vita_speech (VITA's speech out, stages 3.1-3.2 and the duplex run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = os.path.abspath(args.workdir)
    report_dir = os.path.join(root, "report")
    os.makedirs(report_dir, exist_ok=True)
    start = time.time()

    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    if skip - {"flamingo", "llava", "vita", "vita_speech"}:
        parser.error(f"--skip takes flamingo, llava, vita, vita_speech; got {sorted(skip)}")
    flamingo_dir, llava_dir, vita_dir = (os.path.join(root, p) for p in ("flamingo", "llava", "vita"))
    flamingo = llava = vita = vita_speech = None
    flamingo_table = ""
    part_seconds: dict[str, float] = {}
    if "flamingo" not in skip:
        print("== Flamingo: contrastive ViT and stage-0 LM (names text, then the text mix), then the tiny Flamingo on "
              "captions + interleaved documents + names documents ==", flush=True)
        t = time.time()
        flamingo, flamingo_table = run_flamingo(flamingo_dir, args.scale)
        part_seconds["Flamingo"] = time.time() - t
    if "llava" not in skip:
        print("== LLaVA: stage 0 (text), stage 1 (feature alignment), stage 2 (instruction tuning) ==", flush=True)
        t = time.time()
        llava = run_llava(llava_dir, args.scale, max(8, int(args.num_questions * min(1.0, args.scale * 4))))
        part_seconds["LLaVA"] = time.time() - t
    if "vita" not in skip:
        print("== VITA: stage 0 (text), 1.1 -> 1.2 -> 1.3 (vision), 2.0 (CTC encoder) -> 2.1 (ASR) -> 2.2 (spoken QA, "
              "noise) ==", flush=True)
        t = time.time()
        vita = run_vita(vita_dir, args.scale)
        part_seconds["VITA"] = time.time() - t
        if "vita_speech" not in skip:
            print("== VITA speech out: 3.1 (codec) -> 3.2 (speech decoders), then the duplex engine on held-out spoken "
                  "questions ==", flush=True)
            t = time.time()
            vita_speech = run_vita_speech(vita_dir, args.scale, report_dir)
            part_seconds["VITA speech out"] = time.time() - t

    # Plots.
    plot_loss_curves({"Flamingo": {"vision (contrastive)": os.path.join(flamingo_dir, "vision"),
                                   "stage 0, names text (LM)": os.path.join(flamingo_dir, "stage0_names"),
                                   "stage 0, text mix (LM)": os.path.join(flamingo_dir, "stage0_keyed"),
                                   "Flamingo (tiny_keyed)": os.path.join(flamingo_dir, MAIN_FLAMINGO)},
                      "LLaVA": {"stage 0 (LM)": os.path.join(llava_dir, "stage0"),
                                "stage 1": os.path.join(llava_dir, "stage1"),
                                "stage 2": os.path.join(llava_dir, "stage2")},
                      "VITA": {f"stage {st.replace('_', '.')}": os.path.join(vita_dir, f"stage{st}")
                               for st in ("0", "1_1", "1_2", "1_3", "2_0", "2_1", "2_2", "3_1", "3_2")}},
                     os.path.join(report_dir, "loss_curves.png"))
    shot_rows = {}
    names = flamingo["variants"][MAIN_FLAMINGO]["results"].get("names", {}) if flamingo else {}
    for selection, by_shot in names.items():
        if isinstance(by_shot, dict):
            shot_rows[f"in-context names task ({selection})"] = {int(k): float(v) for k, v in by_shot.items()}
    if shot_rows:
        plot_accuracy_vs_shots(shot_rows, os.path.join(report_dir, "accuracy_vs_shots.png"), "accuracy (%)")
    for sample in (llava or {}).get("samples", []):
        os.replace(os.path.join(llava_dir, sample["image"]), os.path.join(report_dir, sample["image"]))

    # Markdown: what works first, then each family's measurements.
    lines = ["# Demo report: tiny Flamingo, LLaVA and VITA on the bundled shapes data", "",
             f"Command: `python -m mmlm_jax.demo --workdir {args.workdir}" +
             (f" --scale {args.scale}" if args.scale != 1.0 else "") + (f" --skip {args.skip}" if skip else "") +
             f"`; wall time {(time.time() - start) / 60:.1f} min on {os.cpu_count()} CPUs (" +
             ", ".join(f"{part} {seconds / 60:.1f} min" for part, seconds in part_seconds.items()) + ").", ""]
    lines += what_works(flamingo, llava, vita, vita_speech)
    lines += ["## Training losses", "", "![loss curves](loss_curves.png)", ""]
    if llava:
        lines += ["## LLaVA: held-out short-answer questions", "",
                  "| model | VQA accuracy (%) |", "| --- | --- |",
                  f"| stage 1 only (no instruction tuning) | {llava['eval']['stage1']['vqa_accuracy']:.1f} |",
                  f"| stage 1 + 2 | {llava['eval']['stage2']['vqa_accuracy']:.1f} |", "",
                  "### Sample answers on held-out images (stage 1 + 2)", "",
                  "| image | question | answer | reference |", "| --- | --- | --- | --- |"]
        for s_ in llava["samples"]:
            lines.append(f"| ![]({s_['image']}) | {s_['question']} | {s_['answer']} | {s_['reference']} |")
        lines.append("")
    if flamingo:
        lines += ["## Flamingo: few-shot evaluation", "", flamingo_table, ""]
        if shot_rows:
            lines += ["![accuracy vs shots](accuracy_vs_shots.png)", ""]
    if vita:
        lines += vita_markdown(vita)
    if vita_speech:
        lines += vita_speech_markdown(vita_speech, args.workdir)
    report_md = os.path.join(report_dir, "report.md")
    with open(report_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(report_dir, "report.json"), "w") as f:
        json.dump({"flamingo": flamingo, "llava": llava, "vita": vita, "vita_speech": vita_speech,
                   "wall_seconds": time.time() - start, "part_seconds": part_seconds}, f, indent=1, default=str)
    print(f"report written to {report_md}", flush=True)
    return report_md


if __name__ == "__main__":
    main()
