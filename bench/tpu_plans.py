"""Memory and step-time plans of the paper-scale training configs on TPU slices, compiled ahead of time on this CPU
(mmlm_jax.plan; no TPU needed). Each plan runs in a process of its own (a 7B step takes ~5 min and several GB of
host memory to compile on 2 cores) and appends its JSON line to --out.

    python bench/tpu_plans.py [--only llava7b_s2@v5p-8,...] [--out bench/results/tpu_aot.jsonl]

The table below is what docs/tpu.md reports: the config, the slice, the mesh and the overrides of each plan (data
paths are placeholders: planning reads no data, only the shapes the pipeline would collate).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from configs import load_config

LLAVA_DATA = {"data.json": "/path/to/llava_v1_5_mix665k.json", "data.image_dir": "/path/to/images"}
VITA_DATA = {"data.datasets": {"sft": {"source": "vita_json", "json": "/path/to/sft.json", "max_len": 2048,
                                       "max_tiles_per_sample": 6}}}

# The paper's LLaVA-1.5 stage-2 recipe: 16 sequences per device, gradient checkpointing (remat full).
LLAVA_S2 = {**LLAVA_DATA, "model.text.remat_policy": "full"}

# OpenFlamingo-4B (CLIP ViT-L/14 + RedPajama-3B, a block every 2nd layer) on MMC4-style documents, as the GPU
# benchmark in docs/benchmarks.md: batch 16 x 256 tokens x 6 images of 224 px, bf16 compute, one v5p chip.
OF4B = {"model.preset": "open-flamingo-4b", "batch_size": 16,
        "data.datasets": {"docs": {"source": "interleaved_jsonl", "jsonl": "/path/to/mmc4.jsonl",
                                   "image_dir": "/path/to/images", "max_len": 256, "max_images": 6, "weight": 1.0,
                                   "batch_size": 16}}}

# Flamingo-3B's recipe (M3W 256 + LTIP 1024 samples a step, frozen NFNet-F6 and LM, bf16) at the paper's larger sizes.
FLAMINGO_9B = {"model.preset": "flamingo-9b"}
FLAMINGO_80B = {"model.preset": "flamingo-80b"}
LLAVA7B_S2_ACCUM4 = {**LLAVA_S2, "grad_accum_steps": 4}
VITA_S2_2 = {**VITA_DATA, "grad_accum_steps": 4, "model.text.remat_policy": "full"}
LLAVA7B_S2_ACCUM4_SPLASH = {**LLAVA7B_S2_ACCUM4, "model.text.attention_impl": "splash"}
LLAVA13B_S2_ACCUM2_SPLASH = {**LLAVA_S2, "grad_accum_steps": 2, "model.preset": "llava_v1_5_13b",
                             "model.text.attention_impl": "splash"}
VITA_S2_2_SPLASH = {**VITA_S2_2, "model.text.attention_impl": "splash"}

# name -> (family, config module[:argument], topology, mesh, overrides[, num_slices]). A topology that names only a
# chip ("v6e") plans that chip's standard slices in increasing size and stops at the first that fits (--smallest).
PLANS: dict[str, tuple] = {
    "llava7b_s2_config_default@v5p-8": ("llava", "llava.stage2_7b", "v5p-8", {"fsdp": -1}, LLAVA_DATA),
    "llava7b_s2@v5p-8": ("llava", "llava.stage2_7b", "v5p-8", {"fsdp": -1}, {**LLAVA_S2, "grad_accum_steps": 4}),
    "llava7b_s1@v5p-8": ("llava", "llava.stage1_7b", "v5p-8", {"fsdp": -1}, {**LLAVA_S2, "grad_accum_steps": 4}),
    "vita_2.2@v5p-32": ("vita", "vita.stage_7b:2.2", "v5p-32", {"fsdp": -1}, {**VITA_DATA, "grad_accum_steps": 4,
                                                                           "model.text.remat_policy": "full"}),
    "llava13b_s2@v5p-16": ("llava", "llava.stage2_7b", "v5p-16", {"fsdp": -1}, {
        **LLAVA_S2, "grad_accum_steps": 2, "model.preset": "llava_v1_5_13b"}),
    "flamingo3b@v5p-8": ("flamingo", "flamingo.flamingo_3b", "v5p-8", {"fsdp": -1}, {}),
    "llava7b_s2@v5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"fsdp": -1}, LLAVA_S2),
    "llava7b_s2_splash@v5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"fsdp": -1},
                                 {**LLAVA_S2, "model.text.attention_impl": "splash"}),
    # Packed rows (docs/packing.md): the same step shapes, three image slots per 2048-token row instead of one.
    "llava7b_s2_splash_packed@v5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"fsdp": -1},
                                        {**LLAVA_S2, "model.text.attention_impl": "splash", "data.pack": True}),
    "llava7b_s2_splash_packed_1image@v5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"fsdp": -1}, {
        **LLAVA_S2, "model.text.attention_impl": "splash", "data.pack": True, "data.max_images_per_row": 1}),
    "llava7b_lora@v5p-8": ("llava", "llava.stage2_lora_7b", "v5p-8", {"fsdp": -1}, {**LLAVA_S2, "grad_accum_steps": 4}),
    "of9b@v5p-8": ("flamingo", "flamingo.open_flamingo_9b", "v5p-8", {"fsdp": -1}, {}),
    "of4b_b16_none@v5p-2": ("flamingo", "flamingo.open_flamingo_9b", "v5p-2", {}, {**OF4B,
                                                                                  "model.lm.remat_policy": "none"}),
    "of4b_b16_dots@v5p-2": ("flamingo", "flamingo.open_flamingo_9b", "v5p-2", {}, {**OF4B,
                                                                                  "model.lm.remat_policy": "dots"}),
    "of4b_b16_none_splash@v5p-2": ("flamingo", "flamingo.open_flamingo_9b", "v5p-2", {}, {
        **OF4B, "model.lm.remat_policy": "none", "model.lm.attention_impl": "splash"}),
    "of4b_b16_dots_splash@v5p-2": ("flamingo", "flamingo.open_flamingo_9b", "v5p-2", {}, {
        **OF4B, "model.lm.remat_policy": "dots", "model.lm.attention_impl": "splash"}),
    # The frozen LM stored in bfloat16 (its float32 copy is never updated), the trained blocks' weights in float32.
    "of4b_b16_dots_splash_bf16lm@v5p-2": ("flamingo", "flamingo.open_flamingo_9b", "v5p-2", {}, {
        **OF4B, "model.lm.remat_policy": "dots", "model.lm.attention_impl": "splash",
        "model.lm.param_dtype": "bfloat16", "model.xattn": {"param_dtype": "float32"}}),
    "llava7b_s2@v5p-128": ("llava", "llava.stage2_7b", "v5p-128", {"fsdp": -1}, LLAVA_S2),
    "llava7b_s2@v5e": ("llava", "llava.stage2_7b", "v5e", {"fsdp": -1}, LLAVA7B_S2_ACCUM4),
    # The LM core alone at Llama-2-7B, batch 16 x 2048 (the TPU issue's first measurement, now through the trainer).
    "lm7b_b16@v5p-8": ("lm", "lm.llama2_7b", "v5p-8", {"fsdp": -1}, {"batch_size": 16, "grad_accum_steps": 1}),
    "lm7b@v5p": ("lm", "lm.llama2_7b", "v5p", {"fsdp": -1}, {}),
    "flamingo9b@v5p-16": ("flamingo", "flamingo.flamingo_3b", "v5p-16", {"fsdp": -1}, FLAMINGO_9B),
    "flamingo80b@v5p-64": ("flamingo", "flamingo.flamingo_3b", "v5p-64", {"fsdp": -1}, FLAMINGO_80B),
    "vita_1.2@v5p-32": ("vita", "vita.stage_7b:1.2", "v5p-32", {"fsdp": -1}, VITA_S2_2),
    # Scale-out of one step (global batch 128) over v5p slices, and over two v5p-32 slices joined by DCN.
    "llava7b_s2@v5p-16": ("llava", "llava.stage2_7b", "v5p-16", {"fsdp": -1}, {**LLAVA_S2, "grad_accum_steps": 2}),
    "llava7b_s2@v5p-64": ("llava", "llava.stage2_7b", "v5p-64", {"fsdp": -1}, LLAVA_S2),
    "llava7b_s2@v5p-256": ("llava", "llava.stage2_7b", "v5p-256", {"fsdp": -1}, LLAVA_S2),
    "llava7b_s2@2xv5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"data": 2, "fsdp": -1}, LLAVA_S2, 2),
    # What makes the two that did not fit fit: stage 1 at its captions' length, 13B with splash on a larger slice.
    "llava7b_s1_len704@v5p-8": ("llava", "llava.stage1_7b", "v5p-8", {"fsdp": -1}, {
        **LLAVA7B_S2_ACCUM4, "data.max_len": 704}),
    "llava13b_s2_splash@v5p-32": ("llava", "llava.stage2_7b", "v5p-32", {"fsdp": -1}, {
        **LLAVA_S2, "grad_accum_steps": 2, "model.preset": "llava_v1_5_13b", "model.text.attention_impl": "splash"}),
    # The smallest v6e slices (32 GB per chip).
    "llava7b_s2@v6e": ("llava", "llava.stage2_7b", "v6e", {"fsdp": -1}, {
        **LLAVA7B_S2_ACCUM4, "model.text.attention_impl": "splash"}),
    "vita_2.2@v6e": ("vita", "vita.stage_7b:2.2", "v6e", {"fsdp": -1}, VITA_S2_2),
    "flamingo3b@v6e": ("flamingo", "flamingo.flamingo_3b", "v6e", {"fsdp": -1}, {}),
    "flamingo3b@v5e": ("flamingo", "flamingo.flamingo_3b", "v5e", {"fsdp": -1}, {}),
    # Flamingo-80B on half the v5p-64 it fits with 67 GB to spare.
    "flamingo80b@v5p-32": ("flamingo", "flamingo.flamingo_3b", "v5p-32", {"fsdp": -1}, FLAMINGO_80B),
    # The smallest v5p slice of Flamingo-9B (v5p-16 fits at a third of its HBM).
    "flamingo9b@v5p-8": ("flamingo", "flamingo.flamingo_3b", "v5p-8", {"fsdp": -1}, FLAMINGO_9B),
    # The smallest v6e / v5e slices of the other LLaVA, VITA and LM configs, with splash attention (the TPU path);
    # otherwise the overrides of their v5p plans.
    "lm7b@v6e": ("lm", "lm.llama2_7b", "v6e", {"fsdp": -1}, {"model.attention_impl": "splash"}),
    "lm7b@v5e": ("lm", "lm.llama2_7b", "v5e", {"fsdp": -1}, {"model.attention_impl": "splash"}),
    "llava7b_s1@v6e": ("llava", "llava.stage1_7b", "v6e", {"fsdp": -1}, LLAVA7B_S2_ACCUM4_SPLASH),
    "llava7b_s1@v5e": ("llava", "llava.stage1_7b", "v5e", {"fsdp": -1}, LLAVA7B_S2_ACCUM4_SPLASH),
    "llava7b_lora@v6e": ("llava", "llava.stage2_lora_7b", "v6e", {"fsdp": -1}, LLAVA7B_S2_ACCUM4_SPLASH),
    "llava7b_lora@v5e": ("llava", "llava.stage2_lora_7b", "v5e", {"fsdp": -1}, LLAVA7B_S2_ACCUM4_SPLASH),
    "vita_1.2@v6e": ("vita", "vita.stage_7b:1.2", "v6e", {"fsdp": -1}, VITA_S2_2_SPLASH),
    "vita_1.2@v5e": ("vita", "vita.stage_7b:1.2", "v5e", {"fsdp": -1}, VITA_S2_2_SPLASH),
    "vita_2.2@v5e": ("vita", "vita.stage_7b:2.2", "v5e", {"fsdp": -1}, VITA_S2_2_SPLASH),
    "llava13b_s2@v6e": ("llava", "llava.stage2_7b", "v6e", {"fsdp": -1}, LLAVA13B_S2_ACCUM2_SPLASH),
    "llava13b_s2@v5e": ("llava", "llava.stage2_7b", "v5e", {"fsdp": -1}, LLAVA13B_S2_ACCUM2_SPLASH),
    # VITA-1.5 stage 3.2: the speech decoders (~0.2B trained) on the frozen Qwen2.5-7B table and the release codec.
    "vita_3.2@v5p-8": ("vita", "vita.stage3_2_7b", "v5p-8", {"fsdp": -1}, {}),
    "vita_3.2@v6e": ("vita", "vita.stage3_2_7b", "v6e", {"fsdp": -1}, {}),
    "vita_3.2@v5e": ("vita", "vita.stage3_2_7b", "v5e", {"fsdp": -1}, {}),
    "vita_2.2@v5p": ("vita", "vita.stage_7b:2.2", "v5p", {"fsdp": -1}, VITA_S2_2_SPLASH),
    "llava13b_s2@v5p": ("llava", "llava.stage2_7b", "v5p", {"fsdp": -1}, LLAVA13B_S2_ACCUM2_SPLASH),
    "vita_1.2@v5p": ("vita", "vita.stage_7b:1.2", "v5p", {"fsdp": -1}, VITA_S2_2_SPLASH),
    # Flamingo-80B on the next smaller v5p slice than the v5p-32 it fits (56.3 GB).
    "flamingo80b@v5p-16": ("flamingo", "flamingo.flamingo_3b", "v5p-16", {"fsdp": -1}, FLAMINGO_80B),
    # Flamingo-3B on 16 v5e chips: the 8-chip program of flamingo3b@v6e needs more than a v5e chip's 16 GB.
    "flamingo3b@v5e-16": ("flamingo", "flamingo.flamingo_3b", "v5e-16", {"fsdp": -1}, {}),
    # Flamingo-9B on 8 v6e chips (its 4-chip program needs 49.0 GB on a v5p-8) and on 16 v5e chips.
    "flamingo9b@v6e-8": ("flamingo", "flamingo.flamingo_3b", "v6e-8", {"fsdp": -1}, FLAMINGO_9B),
    "flamingo9b@v5e-16": ("flamingo", "flamingo.flamingo_3b", "v5e-16", {"fsdp": -1}, FLAMINGO_9B),
    # Flamingo-80B on a v5p-16 with its frozen LM stored in bfloat16 (float32 it needs 105 GB a chip there).
    "flamingo80b_bf16lm@v5p-16": ("flamingo", "flamingo.flamingo_3b", "v5p-16", {"fsdp": -1}, {
        **FLAMINGO_80B, "model.lm.param_dtype": "bfloat16", "model.xattn": {"param_dtype": "float32"}}),
    # Flamingo-9B on a v5e-16 with its frozen LM stored in bfloat16 (float32 it needs 17.2 of 16 GB a chip there).
    "flamingo9b_bf16lm@v5e-16": ("flamingo", "flamingo.flamingo_3b", "v5e-16", {"fsdp": -1}, {
        **FLAMINGO_9B, "model.lm.param_dtype": "bfloat16", "model.xattn": {"param_dtype": "float32"}}),
    "of9b@v6e-8": ("flamingo", "flamingo.open_flamingo_9b", "v6e-8", {"fsdp": -1}, {}),
    "of9b@v6e-16": ("flamingo", "flamingo.open_flamingo_9b", "v6e-16", {"fsdp": -1}, {}),
    # Flamingo-9B and OpenFlamingo-9B on 32 v5e chips (on 16 they need 17.2 and ~19 GB of a chip's 16).
    "flamingo9b@v5e-32": ("flamingo", "flamingo.flamingo_3b", "v5e-32", {"fsdp": -1}, FLAMINGO_9B),
    "of9b@v5e-32": ("flamingo", "flamingo.open_flamingo_9b", "v5e-32", {"fsdp": -1}, {}),
}


def run_one(name: str, out: str | None) -> list[dict]:
    from mmlm_jax.plan import plan, report, smallest_slice

    family, module_arg, topology, mesh, overrides, *rest = PLANS[name]
    num_slices = rest[0] if rest else 1

    def config_with_overrides():
        return load_config(module_arg, overrides)

    config_file = "configs/" + module_arg.split(":")[0].replace(".", "/") + ".py"
    if "-" not in topology and ":" not in topology:  # a chip: its smallest slice that fits
        def annotate(result):  # each try under its own slice's name
            result.update(plan_name=name.split("@")[0] + "@" + result["topology"], overrides=overrides)

        return smallest_slice(config_with_overrides, family, topology, mesh=mesh, config_name=config_file, out=out,
                              annotate=annotate)
    result = plan(config_with_overrides(), family, topology, num_slices=num_slices, mesh=mesh,
                  config_name=config_file)
    result.update(plan_name=name, overrides=overrides)
    report(result, out)
    return [result]


def table(path: str) -> str:
    """The markdown table of docs/tpu.md from a JSON-lines file of plans (the last line of each plan name wins; lines
    marked `superseded` are skipped)."""
    rows = {}
    with open(path) as f:
        for line in f:
            plan = json.loads(line)
            if plan.get("bench") == "tpu_aot_plan" and "per_device_gb" in plan and not plan.get("superseded"):
                rows[plan.get("plan_name") or plan["config"] + "@" + plan["topology"]] = plan
    out = ["| plan | chips | mesh | batch (accum) | params / trained | per chip: params + opt + batch, temps, total GB "
           "| fits | collectives per step (GB) | compile s | step bound ms (compute / HBM / ICI) | MFU ceiling |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in rows.items():
        m = p["per_device_gb"]
        mesh = "x".join(f"{k[0]}{v}" for k, v in p["mesh"].items() if v > 1) or "1"
        batch = ", ".join(f"{v}" for v in p["global_batch"].values())
        comms = ", ".join(f"{op.replace('collective-', '')} {c['count']} ({c['gb']:.1f})"
                          for op, c in p.get("collectives", {}).items()) or "-"
        if p.get("while_loops_with_unknown_trips"):
            comms += f" (+ loops of unread trip count: {p['while_loops_with_unknown_trips']})"
        bound = p.get("bound_s")
        bound_text = (f"{bound['compute'] * 1e3:.0f} / {bound['hbm'] * 1e3:.0f} / {bound['ici'] * 1e3:.0f}"
                      if bound else "-")
        fits = "yes" if p["fits"] else "**no**"
        out.append(f"| {name} | {p['chips']} {p['chip']} | {mesh} | {batch} ({p['grad_accum_steps']}) | "
                   f"{p['params'] / 1e9:.2f}B / {p['trainable'] / 1e9:.2f}B | "
                   f"{m['params'] + m['optimizer'] + m['batch']:.1f}, {m['temporaries']:.1f}, {m['total']:.1f} | "
                   f"{fits} | {comms} | {p['compile_s']:.0f} | {bound_text} | "
                   f"{'-' if p.get('mfu_ceiling') is None else format(p['mfu_ceiling'], '.0%')} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma-separated plan names (default: all): {', '.join(PLANS)}")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--in_process", action="store_true", help="run the plans in this process (default: one each)")
    ap.add_argument("--table", default=None, help="print the markdown table of this JSON-lines file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    names = [n for n in args.only.split(",") if n] or list(PLANS)
    unknown = [n for n in names if n not in PLANS]
    if unknown:
        ap.error(f"unknown plans {unknown}; known: {list(PLANS)}")
    for name in names:
        if args.in_process or len(names) == 1:
            run_one(name, args.out)
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--only", name] + (["--out", args.out] if args.out else [])
        if subprocess.run(cmd).returncode:
            print(json.dumps({"bench": "tpu_aot_plan", "plan_name": name, "error": "failed; see its output"}),
                  flush=True)


if __name__ == "__main__":
    main()
