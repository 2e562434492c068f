"""bench/vita_latency.py runs on the CPU (tiny random model, answer forced through the real decode step) and reports
a first-audio latency (compilation included: no warm-up here) after the end of speech and a barge-in that lets no old
packet out."""
import importlib.util
import json
import os
import sys
import pytest

pytestmark = pytest.mark.slow  # a bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_bench():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    spec = importlib.util.spec_from_file_location("vita_latency_bench", os.path.join(REPO, "bench", "vita_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_latency_bench_reports_first_audio_and_barge_in(capsys):
    bench = load_bench()
    bench.main(["--trials", "1", "--warmup", "0", "--max_codes", "60", "--answer", "☞yes, a red circle.",
                "--quick_codec"])
    row = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert row["bench"] == "vita_duplex_latency"
    assert 0.5 < row["first_audio_s"] < 120  # at least the VAD's 500 ms end-of-speech wait
    assert 0 < row["after_endpoint_s"] < row["first_audio_s"]
    assert row["stop_frames"] == 0 and row["worker_stop_s"] is not None


def test_7b_stand_in_has_vita_1_5_shapes():
    """The GPU stand-in (`--size 7b`) is VITA-1.5's LLM / towers, the release decoder size and the release codec
    (shapes only: jax.eval_shape, nothing is allocated)."""
    bench = load_bench()
    from vita_jax.model import param_counts

    vita, decoder, codec = bench.stand_in_configs("7b", "bfloat16")
    counts = param_counts(vita)
    assert counts["lm"] == 7_615_616_512 and counts["total"] == 8_322_947_232
    assert (decoder.hidden_size, decoder.num_layers, decoder.num_heads, decoder.dtype) == (896, 4, 14, "bfloat16")
    assert vita.text.hidden_size % decoder.idim == 0 and codec.n_codes == decoder.num_codes == 1024
    assert codec.upsample_initial_channel == 512 and codec.hop_length == 600
