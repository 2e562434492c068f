"""Benchmark: generation throughput of the shared decode loop (common/generate.py) — prefill tokens/s and
decode tokens/s at batch 1 and 16 — for a ~100M-parameter Llama (configs/models.py: llama_100m) on this
machine. JSON lines to stdout. Usage: python bench/generate.py [--prompt 128] [--new 32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.provenance import provenance
from common.generate import GenerationConfig, generate
from common.lm import DecoderLM, KVCache
from common.params import random_params
from configs.models import llama_100m


def timed(fn, repeats: int) -> float:
    fn()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128, help="prompt length (a multiple of the bucket)")
    parser.add_argument("--new", type=int, default=32, help="new tokens per sequence")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    config = llama_100m(max_position_embeddings=args.prompt + args.new)
    model = DecoderLM(config)
    params = random_params(model, jnp.zeros((1, 8), jnp.int32))
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = np.random.RandomState(0).randint(3, config.vocab_size, (batch, args.prompt))
        mask = np.ones_like(ids)

        @jax.jit
        def prefill(params, ids):
            cache = KVCache.create(config, batch, args.prompt + args.new)
            logits, _ = model.apply({"params": params}, ids, position_ids=jnp.broadcast_to(
                jnp.arange(ids.shape[1]), ids.shape), cache=cache)
            return logits[:, -1]

        prefill_s = timed(lambda: prefill(params, jnp.asarray(ids)).block_until_ready(), args.repeats)
        gen_config = GenerationConfig(max_new_tokens=args.new, bucket=args.prompt)
        total_s = timed(lambda: generate(model, params, ids, mask, config=gen_config), args.repeats)
        decode_s = max(total_s - prefill_s, 1e-9)
        print(json.dumps({**provenance(), "bench": "generate", "batch": batch, "prompt_tokens": args.prompt,
                          "new_tokens": args.new,
                          "prefill_tokens_per_s": batch * args.prompt / prefill_s,
                          "decode_tokens_per_s": batch * args.new / decode_s,
                          "prefill_s": prefill_s, "generate_s": total_s, "device": str(jax.devices()[0])}),
              flush=True)


if __name__ == "__main__":
    main()
