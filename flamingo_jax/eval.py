"""Few-shot evaluation of Flamingo (Alayrac et al. 2022, Sec. 3 / App. B.1.5 "few-shot learning"; OpenFlamingo's
evaluate.py): the model is prompted with k (image, text) demonstrations followed by the query image and generates
the answer with beam search; no parameter changes.

    python -m flamingo_jax.eval --config configs/flamingo/tiny.py --workdir DIR --shots 0,4,8,16,32 \
        [--tasks names,captions,vqa] [--demos random,rices] [--num_queries 100]
        [--coco_train_json ... --coco_val_json ... --coco_image_dir ...]        (COCO captions, CIDEr)
        [--vqa_train_questions ... --vqa_train_annotations ... --vqa_val_questions ... --vqa_val_annotations ...
         --vqa_image_dir ...]                                                   (VQAv2, VQA accuracy)

Tasks: 'captions' (CIDEr via pycocoevalcap, x100), 'vqa' (the official VQA accuracy and answer normalisation),
'names' (the in-context-only task: made-up per-episode names for shapes; exact-match accuracy of the name). Bundled
shapes data by default; COCO / VQAv2 through `common.data.formats` when the paths are given.

OpenFlamingo's protocol: VQA demos `<image>Question:{q} Short answer:{a}<|endofchunk|>` (a = the first annotator
answer), captions `<image>Output:{c}<|endofchunk|>`, each demo followed by a newline, the query left open; "0-shot"
= 2 text-only demos (their `<image>` removed); left padding; beam search with 3 beams and no length penalty; stop at
`<|endofchunk|>`; max new tokens 20 (captions) / 5 (VQA). Post-processing: VQA cuts at "Question" / "Answer" /
"Short", then at ", "; captions cut at "Output" and drop quotes; both keep the first line, stripped. Demos: random
from the support set, or RICES (the support images most similar to the query by this model's own frozen vision
embeddings — mean-pooled, L2-normalised, cosine — with the most similar demo LAST, next to the query). The 'names'
demos `<image>This is a {name}.<|endofchunk|>` are concatenated without newlines, as in its training documents.

Media are encoded once per prompt (vision encoder + resampler) and cached across the generation steps
(`common.generate` with `decode_inputs={'media': ...}` and `step_inputs={'media_seen': ...}`).
Results: WORKDIR/fewshot_results.json and fewshot_results.md (a markdown table).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import metrics
from common.data import formats, image_ops, shapes
from common.generate import GenerationConfig, generate
from common.task_utils import load_trained
from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN
from configs import load_config, split_config_overrides
from flamingo_jax import data as data_lib
from flamingo_jax.model import Flamingo, FlamingoForGeneration, count_media
from flamingo_jax.task import example_batch, flamingo_config_from, make_task

log = logging.getLogger("flamingo_jax.eval")
TASKS = ("names", "captions", "vqa")
MAX_NEW_TOKENS = {"captions": 20, "vqa": 5, "names": 6}


# ----------------------------------------------------------------------------------------------------------------
# Prompts and post-processing (OpenFlamingo)
# ----------------------------------------------------------------------------------------------------------------
def vqa_demo(question: str, answer: str | None = None) -> str:
    if answer is None:
        return f"{IMAGE_TOKEN}Question:{question} Short answer:"
    return f"{IMAGE_TOKEN}Question:{question} Short answer:{answer}{END_OF_CHUNK_TOKEN}"


def caption_demo(caption: str | None = None) -> str:
    if caption is None:
        return f"{IMAGE_TOKEN}Output:"
    return f"{IMAGE_TOKEN}Output:{caption.strip()}{END_OF_CHUNK_TOKEN}"


def names_demo(name: str | None = None) -> str:
    if name is None:
        return f"{IMAGE_TOKEN}{data_lib.NAMES_PROMPT}"
    return f"{IMAGE_TOKEN}{data_lib.NAMES_SENTENCE.format(name)}{END_OF_CHUNK_TOKEN}"


def build_prompt(demos: Sequence[str], query: str, zero_shot: bool, separator: str = "\n") -> str:
    """OpenFlamingo: "".join(demo + separator for demo in demos) + query; 0-shot demos lose their <image>."""
    context = "".join(d + separator for d in demos)
    if zero_shot:
        context = context.replace(IMAGE_TOKEN, "")
    return context + query


def postprocess_vqa(text: str) -> str:
    answer = re.split("Question|Answer|Short", text, maxsplit=1)[0]
    answer = re.split(", ", answer, maxsplit=1)[0]
    return answer.split("\n")[0].strip()


def postprocess_caption(text: str) -> str:
    return text.split("Output", 1)[0].replace('"', "").split("\n")[0].strip()


def postprocess_name(text: str) -> str:
    words = re.sub(r"[^\w\s]", " ", text).split()
    return words[0] if words else ""


# ----------------------------------------------------------------------------------------------------------------
# Demonstration selection
# ----------------------------------------------------------------------------------------------------------------
def rices_order(query_features: np.ndarray, support_features: np.ndarray, k: int) -> np.ndarray:
    """RICES: [Q, D] x [S, D] (L2-normalised) -> [Q, k] support indices, the k most similar by cosine, ordered so the
    MOST similar is LAST (next to the query), as OpenFlamingo's `RICES.find`."""
    similarity = query_features @ support_features.T  # [Q, S]
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return top[:, ::-1]


def random_demos(rng: np.random.Generator, support_size: int, num_queries: int, k: int) -> np.ndarray:
    return np.stack([rng.choice(support_size, size=k, replace=False) for _ in range(num_queries)]) if k else \
        np.zeros((num_queries, 0), int)


# ----------------------------------------------------------------------------------------------------------------
# The model side
# ----------------------------------------------------------------------------------------------------------------
class FlamingoRunner:
    """Wraps a Flamingo + params + tokenizer: image preprocessing, vision embeddings (RICES), cached-media beam
    search generation."""

    def __init__(self, cfg, params, tokenizer, num_beams: int = 3, batch_size: int = 8, bucket: int = 32):
        self.cfg, self.params, self.tok = cfg, params, tokenizer
        self.model = FlamingoForGeneration(cfg)
        self.num_beams, self.batch_size, self.bucket = num_beams, batch_size, bucket
        self.image_size = cfg.vision.image_size
        self.ids = data_lib.special_ids(tokenizer)
        self._media = jax.jit(lambda p, px: self.model.apply({"params": p}, px, method="encode_media"))
        self._vision = jax.jit(lambda p, px: self.model.apply({"params": p}, px, method="encode_vision"))
        self._logits = jax.jit(lambda p, ids, px: self.model.apply({"params": p}, ids, pixel_values=px))

    def logits(self, input_ids, pixel_values) -> jax.Array:
        """Full forward pass: [B, T] ids (right padded) + [B, N, H, W, C] preprocessed pixels -> [B, T, V]."""
        return self._logits(self.params, input_ids, pixel_values)

    def preprocess(self, image) -> np.ndarray:
        img = image_ops.decode_image(image, convert_image_modes=True)  # evaluation: convert, never skip
        if img.shape[:2] != (self.image_size, self.image_size):
            return image_ops.clip_preprocess(img, self.image_size)
        return image_ops.normalize(img)

    def embeddings(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> [N, Dv] L2-normalised mean-pooled frozen vision features (RICES)."""
        out = []
        for start in range(0, len(images), 64):
            chunk = [self.preprocess(i) for i in images[start:start + 64]]
            n = len(chunk)
            chunk += [chunk[-1]] * (64 - n)
            feats = np.asarray(self._vision(self.params, jnp.asarray(np.stack(chunk))[:, None]))  # [64,1,T,S,D]
            out.append(feats[:n, 0].mean(axis=(1, 2)))
        emb = np.concatenate(out)
        return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)

    def generate(self, prompts: Sequence[str], images: Sequence[Sequence[Any]], max_new_tokens: int) -> list[str]:
        """One prompt per row with its images (as many as <image> markers); returns the decoded continuations."""
        outs: list[str] = []
        gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=self.num_beams, length_penalty=0.0,
                                   eos_token_ids=tuple(i for i in (self.ids["eoc"], self.ids["eos"]) if i is not None),
                                   pad_token_id=self.ids["pad"] or 0, bucket=self.bucket)
        add_bos = self.tok.bos_id is not None
        for start in range(0, len(prompts), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(prompts))))
            n = len(rows)
            rows += [rows[-1]] * (self.batch_size - n)  # fixed batch: one compilation
            ids = [self.tok.encode(prompts[r], add_bos=add_bos) for r in rows]
            length = max(len(i) for i in ids)
            tokens = np.full((len(rows), length), gen_cfg.pad_token_id, np.int32)
            mask = np.zeros((len(rows), length), np.int32)
            for b, i in enumerate(ids):  # left padding
                tokens[b, length - len(i):], mask[b, length - len(i):] = i, 1
            num_media = max(max(len(images[r]) for r in rows), 1)
            pixels = np.zeros((len(rows), num_media, self.image_size, self.image_size, 3), np.float32)
            for b, r in enumerate(rows):
                for j, img in enumerate(images[r]):
                    pixels[b, j] = self.preprocess(img)
            media = self._media(self.params, jnp.asarray(pixels))
            out = generate(self.model, self.params, tokens, mask, config=gen_cfg, decode_inputs={"media": media},
                           step_inputs={"media_seen": count_media(jnp.asarray(tokens), self.cfg.image_token_id)})
            for b in range(n):
                new = [int(t) for t in out["tokens"][b][:int(out["lengths"][b])]
                       if int(t) not in gen_cfg.eos_token_ids and int(t) != gen_cfg.pad_token_id]
                outs.append(self.tok.decode(new))
        return outs


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalSet:
    support: list[dict]  # {image, text}  (text = the demo's answer / caption / name)
    queries: list[dict]  # {image, ...task fields}


def shapes_captions(num_queries: int, support_size: int, image_size: int, seed: int = 0) -> EvalSet:
    sup = shapes.ShapesSource("captions", "train", support_size, seed, image_size)
    qry = shapes.ShapesSource("captions", "validation", num_queries, seed, image_size)
    return EvalSet([{"image": r["image"], "caption": r["caption"]} for r in sup],
                   [{"id": r["index"], "image": r["image"], "references": [r["caption"]]} for r in qry])


def shapes_vqa(num_queries: int, support_size: int, image_size: int, seed: int = 0) -> EvalSet:
    sup = shapes.ShapesSource("vqa", "train", support_size, seed, image_size)
    qry = shapes.ShapesSource("vqa", "validation", num_queries, seed, image_size)
    return EvalSet([{"image": r["image"], "question": r["question"], "answers": r["answers"]} for r in sup],
                   [{"id": r["question_id"], "image": r["image"], "question": r["question"], "answers": r["answers"]}
                    for r in qry])


def coco_captions_set(train_json: str, val_json: str, image_dir: str, val_image_dir: str | None, num_queries: int,
                      support_size: int, seed: int = 0) -> EvalSet:
    train = [r for r in formats.coco_captions(train_json, image_dir) if "_bad" not in r]
    rng = np.random.default_rng(seed)
    train = [train[i] for i in rng.permutation(len(train))[:support_size]]
    refs: dict[int, dict] = {}
    for r in formats.coco_captions(val_json, val_image_dir or image_dir):
        if "_bad" not in r:
            refs.setdefault(r["image_id"], {"id": r["image_id"], "image": r["image"], "references": []})
            refs[r["image_id"]]["references"].append(r["caption"])
    queries = list(refs.values())[:num_queries]
    return EvalSet([{"image": r["image"], "caption": r["caption"]} for r in train], queries)


def vqav2_set(train_q: str, train_a: str, val_q: str, val_a: str, image_dir: str, val_image_dir: str | None,
              num_queries: int, support_size: int, seed: int = 0) -> EvalSet:
    train = formats.vqav2(train_q, train_a, image_dir)
    rng = np.random.default_rng(seed)
    train = [train[i] for i in rng.permutation(len(train))[:support_size]]
    val = formats.vqav2(val_q, val_a, val_image_dir or image_dir)[:num_queries]
    return EvalSet([{"image": r["image"], "question": r["question"], "answers": r["answers"]} for r in train],
                   [{"id": r["question_id"], "image": r["image"], "question": r["question"],
                     "answers": r["answers"]} for r in val])


def names_episodes(num_queries: int, pool_size: int, image_size: int, seed: int = 0, num_names: int = 3):
    """One episode per query: a support pool of `pool_size` named single-shape images (fresh made-up names) and the
    query image, whose shape is one of the episode's."""
    eps = []
    for q in range(num_queries):
        ep = data_lib.names_episode(np.random.default_rng([seed, 99, q]), pool_size + 1, num_names, image_size)
        eps.append({"support": [{"image": i, "name": n} for i, n in zip(ep["images"][:-1], ep["names"][:-1])],
                    "query": {"id": q, "image": ep["images"][-1], "name": ep["names"][-1]}})
    return eps


# ----------------------------------------------------------------------------------------------------------------
# Evaluation loops
# ----------------------------------------------------------------------------------------------------------------
def _select(runner, mode: str, k: int, query_images, support_images, rng, support_emb=None):
    if mode == "rices":
        q = runner.embeddings(query_images)
        s = support_emb if support_emb is not None else runner.embeddings(support_images)
        return rices_order(q, s, k)
    return random_demos(rng, len(support_images), len(query_images), k)


def eval_standard(runner: FlamingoRunner, task: str, evalset: EvalSet, shots: int, mode: str, seed: int = 0,
                  cache: dict | None = None) -> dict:
    """captions / vqa at `shots` shots (0 -> 2 text-only demos) with `mode` demos ('random' | 'rices')."""
    k = shots if shots > 0 else 2
    rng = np.random.default_rng(seed)
    cache = {} if cache is None else cache
    support_emb = None
    if mode == "rices":
        if "support_emb" not in cache:
            cache["support_emb"] = runner.embeddings([s["image"] for s in evalset.support])
        support_emb = cache["support_emb"]
    demos = _select(runner, mode, k, [q["image"] for q in evalset.queries], [s["image"] for s in evalset.support],
                    rng, support_emb)
    prompts, images = [], []
    for q, idx in zip(evalset.queries, demos):
        sup = [evalset.support[i] for i in idx]
        if task == "vqa":
            texts = [vqa_demo(s["question"], s["answers"][0]) for s in sup]
            query = vqa_demo(q["question"])
        else:
            texts = [caption_demo(s["caption"]) for s in sup]
            query = caption_demo()
        prompts.append(build_prompt(texts, query, zero_shot=shots == 0))
        images.append(([s["image"] for s in sup] if shots > 0 else []) + [q["image"]])
    raw = runner.generate(prompts, images, MAX_NEW_TOKENS[task])
    if task == "vqa":
        preds = [postprocess_vqa(r) for r in raw]
        score = metrics.mean_vqa_accuracy(preds, [q["answers"] for q in evalset.queries])
    else:
        preds = [postprocess_caption(r) for r in raw]
        score = metrics.cider({q["id"]: p for q, p in zip(evalset.queries, preds)},
                              {q["id"]: q["references"] for q in evalset.queries})
    return {"score": score, "examples": [{"prompt": prompts[i], "prediction": preds[i]} for i in range(2)]}


def eval_names(runner: FlamingoRunner, episodes: list[dict], shots: int, mode: str, seed: int = 0) -> dict:
    """In-context-only 'names' accuracy (%): demos from the query's own episode; 0-shot = 2 text-only demos."""
    k = shots if shots > 0 else 2
    rng = np.random.default_rng(seed)
    prompts, images = [], []
    for ep in episodes:
        sup = ep["support"]
        if mode == "rices" and shots > 0:
            idx = rices_order(runner.embeddings([ep["query"]["image"]]), runner.embeddings([s["image"] for s in sup]),
                              k)[0]
        else:
            idx = rng.choice(len(sup), size=k, replace=False)
        demos = [sup[i] for i in idx]
        prompts.append(build_prompt([names_demo(d["name"]) for d in demos], names_demo(), zero_shot=shots == 0,
                                    separator=""))
        images.append(([d["image"] for d in demos] if shots > 0 else []) + [ep["query"]["image"]])
    raw = runner.generate(prompts, images, MAX_NEW_TOKENS["names"])
    preds = [postprocess_name(r) for r in raw]
    hits = [p == ep["query"]["name"] for p, ep in zip(preds, episodes)]
    in_context = [ep["query"]["name"] in p for ep, p in zip(episodes, prompts)]
    return {"score": 100.0 * float(np.mean(hits)), "answer_in_prompt": 100.0 * float(np.mean(in_context)),
            "examples": [{"prompt": prompts[i], "prediction": preds[i], "target": episodes[i]["query"]["name"]}
                         for i in range(2)]}


def run_evaluation(runner: FlamingoRunner, tasks: Sequence[str], shots: Sequence[int], modes: Sequence[str],
                   num_queries: int = 100, support_size: int = 256, seed: int = 0, sets: dict | None = None,
                   log_fn: Callable[[str], None] = print) -> dict:
    """-> {task: {mode: {shots: score}}, 'details': {...}, 'seconds': ...}."""
    sets = dict(sets or {})
    results: dict[str, Any] = {"details": {}}
    start = time.time()
    for task in tasks:
        results[task] = {}
        if task == "names":
            episodes = names_episodes(num_queries, 32, runner.image_size, seed)
        elif task not in sets:
            make = shapes_captions if task == "captions" else shapes_vqa
            sets[task] = make(num_queries, support_size, runner.image_size, seed)
        cache: dict = {}
        for mode in modes:
            results[task][mode] = {}
            for k in shots:
                if task == "names":
                    out = eval_names(runner, episodes, k, mode, seed)
                else:
                    out = eval_standard(runner, task, sets[task], k, mode, seed, cache)
                results[task][mode][str(k)] = out["score"]
                results["details"][f"{task}/{mode}/{k}"] = {kk: v for kk, v in out.items() if kk != "score"}
                log_fn(f"{task} {mode} {k}-shot: {out['score']:.2f}")
    results["seconds"] = time.time() - start
    return results


# ----------------------------------------------------------------------------------------------------------------
# Diagnostics: does the model read the images, does the frozen LM bind names to their keys (teacher forced)
# ----------------------------------------------------------------------------------------------------------------
METRIC = {"names": "accuracy %", "captions": "CIDEr", "vqa": "VQA accuracy %"}


def markdown_table(results: dict, title: str = "") -> str:
    shots = sorted({int(k) for t in TASKS if t in results for m in results[t].values() for k in m})
    lines = ([f"### {title}", ""] if title else []) + [
        "| task | demos | " + " | ".join(f"{k}-shot" for k in shots) + " |",
        "| --- | --- | " + " | ".join("---" for _ in shots) + " |"]
    for task in TASKS:
        for mode, row in results.get(task, {}).items():
            cells = [f"{row[str(k)]:.1f}" if str(k) in row else "" for k in shots]
            lines.append(f"| {task} ({METRIC[task]}) | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def load_runner(config, workdir: str | None, random_init: bool = False, **kwargs) -> FlamingoRunner:
    """The trained model of `workdir` (`common.task_utils.load_trained`: the workdir's tokenizer and latest
    parameters) under `config`, or with random_init the config's model at its random initialisation."""
    if not random_init:
        model, params, tokenizer, _ = load_trained(workdir, make_task, config=config)
        return FlamingoRunner(model.config, jax.tree.map(jnp.asarray, params), tokenizer, **kwargs)
    tokenizer = data_lib.build_tokenizer(config.get("tokenizer"), workdir)
    cfg = flamingo_config_from(config.model, tokenizer)
    if random_init:
        ids, kw = example_batch(cfg)
        params = jax.jit(lambda k: nn.unbox(Flamingo(cfg).init(k, ids, **kw)["params"]))(jax.random.key(0))
    return FlamingoRunner(cfg, params, tokenizer, **kwargs)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="the training config (model + tokenizer)")
    p.add_argument("--workdir", required=True, help="training workdir (latest checkpoint); results are written here")
    p.add_argument("--shots", default="0,4,8,16,32")
    p.add_argument("--tasks", default="names,captions,vqa")
    p.add_argument("--demos", default="random", help="random, rices or both (comma separated)")
    p.add_argument("--num_queries", type=int, default=100)
    p.add_argument("--support_size", type=int, default=256, help="query set the demos come from (OpenFlamingo 2048)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_beams", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random_init", action="store_true", help="random parameters (smoke tests), no checkpoint")
    p.add_argument("--output", default=None, help="results JSON (default WORKDIR/fewshot_results.json)")
    for name in ("coco_train_json", "coco_val_json", "coco_image_dir", "coco_val_image_dir", "vqa_train_questions",
                 "vqa_train_annotations", "vqa_val_questions", "vqa_val_annotations", "vqa_image_dir",
                 "vqa_val_image_dir"):
        p.add_argument(f"--{name}", default=None)
    argv, overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = load_config(args.config, overrides)  # --config.a.b=value overrides
    runner = load_runner(config, args.workdir, args.random_init, num_beams=args.num_beams,
                         batch_size=args.batch_size)
    sets = {}
    if args.coco_train_json:
        sets["captions"] = coco_captions_set(args.coco_train_json, args.coco_val_json, args.coco_image_dir,
                                             args.coco_val_image_dir, args.num_queries, args.support_size, args.seed)
    if args.vqa_train_questions:
        sets["vqa"] = vqav2_set(args.vqa_train_questions, args.vqa_train_annotations, args.vqa_val_questions,
                                args.vqa_val_annotations, args.vqa_image_dir, args.vqa_val_image_dir,
                                args.num_queries, args.support_size, args.seed)
    results = run_evaluation(runner, [t for t in args.tasks.split(",") if t], [int(s) for s in args.shots.split(",")],
                             [m for m in args.demos.split(",") if m], args.num_queries, args.support_size, args.seed,
                             sets)
    out = args.output or os.path.join(args.workdir, "fewshot_results.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    table = markdown_table(results)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
