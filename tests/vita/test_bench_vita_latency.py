"""bench/vita_latency.py runs on the CPU (tiny random model, answer forced through the real decode step) and reports
a first-audio latency (compilation included: no warm-up here) after the end of speech and a barge-in that lets no old packet out."""
import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_latency_bench_reports_first_audio_and_barge_in(capsys):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    spec = importlib.util.spec_from_file_location("vita_latency_bench", os.path.join(REPO, "bench", "vita_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--trials", "1", "--warmup", "0", "--max_codes", "60", "--answer", "☞yes, a red circle.",
                "--quick_codec"])
    row = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert row["bench"] == "vita_duplex_latency"
    assert 0.5 < row["first_audio_s"] < 120  # at least the VAD's 500 ms end-of-speech wait
    assert 0 < row["after_endpoint_s"] < row["first_audio_s"]
    assert row["stop_frames"] == 0 and row["worker_stop_s"] is not None
