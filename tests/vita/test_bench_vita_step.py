"""bench/vita_step.py runs on the CPU (tiny size, one timed step, short decode) and reports what it measures: the
stage-2.2 step's model FLOPs from the jaxpr and an MFU in (0, 1], prefill and decode rates of a spoken query."""
import importlib.util
import os
import pytest

pytestmark = pytest.mark.slow  # a bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_vita_step_bench_runs_and_reports(capsys):
    import json
    import sys

    sys.path.insert(0, os.path.join(REPO, "bench"))
    spec = importlib.util.spec_from_file_location("vita_step_bench", os.path.join(REPO, "bench", "vita_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--size", "tiny", "--batch", "8", "--steps", "1", "--decode_batches", "2", "--new_tokens", "3"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    step = next(r for r in lines if r["bench"] == "vita_train_step")
    query = next(r for r in lines if r["bench"] == "vita_spoken_query")
    assert step["stage"] == "2.2" and step["batch"] == 8 and step["params"]["total"] > 0
    # a step's FLOPs are at least the frozen towers' forward and the LM's forward + backward on its tokens
    assert step["model_flops_per_step"] > 6 * step["params"]["lm"] * step["batch"] * 100
    assert 0 < step["mfu"] <= 1 and step["tokens_per_s"] > 0
    assert query["batch"] == 2 and query["prefill_s"] > 0 and query["decode_tokens_per_s"] > 0
