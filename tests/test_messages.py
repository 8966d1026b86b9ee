"""The `memnet` command stops on bad input with one line naming the file, field or value (exit 2),
not a traceback: damaged or non-finite checkpoints, a checkpoint of another config, YAML syntax
errors, non-positive sizes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_run

from memnet.cli import main
from memnet.evaluation import main as evaluate_main

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_run(data={"test_size": 3})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(folder with tiny.yaml, the last checkpoint of a 2-step run of it)."""
    folder = tmp_path_factory.mktemp("messages")
    (folder / "tiny.yaml").write_text(TINY)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        main(["fit", "--config", "tiny.yaml"])
    finally:
        os.chdir(cwd)
    return folder, next(folder.rglob("last.ckpt"))


def _fails_in_one_line(capsys, argv: list[str], *expected: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("memnet: ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def in_folder(trained, monkeypatch):
    monkeypatch.chdir(trained[0])
    return trained


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_empty_checkpoint(in_folder, tmp_path, capsys, command):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _fails_in_one_line(capsys, [command, "--config", "tiny.yaml", "--ckpt_path", str(empty)],
                       f"{empty}: the checkpoint file is empty (0 bytes)")


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_truncated_checkpoint(in_folder, tmp_path, capsys, command):
    _, last = in_folder
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    _fails_in_one_line(capsys, [command, "--config", "tiny.yaml", "--ckpt_path", str(truncated)],
                       f"{truncated}: not a readable checkpoint, the file is truncated or corrupt")


def _with_nan(last: Path, target: Path) -> str:
    checkpoint = torch.load(last, weights_only=False)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel() > 3)
    checkpoint["state_dict"][name].view(-1)[[0, 2]] = float("nan")
    torch.save(checkpoint, target)
    return name


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_non_finite_weights_name_the_file_and_the_parameter(in_folder, tmp_path, capsys, command):
    _, last = in_folder
    corrupt = tmp_path / "nan.ckpt"
    name = _with_nan(last, corrupt)
    _fails_in_one_line(capsys, [command, "--config", "tiny.yaml", "--ckpt_path", str(corrupt)],
                       f"{corrupt}: parameter {name} holds 2 non-finite value(s)")


def test_evaluate_refuses_non_finite_and_truncated_checkpoints(in_folder, tmp_path, capsys):
    _, last = in_folder
    corrupt = tmp_path / "checkpoints" / "nan.ckpt"
    corrupt.parent.mkdir()
    name = _with_nan(last, corrupt)
    for damaged, expected in ((corrupt, f"parameter {name} holds 2 non-finite"),
                              (tmp_path / "checkpoints" / "empty.ckpt", "the checkpoint file is empty")):
        if not damaged.exists():
            damaged.write_bytes(b"")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main(["--ckpt_path", str(damaged), "--config", "tiny.yaml", "--lengths", "4",
                           "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and str(damaged) in err and expected in err and "Traceback" not in err
        assert not (tmp_path / "out" / "table.md").exists()


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_file_that_is_no_lightning_checkpoint_is_one_line(in_folder, tmp_path, capsys, command):
    """A file torch.load reads but that holds no Lightning checkpoint (a bare state_dict, a tensor) was Lightning's
    KeyError: 'pytorch-lightning_version' traceback."""
    _, last = in_folder
    bare = tmp_path / "bare.ckpt"
    torch.save(torch.load(last, weights_only=False)["state_dict"], bare)
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(3), tensor)
    for path, held in ((bare, "it holds a dict of 'net."), (tensor, "it holds a Tensor")):
        _fails_in_one_line(capsys, [command, "--config", "tiny.yaml", "--ckpt_path", str(path)],
                           f"{path}: not a Lightning checkpoint", held)


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_checkpoint_of_another_config(in_folder, capsys, command):
    _, last = in_folder
    _fails_in_one_line(capsys, [command, "--config", "tiny.yaml", "--ckpt_path", str(last),
                                "--model.init_args.net.init_args.word_size=6"],
                       f"--ckpt_path {last} does not fit the model of the config", "size mismatch")


def test_a_rebuilt_checkpoint_that_does_not_fit_is_named_with_its_keys_in_one_line(in_folder, tmp_path):
    """memnet babi-table's test and predict of each --ckpt_path (rebuild.run_stage) raised torch's RuntimeError, which
    the command named by the first --ckpt_path of its command line: with several, not always the one at fault; and
    the refusal of load_checkpoint (memnet evaluate, export, figures) showed only the line 'Error(s) in loading
    state_dict for ...:', not which keys."""
    from memnet.cli import rebuild

    folder, last = in_folder
    checkpoint = torch.load(last, weights_only=False)
    dropped = next(iter(checkpoint["state_dict"]))
    del checkpoint["state_dict"][dropped]
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(rebuild.RebuildError) as error:
        rebuild.run_stage("test", broken, folder / "tiny.yaml")
    message = str(error.value)
    assert f"{broken} does not fit the model of" in message and f'Missing key(s) in state_dict: "{dropped}"' in message
    assert "\n" not in message
    with pytest.raises(rebuild.RebuildError) as error:
        rebuild.build([folder / "tiny.yaml"], broken, torch.device("cpu"))
    message = str(error.value)
    assert f"{broken} does not fit" in message and f'"{dropped}"' in message and "\n" not in message


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    _fails_in_one_line(capsys, ["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"),
                                "--config", str(bad)], f"--config {bad}, line 3, column 1: YAML syntax error")
    _fails_in_one_line(capsys, ["fit", "--config", str(tmp_path / "absent.yaml")], "absent.yaml: neither a file nor a shipped config")


@pytest.mark.parametrize("field", ["model.init_args.net.init_args.memory_size", "data.init_args.batch_size"])
def test_non_positive_size_from_the_command_line(tmp_path, capsys, monkeypatch, field):
    monkeypatch.chdir(tmp_path)
    name = field.rsplit(".", 1)[1]
    _fails_in_one_line(capsys, ["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"), f"--{field}=0"],
                       f"{name} must be a positive integer, got 0")


@pytest.mark.parametrize(("option", "expected"), [
    ("--trainer.max_steps=-5", "`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in -5."),
    ("--trainer.val_check_interval=-1", "invalid value -1 for val_check_interval, it has to be in [0.0, 1.0] or an int."),
])
def test_a_trainer_option_out_of_range_is_one_line(tmp_path, capsys, monkeypatch, option, expected):
    """Lightning's MisconfigurationException, which names the option, was printed as a traceback, exit 1."""
    monkeypatch.chdir(tmp_path)
    line = _fails_in_one_line(capsys, ["fit", "--config", "ntm/copy_small", "--trainer.logger=false", option], expected)
    assert line.startswith("memnet: ") and line.endswith(expected), line


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMNET_TRACEBACK", "1")
    with pytest.raises(ValueError, match="memory_size must be a positive integer"):
        main(["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"),
              "--model.init_args.net.init_args.memory_size=0"])


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder should be")  # (chmod does not stop root)
    line = _fails_in_one_line(capsys, ["fit", "--config", "ntm/copy_small", "--trainer.logger=false",
                                       "--trainer.max_steps=1", "--data.init_args.batches_per_epoch=1"],
                              "memnet: cannot use ")
    assert "runs" in line and ("Not a directory" in line or "File exists" in line)
