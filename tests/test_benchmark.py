"""The throughput benchmark runs and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_writes_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--batch-sizes", "1", "3", "--length", "2",
         "--steps", "1", "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert "sequences / s" in result.stdout
    report = json.loads(out.read_text())
    assert [row["batch_size"] for row in report["results"]] == [1, 3]
    for row in report["results"]:
        assert row["torch_threads"] == 1 and row["time_steps"] == 5
        assert len(row["seconds_per_step_all"]) == 2 and row["sequences_per_second"] > 0
    assert report["machine"]["torch"].startswith("2.")
