"""Benchmark: one Flamingo training step (frozen CLIP ViT-L/14 + frozen LM; resampler and gated blocks trained,
AdamW, clipping at 1), our JAX step next to OpenFlamingo's own PyTorch model (open_flamingo 2.0.1's `Flamingo`
around HF transformers' CLIP vision tower and GPT-NeoX / Llama LM); JSON lines to stdout.

The JAX step is the trainer's own (`common.trainer.make_train_step` with `common.optimizer` param groups from
`flamingo_jax.param_groups`: no gradient or optimizer state for the frozen parts). The PyTorch step is OpenFlamingo's
recipe: the same parts trainable (`requires_grad`), the vision forward under no_grad, `labels=` loss, fused AdamW,
`clip_grad_norm_(1.0)`, autocast in `--dtype bfloat16`. Both keep float32 parameters and optimizer state. The input
embeddings stay frozen on both sides (OpenFlamingo trains the two new rows through a gradient mask; a detail of no
cost). Inputs: `--images` images per sample at 224 px, an `<image>` every seq/images tokens, an `<|endofchunk|>` before
each next one (MMC4-style documents), random tokens, loss on every token.

MFU = model FLOPs per step / step time / the bf16 (or f32) matmul peak measured in the same run, model FLOPs from
`flamingo_jax.model.train_flops_per_example` (frozen vision forward only, frozen LM forward + activation backward,
resampler and blocks 3x forward; recomputation not counted).

Usage: python bench/flamingo_train_step.py [--config open-flamingo-4b|tiny] [--batch 8] [--seq 256] [--images 6]
       [--dtype bfloat16] [--attention cudnn|xla] [--steps 10] [--impl jax|pytorch|both] [--remat none|full]
(`tiny`: a 2-layer stand-in that runs on the CPU, to check the script.) On a GPU one 4B model of each framework
does not fit 80 GB side by side: run `--impl jax` and `--impl pytorch` as two processes. The JAX step's XLA buffer
sizes are printed before its first step ("flamingo_memory_analysis"); `XLA_FLAGS=--xla_dump_to=DIR` adds the
compiled module's buffer assignment (`*buffer-assignment.txt`: which values hold the temporaries).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lm_train_step import emit, measure_matmul_peak

from common import trainer as trainer_lib
from common.lm import REMAT_POLICIES, LMConfig
from common.losses import shifted_next_token_loss
from common.optimizer import make_optimizer
from common.vision.clip import CLIPVisionConfig
from flamingo_jax import presets as fl_configs
from flamingo_jax.hf import open_clip_style_encoder
from flamingo_jax.model import Flamingo, param_groups, train_flops_per_example

END_OF_CHUNK = 1  # token ids of the synthetic documents (any ids below the vocabulary do)


def tiny_config():
    """A stand-in of open-flamingo-4b's layout at CPU size (GPT-NeoX LM, CLIP ViT, a block every 2nd layer)."""
    lm = LMConfig(vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256, norm="layer",
                  mlp_act="gelu", mlp_gated=False, mlp_bias=True, qkv_bias=True, out_bias=True, rotary_pct=0.25,
                  parallel_residual=True, tie_word_embeddings=False, max_position_embeddings=512)
    vision = CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=64, intermediate_size=128, num_layers=2,
                              num_heads=4, act="gelu")
    cfg = fl_configs._open_flamingo(lm, every=2)
    return cfg.replace(vision=vision, resampler=dataclasses.replace(cfg.resampler, width=64),
                       image_token_id=511)


def build_config(name: str, dtype: str, attention: str, remat: str):
    cfg = tiny_config() if name == "tiny" else fl_configs.CONFIGS[name]()
    lm = dataclasses.replace(cfg.lm, dtype=dtype, attention_impl=attention, remat_policy=remat,
                             max_position_embeddings=max(cfg.lm.max_position_embeddings, 2048))
    return cfg.replace(lm=lm, vision=dataclasses.replace(cfg.vision, dtype=dtype),
                       resampler=dataclasses.replace(cfg.resampler, dtype=dtype))


def make_inputs(cfg, batch: int, seq: int, images: int):
    """(input_ids [B, L], images [B, N, H, W, C] float32) of synthetic MMC4-style documents."""
    rng = np.random.RandomState(0)
    ids = rng.randint(2, cfg.image_token_id, (batch, seq))
    every = seq // images
    for k in range(images):
        ids[:, k * every] = cfg.image_token_id
        if k:
            ids[:, k * every - 1] = END_OF_CHUNK
    size = cfg.vision.image_size
    pixels = rng.standard_normal((batch, images, size, size, 3)).astype(np.float32)
    return ids.astype(np.int32), pixels


def random_params(model, cfg, ids, pixels):
    """Random parameters made on the device (normal 0.02, norms at 1, gates at 0.1 so the blocks count)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ids[:1, :8], pixel_values=pixels[:1])["params"])
    import flax.linen as nn
    abstract = nn.unbox(abstract)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)

    @jax.jit
    def make(key):
        out = []
        for i, (path, leaf) in enumerate(leaves):
            name = str(path[-1])
            if "scale" in name:
                out.append(jnp.ones(leaf.shape, leaf.dtype))
            elif "bias" in name:
                out.append(jnp.zeros(leaf.shape, leaf.dtype))
            elif "alpha" in name:
                out.append(jnp.full(leaf.shape, 0.1, leaf.dtype))
            else:
                out.append(0.02 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype))
        return jax.tree_util.tree_unflatten(treedef, out)

    return make(jax.random.key(0))


def jax_stepper(cfg, ids, pixels):
    """(run one step -> loss, first step's seconds incl. compile, trainable parameter count, all parameters)."""
    model = Flamingo(cfg)
    params = random_params(model, cfg, ids, pixels)
    opt = make_optimizer(dict(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.1, clip_norm=1.0,
                              param_groups=tuple((p, dict(frozen=True) if s is None else s)
                                                 for p, s in param_groups(train_embeddings=False))), params, 1000)

    def loss_fn(p, batch, rng):
        del rng
        logits = model.apply({"params": p}, batch["input_ids"], pixel_values=batch["images"])
        mask = jnp.ones(batch["input_ids"].shape, jnp.float32)
        return shifted_next_token_loss(logits, batch["input_ids"], mask)

    task = trainer_lib.Task(init_params=None, loss_fn=loss_fn, make_train_data=None)
    holder = {"state": trainer_lib.TrainState.create(params, opt.tx)}
    batches = {"docs": {"input_ids": jnp.asarray(ids), "images": jnp.asarray(pixels)}}
    start = time.perf_counter()
    step = jax.jit(trainer_lib.make_train_step(task, opt, seed=0, grad_accum_steps=1, dataset_weights={"docs": 1.0}),
                   donate_argnums=0).lower(holder["state"], batches).compile()
    compile_s = time.perf_counter() - start
    # XLA's buffer sizes, before the first step (which may run out of memory): temp = activations and other
    # temporaries, argument / output = the state (aliased when donated) and the batch.
    memory = step.memory_analysis()
    if memory is not None:
        emit({"bench": "flamingo_memory_analysis", "compile_s": compile_s, **{
            f"{k}_gb": getattr(memory, f"{k}_size_in_bytes") / 2**30
            for k in ("temp", "argument", "output", "alias", "generated_code")}})

    def run():
        holder["state"], metrics = step(holder["state"], batches)
        return float(metrics["loss"])

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    return run, first, opt.trainable_count(params), sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def torch_stepper(cfg, ids, pixels, dtype: str, remat: str):
    """OpenFlamingo's model and step in PyTorch on CUDA (or the CPU): (run one step -> loss, trainable count)."""
    import torch
    import transformers
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))  # only open_flamingo's factory imports it
    from open_flamingo.src.flamingo import Flamingo as OFFlamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    lm, v = cfg.lm, cfg.vision
    torch.manual_seed(0)
    with torch.device(device):
        clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
            hidden_act=v.act, attn_implementation="sdpa"))
        if lm.mlp_gated:  # Llama-style LM
            hf_lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=lm.vocab_size, hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
                num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads, num_key_value_heads=lm.kv_heads,
                attn_implementation="sdpa"))
            layers_attr = "model.layers"
        else:
            hf_lm = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
                vocab_size=lm.vocab_size, hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
                num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads, rotary_pct=lm.rotary_pct,
                use_parallel_residual=lm.parallel_residual, tie_word_embeddings=lm.tie_word_embeddings,
                max_position_embeddings=2048, attn_implementation="sdpa"))
            layers_attr = "gpt_neox.layers"

        encoder = open_clip_style_encoder(clip)
        extend_instance(hf_lm, FlamingoLMMixin)
        hf_lm.set_decoder_layers_attr_name(layers_attr)
        model = OFFlamingo(encoder, hf_lm, eoc_token_id=END_OF_CHUNK, media_token_id=cfg.image_token_id,
                           vis_dim=v.hidden_size, cross_attn_every_n_layers=cfg.cross_attn_every,
                           gradient_checkpointing=remat != "none")
    model.train()
    model.requires_grad_(False)  # OpenFlamingo's factory: the resampler and the gated blocks alone train
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1, fused=device == "cuda")
    lang_x = torch.tensor(ids, dtype=torch.long, device=device)
    # [B, N, H, W, C] -> OpenFlamingo's [B, T_img, F, C, H, W]
    vision_x = torch.tensor(pixels, device=device).permute(0, 1, 4, 2, 3)[:, :, None].contiguous()
    autocast = {"bfloat16": torch.bfloat16}.get(dtype)

    def run():
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(vision_x, lang_x, attention_mask=torch.ones_like(lang_x), labels=lang_x)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run, sum(p.numel() for p in trainable), device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="open-flamingo-4b", choices=sorted(fl_configs.CONFIGS) + ["tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--attention", choices=("xla", "cudnn"), default="xla", help="the LM's causal attention")
    parser.add_argument("--remat", choices=sorted(REMAT_POLICIES), default="none",
                        help="JAX: LMConfig.remat_policy; PyTorch: OpenFlamingo's gradient_checkpointing")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--impl", choices=("jax", "pytorch", "both"), default="both")
    args = parser.parse_args()

    cfg = build_config(args.config, args.dtype, args.attention, args.remat)
    ids, pixels = make_inputs(cfg, args.batch, args.seq, args.images)
    flops = {k: args.batch * v for k, v in train_flops_per_example(cfg, args.seq, args.images).items()}
    on_gpu = jax.default_backend() == "gpu"
    peak = measure_matmul_peak(8192 if on_gpu else 2048, dtype=jnp.dtype(args.dtype))
    emit({"bench": "matmul_peak", "flops_per_s": peak, "dtype": args.dtype, "devices": str(jax.devices()[0])})
    common = {"config": args.config, "dtype": args.dtype, "batch": args.batch, "seq": args.seq,
              "images": args.images, "remat": args.remat, "model_flops_per_step": flops["total"],
              "model_flops_by_part": flops}
    results = {}
    if args.impl in ("jax", "both"):
        run, first, trainable, total = jax_stepper(cfg, ids, pixels)
        times = [_timed(run) for _ in range(args.steps)]
        stats = jax.devices()[0].memory_stats() or {}
        results["jax"] = float(np.median(times))
        emit({"bench": "flamingo_train_step", "impl": "jax", "attention": args.attention, **common,
              "params": total, "trainable": trainable, "step_s": results["jax"], "first_step_s": first,
              "mfu": flops["total"] / results["jax"] / peak, "loss": run(),
              "peak_device_memory_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None})
    if args.impl in ("pytorch", "both"):
        import torch
        run, trainable, device = torch_stepper(cfg, ids, pixels, args.dtype, args.remat)
        first = _timed(run)
        times = [_timed(run) for _ in range(args.steps)]
        results["pytorch"] = float(np.median(times))
        emit({"bench": "flamingo_train_step", "impl": "pytorch", "device": device, **common, "trainable": trainable,
              "step_s": results["pytorch"], "first_step_s": first, "mfu": flops["total"] / results["pytorch"] / peak,
              "loss": run(), "peak_device_memory_gb": (torch.cuda.max_memory_allocated() / 2**30
                                                       if device == "cuda" else None)})
    if len(results) == 2:
        emit({"bench": "speed_ratio", "jax_over_pytorch": results["pytorch"] / results["jax"]})


def _timed(run) -> float:
    start = time.perf_counter()
    run()  # returns a Python float: waits for the step
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
