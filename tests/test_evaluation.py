"""``memnet evaluate`` on a tiny checkpoint: tables, results, plots, memory sizing, sub-batches, bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_run

from memnet import metrics
from memnet.cli import main as memnet_main
from memnet.evaluation import EvaluationError, fit_only_keys, resolve_checkpoint
from memnet.protocols import DRAW_BLOCK, join_batches, sequence_batches
from tasks.algorithmic import (
    AssociativeRecallTask,
    DynamicNGramsTask,
    PrioritySortTask,
    RepeatCopyTask,
)

TINY = tiny_run(trainer={"default_root_dir": "run"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with a 2-step NTM copy run, its config.yaml and runs/latest.json."""
    folder = tmp_path_factory.mktemp("evaluate")
    (folder / "tiny.yaml").write_text(TINY)
    run_in(folder, "fit", "--config", "tiny.yaml")
    return folder


def run_in(folder: Path, *argv: str) -> None:
    """``memnet <argv>`` run from ``folder``."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        memnet_main(list(argv))
    finally:
        os.chdir(cwd)


def evaluate(folder: Path, *args: str) -> None:
    run_in(folder, "evaluate", *args)


def test_latest_writes_table_results_and_plots(trained, capsys):
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "4", "9", "--num_sequences", "5",
             "--batch_size", "2", "--out", "out")
    out = trained / "out"
    printed = capsys.readouterr().out
    assert "| length | slots | bits per sequence | bit errors per sequence | sequences |" in printed
    assert (out / "table.md").read_text() in printed
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["length"]) for r in rows] == [2, 4, 9]
    assert [int(r["slots"]) for r in rows] == [7, 7, 16]  # the trained ratio: ⌈7 · 9 / 4⌉ at length 9
    assert all(int(r["sequences"]) == 5 for r in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"].endswith(".ckpt") and "best" in Path(results["checkpoint"]).name
    assert results["train_range"] == [1, 4] and results["trained_memory_size"] == 7
    for row in results["lengths"]:
        assert row["bits_per_seq"] > 0 and 0 <= row["bit_errors_per_seq"] <= 3 * row["length"]
    for name in ("error_vs_length.png", "memory_access_len2.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sub_batches_do_not_change_the_numbers(trained):
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "3", "--num_sequences", "6", "--batch_size", "6",
             "--out", "whole")
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "3", "--num_sequences", "6", "--batch_size", "4",
             "--out", "split")
    whole = json.loads((trained / "whole/results.json").read_text())["lengths"][0]
    split = json.loads((trained / "split/results.json").read_text())["lengths"][0]
    assert split["bits_per_seq"] == pytest.approx(whole["bits_per_seq"], rel=1e-5)
    assert split["bit_errors_per_seq"] == whole["bit_errors_per_seq"]


@pytest.mark.parametrize("task", [
    RepeatCopyTask(width=4, max_length=5, max_repeats=5), PrioritySortTask(), AssociativeRecallTask(),
    DynamicNGramsTask(min_length=20, max_length=20),
], ids=["repeat-copy", "priority-sort", "associative-recall", "ngrams"])
def test_the_evaluated_sequences_do_not_depend_on_the_batch_size(task):
    # their samplers draw several random quantities per batch: drawn per sub-batch, another
    # --batch_size gave other sequences under the same --seed
    length = task.min_length if hasattr(task, "min_length") else 3
    total = 2 * DRAW_BLOCK + 7
    drawn = {}
    for batch_size in (5, DRAW_BLOCK, 1000):
        batches = list(sequence_batches(task, torch.Generator().manual_seed(3), length, total, batch_size))
        assert [b["mask"].shape[0] for b in batches[:-1]] == [min(batch_size, total)] * (len(batches) - 1)
        drawn[batch_size] = join_batches(batches)
        assert drawn[batch_size]["mask"].shape[0] == total
    for batch_size in (5, 1000):
        for key in ("inputs", "targets", "mask", "optimal_bits"):
            if key in drawn[DRAW_BLOCK]:
                assert torch.equal(drawn[batch_size][key], drawn[DRAW_BLOCK][key]), (batch_size, key)


def test_replacing_the_lengths_of_an_earlier_evaluation_is_said_before_the_run(trained, capsys):
    # the default --out is the run's one evaluation folder: a second evaluation at other lengths silently
    # replaced the first one's results.json and tables
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "3", "--num_sequences", "2", "--out", "again")
    assert "warning" not in capsys.readouterr().err
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "3", "4", "--num_sequences", "2", "--out", "again")
    err = capsys.readouterr().err
    assert "results.json holds length(s) 2, which this evaluation replaces" in err
    assert err.index("replaces") < err.index("length    3:")  # before anything is run
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "3", "4", "--num_sequences", "2", "--out", "again")
    assert "warning" not in capsys.readouterr().err  # the same lengths again lose nothing


def test_an_evaluation_killed_while_writing_its_tables_leaves_the_earlier_ones_whole(trained, monkeypatch, capsys):
    """table.md, table.csv and results.json were written in place: a kill (or a full disk) halfway left a table cut
    short that read as a valid one, and a results.json that the suite read as damaged."""
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "3", "--num_sequences", "2", "--out", "killed")
    out = trained / "killed"
    before = {name: (out / name).read_text() for name in ("table.md", "table.csv", "results.json")}
    write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "3", "--num_sequences", "3", "--out", "killed")
    monkeypatch.undo()
    assert {name: (out / name).read_text() for name in before} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]  # nothing left beside them


def test_an_evaluation_that_fails_part_way_through_its_files_never_mixes_them_with_an_earlier_one(
        trained, monkeypatch, capsys):
    """Each file was renamed into place on its own: a figure that failed (or a kill) after table.md left this
    evaluation's table of lengths 4, 5 beside the earlier results.json of lengths 2, 3, and an earlier first length's
    memory-access figure stayed beside the new one's."""
    import memnet.cli.evaluate as evaluation

    out = trained / "set"
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "3", "--num_sequences", "2", "--out", "set")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert {"table.md", "table.csv", "results.json", "error_vs_length.png", "memory_access_len2.png"} <= set(before)

    def failing_plot(*args, **kwargs):
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(evaluation, "plot_error_vs_length", failing_plot)
    with pytest.raises(RuntimeError, match="the figure failed"):
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "5", "--num_sequences", "2", "--out", "set")
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # the earlier set whole, nothing else

    replace = os.replace

    def failing_rename(source, target):  # the disk fails while the new set's files are renamed in
        if Path(target).name == "table.csv":
            raise OSError(28, "No space left on device", str(source))
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_rename)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "5", "--num_sequences", "2", "--out", "set")
    monkeypatch.undo()
    assert "set/table.csv: No space left on device" in capsys.readouterr().err  # named by the file of the set
    left = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "results.json" not in left  # a folder without it holds no whole evaluation
    assert not [name for name, data in left.items() if before.get(name) == data]  # nothing of the earlier set
    assert "memory_access_len2.png" not in left and not [name for name in left if name.endswith(".partial")]

    evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "5", "--num_sequences", "2", "--out", "set")
    assert sorted(path.name for path in out.iterdir()) == [
        "error_vs_length.png", "memory_access_len4.png", "results.json", "table.csv", "table.md"]
    results = json.loads((out / "results.json").read_text())
    assert [row["length"] for row in results["lengths"]] == [4, 5]
    assert results["figures"] == {"error_vs_length": "set/error_vs_length.png",  # --out's, not the staging folder's
                                  "memory_access": "set/memory_access_len4.png"}
    assert "| 4 |" in (out / "table.md").read_text().replace("  ", " ")


def test_explicit_checkpoint_and_memory_size(trained):
    checkpoint = next((trained / "run" / "runs" / "memnet").glob("*/checkpoints/last.ckpt"))
    evaluate(trained, "--ckpt_path", str(checkpoint), "--lengths", "12", "--memory_size", "16",
             "--num_sequences", "2")  # default --out: <run>/evaluation
    rows = json.loads((checkpoint.parents[1] / "evaluation" / "results.json").read_text())["lengths"]
    assert rows[0]["slots"] == 16


def test_fixed_memory_too_small_names_the_length_and_the_bound(trained, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "10", "--memory_size", "8", "--out", "small")
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "length 10 needs at least 10 memory slots" in message and "--memory_size is 8" in message
    assert not (trained / "small").exists()  # refused before anything ran


def test_a_memory_below_a_sparse_dncs_k_is_refused_before_anything_is_written(tmp_path, capsys):
    import yaml

    config = yaml.safe_load(TINY)
    config["model"]["init_args"]["net"] = {"class_path": "memnet.models.dnc.DNC", "init_args": {
        "memory_size": 7, "word_size": 5, "link_sparsity": 5,
        "controller": {"class_path": "memnet.controllers.LSTMController", "init_args": {"hidden_size": 4}}}}
    (tmp_path / "dnc.yaml").write_text(yaml.safe_dump(config))
    run_in(tmp_path, "fit", "--config", "dnc.yaml")
    with pytest.raises(SystemExit) as exit_info:
        evaluate(tmp_path, "--ckpt_path", "latest", "--lengths", "2", "--memory_size", "4", "--out", "small")
    assert exit_info.value.code == 2
    assert "--memory_size 4: link_sparsity K" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()  # the folder was made before the network refused


def test_lengths_the_task_cannot_encode_are_refused(trained, capsys):
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "0", "--out", "zero")
    assert "--lengths" in capsys.readouterr().err


def test_a_length_named_twice_is_refused_before_anything_runs(trained, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "2", "4", "--out", "twice")
    assert exit_info.value.code == 2
    assert "--lengths names length(s) 4 more than once" in capsys.readouterr().err
    assert not (trained / "twice").exists()


def test_the_engine_of_the_evaluation_can_be_chosen(trained, capsys):
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "--num_sequences", "3", "--out", "eager")
    evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "--num_sequences", "3", "--out", "fused",
             "--engine", "fused")
    eager, fused = (json.loads((trained / name / "results.json").read_text()) for name in ("eager", "fused"))
    assert eager["engine"] == "eager" and fused["engine"] == "fused"  # the checkpoint's, and the chosen one
    assert fused["lengths"][0]["bits_per_seq"] == pytest.approx(eager["lengths"][0]["bits_per_seq"], rel=1e-5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "4", "--engine", "turbo")
    assert stopped.value.code == 2
    assert "--engine: NTM runs on eager, fused, compiled; got 'turbo'" in capsys.readouterr().err


@pytest.mark.parametrize("device, cuda, expected", [
    ("gpu", True, "--device must be cpu or cuda (cuda:N for the N-th GPU), got 'gpu'"),
    ("cuda", False, "--device cuda: torch sees no CUDA device here; use --device cpu"),
    ("cuda:3", True, "--device cuda:3: torch sees 1 CUDA device(s), cuda:0 to cuda:0"),
])
def test_a_device_torch_cannot_use_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, device, cuda,
                                                                      expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    with pytest.raises(SystemExit) as exit_info:
        memnet_main(["evaluate", "--ckpt_path", str(tmp_path / "x.ckpt"), "--lengths", "3", "--device", device])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"")
    (tmp_path / "table.md").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        memnet_main(["evaluate", "--ckpt_path", str(tmp_path / "x.ckpt"), "--lengths", "3",
                     "--out", str(tmp_path / "table.md")])
    assert exit_info.value.code == 2
    assert f"--out: {tmp_path / 'table.md'} is a file, not a folder" in capsys.readouterr().err


def test_missing_checkpoint_and_latest(tmp_path):
    with pytest.raises(EvaluationError, match="--ckpt_path: no checkpoint file"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"))
    with pytest.raises(EvaluationError, match="latest.json not found"):
        resolve_checkpoint("latest", tmp_path / "runs" / "latest.json")
    (tmp_path / "latest.json").write_text(json.dumps({"best_checkpoint": None, "last_checkpoint": "gone.ckpt"}))
    with pytest.raises(EvaluationError, match="names no existing checkpoint"):
        resolve_checkpoint("latest", tmp_path / "latest.json")
    (tmp_path / "broken.json").write_text("{\n oops")
    with pytest.raises(EvaluationError, match="line 2"):
        resolve_checkpoint("latest", tmp_path / "broken.json")
    for content in ([1, 2], {"run": "x"}, "just text"):  # JSON, but not a run summary
        (tmp_path / "other.json").write_text(json.dumps(content))
        with pytest.raises(EvaluationError, match=r"other.json is not a run summary \(expected a JSON object"):
            resolve_checkpoint("latest", tmp_path / "other.json")


def test_no_config_beside_the_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "x.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):
        memnet_main(["evaluate", "--ckpt_path", str(tmp_path / "checkpoints" / "x.ckpt"), "--lengths", "3"])
    assert "no config.yaml beside the checkpoint" in capsys.readouterr().err


def test_default_config_looks_above_only_a_checkpoints_folder(tmp_path):
    from memnet.cli.rebuild import default_config

    (tmp_path / "config.yaml").write_text("another run's\n")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "model.ckpt").write_bytes(b"")
    with pytest.raises(EvaluationError, match="no config.yaml beside the checkpoint"):
        default_config(kept / "model.ckpt")  # not the config.yaml of the folder above
    (kept / "config.yaml").write_text("its own\n")
    assert default_config(kept / "model.ckpt") == (kept / "config.yaml").resolve()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("the run's\n")
    assert default_config(run / "checkpoints" / "last.ckpt") == (run / "config.yaml").resolve()


def test_fit_only_keys_are_the_trainer_fit_arguments():
    assert {"ckpt_path"} <= fit_only_keys() and not {"model", "datamodule"} & fit_only_keys()


def test_slots_rule_and_table_columns():
    from memnet.evaluation import markdown_table, slots_for
    from tasks.algorithmic import AssociativeRecallTask, CopyTask

    # the trained ratio: 128 slots for lengths up to 20 -> 6.4 slots per vector
    assert slots_for(CopyTask(), 20, 128, None) == 128 and slots_for(CopyTask(), 10, 128, None) == 128
    assert slots_for(CopyTask(), 100, 128, None) == 640 and slots_for(CopyTask(), 150, 128, None) == 960
    assert slots_for(CopyTask(), 100, 128, None, trained_length=50) == 256
    assert slots_for(AssociativeRecallTask(), 50, 128, None) == 1067  # 3 vectors per item: ⌈128 · 150 / 18⌉
    assert slots_for(CopyTask(), 50, None, None) is None  # no external memory
    with pytest.raises(EvaluationError, match=r"length 130 needs at least 130 memory slots.*--memory_size is 128"):
        slots_for(CopyTask(), 130, 128, 128)
    rows = [{"length": 200, "slots": None, "bits_per_seq": 131.25, "bit_errors_per_seq": 40.0, "sequences": 8,
             "exact_pct": 0.0, "optimal_bits_per_seq": 120.5}]
    table = markdown_table(rows)
    assert "optimal bits per sequence" in table.splitlines()[0]
    assert "| 200 | — | 131.250 | 40.000 | 8 | 0.000 | 120.500 |" in table


def test_a_config_that_no_longer_parses_is_named(trained, capsys):
    stale = trained / "stale.yaml"
    stale.write_text(TINY.replace("memory_size: 7", "memory_size: 7\n        no_such_option: 1"))
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--config", str(stale), "--lengths", "2", "--out", "stale")
    err = capsys.readouterr().err
    assert f"--config: {stale} does not parse with the current code" in err
    # in one line that names the key (the parser printed its whole usage above, the key at the bottom of it)
    assert len(err.splitlines()) == 1 and "model.init_args.net.init_args.no_such_option: memnet.models.ntm.NTM " \
        "takes no option 'no_such_option' (it takes input_size, " in err, err


def test_a_config_whose_value_the_current_code_no_longer_takes_is_named(trained, capsys):
    """A value of the wrong type in a stale config: the same advice as for a key, in one line."""
    stale = trained / "stale_value.yaml"
    stale.write_text(TINY.replace("memory_size: 7", "memory_size: big"))
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--config", str(stale), "--lengths", "2", "--out", "stale")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"--config: {stale} does not parse with the current code: " \
        "model.init_args.net.init_args.memory_size: expected an int, got 'big'; a run saved by an older version " \
        "needs --config with a current config" in err, err


def test_a_config_that_is_not_there_is_named_once(trained, capsys):
    """A --config found neither as a file nor among the shipped configs read 'memnet evaluate: --config: --config
    nosuch.yaml: neither a file ...'; a missing fragment of a config that is there still names the option."""
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--config", "nosuch.yaml", "--lengths", "2", "--out", "nosuch")
    assert "memnet evaluate: --config nosuch.yaml: neither a file nor a shipped config" in capsys.readouterr().err
    broken = trained / "broken.yaml"
    broken.write_text("extends: [no_such_fragment.yaml]\n" + TINY)
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--config", str(broken), "--lengths", "2", "--out", "broken")
    err = capsys.readouterr().err
    assert "memnet evaluate: --config: " in err and "no_such_fragment" in err, err


class _SlotHungryCopier(torch.nn.Module):
    """Behaves like a trained NTM on copy: perfect while its memory is no fuller than in training
    (3 slots per vector, trained with N = 12 at lengths ≤ 4), wrong on every vector that does not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.memory_size = 12
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, inputs: torch.Tensor, memory_size: int | None = None) -> torch.Tensor:
        n = self.memory_size if memory_size is None else memory_size
        length = (inputs.shape[1] - 1) // 2
        logits = torch.zeros(inputs.shape[0], inputs.shape[1], inputs.shape[2] - 1)
        kept = min(length, n // 3)  # vectors it can hold at its trained density
        logits[:, length + 1:length + 1 + kept] = (2 * inputs[:, :kept, :-1] - 1) * self.scale
        return logits


def test_default_memory_does_not_starve_a_trained_like_model():
    from memnet.evaluation import evaluate_length, slots_for
    from memnet.lightning import SequenceModule
    from tasks.algorithmic import CopyTask

    task, model = CopyTask(width=3, min_length=1, max_length=4), SequenceModule(_SlotHungryCopier()).eval()
    for length in (4, 10, 25):
        slots = slots_for(task, length, 12, None)
        row, _ = evaluate_length(model, task, length, slots=slots, num_sequences=4, batch_size=2, seed=0,
                                 device=torch.device("cpu"))
        assert row["slots"] == slots and row["bit_errors_per_seq"] == 0, row
    # the old rule, N = max(trained N, needed) = 12 at length 10, starves it
    starved, _ = evaluate_length(model, task, 10, slots=12, num_sequences=4, batch_size=2, seed=0,
                                 device=torch.device("cpu"))
    assert starved["bit_errors_per_seq"] > 5


def test_a_costly_length_warns_and_shows_progress(capsys):
    from memnet.evaluation import COSTLY_STEP_SLOTS, cost_warning, evaluate_length, slots_for
    from memnet.lightning import SequenceModule
    from tasks.algorithmic import CopyTask

    task = CopyTask(width=8, max_length=20)
    warning = cost_warning(task, 100000, slots_for(task, 100000, 128, None), 64, 256, 20)
    assert warning and "length 100000 runs 200,001 steps over N=640000 slots" in warning and "GiB" in warning
    assert cost_warning(task, 120, 128, 64, 256, 20) is None
    assert 120 * 128 * 2 < COSTLY_STEP_SLOTS
    small = CopyTask(width=3, max_length=4)
    evaluate_length(SequenceModule(_SlotHungryCopier()).eval(), small, 4, slots=12, num_sequences=5, batch_size=2,
                    seed=0, device=torch.device("cpu"), progress=True)
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == [
        "length 4, N=12: 2/5 sequences", "length 4, N=12: 4/5 sequences", "length 4, N=12: 5/5 sequences"]


class _OverflowingCopier(_SlotHungryCopier):
    """A copier that overflows to NaN after its outputs: on unscored padding for every sequence, and on a
    scored step of the first sequence of each batch when ``on_scored``."""

    def __init__(self, on_scored: bool) -> None:
        super().__init__()
        self.on_scored = on_scored

    def forward(self, inputs: torch.Tensor, memory_size: int | None = None) -> torch.Tensor:
        logits = super().forward(inputs, memory_size)
        logits[:, 0] = float("nan")  # the input phase: never scored
        if self.on_scored:
            logits[0, -1, 0] = float("inf")
        return logits


def test_nan_outputs_off_the_scored_steps_cost_nothing_and_on_them_are_named():
    from memnet.evaluation import evaluate_length, markdown_table
    from memnet.lightning import SequenceModule
    from tasks.algorithmic import CopyTask

    task = CopyTask(width=3, min_length=1, max_length=4)
    clean, _ = evaluate_length(SequenceModule(_OverflowingCopier(False)).eval(), task, 4, slots=12, num_sequences=4,
                               batch_size=2, seed=0, device=torch.device("cpu"))
    assert clean["bits_per_seq"] < 1e-3 and "nonfinite_sequences" not in clean
    row, _ = evaluate_length(SequenceModule(_OverflowingCopier(True)).eval(), task, 4, slots=12, num_sequences=4,
                             batch_size=2, seed=0, device=torch.device("cpu"))
    assert row["nonfinite_sequences"] == 2 and row["bits_per_seq"] != row["bits_per_seq"]  # NaN, and said why
    assert "| sequences with non-finite outputs |" in markdown_table([clean, row])


def _conditional_gru(task, hidden_size: int):
    """A conditional (output-recurrent) GRU model of ``task`` and its module, in eval mode."""
    from functools import partial

    from memnet.controllers import GRUController
    from memnet.lightning import ConditionalSequenceModule
    from memnet.models.recurrent import RecurrentModel

    net = RecurrentModel(task.input_size, task.output_size, controller=partial(GRUController, hidden_size=hidden_size),
                         conditional=True)
    return net, ConditionalSequenceModule(net).eval()


def test_a_conditional_model_is_scored_as_validation_scores_it_and_free_running_beside():

    from memnet.evaluation import evaluate_length, markdown_table
    from tasks.sequences import MarkovBitsTask

    torch.manual_seed(0)
    task = MarkovBitsTask(width=2, min_length=3, max_length=6)
    net, model = _conditional_gru(task, hidden_size=4)
    row, batch = evaluate_length(model, task, 6, slots=None, num_sequences=4, batch_size=4, seed=0,
                                 device=torch.device("cpu"))
    with torch.no_grad():
        forced = metrics.bits_per_sequence(net(batch["inputs"], targets=batch["targets"]), batch["targets"],
                                           batch["mask"]).mean()
        free = metrics.bits_per_sequence(net(batch["inputs"]), batch["targets"], batch["mask"]).mean()
    assert row["bits_per_seq"] == pytest.approx(float(forced), rel=1e-6)  # was the free-running cost
    assert row["free_bits_per_seq"] == pytest.approx(float(free), rel=1e-6) and forced != free
    assert "free-running bits per sequence" in markdown_table([row])


def test_a_token_task_of_an_encoder_decoder_is_refused_naming_memnet_test(tmp_path, monkeypatch, capsys):
    from functools import partial

    from memnet.cli import evaluate as evaluate_module
    from memnet.controllers import GRUController
    from memnet.lightning import Seq2SeqModule
    from memnet.models.seq2seq import Seq2Seq
    from tasks.algorithmic import AlgorithmicDataModule
    from tasks.sequences import ReverseTask

    task = ReverseTask(num_symbols=3, min_length=1, max_length=3)
    net = Seq2Seq(task.input_size, task.output_size, embedding_size=4, encoder=partial(GRUController, hidden_size=5),
                  decoder=partial(GRUController, hidden_size=5))
    built = Seq2SeqModule(net), AlgorithmicDataModule(task=task, batch_size=2)
    monkeypatch.setattr(evaluate_module, "build", lambda *args, **kwargs: built)
    (tmp_path / "x.ckpt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:  # was KeyError: 'mask', a traceback
        memnet_main(["evaluate", "--ckpt_path", str(tmp_path / "x.ckpt"), "--config", str(tmp_path / "config.yaml"),
                     "--lengths", "3", "--out", str(tmp_path / "evaluation")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ReverseTask is a token task of an encoder-decoder" in err and "memnet test" in err
    assert not (tmp_path / "evaluation").exists()  # nothing written


def test_a_conditional_model_runs_free_where_scored_in_the_evaluation():
    """On copy, the free-running cost fed back the untrained predictions of the input phase (unscored); it is fed
    the targets there, as validation runs it free."""

    from memnet.evaluation import evaluate_length
    from tasks.algorithmic import CopyTask

    torch.manual_seed(1)
    task = CopyTask(width=3, min_length=1, max_length=5)
    net, model = _conditional_gru(task, hidden_size=5)
    row, batch = evaluate_length(model, task, 5, slots=None, num_sequences=4, batch_size=4, seed=0,
                                 device=torch.device("cpu"))
    with torch.no_grad():
        free = net(batch["inputs"], targets=batch["targets"], mask=batch["mask"])
        fed_guesses = net(batch["inputs"])
    assert row["free_bits_per_seq"] == pytest.approx(
        float(metrics.bits_per_sequence(free, batch["targets"], batch["mask"]).mean()), rel=1e-6)
    assert row["free_bits_per_seq"] != pytest.approx(
        float(metrics.bits_per_sequence(fed_guesses, batch["targets"], batch["mask"]).mean()), rel=1e-3)


REPEAT_TASK = {"class_path": "tasks.algorithmic.RepeatCopyTask",
               "init_args": {"width": 3, "min_length": 1, "max_length": 3, "min_repeats": 1, "max_repeats": 5}}


@pytest.fixture(scope="module")
def trained_repeat(tmp_path_factory):
    """A folder with a 2-step NTM repeat-copy run (lengths 1–3, repeats 1–5: the count is (r − 3) / √2)."""
    folder = tmp_path_factory.mktemp("evaluate_repeats")
    (folder / "tiny.yaml").write_text(tiny_run(trainer={"default_root_dir": "run"},
                                               data={"task": REPEAT_TASK, "val_lengths": [3]}))
    run_in(folder, "fit", "--config", "tiny.yaml")
    return folder


def test_repeats_gives_every_sequence_of_a_row_exactly_that_count(trained_repeat, monkeypatch, capsys):
    # the NTM paper's second direction of generalisation (§4.2, Fig. 9): more repeats than trained; the count was
    # drawn per sequence over the training counts at every length, with no way to ask for 12 of a 1–5 model
    import memnet.cli.evaluate as evaluation
    from memnet.protocols import read_evaluation

    scored = []
    drawn = evaluation.sequence_batches

    def recorded(task, generator, length, num_sequences, batch_size):
        for batch in drawn(task, generator, length, num_sequences, batch_size):
            scored.append(batch)
            yield batch

    monkeypatch.setattr(evaluation, "sequence_batches", recorded)
    evaluate(trained_repeat, "--ckpt_path", "latest", "--lengths", "2", "4", "--repeats", "3", "12",
             "--num_sequences", "3", "--batch_size", "2", "--out", "repeats")
    printed = capsys.readouterr().out
    assert "| length | repeats | slots | bits per sequence |" in printed
    pairs = [(2, 3), (2, 12), (4, 3), (4, 12)]
    assert len(scored) == 2 * len(pairs)  # 2 + 1 sequences a row
    width = 3
    for (length, repeats), batches in zip(pairs, zip(scored[::2], scored[1::2], strict=True), strict=True):
        batch = join_batches(list(batches))
        inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
        assert inputs.shape[:2] == (3, length + 2 + length * repeats), (length, repeats)
        # the count channel on the delimiter's step, normalised over the TRAINED counts 1–5, beyond them too
        assert torch.allclose(inputs[:, length, width + 1], torch.full((3,), (repeats - 3) / 2**0.5)), (length, repeats)
        assert torch.equal(inputs[:, length, width], torch.ones(3))
        bits = inputs[:, :length, :width]
        start = length + 1
        assert torch.equal(targets[:, start:start + length * repeats, :width], bits.repeat(1, repeats, 1))
        assert torch.equal(targets[:, start + length * repeats, :width], torch.zeros(3, width))
        end = torch.zeros(3, inputs.shape[1])
        end[:, start + length * repeats] = 1
        assert torch.equal(targets[..., width], end)  # the end marker after exactly R copies
        assert torch.equal(mask[:, :start], torch.zeros(3, start)) and torch.equal(mask[:, start:], torch.ones(
            3, length * repeats + 1))  # all L·R + 1 steps scored
    # the same sequences at every count of a length
    assert torch.equal(scored[0]["inputs"][:, :2, :width], scored[2]["inputs"][:, :2, :width])

    results = read_evaluation(trained_repeat / "repeats" / "results.json")
    assert [(row["length"], row["repeats"]) for row in results["lengths"]] == pairs
    assert results["repeats"] == [3, 12] and results["train_repeats"] == [1, 5] and results["train_range"] == [1, 3]
    assert [row["slots"] for row in results["lengths"]] == [7, 7, 10, 10]  # by length alone: ⌈7 · 4 / 3⌉
    assert all(row["sequences"] == 3 for row in results["lengths"])
    with open(trained_repeat / "repeats" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["length"]), int(r["repeats"])) for r in rows] == pairs
    assert list(rows[0])[:3] == ["length", "repeats", "slots"]


def test_without_repeats_nothing_about_them_is_written(trained_repeat, capsys):
    evaluate(trained_repeat, "--ckpt_path", "latest", "--lengths", "2", "--num_sequences", "2", "--out", "drawn")
    assert "| length | slots | bits per sequence |" in capsys.readouterr().out
    results = json.loads((trained_repeat / "drawn" / "results.json").read_text())
    assert "repeats" not in results and "train_repeats" not in results and "repeats" not in results["lengths"][0]
    assert (trained_repeat / "drawn" / "table.csv").read_text().startswith("length,slots,")


def test_an_earlier_row_of_another_repeat_count_is_said_before_the_run(trained_repeat, capsys):
    args = ("--ckpt_path", "latest", "--lengths", "2", "--num_sequences", "1", "--out", "counts")
    evaluate(trained_repeat, *args, "--repeats", "3", "12")
    capsys.readouterr()
    evaluate(trained_repeat, *args, "--repeats", "3")
    assert "results.json holds length(s) 2 (12 repeats), which this evaluation replaces" in capsys.readouterr().err
    evaluate(trained_repeat, *args)
    assert "results.json holds length(s) 2 (3 repeats), which" in capsys.readouterr().err


@pytest.mark.parametrize("repeats, message", [
    (["0"], "--repeats must be positive integers (repeat counts ≥ 1), got [0]"),
    (["3", "-2"], "--repeats must be positive integers (repeat counts ≥ 1), got [-2]"),
    (["3", "3"], "--repeats names count(s) 3 more than once"),
])
def test_repeat_counts_below_one_or_named_twice_are_refused(trained_repeat, capsys, repeats, message):
    with pytest.raises(SystemExit):
        evaluate(trained_repeat, "--ckpt_path", "latest", "--lengths", "2", "--repeats", *repeats, "--out", "bad")
    assert message in capsys.readouterr().err
    assert not (trained_repeat / "bad").exists()


def test_repeats_for_a_task_without_a_repeat_count_is_refused(trained, capsys):
    with pytest.raises(SystemExit):
        evaluate(trained, "--ckpt_path", "latest", "--lengths", "2", "--repeats", "3", "12", "--out", "norepeats")
    err = capsys.readouterr().err
    assert "memnet evaluate: --repeats 3 12: CopyTask has no repeat count" in err and "drop --repeats" in err
    assert not (trained / "norepeats").exists()


def test_the_error_plot_draws_a_line_per_repeat_count_or_the_repeats_of_one_length(tmp_path, monkeypatch):
    from memnet import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure_atomic", lambda fig, path, **_: drawn.update(fig=fig))
    row = {"bits_per_seq": 1.0, "bit_errors_per_seq": 0.5, "sequences": 2, "exact_pct": 0.0}
    grid = [{"length": n, "repeats": r, **row} for n in (2, 4) for r in (3, 12)]
    plots.plot_error_vs_length(tmp_path / "grid.png", rows=grid, train_range=(1, 3), train_repeats=(1, 5))
    ax = drawn["fig"].axes[0]
    assert [line.get_label() for line in ax.lines] == ["3 repeats", "12 repeats"]
    assert [list(line.get_xdata()) for line in ax.lines] == [[2, 4], [2, 4]] and ax.get_xlabel() == "length"
    one_length = [{"length": 10, "repeats": r, **row} for r in (20, 5, 10)]
    plots.plot_error_vs_length(tmp_path / "one.png", rows=one_length, train_range=(1, 3), train_repeats=(1, 5))
    ax = drawn["fig"].axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[5, 10, 20]] and ax.get_xlabel() == "repeats"
    assert "training repeats 1–5" in [patch.get_label() for patch in ax.patches]


def test_the_suite_does_not_read_rows_of_fixed_repeats_as_one_score_a_length(tmp_path):
    from types import SimpleNamespace

    from memnet.cli.suite.evaluators import EvaluationUnavailable, _algorithmic_collect

    (tmp_path / "evaluation").mkdir()
    row = {"bits_per_seq": 1.0, "bit_errors_per_seq": 0.5, "sequences": 2}
    results = {"lengths": [{"length": 2, "repeats": r, **row} for r in (3, 12)], "train_range": [1, 3]}
    (tmp_path / "evaluation" / "results.json").write_text(json.dumps(results))
    with pytest.raises(EvaluationUnavailable, match="fixed repeat counts"):
        _algorithmic_collect(SimpleNamespace(folder=tmp_path), {})
