"""VITA-1.5 speed: the stage-2.2 training step (adapter + projector + LLM trained on spoken questions about an image;
InternViT and the speech encoder frozen, forward only) through the trainer's own jitted step, and prefill + decode of
a spoken query (one image tile + one spoken question) through `vita_jax.inference.generate_batch`. One JSON line each.

    python bench/vita_step.py [--size tiny|1b] [--batch 16] [--steps 3] [--decode_batches 1,8] [--new_tokens 16]

  tiny  configs/vita/tiny_stage2_2.py as the miniature trains it (56 px tiles, 64-wide parts).
  1b    a ~1B stand-in of VITA-1.5's shape on the same data: a Qwen2-0.5B-shaped LM (24 x 896, GQA 14 / 2, MLP
        4864; the shapes vocabulary), InternViT-300M's widths (24 x 1024) on 224 px tiles (64 tokens per tile),
        and the full 24 x 1024 speech encoder with its adapter: 1.0B parameters.
Model FLOPs per step are the matmuls / convolutions of the compiled step's jaxpr (`common.flops.matmul_flops`: the
frozen towers' forward, the trained parts' forward and backward); MFU = those / step time / the matmul peak measured
in the same process (f32 on the CPU, bf16 on a GPU with --dtype bfloat16). Decode tokens/s = (new tokens - 1) x
batch / (time of the full generation - time of a one-token generation, i.e. the prefill).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

from input_pipeline import compiled_step, timed_steps
from lm_train_step import emit, measure_matmul_peak
from configs import load_config



def stage2_2_config(size: str, batch: int, dtype: str):
    config = load_config("vita/tiny_stage2_2")
    config.init_from = ""
    config.batch_size = batch
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    spoken = dict(config.data.datasets["spoken_qa"])
    if size == "1b":
        config.model.text.update(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                                 intermediate_size=4864, max_position_embeddings=2048)
        config.model.vision.update(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                                   num_layers=24, num_heads=16)
        config.model.audio.update(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)
        spoken.update(image_size=224, max_len=int(spoken["max_len"]) + 60)  # 64 instead of 4 tokens per tile
    elif size != "tiny":
        raise SystemExit(f"unknown --size {size!r}: tiny or 1b")
    for part in ("text", "vision", "audio"):
        config.model[part]["dtype"] = dtype
    config.data.datasets = dict(spoken_qa=spoken)
    return config


def bench_train_step(config, steps: int, peak: float) -> tuple[dict, object, object]:
    from common.flops import matmul_flops
    from common.trainer import Trainer
    from vita_jax.model import param_counts
    from vita_jax.task import make_task

    with tempfile.TemporaryDirectory(prefix="bench_vita_") as workdir:
        task = make_task(config, workdir=workdir)
        trainer = Trainer(config, task, workdir)
        entry = compiled_step(trainer, dict(task.make_train_data(trainer.data_shard)))
        flops = matmul_flops(entry["step"], entry["state"], entry["batches"])
        times = timed_steps(entry, steps)
        trainer.close()
    step_s = sorted(times)[len(times) // 2]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in entry["batches"].values()))
    record = {"bench": "vita_train_step", "stage": "2.2", "params": param_counts(task.model_config),
              "batch": config.batch_size, "seq_len": int(config.data.datasets["spoken_qa"]["max_len"]),
              "step_s": step_s, "first_step_s": entry["compile_s"], "tokens_per_s": tokens / step_s,
              "model_flops_per_step": flops, "mfu": flops / step_s / peak, "loss": float(entry["metrics"]["loss"])}
    return record, task, entry["state"].params


def bench_generation(task, params, batch_sizes, new_tokens: int) -> list[dict]:
    import flax.linen as nn

    from vita_jax import data as data_lib
    from common.generate import GenerationConfig
    from vita_jax.inference import Request, generate_batch

    params = nn.unbox(params)
    pad = task.tokenizer.pad_id if task.tokenizer.pad_id is not None else 0
    cfg = task.model_config
    source = data_lib.ShapesVitaSource("spoken_qa", "validation", 64, image_size=cfg.vision.image_size,
                                       typed_fraction=0.0)
    records = [r for r in (source[i] for i in range(64)) if r["kind"] == "spoken"]
    out = []
    for batch in batch_sizes:
        requests = [Request(images=[r["image"]], audio=r["audio"][:1]) for r in records[:batch]]

        def run(n):  # no stop tokens: every row decodes exactly n tokens (random weights would stop anywhere)
            gen = GenerationConfig(max_new_tokens=n, eos_token_ids=(), pad_token_id=pad)
            t = time.perf_counter()
            out = generate_batch(task.model, params, task.tokenizer, requests, config=gen, tile_slots=1,
                                 audio_slots=1, return_tokens=True)
            assert all(len(o) == n for o in out), [len(o) for o in out]
            return time.perf_counter() - t

        run(1), run(new_tokens)  # compile both lengths
        prefill = min(run(1) for _ in range(2))
        full = min(run(new_tokens) for _ in range(2))
        out.append({"bench": "vita_spoken_query", "batch": batch, "prefill_s": prefill,
                    "decode_tokens_per_s": (new_tokens - 1) * batch / max(full - prefill, 1e-9),
                    "new_tokens": new_tokens, "audio_seconds": [round(len(r["audio"][0]) / 16000, 2)
                                                                for r in records[:batch]]})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "1b"))
    parser.add_argument("--batch", type=int, default=None, help="train batch (default: 16 tiny, 2 for 1b)")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps (median reported)")
    parser.add_argument("--decode_batches", default="1,8")
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    batch = args.batch or (16 if args.size == "tiny" else 2)
    peak = measure_matmul_peak(8192 if jax.default_backend() == "gpu" else 2048, dtype=jnp.dtype(args.dtype))
    common = {"size": args.size, "dtype": args.dtype, "device": str(jax.devices()[0]), "cpus": os.cpu_count(),
              "machine": platform.machine(), "matmul_peak_flops": peak}
    record, task, params = bench_train_step(stage2_2_config(args.size, batch, args.dtype), args.steps, peak)
    emit({**record, **common})
    for rec in bench_generation(task, params, [int(b) for b in args.decode_batches.split(",")], args.new_tokens):
        emit({**rec, **common})


if __name__ == "__main__":
    main()
