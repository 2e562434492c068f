"""Per-op profile of the LM core's train step (the one bench/lm_train_step.py times): where XLA spends the step.

Traces `--steps` steps with `jax.profiler` (perfetto trace), then sums the durations of XLA's executed ops
(on the CPU: the thunks, e.g. `ynn_fusion.86` = a YNNPACK dot, `copy_bitcast_fusion.1` = a fused copy) per op
and per op kind, and maps each op to its source through the compiled HLO's metadata. JSON lines to stdout:
one per op kind, then the `--top` most expensive ops with their HLO op_name. Thunks that run concurrently
are summed, so the totals can exceed the wall time (reported as "wall_s").

Usage: python bench/profile_train_step.py [--batch 4] [--seq 512] [--steps 2] [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lm_train_step import abstract_train_step, emit, jax_stepper

from configs import models


def op_sources(config, batch: int, seq: int) -> dict[str, str]:
    """HLO instruction name -> its op_name metadata (which jax operation it came from)."""
    step, args = abstract_train_step(config, batch, seq)
    hlo = step.lower(*args).compile().as_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+(?:ROOT )?%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"",
                                                         hlo, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("llama_100m", "tinyllama_1b"), default="llama_100m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    config = getattr(models, args.model)(max_position_embeddings=max(args.seq, 2048))
    run, _ = jax_stepper(config, args.batch, args.seq)
    run()  # warm
    trace_dir = tempfile.mkdtemp(prefix="train_step_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(args.steps):
        run()
    wall = (time.perf_counter() - start) / args.steps
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op, calls = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(("$", "ThunkExecutor", "np.asarray")) or ":" in name:
            continue
        per_op[name] += event.get("dur", 0) / 1e6 / args.steps
        calls[name] += 1 / args.steps
    per_kind = collections.Counter()
    for name, seconds in per_op.items():
        per_kind[re.sub(r"[.\d]+$", "", name)] += seconds
    total = sum(per_kind.values())
    for kind, seconds in per_kind.most_common():
        emit({"profile": "kind", "kind": kind, "s_per_step": seconds, "share": seconds / total, "wall_s": wall})
    sources = op_sources(config, args.batch, args.seq)
    for name, seconds in per_op.most_common(args.top):
        emit({"profile": "op", "op": name, "s_per_step": seconds, "calls_per_step": calls[name],
              "source": sources.get(name, "")})


if __name__ == "__main__":
    main()
