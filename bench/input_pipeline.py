"""Input-pipeline throughput: examples/s of each family's grain pipeline on the shapes data, next to the training
step's consumption (tiny configs), one JSON line per pipeline. Target: pipeline >= 2x what the step consumes.

    python bench/input_pipeline.py [--tokenizer DIR] [--image-size 64] [--batch-size 8] [--seconds 5]
                                   [--threads 2] [--step-rates flamingo=4.1,llava=3.0,vita=2.5] [--out FILE]

Step rates (steps/s of the tiny training configs) come from --step-rates, or from a `tiny_train_step_rate(batch_size,
image_size)` function in flamingo_jax.bench / llava_jax.bench / vita_jax.bench when those modules exist; without
either, `step_examples_per_s` is null and only the pipeline rate is reported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.data import pipeline as P  # noqa: E402
from common.data import shapes as S  # noqa: E402
from common.tokenizers import load_tokenizer  # noqa: E402


def _default_tokenizer_dir() -> str:
    """A Llama tokenizer for benchmarking: mistral-common's tokenizer.model.v1 copied into a temp checkpoint dir."""
    import importlib.resources
    import shutil
    import tempfile

    src = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    d = tempfile.mkdtemp(prefix="bench_tok_")
    shutil.copy(str(src), os.path.join(d, "tokenizer.model"))
    return d


def pipelines(tok_dir: str, image_size: int, batch_size: int, threads: int):
    """name -> (family, iterator factory)."""
    def tok(family):
        t = load_tokenizer(tok_dir)
        t.add_family_tokens(family)
        if family == "vita":
            t.add_special_tokens(["<|im_start|>", "<|im_end|>"])
        return t

    ft, lt, vt = tok("flamingo"), tok("llava"), tok("vita")
    lpad = lt.pad_id if lt.pad_id is not None else 0
    specs = {
        "flamingo_captions": ("flamingo", "captions", P.FlamingoCaptionTransform(ft, 32, image_size), P.Collate(32, ft.pad_id)),
        "flamingo_interleaved": ("flamingo", "interleaved", P.FlamingoInterleavedTransform(ft, 256, image_size, 6), P.Collate(256, ft.pad_id, max_images=6)),
        "llava_conversations": ("llava", "conversations", P.LlavaTransform(lt, 512, image_size), P.Collate(512, lpad)),
        "vita_spoken_qa": ("vita", "spoken_qa", P.VitaSpokenQATransform(vt, 128, image_size), P.Collate(128, 0)),
    }
    for name, (family, kind, transform, collate) in specs.items():
        def make(kind=kind, transform=transform, collate=collate):
            src = S.ShapesSource(kind, "train", size=100_000, image_size=image_size)
            ds, c = P.build_dataset(src, transform, batch_size=batch_size, collate=collate, num_epochs=None, num_threads=threads)
            return P.DataIterator(ds, c)

        yield name, family, make


def step_rate(family: str, given: dict, batch_size: int, image_size: int):
    if family in given:
        return given[family]
    try:
        mod = importlib.import_module(f"{family}_jax.bench")
        return float(mod.tiny_train_step_rate(batch_size=batch_size, image_size=image_size))
    except Exception:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None, help="checkpoint dir with tokenizer.model / tokenizer.json")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step-rates", default="", help="family=steps_per_s,... of the tiny training configs")
    ap.add_argument("--only", default="", help="comma-separated pipeline names")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = ap.parse_args(argv)
    given = {k: float(v) for k, v in (kv.split("=") for kv in args.step_rates.split(",") if kv)}
    tok_dir = args.tokenizer or _default_tokenizer_dir()
    only = set(filter(None, args.only.split(",")))
    lines = []
    for name, family, make in pipelines(tok_dir, args.image_size, args.batch_size, args.threads):
        if only and name not in only:
            continue
        it = make()
        next(it)  # warm-up: threads started, first batch built
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            n += len(next(it)["input_ids"])
        rate = n / (time.perf_counter() - t0)
        sr = step_rate(family, given, args.batch_size, args.image_size)
        consumed = sr * args.batch_size if sr is not None else None
        rec = {
            "bench": "input_pipeline", "pipeline": name, "family": family, "examples_per_s": round(rate, 1),
            "batch_size": args.batch_size, "image_size": args.image_size, "threads": args.threads, "cpus": os.cpu_count(),
            "step_examples_per_s": None if consumed is None else round(consumed, 1),
            "ratio": None if consumed is None else round(rate / consumed, 2),
            "meets_2x": None if consumed is None else rate >= 2 * consumed,
            "skipped": it.counter.num_skipped, "machine": platform.machine(),
        }
        lines.append(rec)
        print(json.dumps(rec), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for rec in lines:
                f.write(json.dumps(rec) + "\n")
    return lines


if __name__ == "__main__":
    main()
