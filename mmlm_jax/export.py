"""Exports what a training run left (its workdir: config.json, checkpoints/, tokenizer) as the public checkpoint
format of its family, written by the family's own `save_hf` (LoRA adapters merged first):

    python -m mmlm_jax.export --family llava --workdir workdirs/llava_s2 --out exports/llava [--step N]
        [--dtype bfloat16] [--format hf|msgpack]

  flamingo  an IDEFICS v1 folder (transformers' IdeficsForVisionText2Text); a Flamingo IDEFICS cannot express (e.g.
            OpenFlamingo-style blocks) is refused, naming each differing setting
  llava     an HF LLaVA / LLaVA-NeXT folder (LlavaForConditionalGeneration), with the run's conversation template;
            --format msgpack writes our own folder instead (llava_jax.hf.save_msgpack)
  vita      the released VITA-1.5 folder layout (config.json, safetensors, the audio encoder's train.yaml + CMVN)

Each family's `export(workdir, out_dir, step=None, *, dtype=None)` is the same call from Python.
"""
from __future__ import annotations

import argparse

import flamingo_jax.hf
import llava_jax.hf
import vita_jax.hf

EXPORTERS = {"flamingo": flamingo_jax.hf.export, "llava": llava_jax.hf.export, "vita": vita_jax.hf.export}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(EXPORTERS))
    parser.add_argument("--workdir", required=True, help="a training workdir (config.json + checkpoints/)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--step", type=int, default=None, help="a checkpoint step (default: the latest)")
    parser.add_argument("--dtype", default=None, help="tensor dtype on disk (default: the parameters')")
    parser.add_argument("--format", default="hf", choices=("hf", "msgpack"), help="msgpack: LLaVA only")
    args = parser.parse_args(argv)
    kwargs = {"dtype": args.dtype}
    if args.format != "hf":
        if args.family != "llava":
            parser.error(f"--format {args.format} exists for llava only")
        kwargs["format"] = args.format
    out = EXPORTERS[args.family](args.workdir, args.out, args.step, **kwargs)
    print(out)
    return out


if __name__ == "__main__":
    main()
