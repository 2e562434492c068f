"""Plan a training run on a TPU slice from any machine: compiles the trainer's own step for the slice ahead of time
(common.aot) and reports per-chip memory against the chip's HBM, the step's collectives and an analytic step-time
bound, as text and as one JSON line.

    python -m mmlm_jax.plan --config configs/llava/stage2_7b.py --topology v5p-64 [--mesh fsdp=-1,tensor=4] \\
        [--num_slices 2] [--out plans.jsonl] [--config.model.text.remat_policy=full ...]

The family comes from the config's folder (configs/lm, configs/flamingo, configs/llava, configs/vita) or --family.
A config whose tokenizer is a checkpoint folder not on this machine is planned with a stand-in that only sizes
the vocabulary (the model and batch shapes are all the plan needs). Needs libtpu: `pip install -e '.[tpu]'`.
"""
from __future__ import annotations

import copy
import json
import os
import sys

from common import aot, lm_task
from common.config_sections import plain
from common.provenance import provenance
from common.tokenizers import FAMILY_SPECIAL_TOKENS, VocabularyStandIn
from flamingo_jax import task as flamingo_task
from flamingo_jax.task import flamingo_config_from
from llava_jax import task as llava_task
from vita_jax import task as vita_task
from vita_jax import train as vita_train

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # planning compiles for a TPU topology; it never runs on one
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # and holds no TPU chip: other libtpu users may run beside

from absl import app, flags
from ml_collections import config_flags

from common.sharding import MESH_AXES

FAMILIES = ("lm", "flamingo", "llava", "vita")

FLAGS = flags.FLAGS
if "config" not in FLAGS:  # common.train (imported first in the same process) defines the same --config
    config_flags.DEFINE_config_file("config", None, "Path to a training config with get_config().",
                                    lock_config=False)
if "topology" not in FLAGS:  # this module may be both __main__ and imported
    flags.DEFINE_string("topology", None, "TPU slice: v5p-64, v5e-16, v6e-256, v4-16 (Cloud TPU) or v5p:4x4x2 "
                        "(libtpu); with --smallest, a chip (v4, v5e, v5p, v6e).")
    flags.DEFINE_bool("smallest", False, "Find the smallest standard slice of the --topology chip that the step fits "
                      "(slices tried in increasing size; a slice whose chips do not divide the batch is skipped).")
    flags.DEFINE_string("mesh", "", "Mesh sizes replacing config.mesh, e.g. 'fsdp=-1,tensor=4' (missing axes = 1).")
    flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multi-slice); the data axis spans them.")
    flags.DEFINE_enum("family", None, list(FAMILIES), "Model family (default: the config's folder under configs/).")
    flags.DEFINE_string("out", "", "Append the plan as a JSON line to this file.")


def family_of(config_path: str) -> str:
    parts = os.path.normpath(config_path).split(os.sep)
    for i, part in enumerate(parts[:-1]):
        if part == "configs" and parts[i + 1] in FAMILIES:
            return parts[i + 1]
    raise app.UsageError(f"cannot tell the family of {config_path}: put it under configs/<family>/ or pass --family")


def parse_mesh(text: str) -> dict[str, int]:
    mesh = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, size = item.partition("=")
        if name not in MESH_AXES or not size.lstrip("-").isdigit():
            raise app.UsageError(f"--mesh item {item!r}: use data=N, fsdp=N, tensor=N (one may be -1)")
        mesh[name] = int(size)
    return mesh


def model_vocab(family: str, config) -> int:
    """The vocabulary of the config's model preset (no tokenizer needed)."""
    if family == "llava":
        return llava_task.llava_config_from(config.model).text.vocab_size
    if family == "vita" and str(config.get("stage", "")) == "3.2":  # the speech decoders read the LLM's table
        return int(config.text_vocab_size)
    if family == "vita":
        return vita_task.vita_config_from(config.model).text.vocab_size
    return flamingo_config_from(config.model).lm.vocab_size


def stand_in_tokenizer(family: str, config):
    """A VocabularyStandIn when the config's tokenizer is a checkpoint folder that is not here, else None."""
    tok = plain(config.get("tokenizer") or {})
    if family == "lm" or tok.get("kind") != "dir" or os.path.isdir(tok.get("path") or ""):
        return None
    special = FAMILY_SPECIAL_TOKENS[family]
    stand_in = VocabularyStandIn(model_vocab(family, config) - len(special))
    stand_in.add_family_tokens(family)
    return stand_in


def make_task(family: str, config):
    tokenizer = stand_in_tokenizer(family, config)
    if family == "lm":
        return lm_task.make_task(config), None
    make = {"flamingo": flamingo_task.make_task, "llava": llava_task.make_task,
            "vita": vita_train.make_task_for}[family]
    return make(config, workdir=None, tokenizer=tokenizer), tokenizer


def describe(plan: dict) -> str:
    mem = plan["per_device_gb"]
    head = (f"{plan['topology']} ({plan['libtpu_topology']}, {plan['chips']} {plan['chip']} chips), mesh "
            f"{plan['mesh']}, global batch {plan['global_batch']}")
    if "compile_error" in plan:
        return (f"{head}: DOES NOT FIT. The TPU compiler: {plan['compile_error']}\n"
                f"per chip: params {mem['params']:.2f} GB + optimizer {mem['optimizer']:.2f} GB + batch "
                f"{mem['batch']:.2f} GB + temporaries {mem['temporaries']:.2f} GB = {mem['total']:.2f} of "
                f"{plan['hbm_gb']:.0f} GB HBM")
    lines = [
        head,
        f"parameters {plan['params']:,} ({plan['trainable']:,} trained)",
        f"per chip: params {mem['params']:.2f} GB + optimizer {mem['optimizer']:.2f} GB + batch {mem['batch']:.2f} GB"
        f" = arguments {mem['arguments']:.2f} GB; temporaries {mem['temporaries']:.2f} GB; total {mem['total']:.2f}"
        f" of {plan['hbm_gb']:.0f} GB HBM: {'fits' if plan['fits'] else 'DOES NOT FIT'} "
        f"(margin {plan['margin_gb']:+.2f} GB)",
        "collectives per step: " + (", ".join(f"{op} x{c['count']} ({c['gb']:.2f} GB)"
                                             for op, c in plan["collectives"].items()) or "none"),
        f"compile {plan['compile_s']:.1f} s (lowering {plan['lower_s']:.1f} s)",
        "step-time bound: compute {compute:.1f} ms, HBM {hbm:.1f} ms, ICI {ici:.1f} ms -> >= {step:.1f} ms per step, "
        .format(**{k: v * 1e3 for k, v in plan["bound_s"].items()})
        + (f"MFU ceiling {plan['mfu_ceiling']:.0%}" if plan["mfu_ceiling"] is not None else "no FLOP count"),
    ]
    return "\n".join(lines)


def report(result: dict, out: str = "") -> None:
    """Prints the plan as text and as one JSON line, and appends the line to `out` when given."""
    line = json.dumps(result)
    print(describe(result), line, sep="\n", flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def plan(config, family: str, topology_name: str, num_slices: int = 1, mesh: dict | None = None,
         config_name: str = "") -> dict:
    """The plan of `config` on `topology_name` (see common.aot.plan_train_step), with the run's provenance."""
    if mesh:
        config.mesh = dict(mesh)  # missing axes are 1
    data = int(dict(config.mesh).get("data", 1))
    if num_slices > 1 and data != -1 and data % num_slices:  # data-parallel across the slices
        config.mesh = {**dict(config.mesh), "data": num_slices}
    topology = aot.parse_topology(topology_name, num_slices)
    task, tokenizer = make_task(family, config)
    result = aot.plan_train_step(config, task, topology)
    result.update(config=config_name, family=family, stand_in_tokenizer=tokenizer is not None, **provenance())
    return result


def smallest_slice(config_factory, family: str, chip: str, mesh: dict | None = None, config_name: str = "",
                   out: str = "", annotate=None) -> list[dict]:
    """Plans on the standard slices of `chip` in increasing size until one fits; returns every plan made.
    `config_factory()` gives a fresh config per try (a plan may rewrite config.mesh); `annotate(result)` may add
    fields to each try before it is reported (each try is written as soon as it is made)."""
    grids = aot.standard_grids(chip)
    cores = aot.CHIPS[chip].cores_per_chip
    plans = []
    for chips in sorted(grids):
        config = config_factory()
        batches = [int(config.batch_size)] + [int(spec.get("batch_size") or config.batch_size)
                                              for spec in dict(config.data.get("datasets") or {}).values()]
        accum = int(config.get("grad_accum_steps", 1))
        if chips < 4 and chip in ("v4", "v5p") or any((b // accum) % chips for b in batches):
            continue  # Cloud TPU's v4 / v5p slices start at 4 chips; every chip needs whole micro-batch rows
        result = plan(config, family, f"{chip}-{chips * cores}", mesh=mesh, config_name=config_name)
        if annotate is not None:
            annotate(result)
        plans.append(result)
        report(result, out)
        if result["fits"]:
            break
    return plans


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.topology is None:
        raise app.UsageError("--config and --topology are required")
    config_path = config_flags.get_config_filename(FLAGS["config"])
    family = FLAGS.family or family_of(config_path)
    if FLAGS.smallest:
        base = FLAGS.config
        plans = smallest_slice(lambda: copy.deepcopy(base), family, FLAGS.topology.split("-")[0].split(":")[0],
                               parse_mesh(FLAGS.mesh), config_path, FLAGS.out)
        if not plans or not plans[-1]["fits"]:
            print(f"no standard {FLAGS.topology} slice fits this step")
        sys.exit(0)
    report(plan(FLAGS.config, family, FLAGS.topology, FLAGS.num_slices, parse_mesh(FLAGS.mesh), config_path),
           FLAGS.out)
    sys.exit(0)


if __name__ == "__main__":
    app.run(main)
