"""common.optimizer: schedules, parameter groups (lr multiplier, weight-decay mask, frozen) and state size."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import optimizer as optimizer_lib


def _params():
    return {"vision": {"proj": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))}},
            "lm": {"embed": jnp.ones((5, 4)), "layer": {"kernel": jnp.ones((4, 4)), "norm": {"scale": jnp.ones((4,))}}}}


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay(name):
    schedule = optimizer_lib.make_schedule(1.0, total_steps=110, schedule=name, warmup_steps=10, end_lr_ratio=0.1)
    chex.assert_trees_all_close(schedule(0), 0.0, rtol=1e-7)
    chex.assert_trees_all_close(schedule(5), 0.5, rtol=1e-6)
    chex.assert_trees_all_close(schedule(10), 1.0, rtol=1e-6)
    end = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[name]
    chex.assert_trees_all_close(schedule(110), end, rtol=1e-5)
    if name == "cosine":
        chex.assert_trees_all_close(schedule(60), 0.1 + 0.9 * 0.5, rtol=1e-5)
    if name == "linear":
        chex.assert_trees_all_close(schedule(60), 0.55, rtol=1e-5)


def test_unknown_schedule_and_group_setting_raise():
    with pytest.raises(ValueError, match="unknown schedule"):
        optimizer_lib.make_schedule(1.0, 10, "exponential")
    with pytest.raises(ValueError, match="unknown settings"):
        optimizer_lib.parse_param_groups([("lm/.*", {"learning_rate": 2.0})])


def test_labels_first_full_match_wins():
    groups = optimizer_lib.parse_param_groups([("vision/.*", None), (".*norm.*", {"wd_mult": 0.0}),
                                               ("lm/.*", {"lr_mult": 0.1})])
    labels = optimizer_lib.group_labels(_params(), groups)
    assert labels == {"vision": {"proj": {"kernel": "frozen", "bias": "frozen"}},
                      "lm": {"embed": "group_2", "layer": {"kernel": "group_2", "norm": {"scale": "group_1"}}}}
    # fullmatch: 'proj' alone matches nothing
    assert optimizer_lib.group_labels(_params(), optimizer_lib.parse_param_groups([("proj", None)]))[
        "vision"]["proj"]["kernel"] == "default"


@pytest.mark.slow
def test_frozen_parameters_have_no_state_and_no_update():
    params = _params()
    opt = optimizer_lib.make_optimizer({"lr": 0.1, "schedule": "constant", "weight_decay": 0.1, "clip_norm": 1.0,
                                        "param_groups": [("vision/.*", {"frozen": True})]}, params, total_steps=10)
    state = opt.tx.init(params)
    trainable = optimizer_lib.count_params(params) - 15
    assert opt.trainable_count(params) == trainable
    assert optimizer_lib.state_size(state) == 2 * trainable
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.tx.update(grads, state, params)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates["vision"]))
    assert all(np.all(np.asarray(u) != 0) for u in jax.tree.leaves(updates["lm"]))


def test_lr_multiplier_and_weight_decay_mask():
    params = _params()
    config = {"lr": 0.1, "schedule": "constant", "weight_decay": 0.5, "b1": 0.0, "b2": 0.0, "eps": 1e-12,
              "param_groups": [("lm/layer/norm/.*", {"wd_mult": 0.0}), ("vision/.*", {"lr_mult": 0.1})]}
    opt = optimizer_lib.make_optimizer(config, params, total_steps=10)
    # Zero gradients: the update is the weight decay alone, -lr * lr_mult * wd * wd_mult * p.
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.tx.update(zero, opt.tx.init(params), params)
    chex.assert_trees_all_close(updates["lm"]["layer"]["kernel"], -0.1 * 0.5, rtol=1e-7)
    chex.assert_trees_all_close(updates["lm"]["layer"]["norm"]["scale"], 0.0, rtol=1e-7)
    chex.assert_trees_all_close(updates["vision"]["proj"]["kernel"], -0.1 * 0.1 * 0.5, rtol=1e-6)
    # Unit gradients, no decay: Adam with b1 = b2 = 0 steps by lr * lr_mult.
    opt = optimizer_lib.make_optimizer(config | {"weight_decay": 0.0}, params, total_steps=10)
    updates, _ = opt.tx.update(jax.tree.map(jnp.ones_like, params), opt.tx.init(params), params)
    chex.assert_trees_all_close(updates["lm"]["embed"], -0.1, rtol=1e-6)
    chex.assert_trees_all_close(updates["vision"]["proj"]["kernel"], -0.01, rtol=1e-6)


def test_global_norm_clipping():
    params = {"w": jnp.zeros((4,))}
    opt = optimizer_lib.make_optimizer({"lr": 1.0, "schedule": "constant", "clip_norm": 1.0}, params, 10)
    clip_state = opt.tx.init(params)[0]
    clipped, _ = optax.clip_by_global_norm(1.0).update({"w": jnp.full((4,), 10.0)}, clip_state)
    chex.assert_trees_all_close(optax.tree.norm(clipped), 1.0, rtol=1e-6)
    assert isinstance(opt.tx.init(params)[0], optax.EmptyState)  # the clip is the first link of the chain


def test_rows_group_trains_only_its_rows():
    """OpenFlamingo's input-embedding gradient mask: a `rows` group trains those rows alone (state for them only, the
    other rows' update exactly zero even under weight decay), and their gradient is zeroed before the clipping."""
    params = {"embed": jnp.ones((5, 4)), "w": jnp.ones((3,))}
    config = {"lr": 0.1, "schedule": "constant", "weight_decay": 0.5, "b1": 0.0, "b2": 0.0, "eps": 1e-12,
              "clip_norm": 1.0, "param_groups": [("embed", {"rows": ("<new>", 1)})]}
    opt = optimizer_lib.make_optimizer(config, params, total_steps=10, named_rows={"<new>": 3})
    assert opt.groups[0].rows == (3, 1)
    assert opt.trainable_count(params) == 2 * 4 + 3
    state = opt.tx.init(params)
    assert optimizer_lib.state_size(state) == 2 * (2 * 4 + 3)
    # Gradient 10 on the untrained rows, 1e-3 on the trained ones and w: the clip sees only the trained rows.
    grads = {"embed": jnp.full((5, 4), 10.0).at[jnp.array([1, 3])].set(1e-3), "w": jnp.full((3,), 1e-3)}
    trained = opt.trained_grads(grads)  # what the trainer logs as grad_norm and checks for finiteness
    chex.assert_trees_all_equal(np.asarray(trained["embed"])[[0, 2, 4]], 0.0)
    chex.assert_trees_all_close(np.asarray(trained["embed"])[[1, 3]], 1e-3, rtol=1e-6)
    assert any("rows=[3, 1]: 8 of 20 params" in line for line in optimizer_lib.describe_groups(opt, params))
    updates, state = opt.tx.update(grads, state, params)
    untrained = np.asarray(updates["embed"])[[0, 2, 4]]
    assert np.all(untrained == 0)
    # Adam with b1 = b2 = 0 steps by lr * sign(g), plus the decay lr * wd * p: -0.1 - 0.05.
    chex.assert_trees_all_close(np.asarray(updates["embed"])[[1, 3]], -0.15, rtol=1e-5)
    chex.assert_trees_all_close(updates["w"], -0.15, rtol=1e-5)
    new = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(np.asarray(new["embed"])[[0, 2, 4]], 1.0)
    # eps = 1 makes Adam's step scale with the gradient: unclipped, -lr * g / (g + 1); had the clip seen the
    # untrained rows (global norm ~35), the step would be ~35x smaller.
    opt = optimizer_lib.make_optimizer(config | {"weight_decay": 0.0, "eps": 1.0}, params, 10, named_rows={"<new>": 3})
    updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
    chex.assert_trees_all_close(np.asarray(updates["embed"])[[1, 3]], -0.1 * 1e-3 / (1e-3 + 1.0), rtol=1e-4)


def test_rows_group_bad_settings_raise():
    params = {"embed": jnp.ones((5, 4))}
    make = lambda rows, named=None: optimizer_lib.make_optimizer(  # noqa: E731
        {"param_groups": [("embed", {"rows": rows})]}, params, 10, named_rows=named)
    with pytest.raises(ValueError, match="not a known name"):
        make(("<image>",), {"<eoc>": 1})
    with pytest.raises(ValueError, match=r"out of range"):
        make((5,))
    with pytest.raises(ValueError, match="distinct"):
        make((1, 1))
