"""Every run has its own folder under runs/, with or without a logger, and a resumed run continues
its own folder (and W&B run); resuming a finished run leaves runs/latest.json alone."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path

import pytest
import torch
import wandb

from memnet.cli import main
from memnet.utils import LEGACY_PARTIAL_AGE

ROOT = Path(__file__).resolve().parents[1]
SMALL = str(ROOT / "configs" / "ntm" / "copy_small.yaml")
TINY = [
    "--trainer.max_steps=4", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
    "--model.init_args.net.init_args.memory_size=6", "--model.init_args.net.init_args.controller.init_args.hidden_size=5",
    "--data.init_args.batches_per_epoch=2", "--data.init_args.batch_size=2", "--data.init_args.val_size=2",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield
    wandb.finish()  # a W&B run left open would be reused by the next test's logger, in another folder


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _latest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "latest.json").read_text())


def test_without_a_logger_each_run_has_its_own_folder_under_runs(tmp_path):
    folders = []
    for seed in (1, 2):
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", f"--seed_everything={seed}"])
        folders.append(Path(_latest(tmp_path)["run_dir"]).resolve())
    assert folders[0] != folders[1]
    for folder, seed in zip(folders, (1, 2)):
        assert folder.parent == (tmp_path / "runs" / "memnet").resolve()
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "summary.json").is_file()
        assert f"seed_everything: {seed}" in (folder / "config.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the working folder itself


def test_logger_true_means_memnets_default_logger(tmp_path):
    # Lightning's own default logger put the run (and its checkpoints) in ./lightning_logs/version_0/
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true"])
    run = Path(_latest(tmp_path)["run_dir"]).resolve()
    assert run.parent == (tmp_path / "runs" / "memnet").resolve()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "wandb").glob(f"offline-run-*-{run.name}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def _steps(folder: Path) -> list[int]:
    """The steps of the train/loss_step rows a CSVLogger wrote under ``folder``."""
    lines = next(folder.rglob("metrics.csv")).read_text().splitlines()
    header = lines[0].split(",")
    column, step = header.index("train/loss_step"), header.index("step")
    return [int(row.split(",")[step]) for row in lines[1:] if row.split(",")[column]]


CSV = ["--trainer.logger=pytorch_lightning.loggers.CSVLogger", "--trainer.log_every_n_steps=1"]


def test_resumed_run_logs_the_steps_of_an_uninterrupted_run(tmp_path):
    main(["fit", "--config", SMALL, *TINY, *CSV, "--trainer.logger.init_args.save_dir=whole", "--trainer.max_steps=6"])
    main(["fit", "--config", SMALL, *TINY, *CSV, "--trainer.logger.init_args.save_dir=first"])
    last = next((tmp_path / "first").rglob("last.ckpt"))
    main(["fit", "--config", SMALL, *TINY, *CSV, "--trainer.logger.init_args.save_dir=second", "--trainer.max_steps=6",
          "--ckpt_path", str(last)])
    assert _steps(tmp_path / "whole") == [0, 1, 2, 3, 4, 5]
    assert _steps(tmp_path / "second") == [4, 5]  # was [5, 6]: one ahead after the resume
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith("last")) == ["last.ckpt"]  # no last-v1
    assert torch.load(last, weights_only=False)["global_step"] == 6


def test_a_resumed_run_does_not_rewrite_its_checkpoint_before_validating(tmp_path, monkeypatch):
    """Resumed from a checkpoint written at an epoch's end, the run replays that end before any validation; it
    used to write last.ckpt again there without the val/* metrics (and warn that val/loss was missing)."""
    from memnet.callbacks import LastAndBestCheckpoint

    saves = []
    save_last = LastAndBestCheckpoint._save_last_checkpoint

    def spy(self, trainer, candidates):
        saves.append((trainer.global_step, "val/loss" in trainer.callback_metrics))
        return save_last(self, trainer, candidates)

    monkeypatch.setattr(LastAndBestCheckpoint, "_save_last_checkpoint", spy)
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    assert saves == [(2, True), (4, True)]
    saves.clear()
    last = _latest(tmp_path)["last_checkpoint"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not find the monitored key.*")
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--trainer.max_steps=6", "--ckpt_path", last])
    assert saves == [(6, True)]  # was [(4, False), (6, True)]
    assert "val/loss" in torch.load(last, weights_only=False)["memnet_metrics"]


def test_resumed_run_continues_its_folder_and_its_wandb_run(tmp_path, capsys):
    main(["fit", "--config", SMALL, *TINY])
    first = _latest(tmp_path)
    run = Path(first["run_dir"])
    killed = run / "checkpoints" / ".best-killed.ckpt.partial"
    killed.write_bytes(b"half a checkpoint")
    os.utime(killed, (time.time() - LEGACY_PARTIAL_AGE - 60,) * 2)  # stale: an earlier memnet's save, killed
    wandb.finish()  # as at the end of a process; else the next logger of this process reuses the open run
    main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--ckpt_path", first["last_checkpoint"]])
    second = _latest(tmp_path)
    assert Path(second["run_dir"]).resolve() == run.resolve()
    assert Path(second["last_checkpoint"]).resolve() == Path(first["last_checkpoint"]).resolve()
    assert [p.name for p in (tmp_path / "runs" / "memnet").iterdir()] == [run.name]
    assert not list(run.glob("checkpoints/.*.partial")), "a stale .partial file survived the next save"
    wandb_runs = sorted(p.name for p in (tmp_path / "runs" / "wandb").glob("offline-run-*"))
    # same W&B id; W&B names a folder offline-run-<time>-<id>, with "-1" added when both start in one second
    same_id = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run.name)}(-\d+)?")
    assert len(wandb_runs) == 2 and all(same_id.fullmatch(name) for name in wandb_runs), wandb_runs
    capsys.readouterr()
    # resuming the finished run: nothing to train, no new folder, runs/latest.json untouched
    before = (tmp_path / "runs" / "latest.json").read_text()
    main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--ckpt_path", second["last_checkpoint"]])
    assert "nothing to train: the checkpoint is already at step 6" in capsys.readouterr().out
    assert (tmp_path / "runs" / "latest.json").read_text() == before
    assert [p.name for p in (tmp_path / "runs" / "memnet").iterdir()] == [run.name]


def _logged_ids(save_dir: Path) -> list[str]:
    """The W&B run id of every run logged under ``save_dir/wandb`` (``*run-*/run-<id>.wandb``), in start order."""
    return [p.stem.removeprefix("run-") for p in sorted(save_dir.glob("wandb/*run-*/run-*.wandb"))
            if not p.parent.is_symlink()]


def test_a_suite_run_resumed_by_hand_continues_its_own_wandb_run(tmp_path):
    """A run whose folder is not named after its W&B run (``memnet suite``'s ``<experiment>/seed_0``, W&B's files
    in the folder itself), resumed with ``fit --ckpt_path <run>/checkpoints/last.ckpt``: the folder's name was taken
    as the W&B id, so every experiment's seed 0 resumed by hand logged on to one W&B run, ``seed_0``."""
    run = tmp_path / "suite" / "ntm-copy" / "seed_0"
    main(["fit", "--config", SMALL, *TINY, f"--checkpoint.dirpath={run / 'checkpoints'}",
          f"--trainer.logger.init_args.save_dir={run}"])  # as memnet suite trains it
    (first,) = _logged_ids(run)
    wandb.finish()  # as at the end of a process
    # W&B's files of a relative save_dir go where W&B's service process started, a former test's folder: absolute
    hand = [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    main(["fit", "--config", SMALL, *TINY, *hand, "--trainer.max_steps=6", "--ckpt_path",
          str(run / "checkpoints/last.ckpt")])
    assert _logged_ids(tmp_path / "runs") == [first]  # was ["seed_0"]
    assert Path(_latest(tmp_path)["run_dir"]).resolve() == run.resolve()
    wandb.finish()
    # a run trained without W&B names none to go on with: a new W&B run, not one named after its folder
    bare = tmp_path / "bare" / "seed_0"
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", f"--checkpoint.dirpath={bare / 'checkpoints'}"])
    main(["fit", "--config", SMALL, *TINY, *hand, "--trainer.max_steps=6", "--ckpt_path",
          str(bare / "checkpoints/last.ckpt")])
    ids = _logged_ids(tmp_path / "runs")
    assert len(ids) == 2 and ids[0] == first and ids[1] not in (first, "seed_0"), ids


def test_the_saved_config_is_what_trained_and_starts_a_new_run(tmp_path, capsys):
    """A resumed run's config.yaml holds ckpt_path null (reused, it starts a new run), and resuming a finished run
    with other settings leaves it as it was: those settings never trained."""
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    run = Path(_latest(tmp_path)["run_dir"])
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--trainer.max_steps=6",
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    saved = (run / "config.yaml").read_text()
    assert "ckpt_path: null" in saved and "max_steps: 6" in saved
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--trainer.max_steps=6",
          "--model.init_args.optimizer.init_args.lr=0.5", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "nothing to train" in capsys.readouterr().out
    assert (run / "config.yaml").read_text() == saved
    main(["fit", "--config", str(run / "config.yaml"), "--trainer.max_steps=2"])  # a new run, from step 0
    assert Path(_latest(tmp_path)["run_dir"]) != run and torch.load(
        _latest(tmp_path)["last_checkpoint"], weights_only=False)["global_step"] == 2


def test_the_loggers_get_the_whole_resolved_config(tmp_path):
    """W&B's run config (here a CSVLogger's hparams.yaml, through the same log_hyperparams) holds the network,
    optimiser and data settings that ran, overrides included, not only the module's own arguments."""
    import yaml

    main(["fit", "--config", SMALL, *TINY, *CSV, "--trainer.logger.init_args.save_dir=csv"])
    logged = yaml.safe_load(next((tmp_path / "csv").rglob("hparams.yaml")).read_text())
    assert logged["model"]["init_args"]["net"]["init_args"]["controller"]["init_args"]["hidden_size"] == 5
    assert logged["data"]["init_args"]["batch_size"] == 2 and logged["trainer"]["max_steps"] == 4


def test_wandb_mode_is_decided_by_the_environment_when_the_logger_is_built(monkeypatch):
    from memnet.callbacks import OfflineFirstWandbLogger
    from memnet.utils import wandb_mode

    for env, mode, offline in ((None, "offline", True), ("online", "online", False), ("disabled", "disabled", False),
                               ("dryrun", "offline", True)):
        if env is None:
            monkeypatch.delenv("WANDB_MODE", raising=False)
        else:
            monkeypatch.setenv("WANDB_MODE", env)
        assert wandb_mode() == mode
        assert OfflineFirstWandbLogger(project="memnet")._offline is offline
    monkeypatch.setenv("WANDB_MODE", "online")
    assert OfflineFirstWandbLogger(project="memnet", offline=True)._offline is True  # given: kept


def test_a_saved_config_does_not_carry_the_wandb_mode_it_ran_in(tmp_path):
    main(["fit", "--config", SMALL, *TINY])
    saved = yaml_load(Path(_latest(tmp_path)["run_dir"]) / "config.yaml")
    assert saved["trainer"]["logger"]["init_args"]["offline"] is None  # not the mode of the first shell


def test_a_run_stopped_before_its_summary_is_finished_from_its_last_checkpoint(tmp_path, capsys):
    """A job preempted after its last checkpoint but before the summary: the requeued fit has nothing to
    train, and writes the summary (with the metrics saved in the checkpoint) instead of failing the run."""
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    first = _latest(tmp_path)
    run = Path(first["run_dir"])
    (run / "summary.json").unlink()
    (tmp_path / "runs" / "latest.json").unlink()
    capsys.readouterr()
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path", first["last_checkpoint"]])
    assert "the run had stopped before writing its summary" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary == _latest(tmp_path)
    assert Path(summary["last_checkpoint"]).resolve() == Path(first["last_checkpoint"]).resolve()
    assert summary["metrics"] and summary["metrics"]["val/loss"] == pytest.approx(first["metrics"]["val/loss"])


def test_a_failed_checkpoint_write_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("memnet: "))
    assert "could not write the checkpoint" in line and ".ckpt:" in line
    assert "No space left on device" in line
    assert not list(tmp_path.rglob("*.partial"))


def test_a_resumed_run_keeps_its_best_checkpoint(tmp_path):
    """The checkpoint folder of a run with a logger is relative (runs/memnet/<id>/checkpoints) and was set absolute on
    a resume, so Lightning took it for another folder and dropped the best score and the top-k: the resumed run's
    first validation became its best checkpoint whatever its score, and the earlier best stayed beside it."""
    main(["fit", "--config", SMALL, *TINY, "--checkpoint.mode=max"])
    first = _latest(tmp_path)
    wandb.finish()  # as at the end of a process
    main(["fit", "--config", SMALL, *TINY, "--checkpoint.mode=max", "--trainer.max_steps=8",
          "--ckpt_path", first["last_checkpoint"]])
    second = _latest(tmp_path)
    states = [torch.load(path, weights_only=False)["callbacks"] for path in (first["last_checkpoint"],
                                                                            second["last_checkpoint"])]
    scores = [next(v for k, v in state.items() if k.startswith("LastAndBestCheckpoint"))["best_model_score"]
              for state in states]
    assert scores[1] >= scores[0]
    bests = list((Path(second["run_dir"]) / "checkpoints").glob("best-*.ckpt"))
    assert len(bests) == 1 and bests[0].resolve() == Path(second["best_checkpoint"]).resolve(), bests


def test_fit_ckpt_path_last_is_refused_naming_the_latest_runs_checkpoint(tmp_path, capsys):
    """Lightning's `--ckpt_path last` looks in the new run's own checkpoint folder, where memnet never has one: it
    warned and trained from scratch. It is refused, naming the latest run's last.ckpt to resume."""
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    last = _latest(tmp_path)["last_checkpoint"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path=last"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("memnet: "))
    assert line.startswith("memnet: --ckpt_path last: Lightning looks for last.ckpt in this run's checkpoint folder")
    assert f"(the latest run's: --ckpt_path {last})" in line
    assert len(list((tmp_path / "runs" / "memnet").iterdir())) == 1  # no second run was started
    # with the folder given, Lightning's `last` is its last.ckpt there: the run resumes
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path=last",
          f"--checkpoint.dirpath={Path(last).parent}", "--trainer.max_steps=6"])
    assert torch.load(last, weights_only=False)["global_step"] == 6


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_stage_ckpt_path_last_best_latest_are_refused_naming_the_latest_runs_files(tmp_path, capsys, command):
    """`memnet test --ckpt_path last` warned that there was no last checkpoint and scored the untrained weights,
    exit 0; `best` stopped with a traceback; `latest` said only that no file is called so. Each is refused before
    a W&B run starts, naming the latest run's best and last checkpoints."""
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    latest = _latest(tmp_path)
    for special in ("last", "best", "latest"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", SMALL, *TINY, "--trainer.logger=true", f"--ckpt_path={special}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        line = next(line for line in err.splitlines() if line.startswith("memnet: "))
        assert line.startswith(f"memnet: --ckpt_path {special}: memnet {command} takes a checkpoint file"), line
        assert f"best: {latest['best_checkpoint']}, last: {latest['last_checkpoint']}" in line, line
    assert not (tmp_path / "runs" / "wandb").exists()  # no W&B run was started
    # with the folder given, Lightning's `last` is its last.ckpt there
    main([command, "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path=last",
          f"--checkpoint.dirpath={Path(latest['last_checkpoint']).parent}", "--trainer.limit_predict_batches=1"])


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_stage_without_ckpt_path_is_refused_unless_the_untrained_weights_are_asked_for(tmp_path, capsys, command):
    """`memnet test --config X` with no --ckpt_path scored the config's freshly initialised weights and printed their
    numbers, exit 0: a wrong number to take for a result. It is refused before a W&B run starts; `--ckpt_path
    untrained` scores them on purpose."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", SMALL, *TINY, "--trainer.logger=true"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    expected = (f"memnet: no --ckpt_path: memnet {command} would score the config's untrained, freshly initialised "
                "weights; give --ckpt_path a checkpoint file; runs/latest.json names none (or --ckpt_path untrained "
                "to score the untrained weights on purpose)")
    assert [line for line in err.splitlines() if line.startswith("memnet: ")] == [expected], err
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run
    main([command, "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path", "untrained",
          "--trainer.limit_predict_batches=1"])
    out = capsys.readouterr().out
    assert ("bit errors" if command == "predict" else f"{'val' if command == 'validate' else 'test'}/loss") in out


def test_fit_ckpt_path_best_is_refused_in_one_line(tmp_path, capsys):
    """`memnet fit --ckpt_path best` stopped with Lightning's traceback (a fresh ModelCheckpoint has no best yet)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true", "--ckpt_path=best"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if line.startswith("memnet: "))
    assert line.startswith("memnet: --ckpt_path best: memnet fit takes a checkpoint file"), line
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run


def test_fit_ckpt_path_untrained_is_refused_saying_what_the_word_is_for(tmp_path, capsys):
    """`memnet fit --ckpt_path untrained` was told only 'no checkpoint file at untrained': the word asks validate /
    test / predict for the config's fresh weights, which fit starts from without --ckpt_path; it says so."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true", "--ckpt_path=untrained"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    expected = ("memnet: --ckpt_path untrained: memnet fit starts from the config's freshly initialised weights "
                "without --ckpt_path; 'untrained' is for memnet validate / test / predict, to score those weights on "
                "purpose (give fit --ckpt_path a checkpoint file to resume from it)")
    assert [line for line in err.splitlines() if line.startswith("memnet: ")] == [expected], err
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_a_missing_checkpoint_is_refused_before_a_wandb_run_starts(tmp_path, capsys, command):
    """A mistyped --ckpt_path was found missing only when Lightning loaded it, after W&B had opened an offline
    run: every such mistake left an empty runs/wandb/offline-run-* behind, for `wandb sync` to upload."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", SMALL, *TINY, "--trainer.logger=true", "--ckpt_path", "runs/nope.ckpt"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "memnet: --ckpt_path: no checkpoint file at runs/nope.ckpt" in err, err
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_hpc_without_an_hpc_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """`--ckpt_path hpc` with no hpc_ckpt_<n>.ckpt stopped with Lightning's ValueError traceback ("`.fit(ckpt_path=
    "hpc")` is set but no HPC checkpoint was found"), exit 1; it is one line before a W&B run starts, exit 2. With
    one in the trainer's default_root_dir, Lightning loads it as before."""
    for command in ("fit", "test"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", SMALL, *TINY, "--trainer.logger=true", "--ckpt_path", "hpc"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        expected = (f"memnet: --ckpt_path hpc: no HPC checkpoint (hpc_ckpt_<n>.ckpt, which Lightning writes when SLURM "
                    f"stops a job to requeue it) in {tmp_path}, trainer.default_root_dir; give --ckpt_path a checkpoint "
                    "file; runs/latest.json names none")
        assert [line for line in err.splitlines() if line.startswith("memnet: ")] == [expected], err
        assert not (tmp_path / "runs").exists()
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(Path(_latest(tmp_path)["last_checkpoint"]).read_bytes())
    capsys.readouterr()
    main(["test", "--config", SMALL, *TINY, "--trainer.logger=false", "--ckpt_path", "hpc"])
    assert "test/loss" in capsys.readouterr().out


def test_the_summaries_are_renamed_into_place(tmp_path, monkeypatch):
    """summary.json and runs/latest.json are written beside and renamed onto their names (two runs of a suite
    ending together write latest.json at once; `--ckpt_path latest` must never read half of it)."""
    import os

    from memnet.cli import lightning_cli

    replaced = []
    real = os.replace
    monkeypatch.setattr(lightning_cli.os, "replace", lambda src, dst: (replaced.append(Path(dst).name), real(src, dst)))
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    assert {"summary.json", "latest.json"} <= set(replaced)
    assert not list(tmp_path.rglob("*.partial"))
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"].endswith("last.ckpt")


def test_a_run_resumed_after_its_last_validation_ends_with_the_summary_of_the_unbroken_run(tmp_path):
    """A run that ends between two validations (max_steps 3 of 2-batch epochs; max_time alike) reports the last
    validation's scores, as Lightning keeps them; resumed after that validation (a kill at step 3, from the
    checkpoint of step 2), it reported none: its summary.json had no val/* (a suite left the seed out of the
    val/loss mean, and out of a selection by a val/ metric), nor had the checkpoints it wrote."""
    common = ["--config", SMALL, *TINY, "--trainer.logger=false"]
    main(["fit", *common, "--trainer.max_steps=3", f"--checkpoint.dirpath={tmp_path / 'whole' / 'checkpoints'}"])
    main(["fit", *common, "--trainer.max_steps=2", f"--checkpoint.dirpath={tmp_path / 'halves' / 'checkpoints'}"])
    main(["fit", *common, "--trainer.max_steps=3", f"--checkpoint.dirpath={tmp_path / 'halves' / 'checkpoints'}",
          "--ckpt_path", str(tmp_path / "halves" / "checkpoints" / "last.ckpt")])
    whole, halves = (json.loads((tmp_path / name / "summary.json").read_text())["metrics"]
                     for name in ("whole", "halves"))
    assert "val/loss" in whole and "val/bits_per_seq" in whole
    assert halves == whole
    saved = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["memnet_metrics"]
             for name in ("whole", "halves")]
    assert saved[1] == saved[0]


def test_a_config_write_cut_short_leaves_the_runs_config_whole(tmp_path, capsys):
    """A resumed run rewrites its config.yaml; written in place, a disk that filled meanwhile left it cut short
    (2,862 bytes to 600, 'line 29: not valid YAML'), and no checkpoint of the run could be evaluated or exported."""
    import resource

    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    first = _latest(tmp_path)
    config = Path(first["run_dir"]) / "config.yaml"
    saved = config.read_text()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(saved) // 3, hard))  # the disk is full a third of the way in
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--trainer.logger=false",
                  "--ckpt_path", first["last_checkpoint"]])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert config.read_text() == saved
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"memnet: could not write the run's config {config}: File too large" in err
    assert not list(tmp_path.rglob("*.partial"))


def test_a_failed_summary_write_is_one_line(tmp_path, capsys, monkeypatch):
    """A full disk when the finished run writes summary.json was a traceback ending in 'OSError: [Errno 28] No space
    left on device', naming no file; it is one line naming the file and the checkpoint that finishes the run."""
    import errno

    from memnet.cli import lightning_cli

    real = lightning_cli.write_text_atomic

    def full_disk(path, text):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(lightning_cli, "write_text_atomic", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (last,) = tmp_path.glob("runs/memnet/*/checkpoints/last.ckpt")
    assert (f"memnet: could not write the run's summary {last.parent.parent / 'summary.json'}: No space left on "
            "device (is the disk full or the folder read-only?); the checkpoints are whole; a fit resumed from ") in err
    assert err.rstrip().endswith("last.ckpt writes it")


def test_a_write_removes_the_partial_files_killed_writers_of_the_same_file_left(tmp_path):
    """A process killed between writing ``.<name>.<...>.<pid>.partial`` and renaming it left that file beside the
    target for ever (a suite's records, summaries, tables). The next write of the same file removes those whose
    writer is gone (a pid no process has, on this host, in a file unwritten for 5 minutes); never a live writer's
    (one in another pid namespace, its pid none here, writing now), another host's, another file's, nor one of the
    old naming (no host) newer than an hour."""
    import socket
    import subprocess
    import sys
    import time

    from memnet.utils import write_text_atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    unseen = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                            check=True)  # a pid no process has here: another pid namespace's writer, live there
    dead, live, host = int(gone.stdout), os.getppid(), socket.gethostname()
    target = tmp_path / "record.json"

    def leftover(name: str, age: float = 0.0) -> Path:
        path = tmp_path / name
        path.write_text("half")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    stale = [leftover(f".record.json.{host}.{dead}.partial", age=600), leftover(f".record.json.{dead}.partial", age=7200)]
    kept = [leftover(f".record.json.{host}.{live}.partial"),            # a live writer's
            # a live writer in another pid namespace (a container sharing the folder and the host name): its pid is
            # none here, and its file, removed as it was written, failed its rename
            leftover(f".record.json.{host}.{int(unseen.stdout)}.partial"),
            leftover(f".record.json.other-node.{dead}.partial"),        # another host's: its pid means nothing here
            leftover(f".record.json.{dead}.partial".replace(str(dead), str(dead + 1)), age=60),  # old naming, new
            leftover(f".other.json.{host}.{dead}.partial")]             # another file's
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}"
    assert [path.name for path in stale if path.exists()] == [], "a dead writer's partial file was left"
    assert [path.name for path in kept if not path.exists()] == [], "a partial file that may be live was removed"
