"""The architecture contract (pyproject.toml [tool.importlinter]): it holds, and it fails on a planted violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

needs_linter = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (pip install memnet[dev])")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": str(LINT.parent), "HOME": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in ("memnet", "tasks"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@needs_linter
def test_the_layers_contract_holds():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@needs_linter
@pytest.mark.parametrize(("module", "planted", "culprit"), [
    ("memnet/metrics.py", "import memnet.cli.rebuild", "memnet.metrics -> memnet.cli.rebuild"),
    ("memnet/models/ntm.py", "import memnet.lightning", "memnet.models.ntm -> memnet.lightning"),
    ("memnet/callbacks.py", "import memnet.probe", "memnet.callbacks -> memnet.probe"),
    ("tasks/algorithmic/data.py", "import memnet.models.ntm", "tasks.algorithmic.data -> memnet.models.ntm"),
])
def test_a_planted_upward_or_sideways_import_breaks_the_contract(tmp_path, module, planted, culprit):
    tree = _copy(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert culprit in done.stdout, done.stdout
