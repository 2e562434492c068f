"""The main job on the embedded default data: trains the tiny Flamingo and the tiny LLaVA on the bundled
shapes data on CPU, evaluates them (Flamingo's few-shot table; LLaVA's held-out question accuracy and
sample chat answers on held-out images) and writes a report folder (markdown + PNG plots) whose path it
prints.

    python -m common.demo [--workdir workdirs/demo] [--scale 1.0]

Re-running with the same workdir resumes: finished trainings are reused from their checkpoints.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time


def _metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curves(runs: dict[str, str], out_png: str) -> None:
    """One line per training run: loss against step, from each workdir's metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, workdir in runs.items():
        rows = [r for r in _metrics(workdir) if r.get("loss") is not None and "step" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


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
    from flamingo_jax import reproduce

    # The reproduction's main variant alone: the keyed recipe's stage 0 and Flamingo (no ablations).
    argv = ["--workdir", workdir, "--recipe", "keyed", "--variants", MAIN_FLAMINGO, "--main_extra_eval", "1"]
    if scale != 1.0:
        argv += ["--scale", str(scale), "--num_queries", str(max(8, int(128 * scale)))]
    report = reproduce.main(argv)
    return report, reproduce.markdown(report, [0, 4, 8])


def run_llava(workdir: str, scale: float, num_questions: int) -> dict:
    from llava_jax import reproduce
    from llava_jax.checkpoint import load_workdir
    from llava_jax.eval import shapes_vqa_items, vqa_prompt
    from llava_jax.inference import generate_batch

    reproduce.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
    stages = ("stage0", "stage1", "stage2")
    train_seconds = {stage: reproduce.train_stage(stage, workdir, scale) for stage in stages}
    results = {stage: reproduce.evaluate_stage(stage, workdir, num_questions) for stage in ("stage1", "stage2")}
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


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every training's steps (0.05: smoke test)")
    parser.add_argument("--num_questions", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = os.path.abspath(args.workdir)
    report_dir = os.path.join(root, "report")
    os.makedirs(report_dir, exist_ok=True)
    start = time.time()

    print("== Flamingo: contrastive ViT and stage-0 LM (names text, then the text mix), then the tiny Flamingo on "
          "captions + interleaved documents + names documents ==", flush=True)
    flamingo_dir = os.path.join(root, "flamingo")
    flamingo, flamingo_table = run_flamingo(flamingo_dir, args.scale)
    print("== LLaVA: stage 0 (text), stage 1 (feature alignment), stage 2 (instruction tuning) ==", flush=True)
    llava_dir = os.path.join(root, "llava")
    llava = run_llava(llava_dir, args.scale, max(8, int(args.num_questions * min(1.0, args.scale * 4))))

    # Plots.
    plot_loss_curves({"Flamingo vision (contrastive)": os.path.join(flamingo_dir, "vision"),
                      "Flamingo stage 0, names text (LM)": os.path.join(flamingo_dir, "stage0_names"),
                      "Flamingo stage 0, text mix (LM)": os.path.join(flamingo_dir, "stage0_keyed"),
                      "Flamingo (tiny_keyed)": os.path.join(flamingo_dir, MAIN_FLAMINGO),
                      "LLaVA stage 0 (LM)": os.path.join(llava_dir, "stage0"),
                      "LLaVA stage 1": os.path.join(llava_dir, "stage1"),
                      "LLaVA stage 2": os.path.join(llava_dir, "stage2")},
                     os.path.join(report_dir, "loss_curves.png"))
    shot_rows = {}
    names = flamingo["variants"][MAIN_FLAMINGO]["results"].get("names", {})
    for selection, by_shot in names.items():
        if isinstance(by_shot, dict):
            shot_rows[f"in-context names task ({selection})"] = {int(k): float(v) for k, v in by_shot.items()}
    if shot_rows:
        plot_accuracy_vs_shots(shot_rows, os.path.join(report_dir, "accuracy_vs_shots.png"), "accuracy (%)")
    for sample in llava["samples"]:
        os.replace(os.path.join(llava_dir, sample["image"]), os.path.join(report_dir, sample["image"]))

    # Markdown.
    lines = ["# Demo report: tiny Flamingo and tiny LLaVA on the bundled shapes data", "",
             f"Command: `python -m common.demo --workdir {args.workdir}" +
             (f" --scale {args.scale}`" if args.scale != 1.0 else "`") +
             f"; wall time {(time.time() - start) / 60:.1f} min on {os.cpu_count()} CPUs.", "",
             "## Training losses", "", "![loss curves](loss_curves.png)", "",
             "## Flamingo: few-shot evaluation", "", flamingo_table, ""]
    if shot_rows:
        lines += ["![accuracy vs shots](accuracy_vs_shots.png)", ""]
    lines += ["## LLaVA: held-out short-answer questions", "",
              "| model | VQA accuracy (%) |", "| --- | --- |",
              f"| stage 1 only (no instruction tuning) | {llava['eval']['stage1']['vqa_accuracy']:.1f} |",
              f"| stage 1 + 2 | {llava['eval']['stage2']['vqa_accuracy']:.1f} |", "",
              "### Sample answers on held-out images (stage 1 + 2)", "",
              "| image | question | answer | reference |", "| --- | --- | --- | --- |"]
    for s in llava["samples"]:
        lines.append(f"| ![]({s['image']}) | {s['question']} | {s['answer']} | {s['reference']} |")
    report_md = os.path.join(report_dir, "report.md")
    with open(report_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(report_dir, "report.json"), "w") as f:
        json.dump({"flamingo": flamingo, "llava": llava, "wall_seconds": time.time() - start}, f, indent=1,
                  default=str)
    print(f"report written to {report_md}", flush=True)
    return report_md


if __name__ == "__main__":
    main()
