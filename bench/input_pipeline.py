"""Input-pipeline throughput next to the training step's consumption, per tiny training config, one JSON line each.
Target: the pipeline delivers >= 2x the examples/s the jitted train step consumes.

    python bench/input_pipeline.py [--configs flamingo/tiny,llava/tiny_stage1,...,vita/tiny_stage2_2,lm/tiny]
                                   [--seconds 5] [--steps 5] [--threads N] [--out FILE]

For each config the task and trainer are built as the train CLIs build them (`<family>.task.make_task(config)`,
`common.trainer.Trainer`; random init, no `init_from` / `init_lm` weights), then:
  pipeline_examples_per_s  the task's own train iterators (all datasets, one batch of each per step as the step
                           consumes them, `config.data.num_threads` transform threads unless --threads) for --seconds;
  step_examples_per_s      examples per step / seconds per jitted step (after compile; batches prefetched);
  loop_examples_per_s      the trainer's loop as it runs (next batch + device transfer + step, dispatch overlapping);
  ratio = pipeline / step, meets_2x = ratio >= 2.
The load average (/proc/loadavg) at the start and end of each measurement is included: this machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.provenance import provenance
from configs import load_config

DEFAULT_CONFIGS = "flamingo/tiny,llava/tiny_stage1,llava/tiny_stage2,vita/tiny_stage2_1,vita/tiny_stage2_2,lm/tiny"


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def _examples(batch) -> int:
    return int(len(next(iter(batch.values()))))


def make_task(name: str, config, workdir: str):
    family = name.split("/")[0]
    if family == "flamingo":
        from flamingo_jax.task import make_task as mk

        return mk(config, workdir)
    if family == "llava":
        from llava_jax.task import make_task as mk

        return mk(config, workdir=workdir)
    if family == "vita":
        from vita_jax.task import make_task as mk

        return mk(config, workdir=workdir)
    from common.lm_task import make_task as mk

    return mk(config)


def config_for_bench(name: str, threads: int | None):
    """configs/<name>.py (configs.load_config) without its init checkpoints, synchronous checkpoints, `threads`
    input threads."""
    config = load_config(name)
    with config.unlocked():
        if "init_from" in config:
            config.init_from = ""
        if "init_lm" in config:
            config.init_lm = dict(workdir="", hf_dir="")
        config.async_checkpoints = False
        if threads is not None and "num_threads" in config.data:
            config.data.num_threads = threads
    return config


def compiled_step(trainer, iterators) -> dict:
    """The trainer's own jitted step on one prefetched batch of every dataset, compiled and run once:
    {trainer, step, state, batches, names, compile_s, examples (per step), metrics}."""
    import jax

    from common.sharding import activate

    names = tuple(sorted(iterators))
    trainer._dataset_names = list(names)
    state = trainer.init_state()
    with activate(trainer.mesh):
        batches = {k: trainer._global_batch(next(iterators[k])) for k in names}
        step = trainer._step_fn(names, batches)
        t = time.perf_counter()
        state, metrics = step(state, batches)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t
    return dict(trainer=trainer, step=step, state=state, batches=batches, names=names, compile_s=compile_s,
                examples=sum(_examples(b) for b in batches.values()), metrics=metrics)


def timed_steps(entry: dict, steps: int) -> list[float]:
    """Seconds of each of `steps` steps of a `compiled_step` entry, after one settling step (its state and last
    metrics are kept in the entry)."""
    import jax

    from common.sharding import activate

    times = []
    with activate(entry["trainer"].mesh):
        entry["state"], metrics = entry["step"](entry["state"], entry["batches"])  # settle (after a switch)
        jax.block_until_ready(metrics)
        for _ in range(steps):
            t = time.perf_counter()
            entry["state"], metrics = entry["step"](entry["state"], entry["batches"])
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
    entry["metrics"] = metrics
    return times


def bench_config(name: str, seconds: float, steps: int, threads: int | None) -> dict:
    import jax

    from common.sharding import activate
    from common.trainer import Trainer

    config = config_for_bench(name, threads)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
        task = make_task(name, config, workdir)
        trainer = Trainer(config, task, workdir)
        iterators = dict(task.make_train_data(trainer.data_shard))
        names = tuple(sorted(iterators))
        trainer._dataset_names = list(names)
        if trainer.mode != "accumulate":
            raise NotImplementedError("the tiny configs accumulate over their datasets")

        # 1. The input pipeline alone: one batch of every dataset per step, as the trainer pulls them.
        for it in iterators.values():
            next(it)  # warm-up: sources opened, threads started, tokenizer caches filled
        load0 = loadavg()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for k in names:
                n += _examples(next(iterators[k]))
        pipeline_rate = n / (time.perf_counter() - t0)
        load1 = loadavg()

        # 2. The jitted train step alone, on prefetched batches.
        entry = compiled_step(trainer, iterators)
        per_step, compile_s = entry["examples"], entry["compile_s"]
        times = timed_steps(entry, steps)
        step_s = sorted(times)[len(times) // 2]

        # 3. The trainer's loop: next batch of each dataset, device transfer, step (dispatch is asynchronous,
        # so the host builds the next batch while the device runs the step, as in Trainer.run).
        step, state = entry["step"], entry["state"]
        with activate(trainer.mesh):
            t = time.perf_counter()
            for _ in range(steps):
                b = {k: trainer._global_batch(next(iterators[k])) for k in names}
                state, metrics = step(state, b)
            jax.block_until_ready(metrics)
            loop_rate = steps * per_step / (time.perf_counter() - t)
        load2 = loadavg()
        trainer.close()
    step_rate = per_step / step_s
    skips = {k: it.counter.summary()["by_reason"] for k, it in iterators.items() if hasattr(it, "counter")}
    dcfg = config.data
    return {
        "bench": "input_pipeline", "config": f"configs/{name}.py",
        "datasets": {k: _examples(entry["batches"][k]) for k in names},
        "examples_per_step": per_step, "pipeline_examples_per_s": round(pipeline_rate, 1),
        "step_s": round(step_s, 4), "step_examples_per_s": round(step_rate, 1),
        "ratio": round(pipeline_rate / step_rate, 2),
        "meets_2x": pipeline_rate >= 2 * step_rate, "loop_examples_per_s": round(loop_rate, 1),
        "compile_s": round(compile_s, 1),
        "num_threads": int(dcfg.get("num_threads", 0)) if "num_threads" in dcfg else None,
        "skipped": skips, "loadavg_pipeline": [load0, load1], "loadavg_end": load2, "cpus": os.cpu_count(),
        "machine": platform.machine(), **provenance(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated config names under configs/")
    ap.add_argument("--seconds", type=float, default=5.0, help="pipeline measurement time per config")
    ap.add_argument("--steps", type=int, default=5, help="timed train steps per config (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="transform threads (default: config.data.num_threads)")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = ap.parse_args(argv)
    lines = []
    for name in filter(None, args.configs.split(",")):
        lines.append(bench_config(name, args.seconds, args.steps, args.threads))
        print(json.dumps(lines[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for rec in lines:
                f.write(json.dumps(rec) + "\n")
    return lines


if __name__ == "__main__":
    main()
