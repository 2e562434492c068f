"""`python -m mmlm_jax.export` / each family's `export(workdir, out_dir)`: what a training run left (config.json,
tokenizer, checkpoints/) comes out in its family's public format and reads back to the run's parameters; what the
format cannot express is refused by name."""
import os

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

import vita_jax
from common.checkpoints import Checkpointer
from common.tokenizers import save_tokenizer
from configs import load_config
from llava_jax.hf import load_model
from mmlm_jax import export

pytestmark = pytest.mark.slow  # builds each family's task and writes checkpoints


def random_workdir(path, config, make_task) -> tuple[str, dict]:
    """A workdir as a training run leaves it (config.json, tokenizer.json, checkpoints/1/) with the task's random
    parameters; -> (workdir, params)."""
    task = make_task(config)
    params = jax.tree.map(np.asarray, nn.unbox(jax.jit(task.init_params)(jax.random.key(0))))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    save_tokenizer(task.tokenizer, str(path))
    checkpointer = Checkpointer(os.path.join(path, "checkpoints"), keep=1, async_save=False)
    assert checkpointer.save(1, {"params": params}, [])
    checkpointer.close()
    return str(path), params


def test_vita_workdir_exports_the_release_layout(tmp_path):
    from vita_jax.task import make_task

    config = load_config("vita/tiny_stage2_2")
    config.model.text.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=48)
    config.model.vision.update(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=1,
                               num_heads=1)
    config.model.audio.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
    config.init_from = ""
    workdir, params = random_workdir(tmp_path / "run", config, make_task)
    out = export.main(["--family", "vita", "--workdir", workdir, "--out", str(tmp_path / "release")])
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(out))
    module, loaded = vita_jax.load_original(out)
    assert module.config.text.hidden_size == 32
    chex.assert_trees_all_close(loaded, params, atol=0, rtol=0)


def test_llava_workdir_exports_msgpack_and_loads_with_its_template(tmp_path):
    from llava_jax.task import make_task

    config = load_config("llava/tiny_stage2")
    config.model.text.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=48)
    config.model.vision.update(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_layers=1,
                               num_heads=1)
    config.init_from = ""
    workdir, params = random_workdir(tmp_path / "run", config, make_task)
    out = export.main(["--family", "llava", "--workdir", workdir, "--out", str(tmp_path / "mp"), "--format",
                       "msgpack"])
    module, loaded, tokenizer, template = load_model(out)
    chex.assert_trees_all_close(loaded, params, atol=0, rtol=0)
    assert template == config.data.template
    assert tokenizer.token_to_id("<image>") == module.config.image_token_index


def test_flamingo_export_refuses_what_idefics_cannot_express(tmp_path):
    """The tiny Flamingo (OpenFlamingo-style blocks) has no IDEFICS form: the export names the differences."""
    from flamingo_jax.task import make_task

    config = load_config("flamingo/tiny")
    config.init_lm.workdir = config.init_vision.workdir = ""
    workdir, _ = random_workdir(tmp_path / "run", config, make_task)
    with pytest.raises(ValueError, match=r"this Flamingo has no IDEFICS counterpart: .*\(IDEFICS: "):
        export.main(["--family", "flamingo", "--workdir", workdir, "--out", str(tmp_path / "idefics")])
    assert not os.path.exists(tmp_path / "idefics" / "model.safetensors")


def test_msgpack_is_llava_only(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main(["--family", "vita", "--workdir", str(tmp_path), "--out", str(tmp_path / "o"), "--format",
                     "msgpack"])
    assert "llava only" in capsys.readouterr().err
