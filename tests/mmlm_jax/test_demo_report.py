"""The main job's report follows from its own figures: the names-task verdict from the accuracies it prints, one loss
panel per family (colours cannot repeat across families)."""
import json
import os

from mmlm_jax.demo import names_verdict, plot_loss_curves


def test_names_verdict_follows_the_figures():
    formed = names_verdict({0: 29.7, 4: 47.7, 8: 46.9})
    assert "29.7 / 47.7 / 46.9%" in formed and "learnt in context" in formed and "+18.0 points at 4 shots" in formed
    flat = names_verdict({0: 31.0, 4: 33.5, 8: 30.2})
    assert "did not form" in flat and "+2.5 points" in flat
    assert "no 0-shot baseline" in names_verdict({4: 50.0})


def test_one_loss_panel_per_family(tmp_path):
    def run(name, losses):
        workdir = tmp_path / name
        os.makedirs(workdir)
        with open(workdir / "metrics.jsonl", "w") as f:
            for step, loss in enumerate(losses, 1):
                f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        return str(workdir)

    panels = {"Flamingo": {"vision": run("v", [3, 2]), "main": run("m", [4, 3])},
              "LLaVA": {"stage 1": run("s1", [5, 4])},
              "VITA": {"stage 1.1": str(tmp_path / "missing")}}  # a run that did not happen draws nothing
    out = tmp_path / "loss.png"
    assert plot_loss_curves(panels, str(out)) == ["Flamingo", "LLaVA"]
    assert out.stat().st_size > 0
