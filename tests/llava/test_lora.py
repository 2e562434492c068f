"""LoRA (common/lora.py; LLaVA-1.5's LoRA variant): zero B equals the base model, the low-rank update has the layout
of every LM kernel (scanned q/k/v [L, E, H, D], o [L, H, D, E], mlp [L, in, out]), only adapters (+ projector)
train — the base gets no update and no optimizer state — and a trained LoRA run exports to a plain checkpoint whose
logits equal the adapter model's."""
import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import lora
from common.trainer import DataShard
from llava_jax.task import make_task
from tiny_llava_testlib import load_config, micro


@pytest.fixture(scope="module")
def lm():
    from common.lm import DecoderLM, LMConfig
    from common.params import random_params

    model = DecoderLM(LMConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=24, max_position_embeddings=32))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 7)))
    return model, random_params(model, ids), ids


def test_zero_b_equals_the_base(lm):
    model, params, ids = lm
    cfg = lora.LoraConfig(rank=4, alpha=8)
    adapters = lora.init(params, cfg, 0)
    assert set(lora.targets(params, cfg)) == {f"decoder/layers/{m}/kernel" for m in
                                             ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/down")}
    merged = lora.merge(params, adapters, cfg)
    apply = jax.jit(lambda p: model.apply({"params": p}, ids))
    chex.assert_trees_all_equal(np.asarray(apply(merged)), np.asarray(apply(params)))


@pytest.mark.parametrize("name,n_in", [("attn/q", 1), ("attn/o", 2), ("mlp/down", 1)])
def test_merged_kernel_equals_the_adapter_path(lm, name, n_in):
    """x W' == x W + scale (x A) B for every layer of the scanned stack (the adapter forward of the paper)."""
    _, params, _ = lm
    cfg = lora.LoraConfig(rank=3, alpha=6, targets=(name.split("/")[1],))
    rng = np.random.RandomState(1)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.randn(*x.shape), x.dtype), lora.init(params, cfg, 0))
    merged = lora.merge(params, adapters, cfg)
    path = tuple(f"decoder/layers/{name}/kernel".split("/"))
    flat_w, flat_m = flax.traverse_util.flatten_dict(params), flax.traverse_util.flatten_dict(merged)
    w, wm = np.asarray(flat_w[path]), np.asarray(flat_m[path])
    ad = flax.traverse_util.flatten_dict(adapters)
    a, b = np.asarray(ad[path + ("a",)]), np.asarray(ad[path + ("b",)])
    for layer in range(w.shape[0]):
        in_shape = w.shape[1:1 + n_in]
        x = rng.randn(*in_shape)
        base = np.tensordot(x, w[layer], axes=n_in)
        adapter = (x.reshape(-1) @ a[layer] @ b[layer]).reshape(base.shape) * cfg.scale
        chex.assert_trees_all_close(np.tensordot(x, wm[layer], axes=n_in), base + adapter, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_lora_trains_adapters_only_and_exports_a_plain_checkpoint(tmp_path):
    from common import optimizer
    from common.trainer import TrainState, make_train_step
    from llava_jax.hf import load_model
    from llava_jax.hf import save_msgpack

    config = micro(load_config("tiny_stage2_lora"))
    config.init_from = ""
    config.optimizer.lr, config.optimizer.warmup_steps = 5e-2, 0
    task = make_task(config)
    abstract = jax.eval_shape(task.init_params, jax.random.key(0))
    opt = optimizer.make_optimizer(config.optimizer, abstract, 3)
    names = optimizer.param_names(abstract)
    trainable = [n for n, f in zip(jax.tree.leaves(names), jax.tree.leaves(opt.frozen)) if not f]
    assert trainable and all(n.startswith(("lora/lm/", "projector/")) for n in trainable)
    init = flax.linen.unbox(jax.jit(task.init_params)(jax.random.key(0)))
    state = TrainState.create(init, opt.tx)
    assert optimizer.state_size(state.opt_state) == 2 * opt.trainable_count(abstract)  # nothing for the base

    # one train step of the trainer on a real batch: B moves off zero, the base LM stays exactly where it was
    batch = {k: jnp.asarray(v) for k, v in next(task.make_train_data(DataShard(0, 1))["vqa"]).items()}
    step = jax.jit(make_train_step(task, opt, 0, 1, {"vqa": 1.0}))
    state, metrics = step(state, {"vqa": batch})
    trained = jax.tree.map(np.asarray, state.params)
    assert bool(metrics["finite"])
    assert np.abs(trained["lora"]["lm"]["decoder"]["layers"]["attn"]["q"]["kernel"]["b"]).max() > 0
    for path, value in flax.traverse_util.flatten_dict(init["lm"]).items():
        chex.assert_trees_all_equal(flax.traverse_util.flatten_dict(trained["lm"])[path], np.asarray(value))
    for path, value in flax.traverse_util.flatten_dict(init["vision_tower"]).items():
        chex.assert_trees_all_equal(flax.traverse_util.flatten_dict(trained["vision_tower"])[path], np.asarray(value))

    # export = merged plain checkpoint (no adapters) that reloads with the adapter model's logits
    merged = lora.merge_in_tree(trained, task.lora_config)
    save_msgpack(str(tmp_path / "export"), task.model, merged, task.tokenizer)
    module2, plain, tok2, template = load_model(str(tmp_path / "export"))
    assert "lora" not in plain and module2.config == task.model.config and tok2.vocab_size == task.tokenizer.vocab_size
    ids = jnp.asarray([[1, 5, 9, 12, 40]])
    apply = jax.jit(lambda p, x: task.model.apply({"params": p}, x))
    with_adapters = apply(lora.merge_in_tree(trained, task.lora_config), ids)
    chex.assert_trees_all_close(np.asarray(apply(plain, ids)), np.asarray(with_adapters), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(with_adapters), np.asarray(apply(lora.split(trained)[0], ids)))


def test_adapters_of_named_kernels_shard_as_the_kernel():
    """Adapters of kernels boxed with logical names carry names (A: the kernel's input side, B: its output side,
    the rank replicated), so fsdp / tensor split them as they split the kernel instead of replicating them."""
    from common.lm import DecoderLM, LMConfig
    from common.sharding import logical_to_spec
    from flax import linen as nn

    model = DecoderLM(LMConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=24, max_position_embeddings=32))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    adapters = lora.init(boxed, lora.LoraConfig(rank=4), 0)
    specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(adapters), sep="/")
    spec = {k: logical_to_spec(v) for k, v in specs.items()}
    layers = next(k for k in spec if k.endswith("attn/q/kernel/a")).rsplit("attn/", 1)[0]
    # q [L, E, H, D]: A [L, E, r] over fsdp, B [L, r, H D] over tensor; o [L, H, D, E] the other way round
    assert tuple(spec[layers + "attn/q/kernel/a"]) == (None, "fsdp", None)
    assert tuple(spec[layers + "attn/q/kernel/b"]) == (None, None, "tensor")
    assert tuple(spec[layers + "attn/o/kernel/a"]) == (None, "tensor", None)
    assert tuple(spec[layers + "attn/o/kernel/b"]) == (None, None, "fsdp")
    chex.assert_trees_all_equal_shapes(nn.unbox(adapters), lora.init(nn.unbox(boxed), lora.LoraConfig(rank=4), 0))
