"""Every shipped config runs through the real CLI with ``--trainer.fast_dev_run=true``.

Suite files (configs/suites/) are not Lightning configs and are tested with the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if "suites" not in p.relative_to(ROOT / "configs").parts
)


def test_configs_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert {"ntm/copy.yaml", "lstm/copy.yaml", "ntm/copy_small.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_runs_with_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])
