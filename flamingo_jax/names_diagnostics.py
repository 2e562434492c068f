"""Research diagnostics of the in-context names task (docs/reproductions/flamingo.md): does the model read the
query's image, or only the text? Scored on the first token of the query's name, teacher forced.

- `names_image_reliance`: the names episodes with the query's own image vs the next episode's.
- `lm_key_binding` / `lm_key_interpolation`: the text-only LM (stage 0) on episodes whose query names its shape by
  a key word: does it bind the key to the demonstration's name, and how much of the key does it need?
- `names_image_as_key`: stage 0's text episodes with the query's key word replaced by an `<image>` of that shape.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.data import shapes
from common.tokenizers import END_OF_CHUNK_TOKEN, IMAGE_TOKEN
from flamingo_jax import data as data_lib
from flamingo_jax.eval import FlamingoRunner, build_prompt, names_demo, names_episodes


def _up_to_first_new_token(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> tuple[list[int], int]:
    """`full_ids` (the prompt's tokens followed by the answer's) cut after the first token that differs from the
    prompt's, and that token's position: the first token of the answer as the tokenizer merges it with the prompt."""
    pos = next(i for i in range(len(full_ids)) if i >= len(prompt_ids) or full_ids[i] != prompt_ids[i])
    return list(full_ids[:pos + 1]), pos


def _first_token_scores(logits_fn, rows, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """rows: (tokens, position, extra) -> per row: is the argmax at position-1 tokens[position] (bool), and the
    negative log-probability of tokens[position] there. logits_fn(ids [b, T] right padded, rows of the batch)."""
    hits, nll = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        length = max(len(t) for t, _, _ in chunk)
        ids = np.zeros((len(chunk), length), np.int32)
        for b, (t, _, _) in enumerate(chunk):
            ids[b, :len(t)] = t
        logits = np.asarray(logits_fn(ids, chunk))
        for b, (t, pos, _) in enumerate(chunk):
            row = logits[b, pos - 1].astype(np.float64)  # [V]
            hits.append(int(np.argmax(row)) == t[pos])
            nll.append(float(np.logaddexp.reduce(row - row.max()) - (row[t[pos]] - row.max())))
    return np.array(hits), np.array(nll)


def _first_token_hits(logits_fn, rows, batch_size: int = 32) -> float:
    """rows: (tokens, position, extra) -> % of rows whose argmax at position-1 is tokens[position]."""
    return 100.0 * float(np.mean(_first_token_scores(logits_fn, rows, batch_size)[0]))


def names_image_reliance(runner: FlamingoRunner, shots: int = 4, num_episodes: int = 256, seed: int = 7) -> dict:
    """Teacher-forced accuracy (%) on the first token of the query's name in `shots`-shot names prompts, with the
    query's own image and with the next episode's query image in its place (another shape five times in six):
    equal numbers mean the name is chosen without looking at the query image."""
    rng = np.random.default_rng(seed)
    rows = []
    for ep in names_episodes(num_episodes, 32, runner.image_size, seed):
        demos = [ep["support"][i] for i in rng.choice(len(ep["support"]), size=max(shots, 2), replace=False)]
        prompt = build_prompt([names_demo(d["name"]) for d in demos], names_demo(), zero_shot=shots == 0,
                              separator="")
        add_bos = runner.tok.bos_id is not None
        tokens, pos = _up_to_first_new_token(runner.tok.encode(prompt, add_bos=add_bos),
                                             runner.tok.encode(prompt + " " + ep["query"]["name"], add_bos=add_bos))
        images = [runner.preprocess(d["image"]) for d in demos] if shots > 0 else []
        rows.append((tokens, pos, images + [runner.preprocess(ep["query"]["image"])]))
    out = {}
    for mode in ("own_image", "other_image"):
        def logits_fn(ids, chunk, mode=mode):
            px = np.zeros((len(chunk), len(chunk[0][2]), runner.image_size, runner.image_size, 3), np.float32)
            for b, (_, _, images) in enumerate(chunk):
                px[b] = images
                if mode == "other_image":
                    px[b, -1] = chunk[(b + 1) % len(chunk)][2][-1]
            return runner.logits(jnp.asarray(ids), jnp.asarray(px))
        out[mode] = _first_token_hits(logits_fn, rows)
    return out


def _key_binding_rows(tokenizer, num_episodes: int, seed: int, wrong_key: bool = False,
                      image_query: bool = False) -> list:
    """Stage 0's text names episodes ("circle|This is a dax.|<|endofchunk|>|star|This is a wug.|..."; 3 names, 3-8
    pairs, the last key repeated), cut after the first token of the last name: [(tokens, that token's position,
    {query_shape, other_shape})]. wrong_key: another of the episode's keys (other_shape) stands before the last
    name; image_query: an <image> token does, for the caller to show an image of either shape."""
    rows = []
    for e in range(num_episodes):
        rng = np.random.default_rng([seed, e])
        keys = [shapes.SHAPES[int(i)] for i in rng.choice(len(shapes.SHAPES), size=3, replace=False)]
        names = shapes.made_up_names(rng, 3)
        order = [int(rng.integers(3)) for _ in range(int(rng.integers(2, 8)))]
        query = order[int(rng.integers(len(order)))]
        segments = [seg for i in order for seg in ((keys[i], True), (data_lib.NAMES_SENTENCE.format(names[i]), True),
                                                   (END_OF_CHUNK_TOKEN, True))]
        key = IMAGE_TOKEN if image_query else keys[(query + 1) % 3] if wrong_key else keys[query]
        ids = list(data_lib.tokenize_segments(tokenizer, segments + [(key, True)], add_bos=tokenizer.bos_id
                                              is not None, add_eos=False)["input_ids"])
        prompt_ids = ids + tokenizer.encode(data_lib.NAMES_PROMPT, add_bos=False)
        full = ids + tokenizer.encode(data_lib.NAMES_SENTENCE.format(names[query]), add_bos=False)
        rows.append((*_up_to_first_new_token(prompt_ids, full),
                     {"query_shape": keys[query], "other_shape": keys[(query + 1) % 3]}))
    return rows


def lm_key_binding(lm, params, tokenizer, num_episodes: int = 256, seed: int = 5) -> dict:
    """Teacher-forced accuracy (%) of the text-only LM on the first token of a repeated name (`_key_binding_rows`)
    with its true key and with another of the episode's keys in its place. A key-blind LM (one that guesses a
    frequent name of the context) scores the same on both; only one that binds names to keys lets a Flamingo's
    images choose the name."""
    fwd = jax.jit(lambda p, ids: lm.apply({"params": p}, ids))
    return {mode: _first_token_hits(lambda ids, chunk: fwd(params, jnp.asarray(ids)),
                                    _key_binding_rows(tokenizer, num_episodes, seed, wrong_key=mode == "wrong_key"))
            for mode in ("true_key", "wrong_key")}


def lm_key_interpolation(lm, params, tokenizer, scales: Sequence[float] = (0.0, 0.1, 0.2, 0.4, 0.7, 1.0),
                         num_episodes: int = 256, seed: int = 5) -> dict:
    """How the text-only LM's binding responds to a key that is only partly there: every key's input embedding
    replaced by base + s * (embedding(key) - base), base = the mean embedding row (where a Flamingo's untrained
    `<image>` row starts), on `_key_binding_rows` episodes. -> {s: {accuracy %, nll of the name's first token}}.

    At s = 0 every key is the same vector, so the first-order effect of moving one key is the same on all the
    positions the LM could copy from: a loss that is flat in s near 0 (quadratic, not linear) means the binding
    gives no gradient towards writing the key until the keys already differ (the Flamingo blocks' start)."""
    embedding = np.asarray(params["embed"]["embedding"], np.float32)  # [V, E]
    base = embedding.mean(axis=0)
    key_ids = np.array([tokenizer.encode(s, add_bos=False)[0] for s in shapes.SHAPES])
    rows = _key_binding_rows(tokenizer, num_episodes, seed)
    fwd = jax.jit(lambda p, x: lm.apply({"params": p}, inputs_embeds=x))

    def logits_fn(ids, chunk, scale):
        x = embedding[ids]  # [b, T, E]
        x = np.where(np.isin(ids, key_ids)[..., None], base + scale * (x - base), x)
        return fwd(params, jnp.asarray(x))

    out = {}
    for scale in scales:
        hits, nll = _first_token_scores(lambda ids, chunk: logits_fn(ids, chunk, scale), rows)
        out[float(scale)] = {"accuracy": 100.0 * float(np.mean(hits)), "nll": float(np.mean(nll))}
    return out


def names_image_as_key(runner: FlamingoRunner, num_episodes: int = 256, seed: int = 5) -> dict:
    """Stage 0's text names episodes (`_key_binding_rows`: the demonstrations' keys are shape words) with the query's
    key an <image> of a single object of the query's shape (own_image) or of another of the episode's shapes
    (other_image), or the shape word itself (text_key, as the frozen LM was trained). Teacher-forced accuracy (%)
    on the first token of the query's name: whether what the blocks write at an <image> works as the key that the
    frozen LM binds names to, with the other side of the match a real word."""
    rows = _key_binding_rows(runner.tok, num_episodes, seed, image_query=True)
    text_rows = _key_binding_rows(runner.tok, num_episodes, seed)
    images = {}
    for e, (_, _, shapes_of) in enumerate(rows):
        rng = np.random.default_rng([seed, 1, e])
        for mode in ("query_shape", "other_shape"):
            obj = shapes.Obj(shapes_of[mode], list(shapes.COLOURS)[int(rng.integers(len(shapes.COLOURS)))],
                             shapes.SIZES[int(rng.integers(2))], int(rng.integers(3)), int(rng.integers(3)))
            images[e, mode] = runner.preprocess(shapes.render([obj], rng, 64))
    indexed = [(t, pos, e) for e, (t, pos, _) in enumerate(rows)]  # each row's episode picks its images
    out = {}
    for mode, shape_of in (("own_image", "query_shape"), ("other_image", "other_shape")):
        def logits_fn(ids, chunk, shape_of=shape_of):
            px = np.stack([images[e, shape_of] for _, _, e in chunk])[:, None]  # [b, 1, S, S, 3]
            return runner.logits(jnp.asarray(ids), jnp.asarray(px))
        out[mode] = _first_token_hits(logits_fn, indexed)
    out["text_key"] = _first_token_hits(lambda ids, chunk: runner.logits(jnp.asarray(ids), None), text_rows)
    return out
