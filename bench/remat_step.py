"""The jitted train step of a training config under each LM remat policy, side by side, one JSON line per policy.

    python bench/remat_step.py [--config flamingo/tiny_keyed] [--policies none,full] [--rounds 3] [--steps 10]
                               [--out FILE]

Built as the train CLIs build it (`<family>.task.make_task`, `common.trainer.Trainer`; random init, no pretrained
weights): one batch of every dataset, prefetched; for each policy (`config.model.lm.remat_policy`) the step is
compiled once, then the policies take turns for --rounds rounds of --steps timed steps each (after one settling
step per turn), so a slow spell of this shared machine falls on every policy. Reported: the median seconds per step
over all rounds, the ratio to the first policy, compile seconds, and the load average.

On 2 CPU cores the tiny Flamingo step is faster with `full` (recompute each layer in the backward pass) than
with `none`: the forward pass is cheap there, while keeping every layer's activations stacks them into
[layers, ...] buffers that XLA:CPU allocates, zero-fills and copies each step (the per-op profile of that step is
mostly `copy` and `broadcast` ops). The tiny Flamingo configs therefore use `full`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.provenance import provenance

from input_pipeline import compiled_step, config_for_bench, loadavg, make_task, timed_steps


def build_step(name: str, policy: str, workdir: str):
    from common.trainer import Trainer

    config = config_for_bench(name, None)
    config.model.lm.remat_policy = policy
    task = make_task(name, config, workdir)
    trainer = Trainer(config, task, workdir)
    return compiled_step(trainer, dict(task.make_train_data(trainer.data_shard)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="flamingo/tiny_keyed", help="config name under configs/")
    ap.add_argument("--policies", default="none,full", help="comma-separated common.lm.REMAT_POLICIES names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per policy per round")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = ap.parse_args(argv)

    policies = args.policies.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_remat_") as root:
        entries = {p: build_step(args.config, p, os.path.join(root, p)) for p in policies}
        load0 = loadavg()
        times: dict[str, list[float]] = {p: [] for p in policies}
        for _ in range(args.rounds):
            for p in policies:
                times[p] += timed_steps(entries[p], args.steps)
        load1 = loadavg()
        for entry in entries.values():
            entry["trainer"].close()
    base = statistics.median(times[policies[0]])
    lines = []
    for p in policies:
        step_s = statistics.median(times[p])
        lines.append({"bench": "remat_step", "config": f"configs/{args.config}.py", "remat_policy": p,
                      "step_s": round(step_s, 4), "ratio_to_" + policies[0]: round(step_s / base, 3),
                      "examples_per_step": entries[p]["examples"], "compile_s": round(entries[p]["compile_s"], 1),
                      "rounds": args.rounds, "steps_per_round": args.steps, "loadavg": [load0, load1],
                      "cpus": os.cpu_count(), **provenance()})
    for line in lines:
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
