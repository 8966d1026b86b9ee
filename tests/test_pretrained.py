"""Portable networks: ``memnet export`` and ``memnet.models.load`` round-trip NTM, DNC and MemN2N."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tiny_run import tiny_run

import memnet.models
from memnet.cli import main as memnet_main
from memnet.models.dnc import DNC
from memnet.models.memn2n import MemN2N
from memnet.models.ntm import NTM
from memnet.models.pretrained import CONFIG_FILE, WEIGHTS_FILE, PretrainedError, build, save
from memnet.utils import partial_beside

LSTM = {"class_path": "memnet.controllers.LSTMController", "init_args": {"hidden_size": 6}}
NTM_CONFIG = {"class_path": "memnet.models.ntm.NTM", "init_args": {
    "input_size": 5, "output_size": 3, "memory_size": 7, "word_size": 4, "num_reads": 2, "controller": LSTM}}
DNC_CONFIG = {"class_path": "memnet.models.dnc.DNC", "init_args": {
    "input_size": 5, "output_size": 3, "memory_size": 9, "word_size": 4, "num_reads": 2, "controller": LSTM}}
MEMN2N_CONFIG = {"class_path": "memnet.models.memn2n.MemN2N", "init_args": {
    "input_size": 11, "output_size": 4, "embedding_size": 6, "hops": 2, "memory_size": 8, "seed": 3}}


def dead_pid() -> int:
    """A pid no process has here (a child that ended)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def trained_like(config: dict) -> torch.nn.Module:
    """The network of ``config`` with every weight moved off its initial value (seeded)."""
    net = build(config, where="test")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return net.eval()


def sequences(batch=3, steps=6, width=5):
    return torch.randn(batch, steps, width, generator=torch.Generator().manual_seed(1))


def questions(batch=3, sentences=5, words=4, vocabulary=11):
    generator = torch.Generator().manual_seed(2)
    story = torch.randint(1, vocabulary, (batch, sentences, words), generator=generator)
    return story, torch.randint(1, vocabulary, (batch, words), generator=generator)


@pytest.mark.parametrize(
    ("config", "cls", "inputs"),
    [(NTM_CONFIG, NTM, lambda: (sequences(),)), (DNC_CONFIG, DNC, lambda: (sequences(),)),
     (MEMN2N_CONFIG, MemN2N, lambda: questions())],
    ids=["ntm", "dnc", "memn2n"],
)
def test_round_trip_gives_the_same_outputs(tmp_path, config, cls, inputs):
    net = trained_like(config)
    save(net, config, tmp_path / "export")
    loaded = memnet.models.load(tmp_path / "export")
    assert type(loaded) is cls and not loaded.training
    args = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), net(*args), rtol=0, atol=0)
    assert torch.equal(cls.from_pretrained(tmp_path / "export")(*args), loaded(*args))


@pytest.mark.parametrize("config", [NTM_CONFIG, DNC_CONFIG], ids=["ntm", "dnc"])
def test_a_random_initial_memory_is_drawn_the_same_after_loading(tmp_path, config):
    """The ``random`` initial memory's seed is the process's seed when the network is built: not a weight nor a
    constructor argument. The export keeps it, so a fresh process (another seed) loads the same network."""
    config = {**config, "init_args": {**config["init_args"], "memory_init": "random"}}
    torch.manual_seed(123)
    net = trained_like(config)
    save(net, config, tmp_path / "export")
    torch.manual_seed(999)
    loaded = memnet.models.load(tmp_path / "export")
    inputs = sequences()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), net(inputs), rtol=0, atol=0)
    assert memnet.models.load(tmp_path / "export", memory_init="constant").memory_init.scheme == "constant"


def test_memory_size_changes_at_load_time(tmp_path):
    net = trained_like(NTM_CONFIG)
    save(net, NTM_CONFIG, tmp_path / "export")
    larger = memnet.models.load(tmp_path / "export", memory_size=23)
    assert larger.memory_size == 23
    inputs = sequences()
    with torch.no_grad():  # the same as running the stored network with 23 slots
        torch.testing.assert_close(larger(inputs), net(inputs, memory_size=23), rtol=0, atol=0)
        _, trace = larger(inputs, return_trace=True)
    assert trace.read_weights.shape[-1] == 23


def test_the_eval_memory_size_is_exported_and_the_loaded_network_runs_with_it(tmp_path):
    """Trained with 7 slots, evaluated with 13: the loaded network has 13, as the run had in validation."""
    net = trained_like(NTM_CONFIG)
    save(net, NTM_CONFIG, tmp_path / "export", eval_memory_size=13)
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert config["eval_memory_size"] == 13 and config["init_args"]["memory_size"] == 7  # the trained N kept
    loaded = memnet.models.load(tmp_path / "export")
    assert loaded.memory_size == 13 and NTM.from_pretrained(tmp_path / "export").memory_size == 13
    inputs = sequences()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), net(inputs, memory_size=13), rtol=0, atol=0)
    assert memnet.models.load(tmp_path / "export", memory_size=9).memory_size == 9  # an explicit N still wins


def test_an_export_without_eval_memory_size_loads_with_the_trained_n_and_a_bad_one_is_refused(tmp_path):
    save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "old")  # as exports were written before the field
    assert "eval_memory_size" not in json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    assert memnet.models.load(tmp_path / "old").memory_size == 7
    config_path = tmp_path / "old" / CONFIG_FILE
    for bad in (0, 2.5, True, "13"):
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "eval_memory_size": bad}))
        with pytest.raises(PretrainedError, match="'eval_memory_size' must be a positive integer"):
            memnet.models.load(tmp_path / "old")
    with pytest.raises(PretrainedError, match="eval_memory_size must be a positive integer"):
        save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "zero", eval_memory_size=0)
    no_memory = {"class_path": "memnet.models.recurrent.RecurrentModel",
                 "init_args": {"input_size": 5, "output_size": 3, "controller": LSTM}}
    with pytest.raises(PretrainedError, match="needs a network with a memory_size argument"):
        save(build(no_memory, where="test"), no_memory, tmp_path / "rnn", eval_memory_size=13)


def test_config_holds_class_path_and_every_argument(tmp_path):
    save(trained_like(DNC_CONFIG), DNC_CONFIG, tmp_path / "export")
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert config["class_path"] == "memnet.models.dnc.DNC"
    assert config["init_args"]["memory_size"] == 9 and config["init_args"]["controller"] == LSTM
    assert sorted(os.listdir(tmp_path / "export")) == [CONFIG_FILE, WEIGHTS_FILE]


def test_the_weights_are_as_readable_as_the_config(tmp_path):
    """safetensors wrote model.safetensors as 0600 whatever the umask, beside a config.json of 0644: an export
    shared in a common folder had a config the others could read and weights they could not load."""
    old = os.umask(0o022)
    try:
        folder = save(build(NTM_CONFIG, where="test"), NTM_CONFIG, tmp_path / "shared")
    finally:
        os.umask(old)
    assert (folder / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o644
    assert (folder / CONFIG_FILE).stat().st_mode & 0o777 == 0o644


def test_from_pretrained_of_another_class_is_refused(tmp_path):
    save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "export")
    with pytest.raises(PretrainedError, match=r"holds a memnet\.models\.ntm\.NTM, not a DNC"):
        DNC.from_pretrained(tmp_path / "export")


def test_export_into_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("keep me")
    with pytest.raises(PretrainedError, match=r"export exists and is not an empty folder"):
        save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "export")
    assert os.listdir(tmp_path / "export") == ["notes.txt"]


@pytest.mark.parametrize("out", [".", "sub/..", "/"])
def test_export_into_the_current_folder_or_one_above_is_refused_in_one_line(tmp_path, monkeypatch, capsys, out):
    """``memnet export --out .`` (in an empty folder) stopped after the rebuild with a traceback (ValueError:
    PosixPath('.') has an empty name): the export is written beside its folder and renamed onto it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if out == "." else tmp_path)
    with pytest.raises(PretrainedError, match="names the current folder or one above it"):
        save(trained_like(NTM_CONFIG), NTM_CONFIG, out)
    (tmp_path / "run.ckpt").write_bytes(b"")  # refused before the checkpoint is read
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["export", "--ckpt_path", str(tmp_path / "run.ckpt"), "--out", out])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"memnet export: --out: {out!r} names the current folder or one above it, which the export would replace; "
        "give the new folder's name, e.g. --out exported")
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt", "sub"] and os.listdir(tmp_path / "sub") == []


def save_file_then(monkeypatch, what) -> None:
    """``save_file`` as safetensors writes it, followed by ``what(path)``."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(state, path, metadata=None):
        real(state, path, metadata=metadata)
        what(path)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_an_export_cut_short_leaves_no_half_written_folder(tmp_path, monkeypatch, existing):
    """Written beside the target and renamed into place: a failure mid-write leaves the target as it was (absent,
    or the empty folder it was) and nothing else; the next export writes it whole."""
    out = tmp_path / "export"
    if existing:
        out.mkdir()

    def full_disk_halfway(path):
        os.truncate(path, os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        save_file_then(patch, full_disk_halfway)
        with pytest.raises(PretrainedError) as error:
            save(trained_like(NTM_CONFIG), NTM_CONFIG, out)
    assert str(error.value) == f"could not write the export {out}: No space left on device"
    assert os.listdir(tmp_path) == (["export"] if existing else [])
    assert not existing or os.listdir(out) == []
    # as killed exports leave them, this memnet's (a dead process of this host) and an earlier one's: removed by the
    # next export once stale (memnet.utils.is_stale_partial: 5 minutes, and an hour for the earlier naming)
    killed = partial_beside(out).name.replace(f".{os.getpid()}.partial", f".{dead_pid()}.partial")
    for name, age in ((killed, 360), (".export.partial", 3660)):
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS_FILE).write_bytes(b"half")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    net = trained_like(NTM_CONFIG)
    save(net, NTM_CONFIG, out)
    assert os.listdir(tmp_path) == ["export"] and sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]
    assert torch.equal(memnet.models.load(out)(sequences()), net(sequences()))


def test_a_file_left_where_the_export_is_written_beside_never_blocks_it(tmp_path):
    """A file where an export writes its folder (``.export.<host>.<pid>.partial``, a process of this pid before) is
    replaced all the same."""
    partial_beside(tmp_path / "export").write_bytes(b"half")
    net = trained_like(NTM_CONFIG)
    save(net, NTM_CONFIG, tmp_path / "export")
    assert os.listdir(tmp_path) == ["export"]
    assert torch.equal(memnet.models.load(tmp_path / "export")(sequences()), net(sequences()))


def test_an_export_that_fills_the_target_meanwhile_is_kept_whole(tmp_path, monkeypatch):
    """Another export lands in the folder while this one writes: the rename is refused, never merged into it."""
    out = tmp_path / "export"
    save(trained_like(DNC_CONFIG), DNC_CONFIG, tmp_path / "other")
    save_file_then(monkeypatch, lambda path: os.replace(tmp_path / "other", out))
    with pytest.raises(PretrainedError, match=rf"^could not write the export {re.escape(str(out))}: Directory not empty$"):
        save(trained_like(NTM_CONFIG), NTM_CONFIG, out)
    assert os.listdir(tmp_path) == ["export"] and sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]
    assert type(memnet.models.load(out)) is DNC


# another process exporting into the same folder: its weights written, it waits for ``go`` before its config
OTHER_EXPORT = """
import sys, time
from pathlib import Path
import safetensors.torch
from memnet.models.pretrained import build, save
config, out, wrote, go = {config!r}, Path({out!r}), Path({wrote!r}), Path({go!r})
real = safetensors.torch.save_file
def save_file(state, path, metadata=None):
    real(state, path, metadata=metadata)
    wrote.touch()
    deadline = time.time() + 120
    while not go.exists() and time.time() < deadline:
        time.sleep(0.02)
safetensors.torch.save_file = save_file
try:
    save(build(config, where="other"), config, out)  # its own weights, not the test's
    print("other: exported")
except Exception as error:
    print(f"other: {{error}}")
"""


def test_two_exports_into_one_folder_at_once_never_mix_their_files(tmp_path, monkeypatch):
    """Two exports to one ``--out`` at once (two processes): each writes its own folder beside it, and the second to
    rename is refused. They shared ``.export.partial``: the second removed the first's weights and wrote its own
    there, the first then renamed that folder, its config beside the other's weights, and said it had exported."""
    out, wrote, go = tmp_path / "export", tmp_path / "wrote", tmp_path / "go"
    script = tmp_path / "other.py"
    script.write_text(OTHER_EXPORT.format(config=NTM_CONFIG, out=str(out), wrote=str(wrote), go=str(go)))
    started = []

    def start_the_other(path):  # this export's weights are written: the other starts and writes its weights too
        env = {**os.environ, "PYTHONPATH": str(Path(memnet.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
        started.append(subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env))
        deadline = time.time() + 120
        while not wrote.exists() and started[0].poll() is None and time.time() < deadline:
            time.sleep(0.02)

    net = trained_like(NTM_CONFIG)
    try:
        with monkeypatch.context() as patch:
            save_file_then(patch, start_the_other)
            save(net, NTM_CONFIG, out)
    finally:
        go.touch()
        output = started[0].communicate(timeout=120)[0] if started else ""
    assert wrote.exists(), output
    assert f"other: could not write the export {out}: Directory not empty" in output
    with torch.no_grad():
        torch.testing.assert_close(memnet.models.load(out)(sequences()), net(sequences()), rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["export", "go", "other.py", "wrote"]
    assert sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]

def test_weights_that_do_not_match_the_config_are_one_line(tmp_path):
    save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "export")
    config_path = tmp_path / "export" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["init_args"]["word_size"] = 6  # the heads and the controller input depend on W
    config_path.write_text(json.dumps(config))
    with pytest.raises(PretrainedError) as error:
        memnet.models.load(tmp_path / "export")
    message = str(error.value)
    assert "\n" not in message and f"{WEIGHTS_FILE} does not match" in message
    assert "in the weights" in message and "for the config" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "export")
    weights = tmp_path / "export" / WEIGHTS_FILE
    state = load_file(weights)
    dropped = min(state)
    state.pop(dropped)
    state["stray.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(PretrainedError, match=rf"missing {dropped}.*unexpected stray\.weight"):
        memnet.models.load(tmp_path / "export")


def test_overriding_an_argument_the_network_does_not_take_is_refused(tmp_path):
    save(trained_like(NTM_CONFIG), NTM_CONFIG, tmp_path / "export")
    with pytest.raises(PretrainedError, match=r"has no argument slots to override"):
        memnet.models.load(tmp_path / "export", slots=3)



def test_an_argument_the_config_leaves_at_its_default_can_be_overridden(tmp_path):
    """A config written by ``save`` with some arguments only (docs/portable.md's stand-in for ``memnet export``)
    still takes the others at load time: ``engine`` is the NTM's, though its config.json does not list it."""
    net = trained_like(NTM_CONFIG)
    save(net, NTM_CONFIG, tmp_path / "export")
    loaded = memnet.models.load(tmp_path / "export", engine="fused", memory_size=11)
    assert loaded.engine == "fused" and loaded.memory_size == 11
    with torch.no_grad():
        torch.testing.assert_close(loaded(sequences(), memory_size=7), net(sequences()))
    with pytest.raises(PretrainedError, match=r"has no argument slots to override \(its arguments: input_size, "
                                              r"output_size, controller, .*engine"):
        memnet.models.load(tmp_path / "export", slots=3)

def test_a_missing_folder_that_is_no_hub_id_is_one_line(tmp_path):
    with pytest.raises(PretrainedError, match=r"no such folder, and not a Hugging Face Hub repository id"):
        memnet.models.load(tmp_path / "nowhere" / "at" / "all")


def test_a_hub_id_offline_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedError, match=r"^memnet-test/no-such-model: .*could not be downloaded") as error:
        memnet.models.load("memnet-test/no-such-model")
    assert "\n" not in str(error.value)


TINY_RUN = tiny_run(trainer={"default_root_dir": "run"})


def test_memnet_export_of_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    memnet_main(["fit", "--config", "tiny.yaml"])
    (checkpoint,) = tmp_path.glob("**/checkpoints/last.ckpt")  # the run's own folder (under runs/)
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["export", "--ckpt_path", "latest", "--out", "exported"])
    assert exit_status.value.code == 0
    assert "exported NTM from" in capsys.readouterr().out
    config = json.loads((tmp_path / "exported" / CONFIG_FILE).read_text())
    assert config["init_args"]["input_size"] == 4 and config["init_args"]["output_size"] == 3  # linked from data

    net = memnet.models.load(tmp_path / "exported")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, trained[f"net.{name}"]), name

    with pytest.raises(SystemExit) as exit_status:  # the folder is not empty now
        memnet_main(["export", "--ckpt_path", str(checkpoint), "--out", "exported"])
    assert exit_status.value.code == 2  # bad input, as every memnet command
    assert capsys.readouterr().err.strip() == (
        "memnet export: --out: exported exists and is not an empty folder; choose a new folder or empty it")


def test_memnet_export_keeps_the_runs_eval_memory_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = yaml.safe_load(TINY_RUN)
    run["model"]["init_args"]["eval_memory_size"] = 11  # trained with 7 slots, validated with 11
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(run))
    memnet_main(["fit", "--config", "tiny.yaml"])
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["export", "--ckpt_path", "latest", "--out", "exported"])
    assert exit_status.value.code == 0
    assert "eval_memory_size, 11 slots" in capsys.readouterr().out
    config = json.loads((tmp_path / "exported" / CONFIG_FILE).read_text())
    assert config["eval_memory_size"] == 11 and config["init_args"]["memory_size"] == 7
    assert memnet.models.load(tmp_path / "exported").memory_size == 11  # was 7: not the network validated


def test_a_bad_hub_repository_id_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["export", "--ckpt_path", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "out"),
                     "--push-to-hub", "not a repo"])
    assert exit_status.value.code == 2  # bad input, as every memnet command
    assert capsys.readouterr().err.strip() == (
        "memnet export: --push-to-hub: 'not a repo' is not a Hub repository id (owner/name)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["export", "--out", "out"], ["evaluate", "--lengths", "3"]])
def test_export_refuses_a_missing_checkpoint_with_the_status_of_the_other_commands(tmp_path, monkeypatch, capsys,
                                                                                     command):
    """Bad input is exit status 2 in every memnet command (and argparse); memnet export's was 1."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        memnet_main([*command, "--ckpt_path", "none.ckpt"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip() == f"memnet {command[0]}: --ckpt_path: no checkpoint file at none.ckpt"


def test_a_float64_run_is_exported_and_loaded_in_float64(tmp_path, monkeypatch, capsys):
    """``precision: 64-true`` weights keep every bit through ``memnet export`` and ``memnet.models.load``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(tiny_run(trainer={"precision": "64-true"}))
    memnet_main(["fit", "--config", "tiny.yaml"])
    (checkpoint,) = tmp_path.glob("**/checkpoints/last.ckpt")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert trained["net.controller.lstm.weight_ih_l0"].dtype == torch.float64
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["export", "--ckpt_path", str(checkpoint), "--out", "exported"])
    assert exit_status.value.code == 0
    assert load_file(tmp_path / "exported" / WEIGHTS_FILE)["controller.lstm.weight_ih_l0"].dtype == torch.float64
    net = memnet.models.load(tmp_path / "exported")
    for name, tensor in net.state_dict().items():
        assert tensor.dtype == torch.float64 and torch.equal(tensor, trained[f"net.{name}"]), name
