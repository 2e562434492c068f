"""Benchmark: the LM core's train step (forward, backward, AdamW) at a ~100M-parameter Llama config on
this machine's CPU (or a GPU), side by side with the identical PyTorch transformers step; JSON lines to stdout.

Reports tokens/s, analytic matmul FLOPs per step, achieved FLOP/s, MFU against the matmul peak measured
in the same run (the better of a measurement before and one after the steps), compile time with scan vs
unrolled layers (8 and 32 layers), peak host memory, and the JAX / PyTorch step-rate ratio. The two run in
rounds, JAX then PyTorch; in each round `--settle` steps (default 1) right after the switch are timed apart
("step_after_switch_s") and the next one is the step reported. `--malloc reuse` (default) restarts the script
under glibc malloc settings that keep freed buffers for reuse (MALLOC_REUSE below; both frameworks run under
them), `--malloc default` keeps the process's own. Usage: python bench/lm_train_step.py [--steps 5]
[--settle 1] [--batch 4] [--seq 512] [--loss fused|logits] [--model llama_100m|tinyllama_1b]
[--dtype float32|bfloat16] [--attention xla|cudnn] [--attention-block-size 64]

The JAX loss is the same mean next-token cross-entropy as transformers' `labels=` loss; by default
(`--loss fused`) it is computed by `common.losses.next_token_loss` fused with the LM head (chunked over
tokens, no [B, T, V] logits), `--loss logits` takes log_softmax of the model's full logits instead. No XLA
flags are set (none measured faster here); PyTorch runs with as many threads as XLA's CPU pool
(`os.cpu_count()`), reported as "threads".

On a GPU (JAX's default backend) the PyTorch step runs on CUDA too; `--dtype bfloat16` computes in bf16 with
float32 parameters and optimizer state on both sides (PyTorch: autocast), the matmul peak is then measured in
bf16 at 8192^3, and `--attention cudnn` uses cuDNN's flash attention (PyTorch's sdpa picks its own flash kernel).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.lm import DecoderLM, head_kernel, matmul_flops_per_token
from common.losses import shifted_next_token_loss
from configs import models


# glibc malloc settings under which XLA:CPU's per-step buffers are reused instead of handed back to the kernel and
# faulted in again (~750k page faults, ~2 s of system time per step of this benchmark otherwise): no mmap'd chunks,
# one arena, no trimming. Process-wide, so PyTorch runs under them too. Must be set before the process starts.
MALLOC_REUSE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.arena_max=1"


def reexec_with_malloc_reuse() -> None:
    """Restart this script with GLIBC_TUNABLES=MALLOC_REUSE (glibc reads it only at process start); a no-op when
    it is already set or off Linux."""
    if sys.platform.startswith("linux") and os.environ.get("GLIBC_TUNABLES") != MALLOC_REUSE:
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=MALLOC_REUSE))


def emit(record: dict) -> None:
    """One JSON line on stdout, with where it was measured (common.provenance: commit, CPU, versions)."""
    from common.provenance import provenance

    print(json.dumps({**record, **provenance()}), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """Best matmul FLOP/s on this machine's default JAX device (XLA's dot), n x n x n in `dtype`."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = min(_timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_faults(fn) -> tuple[float, int]:
    """(seconds, minor page faults of this process) of one call."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = _timed(fn)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def next_token_loss(logits, ids):
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def fused_loss(model, params, ids):
    """Mean next-token CE from the final hidden states, fused with the LM head (no [B, T, V] logits): the
    trainer's LM loss."""
    hidden = model.apply({"params": params}, ids, return_hidden=True)  # [B, T, E], after the final norm
    return shifted_next_token_loss(hidden, ids, jnp.ones(ids.shape, bool), kernel=head_kernel(params, model.config))[0]


def make_train_step(model, tx, loss: str = "fused"):
    def loss_fn(p, ids):
        if loss == "fused":
            return fused_loss(model, p, ids)
        return next_token_loss(model.apply({"params": p}, ids), ids)

    def train_step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(train_step, donate_argnums=(0, 1))


def make_optimizer():
    """AdamW as PyTorch's step below runs it (torch.optim.AdamW(lr=1e-4, weight_decay=0))."""
    return optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)


def abstract_train_step(config, batch: int, seq: int, loss: str = "fused"):
    """(jitted train step, its abstract arguments): the step `jax_stepper` runs, to lower + compile without any
    parameter memory."""
    model = DecoderLM(config)
    tx = make_optimizer()
    params = _unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    return make_train_step(model, tx, loss), (params, jax.eval_shape(tx.init, params),
                                              jax.ShapeDtypeStruct((batch, seq), jnp.int32))


def compile_seconds(config, batch: int, seq: int, loss: str = "fused") -> float:
    """Time to lower + compile the full train step from abstract shapes (no parameter memory)."""
    step, args = abstract_train_step(config, batch, seq, loss)
    start = time.perf_counter()
    step.lower(*args).compile()
    return time.perf_counter() - start


def _unbox(tree):
    import flax.linen as nn
    return nn.unbox(tree)


def jax_stepper(config, batch: int, seq: int, loss: str = "fused"):
    """Returns (run one train step, seconds of the first step = compile + run)."""
    from common.params import random_params
    model = DecoderLM(config)
    tx = make_optimizer()
    params = random_params(model, jnp.zeros((1, 8), jnp.int32))
    state = {"params": params, "opt_state": tx.init(params)}
    ids = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (batch, seq)), jnp.int32)
    step = make_train_step(model, tx, loss)

    def run():
        state["params"], state["opt_state"], loss = step(state["params"], state["opt_state"], ids)
        return float(loss)

    return run, _timed(run)


def torch_stepper(config, batch: int, seq: int, threads: int):
    """The same step in PyTorch transformers: on CUDA when JAX runs on a GPU, else on the CPU with `threads`."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads)  # the same number of threads as XLA's CPU thread pool
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.kv_heads, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf_config).float().train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=device == "cuda")
    ids = torch.tensor(np.random.RandomState(0).randint(0, config.vocab_size, (batch, seq))).to(device)
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.dtype)

    def step():
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()
    return step, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--settle", type=int, default=1,
                        help="untimed steps of the same implementation before each timed one (0 = strict alternation)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--skip-compile", action="store_true", help="skip the 8 / 32-layer compile-time study")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-jax", action="store_true",
                        help="PyTorch only (on a GPU a 1B model's two steps do not fit its memory side by side)")
    parser.add_argument("--loss", choices=("fused", "logits"), default="fused",
                        help="JAX loss: fused LM head + chunked CE (default) or log_softmax of full logits")
    parser.add_argument("--model", choices=("llama_100m", "tinyllama_1b"), default="llama_100m")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (parameters and optimizer state stay float32)")
    parser.add_argument("--attention", choices=("xla", "cudnn"), default="xla")
    parser.add_argument("--attention-block-size", type=int, default=64,
                        help="queries per block of the xla causal path (LMConfig.attention_block_size; 0 = one block)")
    parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                        help="reuse: on the CPU, restart under GLIBC_TUNABLES=MALLOC_REUSE (both frameworks); "
                        "default: as started")
    args = parser.parse_args()
    if args.malloc == "reuse" and jax.default_backend() == "cpu":
        reexec_with_malloc_reuse()

    config = getattr(models, args.model)(max_position_embeddings=max(args.seq, 2048), dtype=args.dtype,
                                         attention_impl=args.attention, attention_block_size=args.attention_block_size)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_unbox(jax.eval_shape(
        lambda: DecoderLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))))
    tokens = args.batch * args.seq
    step_flops = 3 * matmul_flops_per_token(config, args.seq) * tokens
    on_gpu = jax.default_backend() == "gpu"
    matmul_peak = lambda: measure_matmul_peak(8192 if on_gpu else 2048, dtype=jnp.dtype(args.dtype))  # noqa: E731
    peak = matmul_peak()
    emit({"bench": "matmul_peak", "flops_per_s": peak, "dtype": args.dtype, "devices": str(jax.devices()[0]),
          "cpus": os.cpu_count(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES")})

    jax_step, first_step_s = (None, None) if args.skip_jax else jax_stepper(config, args.batch, args.seq, args.loss)
    rss_after_jax = peak_rss_mb()
    device_stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
    jax_device_peak_gb = device_stats.get("peak_bytes_in_use", 0) / 2**30 or None
    torch_step, torch_device = (None, None) if args.skip_torch else (
        torch_stepper(config, args.batch, args.seq, os.cpu_count()) or (None, None))
    # Interleave the two implementations, so that load from elsewhere hits both alike. Each timed step follows
    # `settle` steps of its own implementation, timed apart: under glibc's default malloc a JAX step right after a
    # PyTorch step spends several more seconds of system time faulting its buffers back in (OMP_WAIT_POLICY=PASSIVE
    # does not change that; MALLOC_REUSE does), a cost that no single-framework user pays.
    times = {"jax": ([], []), "pytorch": ([], [])}  # (after a switch, settled)
    faults = {"jax": [], "pytorch": []}  # minor page faults of the settled steps
    for _ in range(args.steps):
        for name, step in (("jax", jax_step), ("pytorch", torch_step)):
            if step is not None:
                after_switch, settled = times[name]
                for k in range(args.settle + 1):
                    seconds, step_faults = _timed_faults(step)
                    if k == 0 and args.settle:
                        after_switch.append(seconds)
                    else:
                        settled.append(seconds)
                        faults[name].append(step_faults)
    (jax_after_switch, jax_times), (torch_after_switch, torch_times) = times["jax"], times["pytorch"]
    median = lambda xs: float(np.median(xs)) if xs else None  # noqa: E731
    step_s = median(jax_times)
    # The peak again after the steps, the better of the two kept: a burst of load elsewhere during one measurement
    # would otherwise inflate every MFU of the run.
    peak = max(peak, matmul_peak())
    emit({"bench": "matmul_peak", "flops_per_s": peak, "dtype": args.dtype, "best_of": "before and after the steps"})
    if jax_times:
        emit({"bench": "lm_train_step", "impl": "jax", "model": args.model, "dtype": args.dtype,
              "attention": args.attention, "attention_block_size": args.attention_block_size, "params": n_params,
              "batch": args.batch, "seq": args.seq,
              "tokens_per_s": tokens / step_s, "step_s": step_s, "model_flops_per_step": step_flops,
              "achieved_flops_per_s": step_flops / step_s, "mfu": step_flops / step_s / peak,
              "first_step_s": first_step_s, "peak_host_memory_mb": rss_after_jax,
              "peak_device_memory_gb": jax_device_peak_gb, "loss": args.loss, "settle": args.settle,
              "step_after_switch_s": median(jax_after_switch), "minor_page_faults_per_step": median(faults["jax"])})
    if torch_times:
        import torch
        torch_s = median(torch_times)
        emit({"bench": "lm_train_step", "impl": "pytorch", "model": args.model, "dtype": args.dtype,
              "batch": args.batch, "seq": args.seq, "tokens_per_s": tokens / torch_s, "step_s": torch_s,
              "achieved_flops_per_s": step_flops / torch_s, "mfu": step_flops / torch_s / peak,
              "device": torch_device, "threads": torch.get_num_threads(),
              "peak_device_memory_gb": (torch.cuda.max_memory_allocated() / 2**30 if torch_device == "cuda"
                                        else None), "step_after_switch_s": median(torch_after_switch),
              "minor_page_faults_per_step": median(faults["pytorch"])})
        if jax_times:
            emit({"bench": "speed_ratio", "jax_over_pytorch": torch_s / step_s,
                  "after_switch": (median(torch_after_switch) / median(jax_after_switch) if jax_after_switch
                                   else None)})

    if not args.skip_compile:
        for layers in (8, 32):
            for scan in (True, False):
                seconds = compile_seconds(config.replace(num_layers=layers, scan_layers=scan), args.batch, args.seq,
                                          args.loss)
                emit({"bench": "compile_time", "layers": layers, "scan_layers": scan, "compile_s": seconds})


if __name__ == "__main__":
    main()
