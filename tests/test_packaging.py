"""The built wheel carries the configs: installed into a fresh virtual environment, its ``memnet``
runs a shipped config by name from a folder outside the clone.

Offline: the wheel is built with the setuptools of this environment (no build isolation) and
installed without dependencies; the fresh environment sees this one's packages (torch,
Lightning, ...) through a ``.pth`` file, after its own, so ``memnet`` is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "memnet", "tasks", "configs")


def _run(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The finished command, which must have succeeded."""
    started = time.monotonic()
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"{time.monotonic() - started:5.1f} s  {' '.join(map(str, args))[:120]}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel built from this checkout installed."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: building in the clone would leave build/ and *.egg-info there
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work / "dist", source], work)
    (wheel,) = (work / "dist").glob("memnet-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], work)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip())
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "outer-environment.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], work)
    return venv


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HOME": str(home)}


def test_the_wheel_runs_a_shipped_config_outside_the_clone(installed, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _env(tmp_path)
    listing = _run([installed / "bin" / "memnet", "configs"], outside, env).stdout
    header, *rows = listing.splitlines()
    root = Path(header.removeprefix("# configs in "))
    assert root.is_relative_to(installed) and root.name == "configs", header  # the wheel's code and copy
    assert "ntm/copy" in [row.split()[0] for row in rows] and "recipes/" not in listing
    trained = _run([installed / "bin" / "memnet", "fit", "--config", "ntm/copy_small", "--trainer.fast_dev_run=true",
                    "--trainer.enable_progress_bar=false", "--trainer.logger=false"], outside, env)
    trained = trained.stdout + trained.stderr
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in trained
