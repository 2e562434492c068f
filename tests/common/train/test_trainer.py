"""The trainer on the tiny LM: mesh equivalence, gradient accumulation, exact resume, restore onto another mesh,
frozen parameters, optimizer-state size, non-finite step skipping, multi-dataset accumulation, logs and eval."""
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import read_metrics, require_devices, run_trainer, step_losses, tiny_test_config, to_numpy

from common import optimizer as optimizer_lib
from common.checkpoints import Checkpointer
from common.lm_task import make_task
from common.task_utils import restore_config
from common.trainer import NonFiniteError, Task, Trainer

MESH_222 = dict(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run on mesh (2, 2, 2): {step: loss} and the final state on the host."""
    require_devices(8)
    workdir = tmp_path_factory.mktemp("reference")
    result, trainer = run_trainer(tiny_test_config(mesh=MESH_222), workdir)
    assert result.final_step == 6 and not result.preempted
    return step_losses(result.metrics), to_numpy(trainer.state)


def _assert_losses_close(losses, reference_losses, steps, rtol=1e-5):
    assert sorted(losses) == sorted(steps), losses
    chex.assert_trees_all_close(np.asarray([losses[s] for s in steps]),
                                np.asarray([reference_losses[s] for s in steps]), rtol=rtol)


@pytest.mark.slow
def test_mesh_1x1x1_equals_2x2x2(reference, tmp_path):
    reference_losses, _ = reference
    result, _ = run_trainer(tiny_test_config(mesh=dict(data=1, fsdp=1, tensor=1)), tmp_path)
    _assert_losses_close(step_losses(result.metrics), reference_losses, range(1, 7))
    assert reference_losses[6] < reference_losses[1]  # it learns


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(reference, tmp_path):
    reference_losses, _ = reference
    result, _ = run_trainer(tiny_test_config(mesh=MESH_222, grad_accum_steps=2), tmp_path)
    _assert_losses_close(step_losses(result.metrics), reference_losses, range(1, 7))


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_exact(reference, tmp_path):
    reference_losses, reference_state = reference
    config = tiny_test_config(mesh=MESH_222, checkpoint_every=2)
    first, _ = run_trainer(config, tmp_path, stop_at_step=3)  # "crashes" after step 3; last checkpoint: 2
    assert first.final_step == 3
    second, trainer = run_trainer(config, tmp_path)
    assert min(step_losses(second.metrics)) == 3  # resumed from step 2
    losses = step_losses(read_metrics(tmp_path))  # step 3 logged twice: the redone value is kept
    assert [losses[s] for s in range(1, 7)] == [reference_losses[s] for s in range(1, 7)]
    for got, want in zip(jax.tree.leaves(to_numpy(trainer.state)), jax.tree.leaves(reference_state)):
        chex.assert_trees_all_equal(got, want)
    assert Checkpointer(os.path.join(tmp_path, "checkpoints")).all_steps() == [2, 4, 6]


@pytest.mark.slow
def test_restore_onto_a_different_mesh(reference, tmp_path):
    reference_losses, _ = reference
    first, _ = run_trainer(tiny_test_config(mesh=dict(data=8, fsdp=1, tensor=1), checkpoint_every=3), tmp_path,
                           stop_at_step=3)
    _assert_losses_close(step_losses(first.metrics), reference_losses, range(1, 4))
    second, trainer = run_trainer(tiny_test_config(mesh=MESH_222, checkpoint_every=3), tmp_path)
    _assert_losses_close(step_losses(second.metrics), reference_losses, range(4, 7))
    kernel = trainer.state.params["decoder"]["layers"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert dict(kernel.sharding.mesh.shape) == MESH_222


@pytest.mark.slow
def test_frozen_parameters_are_bit_identical_and_carry_no_optimizer_state(tmp_path):
    require_devices(2)
    config = tiny_test_config(total_steps=3, mesh=dict(data=2, fsdp=1, tensor=1))
    config.optimizer.param_groups = (("embed/.*", None), ("decoder/layers/attn/.*", dict(frozen=True)),
                                     (".*norm.*", dict(wd_mult=0.0)))
    task = make_task(config)
    initial = to_numpy(Trainer(config, task, str(tmp_path / "init")).init_state().params)
    result, trainer = run_trainer(config, tmp_path / "run", task=task)
    final = to_numpy(trainer.state.params)
    frozen = trainer.opt.frozen
    assert frozen["embed"]["embedding"] and frozen["decoder"]["layers"]["attn"]["q"]["kernel"]
    assert not frozen["lm_head"]["kernel"]
    for is_frozen, before, after in zip(jax.tree.leaves(frozen), jax.tree.leaves(initial), jax.tree.leaves(final)):
        if is_frozen:
            assert before.tobytes() == after.tobytes()
        else:
            assert not np.array_equal(before, after)
    trainable = trainer.trainable_count
    frozen_count = optimizer_lib.count_params(final, frozen)
    assert frozen_count > 0 and trainable + frozen_count == trainer.param_count
    assert optimizer_lib.state_size(trainer.state.opt_state) == 2 * trainable


@pytest.mark.slow
def test_update_params_runs_after_each_update_with_the_batches(tmp_path):
    """Task.update_params (state not learnt by gradient, e.g. VQ dead-code restarts) sees the step's batches and
    changes even frozen parameters: +1 per step on the frozen embedding."""
    import dataclasses

    require_devices(2)
    config = tiny_test_config(total_steps=3, mesh=dict(data=2, fsdp=1, tensor=1))
    config.optimizer.param_groups = (("embed/.*", None), (".*", dict()))
    task = make_task(config)
    initial = to_numpy(Trainer(config, task, str(tmp_path / "init")).init_state().params)

    seen = []

    def bump(params, batches, rng):
        seen.append({name: sorted(batch) for name, batch in batches.items()})  # at trace time
        return {**params, "embed": {"embedding": params["embed"]["embedding"] + 1.0}}

    _, trainer = run_trainer(config, tmp_path / "run", task=dataclasses.replace(task, update_params=bump))
    final = to_numpy(trainer.state.params)
    chex.assert_trees_all_close(final["embed"]["embedding"], initial["embed"]["embedding"] + 3.0, atol=1e-6, rtol=1e-7)
    assert seen and all("input_ids" in keys for batch in seen for keys in batch.values())


# ------------------------------------------------------------------------------------------------ non-finite


class _PoisonIterator:
    """Wraps an iterator and adds a 'poison' field, 1 in the batches numbered (from 1) in `poisoned`."""

    def __init__(self, inner, poisoned):
        self.inner, self.poisoned = inner, set(poisoned)

    def __next__(self):
        batch = next(self.inner)
        poison = float(self.inner.step in self.poisoned)  # inner.step: batches produced so far
        return {**batch, "poison": np.full((len(batch["input_ids"]),), poison, np.float32)}

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def _poisoned_task(config, poisoned):
    task = make_task(config)

    def loss_fn(params, batch, rng):
        loss, aux = task.loss_fn(params, {k: v for k, v in batch.items() if k != "poison"}, rng)
        return loss + jnp.where(batch["poison"].max() > 0, jnp.nan, 0.0), aux

    def make_train_data(shard):
        return {name: _PoisonIterator(it, poisoned) for name, it in task.make_train_data(shard).items()}

    return Task(init_params=task.init_params, loss_fn=loss_fn, make_train_data=make_train_data,
                flops_per_example=task.flops_per_example)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path):
    require_devices(2)
    config = tiny_test_config(total_steps=4, mesh=dict(data=2, fsdp=1, tensor=1), checkpoint_every=1,
                              keep_checkpoints=4)
    result, trainer = run_trainer(config, tmp_path, task=_poisoned_task(config, poisoned={2, 3}))
    rows = {row["step"]: row for row in result.metrics}
    assert [rows[s]["skipped"] for s in (1, 2, 3, 4)] == [False, True, True, False]
    assert rows[2]["loss"] is None  # NaN is written as null
    assert rows[3]["nonfinite_streak"] == 2 and rows[4]["nonfinite_streak"] == 0
    assert rows[4]["nonfinite_total"] == 2
    # Parameters and optimizer state after the two skipped steps are those after step 1, bit for bit.
    checkpointer = Checkpointer(os.path.join(tmp_path, "checkpoints"))
    after_step_1 = to_numpy(checkpointer.restore(1, trainer.abstract_state)[0])
    after_step_3 = to_numpy(checkpointer.restore(3, trainer.abstract_state)[0])
    checkpointer.close()
    for before, after in zip(jax.tree.leaves((after_step_1.params, after_step_1.opt_state)),
                             jax.tree.leaves((after_step_3.params, after_step_3.opt_state))):
        assert before.tobytes() == after.tobytes()
    assert int(after_step_3.step) == 3 and int(after_step_3.nonfinite_total) == 2
    # ... and the schedule did not advance over them: step 4 uses the learning rate step 2 would have had.
    chex.assert_trees_all_close(rows[4]["lr"], trainer.opt.schedule(1), rtol=1e-6)


@pytest.mark.slow
def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    require_devices(2)
    config = tiny_test_config(mesh=dict(data=2, fsdp=1, tensor=1), max_nonfinite_in_a_row=3, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        run_trainer(config, tmp_path, task=_poisoned_task(config, poisoned={2, 3, 4, 5, 6}))
    # every checkpoint written holds finite parameters (the skipped steps left them untouched)
    assert Checkpointer(os.path.join(tmp_path, "checkpoints")).latest_step() is not None


def test_checkpointer_refuses_nonfinite_parameters(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), async_save=False)
    state = {"params": {"w": jnp.array([1.0, jnp.inf])}}
    assert not checkpointer.save(1, state, {"text": {"step": 1}})
    assert checkpointer.latest_step() is None
    assert checkpointer.save(1, {"params": {"w": jnp.array([1.0, 2.0])}}, {"text": {"step": 1}})
    checkpointer.close()


# ------------------------------------------------------------------------------------------------ multi-dataset


def _two_dataset_task(config):
    task = make_task(config)

    def make_train_data(shard):
        first = task.make_train_data(shard)["text"]
        second = task.make_train_data(shard)["text"]
        second.seed = 123  # a different order of the same corpus
        return {"captions": first, "interleaved": second}

    return Task(init_params=task.init_params, loss_fn=task.loss_fn, make_train_data=make_train_data,
                dataset_weights={"captions": 1.0, "interleaved": 0.5}, flops_per_example=task.flops_per_example)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["accumulate", "round_robin"])
def test_multi_dataset_accumulation_and_round_robin(tmp_path, mode):
    config = tiny_test_config(total_steps=4, multi_dataset_mode=mode, mesh=dict(data=1, fsdp=1, tensor=1),
                              checkpoint_every=4)
    result, trainer = run_trainer(config, tmp_path, task=_two_dataset_task(config))
    rows = result.metrics
    if mode == "accumulate":
        for row in rows:  # one step = weighted sum over one batch of each dataset
            chex.assert_trees_all_close(row["loss"], row["loss/captions"] + 0.5 * row["loss/interleaved"], rtol=1e-6)
        assert all(row["tokens"] == 2 * 8 * 32 for row in rows)
    else:  # one dataset per step, in turn
        assert ["loss/captions" in row for row in rows] == [True, False, True, False]
        assert ["loss/interleaved" in row for row in rows] == [False, True, False, True]
        chex.assert_trees_all_close(rows[1]["loss"], 0.5 * rows[1]["loss/interleaved"], rtol=1e-6)
    data_file = os.path.join(tmp_path, "checkpoints", "4", "data", "data_state.process_0_of_1.json")
    with open(data_file) as f:
        iterators = json.load(f)["iterators"]
    expected = 4 if mode == "accumulate" else 2
    assert iterators == {"captions": {"step": expected}, "interleaved": {"step": expected}}
    if mode == "accumulate":  # resuming the workdir with another dataset mix is refused, naming both mixes
        more = tiny_test_config(total_steps=6, mesh=dict(data=1, fsdp=1, tensor=1), checkpoint_every=4)
        with pytest.raises(ValueError, match=r"datasets \['captions', 'interleaved'\], the config has \['text'\]"):
            run_trainer(more, tmp_path)


# ------------------------------------------------------------------------------------------------ logs, eval


@pytest.mark.slow
def test_metrics_tensorboard_config_and_eval(tmp_path):
    config = tiny_test_config(total_steps=4, log_every=2, eval_every=2, peak_flops=1e9,
                              mesh=dict(data=1, fsdp=1, tensor=1))
    run_trainer(config, tmp_path)
    rows = read_metrics(tmp_path)
    train_rows = [row for row in rows if "loss" in row]
    eval_rows = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in train_rows] == [2, 4] and [row["step"] for row in eval_rows] == [2, 4]
    for row in train_rows:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
            assert isinstance(row[key], (int, float)), (key, row)
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"]
    assert eval_rows[-1]["eval/tokens"] == 2 * 8 * 32 and np.isfinite(eval_rows[-1]["eval/loss"])
    with open(os.path.join(tmp_path, "config.json")) as f:
        saved = json.load(f)
    assert saved["total_steps"] == 4 and saved["model"]["hidden_size"] == 32
    assert restore_config(str(tmp_path)).to_dict() == saved  # what every family's loaders read back
    with pytest.raises(FileNotFoundError, match="config.json"):
        restore_config(str(tmp_path / "tensorboard"))
    events = os.listdir(os.path.join(tmp_path, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)


def _scan_output_shapes(jaxpr) -> list[tuple]:
    """Shapes of every scan output anywhere in a jaxpr (nested jaxprs included)."""
    shapes = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "scan":
                shapes.extend(tuple(v.aval.shape) for v in eqn.outvars)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return shapes


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_frozen_weights_get_no_gradient_inside_the_layer_scan(grad_accum_steps):
    """The backward pass of a scanned stack forms gradients for the trained weights only: a frozen weight's
    gradient, even one that is thrown away, would be a [L, ...] float32 buffer carried through the backward loop
    (in OpenFlamingo-4B's step that was 24 GB of the temporaries, docs/tpu.md)."""
    from common.trainer import TrainState, make_train_step

    config = tiny_test_config(grad_accum_steps=grad_accum_steps)
    config.model.update(intermediate_size=48)  # MLP kernels [L, 32, 48] / [L, 48, 32]: no other weight has these
    config.optimizer.param_groups = (("decoder/layers/mlp/.*", dict(frozen=True)),)
    task = make_task(config)
    abstract = jax.eval_shape(task.init_params, jax.random.key(0))
    opt = optimizer_lib.make_optimizer(config.optimizer, abstract, 6)
    state = jax.eval_shape(lambda p: TrainState.create(p, opt.tx), nn.unbox(abstract))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in task.batch_spec()["text"].items()}
    step = make_train_step(task, opt, 0, grad_accum_steps, {"text": 1.0})
    shapes = _scan_output_shapes(jax.make_jaxpr(step)(state, {"text": batch}))
    layers = config.model.num_layers
    assert (layers, 32, 48) not in shapes and (layers, 48, 32) not in shapes, shapes
    # the same step with the MLP trained does form them (the check can fail)
    config.optimizer.param_groups = ()
    opt = optimizer_lib.make_optimizer(config.optimizer, abstract, 6)
    state = jax.eval_shape(lambda p: TrainState.create(p, opt.tx), nn.unbox(abstract))
    step = make_train_step(task, opt, 0, grad_accum_steps, {"text": 1.0})
    assert (layers, 32, 48) in _scan_output_shapes(jax.make_jaxpr(step)(state, {"text": batch}))


def test_sharding_rules_are_a_config_field():
    """config.logical_axis_rules replaces the library's table: with `embed` unsharded the kernels are no longer
    split over fsdp; the default table (configs/trainer.py) splits them; a rule naming no mesh axis is refused."""
    require_devices(2)
    from common.sharding import LOGICAL_AXIS_RULES
    from common.trainer import TrainProgram, mesh_from_config

    config = tiny_test_config(mesh=dict(data=1, fsdp=2, tensor=1))
    mesh = mesh_from_config(config.mesh, jax.devices()[:2])
    task = make_task(config)
    default = TrainProgram(config, task, mesh).state_sharding.params["lm_head"]["kernel"].spec
    config.logical_axis_rules = tuple((name, None if name == "embed" else axes) for name, axes in LOGICAL_AXIS_RULES)
    replicated = TrainProgram(config, task, mesh).state_sharding.params["lm_head"]["kernel"].spec
    assert "fsdp" in tuple(default) and "fsdp" not in tuple(replicated)
    config.logical_axis_rules = (("embed", "model"),)
    with pytest.raises(ValueError, match="mesh axes"):
        TrainProgram(config, task, mesh)
