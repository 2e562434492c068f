"""Miniature reproduction of Flamingo's headline results on CPU with the bundled data (Alayrac et al. 2022: Fig. 2 /
Table 1 "performance improves with the number of shots", and the Table 3 ablations "w/o tanh gating" and the
cross-attention frequency "every layer vs every 4th"):

    python -m flamingo_jax.reproduce --workdir DIR [--recipe keyed|plain] [--variants ...] [--num_queries 128]

1. the tiny ViT's contrastive pretraining on shapes captions (configs/flamingo/tiny_vision.py; the paper's NFNet is
   pretrained as a dual encoder, App. B.1.3) and stage 0, the tiny LM's text-only pretraining, each part continuing
   from the one before (`keyed`: tiny_stage0_names.py, names text alone, then tiny_stage0_keyed.py, the text mix with
   caption keys; `plain`: tiny_stage0.py); both then frozen;
2. for each variant (configs/flamingo/<variant>.py; `keyed`: tiny_keyed, tiny_keyed_ungated, tiny_keyed_every4;
   `plain`: tiny, tiny_ungated, tiny_every4): Flamingo training (frozen ViT + frozen stage-0 LM; resampler, gated
   blocks and the <image> / <|endofchunk|> embedding rows train; the datasets accumulated each step);
3. few-shot evaluation of the in-context-only 'names' task at 0 / 4 / 8 shots (random demos; the first variant also
   with RICES demos, and captioning / VQA at 0 and 4 shots), beam search 3, and the diagnostics of whether and where
   the images are read.
Writes DIR/reproduce_results.json and DIR/reproduce_results.md (tables + wall times). Re-running resumes: finished
trainings are reused from their checkpoints.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.losses import shifted_next_token_loss
from common.train import train
from common.trainer import DataShard
from configs import load_config
from flamingo_jax import eval as fl_eval
from flamingo_jax.eval import markdown_table
from flamingo_jax import names_diagnostics
from flamingo_jax.gated_cross_attention import text_time_from_ids
from flamingo_jax.task import make_task, restore_params

VARIANTS = {"tiny_keyed": "gated, every layer (main)", "tiny_keyed_ungated": "w/o tanh gating, every layer",
            "tiny_keyed_every4": "gated, every 4th layer", "tiny_keyed_middle": "gated, a single block in the middle",
            "tiny_keyed_first": "gated, a single block before the first layer", "tiny": "gated, every layer (main)",
            "tiny_ungated": "w/o tanh gating, every layer", "tiny_every4": "gated, every 4th layer",
            "tiny_names": "names-heavier mix"}
# Stage-0 parts (each continues from the one before through init_lm.workdir) and the variants, the first the main one.
RECIPES = {"keyed": dict(stage0=("tiny_stage0_names", "tiny_stage0_keyed"),
                         variants=("tiny_keyed", "tiny_keyed_ungated", "tiny_keyed_every4")),
           "plain": dict(stage0=("tiny_stage0",), variants=("tiny", "tiny_ungated", "tiny_every4"))}


class Preempted(SystemExit):
    """A training stopped early on SIGTERM / a preemption notice (its checkpoint saved): the reproduction stops
    too, rather than evaluate a half-trained model; running the same command again resumes."""


def _train(config, workdir: str):
    result = train(config, workdir, make_task)
    if result.preempted:
        raise Preempted(f"{workdir}: preempted at step {result.final_step} of {config.total_steps}; the checkpoint is "
                        "saved, run the same command again to resume")
    return result


def _final_loss(workdir: str) -> float | None:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    losses = [json.loads(line)["loss"] for line in open(path) if '"loss"' in line]
    return losses[-1] if losses else None


def image_reliance_losses(config, params, num_batches: int = 6) -> dict:
    """Mean training loss per dataset on fixed training batches with each sample's own images, with another
    sample's (rolled along the batch), and with zeros: equal numbers mean the images are ignored. Where the image
    is read: own images seen only by the <image> tokens themselves (only_at_image) or by every token but them
    (except_at_image), through the per-token image index (`text_time`; a token that sees no image gets a zero
    cross-attention output)."""
    task = make_task(config)
    image_id = task.model.config.image_token_id

    @functools.partial(jax.jit, static_argnames="where")
    def loss(p, b, where=None):
        ids = b["input_ids"]
        text_time = text_time_from_ids(ids, image_id)
        if where is not None:  # True: the <image> tokens alone see their image; False: every token but them
            at_image = ids == image_id
            text_time = jnp.where(at_image if where else ~at_image, text_time, 0)
        logits = task.model.apply({"params": p}, ids, pixel_values=b["images"], attention_mask=b["attention_mask"],
                                  text_time=text_time)
        return shifted_next_token_loss(logits, ids, b["loss_mask"])[0]

    modes = {"own": lambda b: (b, None), "other": lambda b: (dict(b, images=jnp.roll(b["images"], 1, axis=0)), None),
             "zero": lambda b: (dict(b, images=jnp.zeros_like(b["images"])), None),
             "only_at_image": lambda b: (b, True), "except_at_image": lambda b: (b, False)}
    out = {}
    for name, it in task.make_train_data(DataShard(0, 1)).items():
        sums = {mode: [] for mode in modes}
        for _ in range(num_batches):
            batch = {k: jnp.asarray(v) for k, v in next(it).items() if isinstance(v, np.ndarray)}
            for mode, make in modes.items():
                sums[mode].append(float(loss(params, *make(batch))))
        out[name] = {mode: float(np.mean(v)) for mode, v in sums.items()}
    return out


def flamingo_config(name: str):
    """configs/flamingo/<name>.py, else configs/flamingo/experiments/<name>.py (the ablations)."""
    try:
        return load_config(f"flamingo/{name}")
    except ModuleNotFoundError as e:
        if e.name != f"configs.flamingo.{name}":
            raise
        return load_config(f"flamingo/experiments/{name}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--recipe", default="keyed", choices=sorted(RECIPES))
    p.add_argument("--variants", default=None, help="comma-separated configs/flamingo names (default: the recipe's)")
    p.add_argument("--shots", default="0,4,8")
    p.add_argument("--num_queries", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (initialisation and data order)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies every training's steps (at least 2 each; 0.05: a smoke run)")
    p.add_argument("--stage0_steps", type=int, default=None, help="steps of each stage-0 part (default: the configs')")
    p.add_argument("--vision_steps", type=int, default=None,
                   help="contrastive vision pretraining steps (default: the config's; 0 = a frozen random ViT)")
    p.add_argument("--steps", type=int, default=None, help="Flamingo training steps (default: the config's)")
    p.add_argument("--main_extra_eval", type=int, default=1, help="1: RICES + captions / VQA on the main variant")
    p.add_argument("--eval_batch_size", type=int, default=16)
    p.add_argument("--diagnostic_episodes", type=int, default=256,
                   help="episodes of the teacher-forced diagnostics (stage-0 key binding, own vs other query image)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger().setLevel(logging.INFO)

    recipe = RECIPES[args.recipe]
    variants = [v for v in (args.variants.split(",") if args.variants else recipe["variants"]) if v]
    root = os.path.abspath(args.workdir)
    os.makedirs(root, exist_ok=True)
    shots = [int(s) for s in args.shots.split(",")]
    report: dict = {"wall_seconds": {}, "variants": {}, "recipe": args.recipe, "main_variant": variants[0],
                    "seed": args.seed, "stage0_key_binding": {}, "stage0_final_loss": {},
                    "command": "python -m flamingo_jax.reproduce " +
                    " ".join(argv if argv is not None else sys.argv[1:])}
    start_all = time.time()

    def stage_config(name: str, steps: int | None = None):
        config = flamingo_config(name)
        config.seed = args.seed
        config.total_steps = steps if steps is not None else max(2, round(config.total_steps * args.scale))
        return config

    vision = stage_config("tiny_vision", args.vision_steps)
    t = time.time()
    if vision.total_steps:
        _train(vision, os.path.join(root, "vision"))
    report["wall_seconds"]["vision_train"] = time.time() - t
    report["vision_final_loss"] = _final_loss(os.path.join(root, "vision"))

    stage0_dir = ""
    for part in recipe["stage0"]:  # each part continues from the one before
        s0 = stage_config(part, args.stage0_steps)
        s0.init_lm.workdir = stage0_dir
        stage0_dir = os.path.join(root, part.removeprefix("tiny_"))
        t = time.time()
        _train(s0, stage0_dir)
        report["wall_seconds"][f"{part}_train"] = time.time() - t
        report["stage0_final_loss"][part] = _final_loss(stage0_dir)
        s0_task = make_task(s0)
        report["stage0_key_binding"][part] = names_diagnostics.lm_key_binding(s0_task.model, restore_params(stage0_dir),
                                                                    s0_task.tokenizer, args.diagnostic_episodes)
        logging.info("%s key binding: %s", part, report["stage0_key_binding"][part])

    for variant in variants:
        config = stage_config(variant, args.steps)
        config.init_lm.workdir = stage0_dir
        config.init_vision.workdir = os.path.join(root, "vision") if vision.total_steps else ""
        wd = os.path.join(root, variant)
        t = time.time()
        _train(config, wd)
        train_s = time.time() - t
        t = time.time()
        runner = fl_eval.load_runner(config, wd, num_beams=3, batch_size=args.eval_batch_size)
        main_variant = variant == variants[0] and args.main_extra_eval
        res = fl_eval.run_evaluation(runner, ["names"], shots, ["random", "rices"] if main_variant else ["random"],
                                     num_queries=args.num_queries, log_fn=logging.info)
        if main_variant:
            extra = fl_eval.run_evaluation(runner, ["captions", "vqa"], [0, 4], ["random"], num_queries=48,
                                           support_size=256, log_fn=logging.info)
            res.update({k: extra[k] for k in ("captions", "vqa")})
            res["details"].update(extra["details"])
        eval_s = time.time() - t
        episodes = args.diagnostic_episodes
        reliance = {"names_4shot": names_diagnostics.names_image_reliance(runner, shots=4, num_episodes=episodes),
                    "names_image_as_key": names_diagnostics.names_image_as_key(runner, num_episodes=episodes),
                    "losses": image_reliance_losses(config, runner.params)}
        logging.info("%s image reliance: %s", variant, reliance)
        report["variants"][variant] = {"description": VARIANTS.get(variant, variant), "results": res,
                                       "image_reliance": reliance,
                                       "final_train_loss": _final_loss(wd), "train_seconds": train_s,
                                       "eval_seconds": eval_s, "steps": int(config.total_steps)}
        report["wall_seconds"][variant] = train_s + eval_s
        with open(os.path.join(root, "reproduce_results.json"), "w") as f:
            json.dump(report, f, indent=2)
    report["wall_seconds"]["total"] = time.time() - start_all
    report["wall_seconds"]["main_config_total"] = sum(
        report["wall_seconds"][k]
        for k in ["vision_train", *(f"{part}_train" for part in recipe["stage0"]), variants[0]])
    with open(os.path.join(root, "reproduce_results.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report, shots)
    with open(os.path.join(root, "reproduce_results.md"), "w") as f:
        f.write(md)
    print(md)
    return report


def markdown(report: dict, shots) -> str:
    lines = ["| variant | " + " | ".join(f"names {k}-shot" for k in shots) + " | final train loss | train s | eval s |",
             "| --- | " + " | ".join("---" for _ in shots) + " | --- | --- | --- |"]
    for name, v in report["variants"].items():
        row = v["results"]["names"]["random"]
        loss = v["final_train_loss"]
        lines.append(f"| {name}: {v['description']} | " + " | ".join(f"{row[str(k)]:.1f}" for k in shots) +
                     f" | {loss:.3f} | {v['train_seconds']:.0f} | {v['eval_seconds']:.0f} |" if loss is not None
                     else f"| {name} | " + " | ".join(f"{row[str(k)]:.1f}" for k in shots) + " | | | |")
    datasets = [d for d in ("captions", "interleaved", "names")
                if any(d in v.get("image_reliance", {}).get("losses", {}) for v in report["variants"].values())]
    lines += ["", "| variant | names 4-shot, own / other query image (teacher forced) | text-key demos, image query: "
              "own / other image (text key) | " + " | ".join(f"{d} loss, own / other / zero images" for d in datasets) +
              " | captions loss, image seen only at <image> / everywhere but there |",
              "| --- | --- | --- | " + " | ".join("---" for _ in datasets) + " | --- |"]
    for name, v in report["variants"].items():
        r = v.get("image_reliance")
        if r:
            losses = [r["losses"].get(d, {}) for d in datasets]
            cells = [" / ".join(f"{x[m]:.3f}" for m in ("own", "other", "zero")) if x else "" for x in losses]
            key = r.get("names_image_as_key")
            key_cell = f"{key['own_image']:.1f} / {key['other_image']:.1f} ({key['text_key']:.1f})" if key else ""
            where = r["losses"].get("captions", {})
            where_cell = (f"{where['only_at_image']:.3f} / {where['except_at_image']:.3f}" if "only_at_image" in where
                          else "")
            lines.append(f"| {name} | {r['names_4shot']['own_image']:.1f} / {r['names_4shot']['other_image']:.1f} | "
                         f"{key_cell} | " + " | ".join(cells) + f" | {where_cell} |")
    for part, kb in report.get("stage0_key_binding", {}).items():
        lines += ["", f"stage 0 LM after {part}, first token of a repeated name (teacher forced): "
                  f"{kb['true_key']:.1f}% with its key, {kb['wrong_key']:.1f}% with another of the episode's keys"]
    main = report["variants"].get(report["main_variant"])
    if main is not None:
        lines += ["", markdown_table(main["results"], f"main config ({report['main_variant']}), all few-shot results")]
    w = report["wall_seconds"]
    lines += ["", "wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in w.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
