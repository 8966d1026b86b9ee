"""Slow: the baby config really learns to copy (lengths 1-5) through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memnet.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_ntm_learns_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"), "--trainer.enable_progress_bar=false"])
    summary = json.loads((tmp_path / "runs" / "latest.json").read_text())
    # chance is 10 wrong bits (and 20 bits of cost) per sequence of five 4-bit vectors
    assert summary["metrics"]["val/bit_errors_per_seq"] < 0.5
    assert summary["metrics"]["val/bits_per_seq"] < 5.0
