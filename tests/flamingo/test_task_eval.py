"""Flamingo training task (labels, frozen parameters, loss decreasing through common.trainer) and few-shot evaluation
(OpenFlamingo prompts, RICES order, VQA accuracy, CIDEr, cached-media generation, the CLI)."""
import json
import os
import subprocess
import sys
import textwrap

import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import metrics
from common.generate import GenerationConfig, generate
from flamingo_jax import data as data_lib
from configs import load_config
from flamingo_jax import eval as fl_eval
from flamingo_jax import names_diagnostics
from flamingo_jax.model import FlamingoForGeneration, count_media

from flamingo_testlib import IMAGE, build, pixels, tiny_config, with_gates

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOS, EOS, PAD, IMG, EOC = 1, 2, 0, 3, 4


# ---------------------------------------------------------------------------------------------------- labels
def test_loss_mask_interleaved_and_captions():
    ids = np.array([BOS, 10, IMG, 11, 12, EOC, 13, 14, IMG, 15, EOC, EOS, PAD, PAD])
    mask = data_lib.flamingo_loss_mask(ids, IMG, EOC, PAD, BOS, interleaved=True)
    # bos, text before the first <image>, <image>, text between <|endofchunk|> and <image>, eos after the last
    # chunk and pad are ignored; chunk text and <|endofchunk|> are targets.
    assert mask.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    laion = np.array([[BOS, IMG, 11, 12, EOC, EOS, PAD]])
    assert data_lib.flamingo_loss_mask(laion, IMG, EOC, PAD, BOS, interleaved=False).tolist() == \
        [[0, 0, 1, 1, 1, 1, 0]]


def test_transforms_never_target_image_or_pad():
    tok = data_lib.shapes_tokenizer()
    ids = data_lib.special_ids(tok)
    for source, kind in (("shapes_interleaved", "interleaved"), ("shapes_captions", "captions")):
        spec = {"source": source, "max_len": 64, "max_images": 6, "raw_image_size": 16, "size": 4}
        transform = data_lib.make_transform(spec, tok, 16)
        ex = transform(data_lib.make_source(spec)[1])
        assert not ex["loss_mask"][ex["input_ids"] == ids["image"]].any()
        assert ex["loss_mask"].any() and ex["images"].shape[1:] == (16, 16, 3)
        first_image = int(np.argmax(ex["input_ids"] == ids["image"]))
        assert not ex["loss_mask"][:first_image + 1].any()


# ---------------------------------------------------------------------------------------------------- training
def _tiny_train_config(mode="accumulate"):
    from configs.flamingo.tiny_base import base_config

    config = base_config()
    config.total_steps = 10
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    config.log_every = 1
    config.checkpoint_every = 0
    config.multi_dataset_mode = mode
    config.model.lm.update(hidden_size=32, num_layers=2, intermediate_size=64, max_position_embeddings=128)
    config.model.vision.update(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48, num_layers=1)
    config.model.resampler.update(depth=1, head_dim=8, num_latents=4)
    config.model.xattn.update(head_dim=8)
    config.data.datasets = dict(
        captions=dict(source="shapes_captions", max_len=32, weight=0.5, max_images=1, batch_size=4, size=64),
        interleaved=dict(source="shapes_interleaved", max_len=64, weight=1.0, max_images=3, batch_size=4, size=64))
    config.optimizer.lr = 3e-3
    config.optimizer.warmup_steps = 0
    return config


@pytest.mark.slow
def test_train_steps_decrease_loss_and_keep_frozen_params(tmp_path):
    from common.trainer import Trainer
    from flamingo_jax.task import make_task

    config = _tiny_train_config()
    task = make_task(config)
    trainer = Trainer(config, task, str(tmp_path))
    init = jax.device_get(trainer.init_state().params)
    result = trainer.run()
    trainer.close()
    losses = [r["loss"] for r in result.metrics if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    final = jax.device_get(trainer.state.params)
    flat_init = dict(jax.tree_util.tree_flatten_with_path(init)[0])
    changed = {jax.tree_util.keystr(k): not np.array_equal(v, flat_init[k])
               for k, v in jax.tree_util.tree_flatten_with_path(final)[0]}
    for name, moved in changed.items():
        trainable = "'resampler'" in name or "'block'" in name or "'embed'" in name
        assert moved == trainable or (trainable and not moved and "alpha" not in name), name
    assert not any(m for n, m in changed.items() if "'vision'" in n or "'layer_" in n or "'lm_head'" in n)
    assert any(m for n, m in changed.items() if "alpha_xattn" in n)
    # OpenFlamingo: of the input embedding only the new <image> / <|endofchunk|> rows train (both occur in the data).
    new_rows = sorted(task.named_rows.values())
    moved_rows = np.flatnonzero(np.any(final["lm"]["embed"]["embedding"] != init["lm"]["embed"]["embedding"], axis=1))
    assert moved_rows.tolist() == new_rows


@pytest.mark.slow
def test_stage_lm_continues_from_another_mix_and_refuses_another_model(tmp_path):
    """Stage 'lm' with init_lm.workdir starts from that run's final params (e.g. names text first, then the mix)
    in a new workdir; a workdir of another LM is refused, naming the mismatched tensors."""
    from common.train import train
    from flamingo_jax.task import make_task, restore_params

    def stage0(datasets, steps, **lm):
        config = _tiny_train_config()
        config.stage, config.total_steps, config.checkpoint_every = "lm", steps, steps
        config.model.lm.update(**lm)
        config.data.datasets = datasets
        return config

    names = dict(names=dict(source="names_text", max_len=48, batch_size=4, size=64))
    first = stage0(names, 2)
    train(first, str(tmp_path / "names"), make_task)
    second = stage0(dict(names, captions=dict(source="captions_text", max_len=32, batch_size=4, size=64)), 1)
    second.optimizer.lr = 0.0  # the continued params stay as loaded
    second.init_lm = dict(workdir=str(tmp_path / "names"))
    train(second, str(tmp_path / "mix"), make_task)
    for a, b in zip(jax.tree.leaves(restore_params(str(tmp_path / "names"))),
                    jax.tree.leaves(restore_params(str(tmp_path / "mix")))):
        chex.assert_trees_all_equal(a, b)
    other = stage0(names, 1, hidden_size=48)
    other.init_lm = dict(workdir=str(tmp_path / "names"))
    with pytest.raises(ValueError, match="holds another LM than model.lm"):
        task = make_task(other)
        task.load_pretrained(flax.linen.unbox(task.init_params(jax.random.key(0))))


@pytest.mark.slow
@pytest.mark.parametrize("every", [2, 3])  # 3: 4 layers = one group of 3 + a plain tail layer (Flamingo-80B's 80 / 7)
def test_lm_to_grouped_layout(every):
    from common.lm import DecoderLM
    from common.task_utils import graft
    from flamingo_jax.task import lm_to_grouped

    cfg = tiny_config(every=every)
    model, params = build(cfg)
    bare = DecoderLM(cfg.lm)
    lm = jax.jit(lambda k: bare.init(k, jnp.zeros((1, 4), jnp.int32))["params"])(jax.random.key(3))
    lm = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, lm, is_leaf=lambda x: hasattr(x, "value"))
    new = graft(params, lm_to_grouped(jax.device_get(lm), cfg.lm, every), prefix="lm/")
    assert ("tail" in new["lm"]["decoder"]) == (every == 3)
    ids = jnp.asarray(np.random.RandomState(0).randint(6, 48, (2, 9)))
    ours = model.apply({"params": new}, ids)  # gates are 0: exactly the bare LM
    chex.assert_trees_all_close(ours, bare.apply({"params": lm}, ids), atol=1e-5, rtol=1e-7)


# ---------------------------------------------------------------------------------------------------- prompts
def test_openflamingo_prompts_exact():
    demos = [fl_eval.vqa_demo("what color is it?", "red"), fl_eval.vqa_demo("how many?", "2")]
    prompt = fl_eval.build_prompt(demos, fl_eval.vqa_demo("is it big?"), zero_shot=False)
    assert prompt == ("<image>Question:what color is it? Short answer:red<|endofchunk|>\n"
                      "<image>Question:how many? Short answer:2<|endofchunk|>\n"
                      "<image>Question:is it big? Short answer:")
    zero = fl_eval.build_prompt([fl_eval.caption_demo(" a cat. ")], fl_eval.caption_demo(), zero_shot=True)
    assert zero == "Output:a cat.<|endofchunk|>\n<image>Output:"
    names = fl_eval.build_prompt([fl_eval.names_demo("dax")], fl_eval.names_demo(), False, separator="")
    assert names == "<image>This is a dax.<|endofchunk|><image>This is a"
    assert fl_eval.postprocess_vqa(" red Question:what") == "red"
    assert fl_eval.postprocess_vqa("yes, it is\nno") == "yes"
    assert fl_eval.postprocess_caption('"a red circle." Output: x') == "a red circle."
    assert fl_eval.postprocess_name(" daxwug. This") == "daxwug"


def test_rices_most_similar_last():
    support = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.7, 0.2, 0.5]], np.float32)
    query /= np.linalg.norm(query)
    assert fl_eval.rices_order(query, support, 3).tolist() == [[2, 3, 1]]


# ---------------------------------------------------------------------------------------------------- metrics
def test_vqa_accuracy_official_normalisation():
    assert metrics.normalize_vqa_answer("Two") == "2"
    assert metrics.normalize_vqa_answer("the dog.") == "dog"
    assert metrics.normalize_vqa_answer("dont") == "don't"
    assert metrics.normalize_vqa_answer("yes!") == "yes"
    answers = ["2"] * 3 + ["3"] * 7
    assert metrics.vqa_accuracy("two", answers) == pytest.approx(0.9)  # 3 matches: (3 * 2/3 + 7 * 1) / 10
    assert metrics.vqa_accuracy("2", ["2"] * 2 + ["4"] * 8) == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10
    assert metrics.vqa_accuracy("3", answers) == 1.0


def test_cider_fixture():
    from pycocoevalcap.cider.cider import Cider

    refs = {1: ["A red circle at the top.", "a red circle"], 2: ["two shapes: a blue star and a square."],
            3: ["a small green cross at the left."]}
    preds = {1: "a red circle at the top", 2: "a blue star", 3: "a small green cross at the left."}
    expected = 100 * Cider().compute_score({k: [metrics.caption_tokens(r) for r in v] for k, v in refs.items()},
                                           {k: [metrics.caption_tokens(v)] for k, v in preds.items()})[0]
    assert metrics.cider(preds, refs) == pytest.approx(expected)
    assert metrics.caption_tokens("Two shapes: a cat, a dog.") == "two shapes a cat a dog"
    wrong = {1: "a dog", 2: "a tree", 3: "a boat"}
    assert metrics.cider(preds, refs) > metrics.cider(wrong, refs) >= 0


# ---------------------------------------------------------------------------------------------------- generation
@pytest.mark.slow
def test_generation_with_cached_media_equals_full_recompute():
    cfg = tiny_config(every=1)
    _, params = build(cfg)
    params = with_gates(params)
    model = FlamingoForGeneration(cfg)
    ids = np.array([[0, 0, IMAGE, 9, 10, IMAGE, 11], [IMAGE, 12, 13, 14, IMAGE, 15, 16]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], np.int32)
    px = pixels(2, 2)
    media = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_media"))(params, px)
    gen = GenerationConfig(max_new_tokens=4, bucket=8, pad_token_id=0)
    out = generate(model, params, ids, mask, config=gen, decode_inputs={"media": media},
                   step_inputs={"media_seen": count_media(jnp.asarray(ids), IMAGE)})
    full = jax.jit(lambda p, i, m, x: model.apply({"params": p}, i, m, pixel_values=x))
    seq, seq_mask = ids, mask
    for step in range(4):  # no cache: the whole sequence and the pixels every step
        logits = full(params, seq, seq_mask, px)
        nxt = np.asarray(jnp.argmax(logits[:, -1], -1), np.int32)
        chex.assert_trees_all_equal(out["tokens"][:, step], nxt)
        seq = np.concatenate([seq, nxt[:, None]], 1)
        seq_mask = np.concatenate([seq_mask, np.ones((2, 1), np.int32)], 1)
    beams = generate(model, params, ids, mask, config=GenerationConfig(max_new_tokens=3, num_beams=3, bucket=8,
                                                                       length_penalty=0.0),
                     decode_inputs={"media": media}, step_inputs={"media_seen": count_media(jnp.asarray(ids), IMAGE)})
    chex.assert_shape(beams["tokens"], (2, 3))


# ---------------------------------------------------------------------------------------------------- CLI
# A smaller tiny Flamingo for evaluation tests, as a config file (the CLI reads one).
TINY_EVAL_CONFIG = textwrap.dedent("""
    from configs.flamingo.tiny_base import base_config
    def get_config():
        c = base_config()
        c.model.lm.update(hidden_size=32, num_layers=2, intermediate_size=64, max_position_embeddings=256)
        c.model.vision.update(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48, num_layers=1)
        c.model.resampler.update(depth=1, head_dim=8, num_latents=4)
        c.model.xattn.update(head_dim=8)
        return c
""")


@pytest.mark.slow
def test_eval_cli_smoke(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(TINY_EVAL_CONFIG)
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, "-m", "flamingo_jax.eval", "--config", str(config), "--workdir", str(tmp_path),
           "--random_init", "--tasks", "names,vqa", "--shots", "0,1", "--demos", "rices", "--num_queries", "3",
           "--support_size", "6", "--batch_size", "4", "--num_beams", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((tmp_path / "fewshot_results.json").read_text())
    assert set(results["names"]["rices"]) == {"0", "1"} and set(results["vqa"]["rices"]) == {"0", "1"}
    assert "| names (accuracy %) | rices |" in (tmp_path / "fewshot_results.md").read_text()


def test_stage0_names_text_is_a_flamingo_document_with_shape_words():
    """Stage 0's text episodes are token for token the Flamingo names documents, each <image> replaced by the tokens
    of its shape word (so "This" after it is the same token the Flamingo LM will see after <image>)."""


    tok = data_lib.shapes_tokenizer()
    image = data_lib.special_ids(tok)["image"]
    record = data_lib.TextSource("names_text", 4, 0, 3, 5)[1]
    text_ids = data_lib.TextTransform(tok, 128)(record)["input_ids"]
    shape_words = [seg for seg, _ in record["segments"][0::3]]
    sentences = [seg for seg, _ in record["segments"][1::3]]
    doc = data_lib.flamingo_interleaved(tok, sentences, num_images=len(sentences))["input_ids"]
    expected, shapes_left = [], list(shape_words)
    for token in doc.tolist():
        expected += list(tok.encode(shapes_left.pop(0))) if token == image else [token]
    assert not shapes_left
    assert text_ids[:len(expected)].tolist() == expected
    assert (text_ids[len(expected):] == tok.pad_id).all()


def test_stage0_names_text_key_words_and_name_counts():
    """`other_keys`: in that share of stage-0 episodes other words (colours, positions, numbers...) stand for the
    keys, consistently within the episode, so the LM learns to bind names to any key word, not to the six shape
    words only; `min_names` / `max_names` bound the names per episode."""
    from common.data import shapes

    source = data_lib.TextSource("names_text", 200, 0, 4, 8, min_names=4, max_names=5, other_keys=0.5)
    episodes_with_other_keys = 0
    for record in (source[i] for i in range(200)):
        keys = [seg for seg, _ in record["segments"][0::3]]
        names = [seg for seg, _ in record["segments"][1::3]]
        assert all(k in data_lib.KEY_WORDS for k in keys)
        assert len(dict(zip(keys, names))) == len(set(keys)) == len(set(names)) <= 5  # one name per key
        episodes_with_other_keys += any(k not in shapes.SHAPES for k in keys)
    assert 60 < episodes_with_other_keys < 140
    shape_only = data_lib.TextSource("names_text", 50, 0, 4, 8)
    assert all(seg in shapes.SHAPES for i in range(50) for seg, _ in shape_only[i]["segments"][0::3])
    with pytest.raises(ValueError, match="max_names"):
        data_lib.TextSource("names_text", 4, 0, 3, 5, min_names=2, max_names=7)


def test_names_documents_have_stage0_episode_sizes_and_one_name_per_shape():
    """'names_documents': Flamingo names documents (one rendered single-shape image per "This is a {name}.") with
    stage 0's episode sizes; within a document each shape has one name and each name one shape."""
    source = data_lib.make_source(dict(source="names_documents", min_pairs=3, max_pairs=10, min_names=2,
                                       max_names=6, raw_image_size=32))
    counts = set()
    for record in (source[i] for i in range(100)):
        assert 3 <= len(record["images"]) == len(record["texts"]) <= 10
        assert all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for img in record["images"])
        mapping = json.loads(record["mapping"])
        assert 2 <= len(mapping) <= 6 and len(set(mapping.values())) == len(mapping)
        assert {t[len("This is a "):-1] for t in record["texts"]} <= set(mapping.values())
        counts.add(len(set(record["texts"])))
    assert len(counts) >= 4  # the number of distinct names varies
    first, again = source[5], source[5]  # generated anew from (seed, index) on each access: the same document
    assert first["texts"] == again["texts"] and np.array_equal(first["images"][0], again["images"][0])
    with pytest.raises(ValueError, match="min_pairs"):
        data_lib.make_source(dict(source="names_documents", min_pairs=5, max_pairs=3))
    with pytest.raises(IndexError):
        source[len(source)]


# ---------------------------------------------------------------------------------------------------- diagnostics
@pytest.mark.slow
def test_names_image_reliance_is_blind_with_closed_gates(tmp_path):
    """With every gate at 0 the model cannot see the query image: own and other image score exactly the same; open
    gates make the logits depend on the image."""
    (tmp_path / "cfg.py").write_text(TINY_EVAL_CONFIG)
    config = load_config(str(tmp_path / "cfg.py"))
    runner = fl_eval.load_runner(config, None, random_init=True, num_beams=1, batch_size=4)
    closed = names_diagnostics.names_image_reliance(runner, shots=2, num_episodes=8)
    assert closed["own_image"] == closed["other_image"]
    runner.params = with_gates(runner.params, 1.0)
    opened = names_diagnostics.names_image_reliance(runner, shots=2, num_episodes=8)
    assert set(opened) == {"own_image", "other_image"} and all(0 <= v <= 100 for v in opened.values())


@pytest.mark.slow
def test_names_image_as_key_and_where_the_image_is_read(tmp_path):
    """`names_image_as_key` (stage 0's text episodes with an <image> as the query's key) and the reproduction's
    `image_reliance_losses` (own / other / zero images, and own images seen only at the <image> tokens or everywhere
    but there): with every gate at 0 no image can matter, so every image variant scores the same; open gates make
    them differ. The image-query rows are the text rows with the query's key tokens replaced by one <image>."""
    from flamingo_jax.reproduce import image_reliance_losses

    (tmp_path / "cfg.py").write_text(TINY_EVAL_CONFIG)
    config = load_config(str(tmp_path / "cfg.py"))
    for spec in config.data.datasets.values():
        spec["batch_size"] = 2
    runner = fl_eval.load_runner(config, None, random_init=True, num_beams=1, batch_size=4)
    closed = names_diagnostics.names_image_as_key(runner, num_episodes=6)
    assert set(closed) == {"own_image", "other_image", "text_key"} and closed["own_image"] == closed["other_image"]
    losses = image_reliance_losses(config, runner.params, num_batches=1)
    for by_mode in losses.values():
        assert len({round(v, 6) for v in by_mode.values()}) == 1, by_mode
    opened = image_reliance_losses(config, with_gates(runner.params, 1.0), num_batches=1)["captions"]
    assert len({round(v, 4) for v in opened.values()}) == 5, opened
    image_id = data_lib.special_ids(runner.tok)["image"]
    image_rows = names_diagnostics._key_binding_rows(runner.tok, 6, 5, image_query=True)
    for (text_ids, _, info), (img_ids, _, _) in zip(names_diagnostics._key_binding_rows(runner.tok, 6, 5), image_rows):
        key = runner.tok.encode(info["query_shape"], add_bos=False)
        assert list(img_ids).count(image_id) == 1 and len(text_ids) - len(img_ids) == len(key) - 1


class _PeekingLM:
    """Predicts each next token by reading it from the input (an LM that always knows the answer)."""

    vocab = 1024

    def apply(self, variables, ids):
        nxt = jnp.concatenate([ids[:, 1:], ids[:, -1:]], axis=1)
        return jax.nn.one_hot(nxt, self.vocab)


def test_lm_key_binding_scores_the_first_name_token():
    tok = data_lib.shapes_tokenizer()
    binding = names_diagnostics.lm_key_binding(_PeekingLM(), {}, tok, num_episodes=16)
    assert binding == {"true_key": 100.0, "wrong_key": 100.0}

    class Shifted(_PeekingLM):  # one position late: never right
        def apply(self, variables, ids):
            return jax.nn.one_hot(ids, self.vocab)

    assert names_diagnostics.lm_key_binding(Shifted(), {}, tok, num_episodes=16) == {"true_key": 0.0, "wrong_key": 0.0}


@pytest.mark.slow
def test_lm_key_interpolation_at_full_key_is_the_binding_check():
    """At scale 1 the interpolated keys are the keys themselves: the accuracy is lm_key_binding's true-key one, and
    the nll is that of the plain forward pass; smaller scales change the inputs at the key positions only."""
    from common.data import shapes
    from common.lm import DecoderLM, LMConfig
    from common.params import random_params

    tok = data_lib.shapes_tokenizer()
    lm = DecoderLM(LMConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position_embeddings=128))
    params = random_params(lm, jnp.zeros((1, 8), jnp.int32))
    out = names_diagnostics.lm_key_interpolation(lm, params, tok, scales=(0.0, 0.5, 1.0), num_episodes=12)
    assert set(out) == {0.0, 0.5, 1.0}
    assert out[1.0]["accuracy"] == names_diagnostics.lm_key_binding(lm, params, tok, num_episodes=12)["true_key"]
    rows = names_diagnostics._key_binding_rows(tok, 12, 5)
    nll = [-float(jax.nn.log_softmax(lm.apply({"params": params}, jnp.asarray([t]))[0, pos - 1])[t[pos]])
           for t, pos, _ in rows]
    chex.assert_trees_all_close(out[1.0]["nll"], np.mean(nll), rtol=1e-5)
    assert out[0.0]["nll"] != out[1.0]["nll"]
    key_ids = {tok.encode(s, add_bos=False)[0] for s in shapes.SHAPES}
    assert all(sum(i in key_ids for i in t) >= 3 for t, _, _ in rows)  # 2+ pairs' keys and the query's


def test_resize_vocab_starts_new_and_untrained_rows_at_the_mean():
    """The Flamingo tokenizer's added tokens (and the padding to 64) start at the mean of the LM's rows, as
    transformers' mean-resizing; rows of tokens the LM never trained on (mean_rows) too; fewer rows are refused."""
    from flamingo_jax.task import resize_vocab

    rng = np.random.default_rng(0)
    embed, head = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    lm = {"embed": {"embedding": embed}, "lm_head": {"kernel": head}, "final_norm": {"scale": np.ones(3)}}
    out = resize_vocab(lm, 8, mean_rows=[4])
    new_embed, new_head = out["embed"]["embedding"], out["lm_head"]["kernel"]
    chex.assert_shape(new_embed, (8, 3))
    chex.assert_shape(new_head, (3, 8))
    chex.assert_trees_all_equal(new_embed[:4], embed[:4])
    chex.assert_trees_all_equal(new_head[:, :4], head[:, :4])
    for row in (4, 5, 7):
        chex.assert_trees_all_close(new_embed[row], embed[:4].mean(0), rtol=1e-6)
        chex.assert_trees_all_close(new_head[:, row], head[:, :4].mean(1), rtol=1e-6)
    assert out["final_norm"] is lm["final_norm"]
    chex.assert_trees_all_equal(resize_vocab(lm, 5)["embed"]["embedding"], embed)  # same size: untouched
    with pytest.raises(ValueError, match="has 5 tokens, more than the model's vocab_size 4"):
        resize_vocab(lm, 4)


def test_strict_graft_refuses_tensors_without_a_place():
    """The frozen LM is grafted strictly: a tensor of the checkpoint with no same-shaped place in the model is an
    error naming it, not a log line (it would stay at its random init)."""
    from common.task_utils import graft

    params = {"lm": {"a": jnp.zeros(2), "b": jnp.zeros((2, 2))}}
    out = graft(params, {"a": np.ones(2), "b": np.ones((3, 2))}, prefix="lm/")  # lenient: copies what fits
    chex.assert_trees_all_equal(out["lm"]["a"], np.ones(2))
    with pytest.raises(ValueError, match=r"1 tensors of the LM have no place of their shape in the model, e.g. "
                                         r"\['lm/b \(3, 2\) != \(2, 2\)'\]"):
        graft(params, {"a": np.ones(2), "b": np.ones((3, 2))}, prefix="lm/", strict=True, what="the LM")


def test_names_documents_with_text_keys_mix_word_and_image_keys():
    """`text_keys`: that share of a names document's pairs names its key with the shape word (stage 0's layout,
    "circle|This is a dax.", no image) instead of an image; the last pair always shows its image. Such a pair's
    name is context, not a target (it follows an <|endofchunk|> with no <image> after it); the image pairs' names are
    targets, as in the all-image documents, whose tokens are unchanged."""
    from common.data import shapes

    tok = data_lib.shapes_tokenizer()
    ids = data_lib.special_ids(tok)
    spec = dict(source="names_documents", max_len=160, max_images=10, raw_image_size=32, text_keys=0.5)
    source, transform = data_lib.make_source(spec), data_lib.make_transform(spec, tok, 32)
    text_pairs = 0
    for record in (source[i] for i in range(40)):
        slots = record["image_slots"]
        assert slots[-1] and len(record["images"]) == sum(slots) and len(slots) == len(record["texts"])
        ex = transform(record)
        tokens, mask = ex["input_ids"], ex["loss_mask"]
        assert ex["images"].shape[0] == sum(slots) and (tokens == ids["image"]).sum() == sum(slots)
        mapping = json.loads(record["mapping"])
        for text, has_image in zip(record["texts"], slots):
            if not has_image:  # (shape word, sentence), the word one of the document's shapes, its name its own
                word, sentence = text
                assert word in shapes.SHAPES and sentence == data_lib.NAMES_SENTENCE.format(mapping[word])
        # targets: exactly the sentences (+ <|endofchunk|>) of the image pairs, and the final eos is not one
        chunks = np.split(np.arange(len(tokens)), np.flatnonzero(tokens == ids["eoc"]) + 1)[:len(slots)]
        for chunk, has_image in zip(chunks, slots):
            assert mask[chunk].any() == has_image
        text_pairs += len(slots) - sum(slots)
    assert text_pairs > 40


    all_images = dict(spec, text_keys=0.0)
    plain = data_lib.make_source(all_images)[3]
    assert "image_slots" not in plain
    assert np.array_equal(data_lib.make_transform(all_images, tok, 32)(plain)["input_ids"],
                          data_lib.flamingo_interleaved(tok, plain["texts"], len(plain["images"]))["input_ids"])
    with pytest.raises(ValueError, match="text_keys"):
        data_lib.make_source(dict(source="names_documents", text_keys=1.0))


def test_stage0_caption_keys_put_what_the_image_shows_where_image_will_stand():
    """`caption_keys`: stage 0's captions start with a word the image alone determines (the shape of a single
    object, else the number of objects), tokenized on its own where Flamingo's <image> will stand; the caption
    itself is unchanged and names that word."""
    from common.data import shapes

    keyed = data_lib.TextSource("captions_text", 100, 0, caption_keys=True)
    plain = data_lib.TextSource("captions_text", 100, 0)
    for i in range(100):
        (key, _), (caption, _) = keyed[i]["segments"]
        assert caption == plain[i]["text"]
        single = key in shapes.SHAPES and caption.startswith("a ") and f" {key} at the " in caption
        assert single or (key in shapes.NUMBER_WORDS[2:] and caption.startswith(f"{key} shapes:"))
    assert {keyed[i]["segments"][0][0] in shapes.SHAPES for i in range(100)} == {True, False}
    tok = data_lib.shapes_tokenizer()
    ex = data_lib.TextTransform(tok, 64)(keyed[0])
    key = keyed[0]["segments"][0][0]
    assert ex["input_ids"][1:1 + len(tok.encode(key, add_bos=False))].tolist() == tok.encode(key, add_bos=False)


def test_keyed_recipe_configs_chain_as_documented():
    """The keyed recipe's configs: names-only stage 0, its continuation on the mix with caption keys, and the
    Flamingo stage with text-keyed names documents (README, "The keyed recipe")."""

    from flamingo_jax.reproduce import flamingo_config

    load = flamingo_config
    names_only, keyed_s0, keyed = load("tiny_stage0_names"), load("tiny_stage0_keyed"), load("tiny_keyed")
    assert names_only.stage == keyed_s0.stage == "lm" and list(names_only.data.datasets) == ["names"]
    assert keyed_s0.data.datasets.captions.caption_keys and keyed_s0.total_steps == 1000
    assert keyed.stage == "flamingo" and keyed.data.datasets.names.text_keys == 0.5 and keyed.total_steps == 3000
    assert set(keyed.data.datasets) == {"captions", "interleaved", "names"}
    # The ablations differ from the main variant in the gating or the block frequency alone.
    ungated, every4 = load("tiny_keyed_ungated"), load("tiny_keyed_every4")
    middle, first = load("tiny_keyed_middle"), load("tiny_keyed_first")
    assert ungated.model.xattn.gating == "none" and every4.model.cross_attn_every == 4
    assert (middle.model.cross_attn_every, middle.model.block_position) == (4, 2)
    assert (first.model.cross_attn_every, first.model.block_position) == (4, 0)
    for ablation, fields in ((ungated, {"xattn"}), (every4, {"cross_attn_every"}),
                             (middle, {"cross_attn_every", "block_position"}),
                             (first, {"cross_attn_every", "block_position"})):
        assert ablation.data.to_dict() == keyed.data.to_dict() and ablation.optimizer == keyed.optimizer
        assert ablation.total_steps == keyed.total_steps
        assert {k: v for k, v in ablation.model.to_dict().items() if k not in fields} == \
            {k: v for k, v in keyed.model.to_dict().items() if k not in fields}
    assert keyed.model.xattn.gating == "tanh" and keyed.model.cross_attn_every == 1
    assert {k: v for k, v in ungated.model.xattn.to_dict().items() if k != "gating"} == \
        {k: v for k, v in keyed.model.xattn.to_dict().items() if k != "gating"}
