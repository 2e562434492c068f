"""Miniature reproduction of LLaVA's two-stage training and its ablation (Liu et al. 2023, "Visual Instruction
Tuning", Sec. 4.2 and the "w/o pre-training" / instruction-tuning ablations; LLaVA-1.5 Table 7 response-format
prompting) on the bundled shapes data, on a CPU:

  stage 0  the tiny LM's text pretraining (Vicuna's role: a chat LM that never saw an image)
  stage 1  feature alignment: projector only, captions, `plain` template          (from stage 0)
  stage 2  visual instruction tuning: projector + LM, conversations + short VQA    (from stage 1)
  stage 2 only                                                                      (from stage 0: projector fresh)

and evaluates answer accuracy on held-out questions (the `validation` split, never trained on) for
  stage 1 + 2, stage 2 only, stage 1 only (no instruction tuning), stage 0 only (the blind LM, untrained projector)
with LLaVA-1.5's short-answer prompt (VQA accuracy). (ScienceQA-style multiple choice is not scored here: the tiny
stage-2 mix has no letter-answer items, so every model answers with the content instead of a letter.)
Writes WORKDIR/results.json and WORKDIR/results.md; stages already trained in WORKDIR are reused (resume).

    python -m llava_jax.reproduce --workdir workdirs/llava_repro
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import jax

from common.train import train
from configs import apply_overrides, load_config, split_config_overrides
from llava_jax.hf import load_workdir
from llava_jax.eval import evaluate_vqa, shapes_vqa_items
from llava_jax.task import make_task

STAGES = ("stage0", "stage1", "stage2", "stage2_only")
CONFIGS = {"stage0": "tiny_stage0.py", "stage1": "tiny_stage1.py", "stage2": "tiny_stage2.py",
           "stage2_only": "tiny_stage2.py"}
INIT = {"stage0": "", "stage1": "stage0", "stage2": "stage1", "stage2_only": "stage0"}
ROWS = (("stage 1 + 2 (LLaVA)", "stage2"), ("stage 2 only (no feature alignment)", "stage2_only"),
        ("stage 1 only (no instruction tuning)", "stage1"), ("stage 0 only (blind LM, untrained projector)", "stage0"))


def stage_config(stage: str, workdir: str, scale: float = 1.0, overrides: Sequence[str] = ()):
    """configs/llava/tiny_<stage>.py for the miniature: steps x scale, the previous stage's workdir as init, then the
    command line's `--config.a.b=value` overrides (applied to every stage)."""
    config = load_config(f"llava/{CONFIGS[stage]}")
    config.init_from = os.path.join(workdir, INIT[stage]) if INIT[stage] else ""
    config.total_steps = max(2, int(round(config.total_steps * scale)))
    config.log_every = max(1, min(config.log_every, config.total_steps))
    config.checkpoint_every = config.total_steps
    apply_overrides(config, overrides)
    return config


def enable_compilation_cache(directory: str) -> None:
    """Persistent XLA cache: the two stage-2 runs and the evaluations share compiled programs."""
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train_stage(stage: str, workdir: str, scale: float, overrides: Sequence[str] = ()) -> float:
    out = os.path.join(workdir, stage)
    config = stage_config(stage, workdir, scale, overrides)
    start = time.time()
    train(config, out, make_task)
    return time.time() - start


def evaluate_stage(stage: str, workdir: str, num_questions: int) -> dict:
    module, params, tokenizer, _, config = load_workdir(os.path.join(workdir, stage))
    size = module.config.vision.image_size
    start = time.time()
    vqa = evaluate_vqa(module, params, tokenizer, shapes_vqa_items(num_questions, "validation", size),
                       template="vicuna_v1", max_new_tokens=6, batch_size=100)
    return {"vqa_accuracy": vqa["accuracy"], "vqa_per_type": vqa["per_type"],
            "examples": [{"vqa": p} for p in vqa["predictions"][:8]],
            "eval_seconds": time.time() - start, "count": vqa["count"]}


def markdown(results: dict) -> str:
    lines = ["| setting | short-answer VQA acc. (%) | yes/no | number | other |",
             "| --- | --- | --- | --- | --- |"]
    for label, stage in ROWS:
        r = results["eval"][stage]
        t = r["vqa_per_type"]
        lines.append(f"| {label} | {r['vqa_accuracy']:.1f} | {t.get('yes/no', float('nan')):.1f} | "
                     f"{t.get('number', float('nan')):.1f} | {t.get('other', float('nan')):.1f} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in results["train_seconds"].items())
    lines.append("")
    lines.append(f"{results['num_questions']} held-out questions (validation split). "
                 f"Wall time {results['total_seconds'] / 60:.1f} min ({times}; evaluation "
                 f"{results['eval_seconds']:.0f} s) on {results['cpus']} CPUs.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_questions", type=int, default=300)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps (0.05: smoke test)")
    argv, overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("absl", "orbax", "jax._src"):
        logging.getLogger(name).setLevel(logging.WARNING)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    enable_compilation_cache(os.path.join(workdir, "jax_cache"))
    start = time.time()
    train_seconds = {stage: train_stage(stage, workdir, args.scale, overrides) for stage in STAGES}
    eval_start = time.time()
    results = {"eval": {stage: evaluate_stage(stage, workdir, args.num_questions) for _, stage in ROWS}}
    results.update(train_seconds=train_seconds, eval_seconds=time.time() - eval_start,
                   total_seconds=time.time() - start, num_questions=args.num_questions, scale=args.scale,
                   cpus=os.cpu_count(), command=f"python -m llava_jax.reproduce --workdir {args.workdir}")
    table = markdown(results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
