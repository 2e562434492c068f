"""The miniature reproduction's driver (flamingo_jax.reproduce) end to end at a few steps per stage: the keyed
recipe's stages chain through their workdirs (vision -> Flamingo, names-only stage 0 -> keyed stage 0 -> Flamingo),
and the report holds every number the README's tables quote."""
import json
import os
import subprocess
import sys
import pytest

pytestmark = pytest.mark.slow  # a reproduction

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_reproduce_keyed_recipe_chains_stages_and_reports(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, "-m", "flamingo_jax.reproduce", "--workdir", str(tmp_path), "--recipe", "keyed",
           "--variants", "tiny_keyed", "--vision_steps", "2", "--stage0_steps", "2", "--steps", "2", "--seed", "3",
           "--shots", "0,1", "--num_queries", "2", "--main_extra_eval", "0", "--eval_batch_size", "2",
           "--diagnostic_episodes", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def config(stage):
        return json.loads((tmp_path / stage / "config.json").read_text())

    assert config("stage0_names")["init_lm"]["workdir"] == ""
    assert config("stage0_keyed")["init_lm"]["workdir"] == str(tmp_path / "stage0_names")
    keyed = config("tiny_keyed")
    assert keyed["init_lm"]["workdir"] == str(tmp_path / "stage0_keyed")
    assert keyed["init_vision"]["workdir"] == str(tmp_path / "vision")
    assert {config(s)["seed"] for s in ("vision", "stage0_names", "stage0_keyed", "tiny_keyed")} == {3}
    assert keyed["total_steps"] == 2 and keyed["data"]["datasets"]["names"]["text_keys"] == 0.5

    report = json.loads((tmp_path / "reproduce_results.json").read_text())
    assert report["main_variant"] == "tiny_keyed" and set(report["stage0_key_binding"]) == {
        "tiny_stage0_names", "tiny_stage0_keyed"}
    variant = report["variants"]["tiny_keyed"]
    assert set(variant["results"]["names"]["random"]) == {"0", "1"}
    reliance = variant["image_reliance"]
    assert set(reliance["losses"]) == {"captions", "interleaved", "names"}
    assert set(reliance["losses"]["names"]) == {"own", "other", "zero", "only_at_image", "except_at_image"}
    assert {"own_image", "other_image", "text_key"} <= set(reliance["names_image_as_key"])
    assert "main_config_total" in report["wall_seconds"]
    md = (tmp_path / "reproduce_results.md").read_text()
    assert "| tiny_keyed: gated, every layer (main) |" in md and "names loss, own / other / zero images" in md


def test_a_preempted_training_stops_the_reproduction(monkeypatch, tmp_path):
    """SIGTERM mid-training saves a checkpoint and returns early; the driver must stop there (re-running resumes)
    rather than evaluate the half-trained model as if it were finished."""
    import ml_collections
    import pytest

    from common.trainer import RunResult
    from flamingo_jax import reproduce

    config = ml_collections.ConfigDict({"total_steps": 3000})
    monkeypatch.setattr(reproduce, "train", lambda *a, **k: RunResult(final_step=504, preempted=True, metrics=[]))
    with pytest.raises(reproduce.Preempted, match="preempted at step 504 of 3000"):
        reproduce._train(config, str(tmp_path))
    monkeypatch.setattr(reproduce, "train", lambda *a, **k: RunResult(final_step=3000, preempted=False, metrics=[]))
    assert reproduce._train(config, str(tmp_path)).final_step == 3000
