"""The `memnet` command through the real Lightning CLI: fit, validate, test, predict, bad input."""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from memnet.cli import main
from memnet.cli.configs import load_config
from memnet.lightning import SequenceModule
from memnet.optim import LinearStartStepLR

ROOT = Path(__file__).resolve().parents[1]
SMALL = str(ROOT / "configs" / "ntm" / "copy_small.yaml")
TINY = [
    "--trainer.max_steps=4",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.batches_per_epoch=2",
    "--data.init_args.batch_size=4",
    "--data.init_args.val_size=4",
    "--data.init_args.test_size=4",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_fit_writes_checkpoints_config_and_offline_wandb_run_then_validate_test_predict(tmp_path, capsys):
    main(["fit", "--config", SMALL, *TINY])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    last = Path(latest["last_checkpoint"])
    assert last.is_file() and Path(latest["best_checkpoint"]).is_file()
    assert (Path(latest["run_dir"]) / "config.yaml").is_file()
    assert not list(last.parent.glob(".*.partial")), "atomic save left a temporary file"
    # W&B ran offline (no network): its run folder exists under runs/wandb
    offline_runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert offline_runs, "expected an offline W&B run under runs/wandb"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 4
    assert "AlgorithmicDataModule" in checkpoint, "the data stream position must be checkpointed"

    for subcommand in ("validate", "test"):
        main([subcommand, "--config", SMALL, *TINY, "--ckpt_path", str(last)])
    capsys.readouterr()
    main(["predict", "--config", SMALL, *TINY, "--ckpt_path", str(last), "--trainer.limit_predict_batches=1"])
    out = capsys.readouterr().out
    assert "bit errors" in out


def test_validate_and_test_leave_no_run_folder_of_their_own(tmp_path):
    # configs/ntm/copy.yaml draws the memory access (MemoryAccessPlot) at validation; under `memnet validate`
    # it used to draw into a new runs/memnet/<id>/memory_access/ that looked like a run
    config = str(ROOT / "configs" / "ntm" / "copy.yaml")
    tiny = [*TINY, "--trainer.logger=false", "--model.init_args.net.init_args.memory_size=6",
            "--model.init_args.net.init_args.controller.init_args.hidden_size=5"]
    main(["fit", "--config", config, *tiny])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    run = Path(latest["run_dir"])
    assert list((run / "memory_access").glob("*.png")), "fit draws the memory access"
    for subcommand in ("validate", "test"):
        main([subcommand, "--config", config, *tiny, "--ckpt_path", latest["last_checkpoint"]])
    assert [p.name for p in (tmp_path / "runs" / "memnet").iterdir()] == [run.name]


@pytest.mark.parametrize("plugins", [[], ["--trainer.plugins", "pytorch_lightning.plugins.environments.LightningEnvironment"]])
def test_checkpoints_are_written_atomically_whatever_other_plugins_are_given(plugins, monkeypatch):
    from memnet.cli.lightning_cli import AtomicCheckpointIO, MemnetCLI

    synced = []
    monkeypatch.setattr("memnet.cli.lightning_cli.os.fsync", lambda fd: synced.append(fd))
    cli = MemnetCLI(args=["--config", SMALL, "--trainer.logger", "false", *plugins], run=False)
    checkpoint_io = cli.trainer.strategy.checkpoint_io
    assert isinstance(checkpoint_io, AtomicCheckpointIO)  # an unrelated plugin used to drop it
    checkpoint_io.save_checkpoint({"x": torch.ones(2)}, Path("ckpt") / "last.ckpt")
    assert torch.load("ckpt/last.ckpt")["x"].tolist() == [1.0, 1.0] and len(synced) == 2  # the file, then the folder


def test_ckpt_path_on_the_command_line_wins_over_a_config_given_after_it(tmp_path, capsys):
    # a run's config.yaml holds ckpt_path: null; given after --ckpt_path it used to test untrained weights
    main(["fit", "--config", SMALL, *TINY])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    last, config = latest["last_checkpoint"], str(Path(latest["run_dir"]) / "config.yaml")
    scores = []
    for argv in (["--config", config, "--ckpt_path", last], ["--ckpt_path", last, "--config", config]):
        capsys.readouterr()
        main(["test", *argv, *TINY])
        line = next(line for line in capsys.readouterr().out.splitlines() if "test/bits_per_seq " in line)
        scores.append(line.split("│")[2].strip())
    assert scores[0] == scores[1]


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    main(["fit", "--config", SMALL, *TINY])
    last = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--ckpt_path", last])
    last2 = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    assert torch.load(last2, weights_only=False)["global_step"] == 6


def test_a_resumed_run_ends_with_the_weights_of_the_unbroken_run(tmp_path):
    """8 steps in one go, and 4 + 4 through a checkpoint (data stream, Adam, one-cycle schedule, clipping and the
    shipped callbacks restored): the same weights, bit for bit."""
    common = ["--config", SMALL, *TINY, "--trainer.logger=false", "--trainer.limit_val_batches=2"]
    main(["fit", *common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'whole'}"])
    main(["fit", *common, "--trainer.max_steps=4", f"--checkpoint.dirpath={tmp_path / 'halves'}"])
    main(["fit", *common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'halves'}",
          "--ckpt_path", str(tmp_path / "halves" / "last.ckpt")])
    whole, halves = (torch.load(tmp_path / name / "last.ckpt", weights_only=False) for name in ("whole", "halves"))
    assert whole["global_step"] == halves["global_step"] == 8
    assert whole["state_dict"].keys() == halves["state_dict"].keys()
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, halves["state_dict"][name]), name


def test_a_run_resumed_mid_epoch_ends_as_the_unbroken_run_and_logs_its_whole_epoch(tmp_path):
    """8 steps (2 epochs of 4 batches) in one go, and 6 + 2 through the checkpoint written when max_steps stopped the
    first run in the middle of its second epoch: the resumed epoch draws its stream's remaining batches (it drew
    the next epoch's first ones, shifting the stream for the rest of the run) and its logged training values cover
    the whole epoch (they covered the batches after the resume)."""
    common = ["--config", SMALL, *TINY, "--data.init_args.batches_per_epoch=4", "--trainer.log_every_n_steps=1",
              "--trainer.logger=pytorch_lightning.loggers.CSVLogger"]
    main(["fit", *common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'whole'}",
          "--trainer.logger.init_args.save_dir=whole"])
    main(["fit", *common, "--trainer.max_steps=6", f"--checkpoint.dirpath={tmp_path / 'halves'}",
          "--trainer.logger.init_args.save_dir=first"])
    main(["fit", *common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'halves'}",
          "--trainer.logger.init_args.save_dir=second", "--ckpt_path", str(tmp_path / "halves" / "last.ckpt")])
    whole, halves = (torch.load(tmp_path / name / "last.ckpt", weights_only=False) for name in ("whole", "halves"))
    assert whole["global_step"] == halves["global_step"] == 8
    assert whole["AlgorithmicDataModule"] == halves["AlgorithmicDataModule"]
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, halves["state_dict"][name]), name

    def epoch_values(folder: str) -> dict[str, str]:
        rows = [line.split(",") for line in next((tmp_path / folder).rglob("metrics.csv")).read_text().splitlines()]
        keyed = [dict(zip(rows[0], row)) for row in rows[1:]]
        row = next(r for r in keyed if r["epoch"] == "1" and r["train/loss_epoch"])
        return {key: value for key, value in row.items() if key.startswith("train/") and key.endswith("_epoch")}

    unbroken, resumed = epoch_values("whole"), epoch_values("second")
    assert {"train/loss_epoch", "train/bits_per_seq_epoch"} <= set(unbroken)
    assert resumed == unbroken


def test_a_resume_with_another_data_seed_is_refused_and_a_new_length_range_is_taken(tmp_path, capsys):
    main(["fit", "--config", SMALL, *TINY])
    last = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--data.init_args.seed=1", "--ckpt_path", last])
    assert exit_info.value.code == 2
    assert "the checkpoint was trained with data seed 0" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="the task's lengths are now 1-7"):
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6", "--ckpt_path", last,
              "--data.init_args.task.init_args.max_length=7", "--data.init_args.val_lengths=[7]"])
    state = torch.load(json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"],
                       weights_only=False)["AlgorithmicDataModule"]
    assert state["length_range"] == [1, 7] and state["task_range"] == [1, 7]


def test_a_checkpoint_is_tested_and_validated_on_the_sets_of_the_data_seed_given(tmp_path, capsys):
    # only a resumed fit continues the checkpoint's stream: validate / test / predict with another data seed were
    # refused as a resume ("resuming continues its stream and validation set"), exit 2
    from memnet.cli.rebuild import run_stage

    main(["fit", "--config", SMALL, *TINY])
    last = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    for subcommand in ("validate", "test", "predict"):
        main([subcommand, "--config", SMALL, *TINY, "--data.init_args.seed=1", "--ckpt_path", last])
    assert "data seed" not in capsys.readouterr().err
    scores = [run_stage("test", last, overrides=[*TINY, f"--data.init_args.seed={seed}"])["test/bits_per_seq"]
              for seed in (0, 1, 0)]
    assert scores[0] == scores[2] != scores[1]  # seed 1's test set, not seed 0's


def test_resuming_past_the_saved_one_cycle_schedule_is_refused_in_one_line(tmp_path, capsys):
    # the saved OneCycleLR comes back with its own total_steps: the config's longer one is not used, and torch
    # failed with a traceback at the first step past the end
    schedule = "--model.init_args.scheduler.init_args.total_steps"
    main(["fit", "--config", SMALL, *TINY, f"{schedule}=4"])
    last = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=8", f"{schedule}=8", "--ckpt_path", last])
    assert exit_info.value.code == 2
    assert "the checkpoint's OneCycleLR schedule is 4 steps long" in capsys.readouterr().err


def test_print_config_shows_linked_sizes_free_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "memnet.models.ntm.NTM" in out and "memory_size: 32" in out


NET = "model.init_args.net.init_args"


@pytest.mark.parametrize(("given", "expected"), [
    ([f"--{NET}.memroy_size=3"],
     f"memnet: --{NET}.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean memory_size?"),
    (["--model.net.memroy_size", "3"],  # jsonargparse's short form, named as typed
     "memnet: --model.net.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean memory_size?"),
    (["--data.init_args.batch_sise=3"],
     ("memnet: --data.init_args.batch_sise: tasks.algorithmic.AlgorithmicDataModule takes no option 'batch_sise'; "
      "did you mean batch_size?")),
    ([f"--{NET}.controller.init_args.hiden_size=3"],  # a class behind a Callable type
     (f"memnet: --{NET}.controller.init_args.hiden_size: memnet.controllers.LSTMController takes no option "
      "'hiden_size'; did you mean hidden_size?")),
    (["--model.init_args.zzz=3"],
     ("memnet: --model.init_args.zzz: memnet.lightning.SequenceModule takes no option 'zzz' (it takes net, "
      "optimizer, scheduler, scheduler_interval, eval_memory_size, nonfinite_grads)")),
])
def test_a_mistyped_key_is_one_line_naming_it_its_class_and_the_close_names(capsys, given, expected):
    """jsonargparse printed ~77 lines of usage, then the key inside a Union error ('Option 'memroy_size' is not
    accepted'), naming neither the option as typed nor a name that is accepted."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"


def test_a_mistyped_key_of_a_class_passing_kwargs_on_is_matched_against_its_bases_options(capsys):
    """OfflineFirstWandbLogger(offline, **kwargs) passes the rest to WandbLogger: 'save_dri' was told 'it takes
    offline', as if save_dir were not an option."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--trainer.logger.init_args.save_dri=x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("memnet: --trainer.logger.init_args.save_dri: memnet.callbacks."
                                       "OfflineFirstWandbLogger takes no option 'save_dri'; did you mean save_dir?\n")


@pytest.mark.parametrize("given", [
    ["--optimizer", "torch.optim.SGD"],
    ["--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1"],
    ["--optimizer.lr", "0.1"],  # was 'torch.optim.Optimizer takes no option 'lr' (it takes params, defaults)'
    ["--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "3"],
    # an option both classes of the Union refuse (LRScheduler's, ReduceLROnPlateau's): the usage, then the Union error
    ["--lr_scheduler.foo", "1"],
])
def test_lightnings_top_level_optimizer_and_scheduler_are_refused_naming_the_models(capsys, given):
    """Lightning's --optimizer replaced SequenceModule.configure_optimizers: lstm/copy trained with SGD,
    its config's optimiser and schedule left out without a word (Lightning's warning aside)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "lstm/copy", "--trainer.max_steps=1", "--trainer.logger=false", *given])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    key = given[0].partition(".")[0]
    assert err.startswith(f"memnet: {key}: memnet's optimiser and schedule are the model's, model.init_args."
                          "optimizer and model.init_args.scheduler") and err.count("\n") == 1


@pytest.mark.parametrize(("given", "expected"), [
    (["--trainer.logger", "false", "--trainer.logger.init_args.x", "1"],
     ("--trainer.logger.init_args.x: trainer.logger holds no class to take option 'x' (it was given --trainer.logger "
      "false); give it a class first, --trainer.logger CLASS_PATH, then its options")),
    (["--trainer.logger=false", "--trainer.logger.save_dir=y"],
     ("--trainer.logger.save_dir: trainer.logger holds no class to take option 'save_dir' (it was given "
      "--trainer.logger false); give it a class first, --trainer.logger CLASS_PATH, then its options")),
    (["--config", "{trainer: {logger: false}}", "--trainer.logger.init_args.save_dir", "y"],
     ("--trainer.logger.init_args.save_dir: trainer.logger holds no class to take option 'save_dir' (the config gives "
      "it none); give it a class first, --trainer.logger CLASS_PATH, then its options")),
])
def test_an_option_of_a_key_that_holds_no_class_is_one_line(capsys, given, expected):
    """The whole usage, then 'Parser key "trainer.logger": Does not validate against any of the Union subtypes', each
    type's refusal ('Expected a <class 'bool'>') and 'Given value: NestedArg(key='x', val='1')'."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given, "--print_config"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: {expected}\n"


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("model: {init_args: {net: {init_args: {memroy_size: 3}}}}",
     f"{NET}.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean memory_size?"),
    ("extends: [ntm/copy_small]\nmodel: {init_args: {net: {init_args: {memroy_size: 3}}}}",  # given as text, resolved
     f"{NET}.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean memory_size?"),
    ("trainer: {callbacks: [{class_path: pytorch_lightning.callbacks.EarlyStopping, init_args: {monitr: x}}]}",
     "trainer.callbacks: pytorch_lightning.callbacks.EarlyStopping takes no option 'monitr'; did you mean monitor?"),
    # the parser's own keys: the usage line, then "error: Group 'trainer' does not accept option 'max_stpes'"
    ("trainer: {max_stpes: 5}", "trainer.max_stpes: the Trainer takes no option 'max_stpes'; did you mean max_steps?"),
    ("trainr: {max_steps: 5}",  # "error: Option 'trainr.max_steps' is not accepted"
     "trainr: memnet fit takes no option 'trainr'; did you mean trainer?"),
    ("seed_everythin: 1", "seed_everythin: memnet fit takes no option 'seed_everythin'; did you mean seed_everything?"),
    ("checkpoint: {monitr: x}",
     "checkpoint.monitr: memnet.callbacks.LastAndBestCheckpoint takes no option 'monitr'; did you mean monitor?"),
])
def test_a_mistyped_key_in_a_config_file_names_the_file(tmp_path, capsys, yaml_text, expected):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml_text + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--config", str(typo)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: --config {typo}: {expected}\n"


TRAINER_TYPO = "trainer.max_stpes: the Trainer takes no option 'max_stpes'; did you mean max_steps?"


@pytest.mark.parametrize(("given", "expected"), [
    (["--config", '{"trainer": {"max_stpes": 5}}'], f"""--config '{{"trainer": {{"max_stpes": 5}}}}': {TRAINER_TYPO}"""),
    (["--config=trainer: {max_stpes: 5}"], f"--config 'trainer: {{max_stpes: 5}}': {TRAINER_TYPO}"),
    (["--trainer", "{max_stpes: 5}"], f"--trainer '{{max_stpes: 5}}': {TRAINER_TYPO}"),
    (["--trainer", "TYPO"], f"--trainer TYPO: {TRAINER_TYPO}"),  # the file's path
    (["--trainer=TYPO"], f"--trainer TYPO: {TRAINER_TYPO}"),
    (["--config", "{model: {init_args: {net: {init_args: {memroy_size: 3}}}}, trainer: {max_steps: 1}}"],
     (f"--config '{{model: {{init_args: {{net: {{init_args: {{memroy_size: 3}}}}}}}}, t'…: {NET}.memroy_size: "
     "memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean memory_size?")),  # a long text, cut short
    # YAML text of several lines, longer than a file name may be (the name of no file: it was OSError's
    # 'File name too long' from Path.exists, a traceback), said on one line
    (["--config", "trainer:\n  max_stpes: 5\n" + "#" * 300 + "\n"],
     f"--config 'trainer: max_stpes: 5 {'#' * 38}'…: {TRAINER_TYPO}"),
])
def test_a_mistyped_key_in_an_inline_config_or_a_groups_file_names_where_it_came_from(tmp_path, capsys, given,
                                                                                      expected):
    """The key was named alone (trainer.max_stpes: ...), as if typed on the command line, for a --config given as
    text and for --trainer FILE or --trainer TEXT; a --config file was named."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_stpes: 5\n")
    given = [arg.replace("TYPO", str(typo)) for arg in given]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: {expected.replace('TYPO', str(typo))}\n"


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("trainer: {max_stpes: 5}", "trainer.max_stpes: the Trainer takes no option 'max_stpes'; did you mean max_steps?"),
    ("trainr: {max_steps: 5}", "trainr: memnet fit takes no option 'trainr'; did you mean trainer?"),
])
def test_a_mistyped_key_in_a_config_file_is_one_line_under_print_config_too(tmp_path, capsys, yaml_text, expected):
    """--print_config checks each file as it is read: "Group 'trainer' does not accept option 'max_stpes'",
    "Option 'trainr.max_steps' is not accepted", after the usage."""
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml_text + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--config", str(typo), "--print_config"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: --config {typo}: {expected}\n"


def test_a_mistyped_key_gets_the_parsers_whole_report_on_request(capsys, monkeypatch):
    monkeypatch.setenv("MEMNET_TRACEBACK", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, f"--{NET}.memroy_size=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "Option 'memroy_size' is not accepted" in err


@pytest.mark.parametrize(("argv", "expected"), [
    # argparse named a required option first: 'the following arguments are required: --ckpt_path, --lengths'
    (["evaluate", "--lenghts", "20"], "memnet evaluate: unrecognized option --lenghts; did you mean --lengths?"),
    # argparse took a beginning of an option for it, --length 20 as --lengths 20
    (["evaluate", "--ckpt_path", "latest", "--length", "20"],
     "memnet evaluate: unrecognized option --length; did you mean --lengths?"),
    (["probe", "a.yaml", "--out", "a.png", "--train-step", "3"],
     "memnet probe: unrecognized option --train-step; did you mean --train-steps?"),
    (["export", "--ckpt_path=x", "--out=y", "--push_to_hub=a/b"],
     "memnet export: unrecognized option --push_to_hub; did you mean --push-to-hub?"),
    (["suite", "run", "suite.yaml", "--jbos", "2"], "memnet suite run: unrecognized option --jbos; did you mean --jobs?"),
    (["data", "babi", "--arhive", "x.tar.gz"], "memnet data babi: unrecognized option --arhive; did you mean --archive?"),
    (["configs", "--frag"], "memnet configs: unrecognized option --frag; did you mean --fragments?"),
    (["figures", "--onyl", "memory"], "memnet figures: unrecognized option --onyl; did you mean --only?"),
    (["babi-table", "--ckpt_path", "x", "--zzz"],
     "memnet babi-table: unrecognized option --zzz (memnet babi-table --help lists its options)"),
])
def test_an_unknown_option_of_memnets_own_commands_is_named_first_with_the_close_ones(tmp_path, monkeypatch, capsys,
                                                                                      argv, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"


@pytest.mark.parametrize(("argv", "expected"), [
    # the Lightning parser: its usage line, a tip naming __main__.py, then "error: argument subcommand: invalid
    # choice: 'fti' (choose from 'fit', 'validate', 'test', 'predict')", none of memnet's own commands among them
    (["fti", "--config", SMALL], "memnet: unknown command 'fti'; did you mean fit?"),
    (["evalute", "--ckpt_path", "x"], "memnet: unknown command 'evalute'; did you mean evaluate?"),
    (["babi_table"], "memnet: unknown command 'babi_table'; did you mean babi-table?"),
    (["zzz"], ("memnet: unknown command 'zzz'; the commands are fit, validate, test, predict, evaluate, probe, figures, "
              "suite, export, configs, data, babi-table (memnet --help)")),
    # argparse: its usage, then "memnet suite: error: argument command: invalid choice: 'rnu' (choose from ...)"
    (["suite", "rnu", "suite.yaml"], "memnet suite: unknown command 'rnu'; did you mean run?"),
    (["suite", "zzz"], ("memnet suite: unknown command 'zzz'; the commands are run, status, report, ensemble "
                       "(memnet suite --help)")),
])
def test_an_unknown_command_is_one_line_with_the_close_ones(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"


@pytest.mark.parametrize(("argv", "expected"), [
    # argparse: "usage: memnet suite [-h] {run,status,report,ensemble} ...", then "memnet suite: error: the
    # following arguments are required: command"
    (["suite"], "memnet suite: a command is needed: run, status, report, ensemble (memnet suite --help)"),
    (["data"], "memnet data: name a data set, one of babi (e.g. `memnet data babi --help`)"),
])
def test_a_command_without_its_subcommand_is_one_line_listing_them(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])  # argparse's help as before
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: memnet {argv[0]}")


@pytest.mark.parametrize(("argv", "expected"), [
    # the parser took 5 for the command: "error: argument subcommand: invalid choice: '5' (choose from 'fit', ...)"
    (["--trainer.max_steps", "5", "fit", "--config", "ntm/copy"],
     "memnet: --trainer.max_steps: options go after the command: memnet fit --trainer.max_steps 5 --config ntm/copy"),
    # "error: unrecognized arguments: --trainer.max_steps=5", under the usage
    (["--trainer.max_steps=5", "fit", "--config", "ntm/copy"],
     "memnet: --trainer.max_steps: options go after the command: memnet fit --trainer.max_steps=5 --config ntm/copy"),
    (["-c", "a.yaml", "--seed_everything", "1", "fit"],  # -c is the parser's own before the command: it stays
     "memnet: --seed_everything: options go after the command: memnet -c a.yaml fit --seed_everything 1"),
    (["--lengths", "20", "evaluate", "--ckpt_path", "x"],
     "memnet: --lengths: options go after the command: memnet evaluate --lengths 20 --ckpt_path x"),
    (["--trainer.max_steps", "5", "--config", "ntm/copy"],
     ("memnet: --trainer.max_steps: no command; options go after one: memnet COMMAND --trainer.max_steps 5 --config "
      "ntm/copy (memnet --help lists the commands)")),
    (["--config", "ntm/copy", "fti"], "memnet: unknown command 'fti'; did you mean fit?"),
])
def test_an_option_before_the_command_is_one_line_saying_it_goes_after(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"


def test_the_parsers_own_options_before_the_command_are_kept(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--print_config", "fit", "--config", SMALL])
    assert exit_info.value.code == 0
    assert "memnet.models.ntm.NTM" in capsys.readouterr().out


def test_a_negative_number_is_still_a_value_of_memnets_own_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--ckpt_path", "latest", "--lengths", "20", "-5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "memnet evaluate: error: --lengths must be positive integers, got [-5]"


@pytest.mark.parametrize(("given", "expected"), [
    # the whole usage, then "error: unrecognized arguments: --trainer.max_stpes 5"
    (["--trainer.max_stpes", "5"], "--trainer.max_stpes: the Trainer takes no option 'max_stpes'; did you mean max_steps?"),
    # the beginning of --trainer.max_steps, taken for it before abbreviations were turned off
    (["--trainer.max_step=5"], "--trainer.max_step: the Trainer takes no option 'max_step'; did you mean max_steps?"),
    (["--checkpoint.monitr", "x"],
     "--checkpoint.monitr: memnet.callbacks.LastAndBestCheckpoint takes no option 'monitr'; did you mean monitor?"),
    (["--seed_everythin", "1"], "--seed_everythin: memnet fit takes no option 'seed_everythin'; did you mean seed_everything?"),
    (["--ckpt_pth", "x"], "--ckpt_pth: memnet fit takes no option 'ckpt_pth'; did you mean ckpt_path?"),
    (["--trainr.max_steps", "5"], "--trainr.max_steps: memnet fit takes no option 'trainr'; did you mean trainer?"),
    (["--print_conf"], "--print_conf: memnet fit takes no option 'print_conf'; did you mean print_config?"),
])
def test_an_option_the_parser_does_not_have_is_one_line_with_the_close_names(capsys, given, expected):
    """Lightning's own options, not a class's: the parser printed its whole usage (~67 lines) and then
    'error: unrecognized arguments: --trainer.max_stpes 5', naming no option that it takes."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given, "--print_config"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: {expected}\n"


def test_an_option_the_parser_does_not_have_is_named_by_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", SMALL, "--ckpt_pth", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "memnet: --ckpt_pth: memnet validate takes no option 'ckpt_pth'; did you mean ckpt_path?\n"


@pytest.mark.parametrize(("given", "last_line"), [
    (["--trainer.devices", "1", "-1"], "error: unrecognized arguments: -1"),  # a negative number is a value
    (["extra"], "error: unrecognized arguments: extra"),  # a stray value, no option
])
def test_a_value_the_parser_does_not_take_is_still_its_own_report(capsys, given, last_line):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given, "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and err.splitlines()[-1] == last_line


@pytest.mark.parametrize(("given", "expected"), [
    (["--trainer.max_steps", "lots"], "--trainer.max_steps: expected an int, got 'lots'"),
    (["--trainer.max_steps=1.5"], "--trainer.max_steps: expected an int, got '1.5'"),
    (["--seed_everything", "abc"], "--seed_everything: expected true/false or an int, got 'abc'"),
    (["--model.init_args.optimizer.init_args.lr", "fast"],  # a Callable's class: Union[float, Tensor]
     "--model.init_args.optimizer.init_args.lr: expected a float, got 'fast'"),
    ([f"--{NET}.memory_size", "big"], f"--{NET}.memory_size: expected an int, got 'big'"),
    (["--model.net.memory_size", "big"], "--model.net.memory_size: expected an int, got 'big'"),  # the short form
    ([f"--{NET}.memory_init", "zz"], f"--{NET}.memory_init: expected one of 'constant', 'learned', 'random', got 'zz'"),
    (["--model.init_args.scheduler_interval", "hourly"],
     "--model.init_args.scheduler_interval: expected one of 'step', 'epoch', got 'hourly'"),
    (["--data.init_args.val_lengths", "abc"], "--data.init_args.val_lengths: expected a list of int or null, got 'abc'"),
    (["--trainer", "{max_steps: lots}"], "--trainer '{max_steps: lots}': trainer.max_steps: expected an int, got 'lots'"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option_what_it_takes_and_the_value(capsys, given, expected):
    """The parser printed its whole usage (~67 lines), then 'Parser key "trainer.max_steps": Expected a <class
    'int'>. Got value: lots', or, for a class's argument, the key at the bottom of a Union error."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *given, "--print_config"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: {expected}\n"


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("trainer:\n  max_steps: lots", "line 2: trainer.max_steps: expected an int, got 'lots'"),
    ("model:\n  init_args:\n    optimizer:\n      init_args:\n        lr: fast",
     "line 5: model.init_args.optimizer.init_args.lr: expected a float, got 'fast'"),
    ("# mine\nmodel: {init_args: {net: {init_args: {memory_size: big}}}}",
     f"line 2: {NET}.memory_size: expected an int, got 'big'"),
    ("extends: [ntm/copy_small]\nmodel: {init_args: {net: {init_args: {memory_init: zz}}}}",
     f"line 2: {NET}.memory_init: expected one of 'constant', 'learned', 'random', got 'zz'"),
])
def test_a_value_of_the_wrong_type_in_a_config_file_names_the_file_and_line(tmp_path, capsys, yaml_text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--config", str(bad)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"memnet: --config {bad}, {expected}\n"


def test_a_value_of_the_wrong_type_in_an_inline_config_is_named_by_its_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, "--config", "{trainer: {max_steps: lots}}", "--print_config"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("memnet: --config '{trainer: {max_steps: lots}}': trainer.max_steps: expected an "
                                       "int, got 'lots'\n")


def test_a_value_whose_type_is_a_class_is_left_to_the_parser():
    """A class that does not import, a path: the parser's own words say more than 'expected a Module'."""
    from memnet.cli.values import bad_value

    text = """Parser key "net":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'torch.nn.modules.module.Module'>]
  Given value: nosuch.Class"""
    assert bad_value(text) is None
    assert bad_value(text.replace("torch.nn.modules.module.Module", "int")).expected == "an int"


def test_a_negative_number_is_a_value_where_the_parser_is_asked():
    from memnet.cli.lightning_cli import MemnetArgumentParser
    from memnet.cli.typos import refused_key

    parser = MemnetArgumentParser()
    assert refused_key("unrecognized arguments: -1", ["-1"], parser) is None
    assert refused_key("unrecognized arguments: -.5 --x", ["-.5", "--x"], parser) is None
    assert refused_key("unrecognized arguments: --x=1 2", ["--x=1", "2"], parser) == ("x", "--x", None)


@pytest.mark.parametrize("option, value, last", [
    ("--trainer.max_steps", "lots", "  Expected a <class 'int'>. Got value: lots"),  # a value of the wrong type
    ("--trainer.max_stpes", "5", "error: unrecognized arguments: --trainer.max_stpes 5"),  # a mistyped option
])
def test_a_refused_option_gets_the_parsers_whole_report_on_request(capsys, monkeypatch, option, value, last):
    monkeypatch.setenv("MEMNET_TRACEBACK", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, option, value, "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and err.splitlines()[-1] == last


def test_an_option_two_classes_of_a_union_refuse_is_left_to_the_parser():
    """Which class was meant is not known: no guess at the names it takes."""
    from memnet.cli.typos import unknown_option

    text = """Parser key "net":
  Does not validate against any of the Union subtypes
  Errors:
    - Problem with given class_path 'memnet.models.ntm.NTM':
        Option 'memroy_size' is not accepted
    - Problem with given class_path 'memnet.models.dnc.DNC':
        Option 'memroy_size' is not accepted
  Given value type: <class 'dict'>"""
    assert unknown_option(text) is None
    assert unknown_option(text.split("    - Problem with given class_path 'memnet.models.dnc")[0]).class_path == (
        "memnet.models.ntm.NTM")


def test_wrong_type_fails_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    resolved = yaml.safe_dump(load_config(ROOT / "configs" / "ntm" / "copy_small.yaml"))  # its fragments stacked
    bad.write_text(resolved.replace("memory_size: 32", "memory_size: lots"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(SMALL), "--config", str(bad)])
    err = capsys.readouterr().err
    assert "memory_size" in err and "lots" in err


def test_non_positive_memory_size_fails_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--model.init_args.net.init_args.memory_size=0"])
    assert exit_info.value.code == 2
    assert "memnet: memory_size must be a positive integer, got 0" in capsys.readouterr().err


class _NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, inputs):
        return inputs[..., :1] * self.scale * float("nan")


def test_nan_loss_stops_training_with_a_clear_message():
    module = SequenceModule(_NaNNet())
    batch = {"inputs": torch.ones(2, 3, 1), "targets": torch.ones(2, 3, 1), "mask": torch.ones(2, 3)}
    with pytest.raises(FloatingPointError, match="loss became nan"):
        module.training_step(batch, 0)


def test_command_line_overrides_what_the_checkpoint_saved(tmp_path, monkeypatch):
    main(["fit", "--config", SMALL, *TINY])
    last = json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"]
    seen = []
    original = SequenceModule.test_step

    def spy(self, batch, batch_idx):
        seen.append(self.eval_memory_size)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SequenceModule, "test_step", spy)
    main(["test", "--config", SMALL, *TINY, "--ckpt_path", last, "--model.init_args.eval_memory_size=48"])
    assert seen and set(seen) == {48}


ONE_CYCLE = [
    "--model.init_args.scheduler=torch.optim.lr_scheduler.OneCycleLR",
    "--model.init_args.scheduler.init_args.max_lr=0.003",
    "--model.init_args.scheduler_interval=step",
]


def test_one_cycle_schedule_shorter_than_training_is_refused_before_the_first_step(capsys):
    # 4 steps planned, a schedule of 3: OneCycleLR would raise at step 4; memnet refuses at the start
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, *ONE_CYCLE, "--model.init_args.scheduler.init_args.total_steps=3"])
    assert exit_info.value.code == 2
    assert "total_steps is 3 steps but training runs for 4 (trainer.max_steps)" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["optimizer.init_args.lr", "scheduler.init_args.max_lr"])
def test_a_negative_learning_rate_is_refused_in_one_line_before_a_step(tmp_path, capsys, field):
    """--model.init_args.optimizer.init_args.lr -0.01 stopped with torch's traceback (ValueError: Invalid learning
    rate: -0.01, no field named), exit 1; a negative OneCycleLR max_lr was taken and every step climbed the loss."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true", f"--model.init_args.{field}", "-0.01"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"memnet: model.init_args.{field} must be ≥ 0, got -0.01: a negative learning rate steps up the gradient, so "
        "training would climb the loss")
    assert not (tmp_path / "runs").exists()  # refused before the run and its W&B run started


def test_a_negative_learning_rate_is_refused_by_configure_optimizers_too():
    """A module built in Python (no CLI) is checked where its optimiser is built."""
    from functools import partial

    from memnet.training import configure_optimizers

    one_cycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=[0.1, -0.2], total_steps=4)  # a rate per group
    module = SequenceModule(nn.GRU(3, 4), scheduler=one_cycle)
    with pytest.raises(ValueError, match=r"scheduler\.init_args\.max_lr must be ≥ 0, got \[0\.1, -0\.2\]"):
        configure_optimizers(module, "step")
    module = SequenceModule(nn.GRU(3, 4), optimizer=partial(torch.optim.SGD, lr=0.0))
    assert isinstance(configure_optimizers(module, "step"), torch.optim.SGD)  # 0 is torch's to take


SCHEDULERS = torch.optim.lr_scheduler
# (a scheduler, settings that torch takes, the setting out of range and its value): each trained silently with the rate
# negative, at 0, growing or never annealed, or stopped at its first step or in a traceback naming no field
OUT_OF_RANGE = [
    (SCHEDULERS.StepLR, {"step_size": 2}, "gamma", -0.5),
    (SCHEDULERS.StepLR, {"step_size": 2}, "gamma", 0.0),
    (SCHEDULERS.MultiStepLR, {"milestones": [2]}, "gamma", -1.0),
    (SCHEDULERS.ExponentialLR, {}, "gamma", -0.5),
    (SCHEDULERS.StepLR, {}, "step_size", 0),
    (SCHEDULERS.StepLR, {}, "step_size", -1),
    (SCHEDULERS.CosineAnnealingLR, {}, "T_max", 0),
    (SCHEDULERS.CosineAnnealingLR, {"T_max": 10}, "eta_min", -0.001),
    (SCHEDULERS.CosineAnnealingWarmRestarts, {"T_0": 10}, "eta_min", -0.001),
    (SCHEDULERS.CyclicLR, {"base_lr": 0.01, "max_lr": 0.1, "mode": "exp_range"}, "gamma", -1.0),
    (SCHEDULERS.CyclicLR, {"base_lr": 0.01, "max_lr": 0.1}, "step_size_up", 0),
    (SCHEDULERS.ReduceLROnPlateau, {}, "factor", 1.0),
    (SCHEDULERS.ReduceLROnPlateau, {}, "factor", 0.0),
    (SCHEDULERS.ReduceLROnPlateau, {}, "factor", -0.5),
    (SCHEDULERS.ReduceLROnPlateau, {}, "min_lr", [0.0, -1e-6]),
    (SCHEDULERS.ReduceLROnPlateau, {}, "patience", -1),
    (SCHEDULERS.OneCycleLR, {"max_lr": 0.1, "total_steps": 10}, "div_factor", -1.0),
    (SCHEDULERS.OneCycleLR, {"max_lr": 0.1, "total_steps": 10}, "final_div_factor", 0.0),
    (SCHEDULERS.LinearLR, {"start_factor": 0.1}, "total_iters", -1),
    (SCHEDULERS.ConstantLR, {}, "total_iters", -1),
    (SCHEDULERS.PolynomialLR, {}, "total_iters", -1),
    (SCHEDULERS.PolynomialLR, {"total_iters": 5}, "power", -1.0),
    # memnet's own: refused by the scheduler naming the bare argument ('step_size must be a positive integer, got 0')
    (LinearStartStepLR, {"linear_start_lr": 0.01, "step_size": 2}, "linear_start_epochs", -1),
    (LinearStartStepLR, {"linear_start_epochs": 1, "step_size": 2}, "linear_start_lr", 0.0),
    (LinearStartStepLR, {"linear_start_epochs": 1, "linear_start_lr": 0.01}, "step_size", 0),
    (LinearStartStepLR, {"linear_start_epochs": 1, "linear_start_lr": 0.01, "step_size": 2}, "gamma", 1.5),
]


@pytest.mark.parametrize(("scheduler", "settings", "key", "value"), OUT_OF_RANGE,
                         ids=[f"{row[0].__name__}-{row[2]}={row[3]}" for row in OUT_OF_RANGE])
def test_a_scheduler_setting_out_of_range_is_refused_by_configure_optimizers(scheduler, settings, key, value):
    """torch took these without a word (StepLR gamma -0.5: the rate's sign flipped at every decay), stopped at the
    scheduler's first step (StepLR step_size 0: ZeroDivisionError, an epoch in) or in a traceback naming no field
    (ReduceLROnPlateau factor 1: 'Factor should be < 1.0.'); refused before the scheduler is built, naming the field.
    The same schedulers with the setting in range are built."""
    from functools import partial

    from memnet.training import configure_optimizers

    module = SequenceModule(nn.GRU(3, 4), scheduler=partial(scheduler, **settings, **{key: value}))
    with pytest.raises(ValueError, match=rf"^model\.init_args\.scheduler\.init_args\.{key} must be .*, got "
                                         rf"{re.escape(str(value))}"):
        configure_optimizers(module, "epoch")
    fine = {"min_lr": 0.0, "patience": 0, "total_iters": 0, "power": 0.0, "T_max": 1, "step_size": 1,
            "step_size_up": 1, "eta_min": 0.0, "factor": 0.5, "gamma": 0.5, "div_factor": 1.0, "final_div_factor": 1.0,
            "linear_start_epochs": 0, "linear_start_lr": 0.01}
    module = SequenceModule(nn.GRU(3, 4), scheduler=partial(scheduler, **settings, **{key: fine[key]}))
    configure_optimizers(module, "epoch")  # ReduceLROnPlateau with no trainer: its val/loss is not checked


@pytest.mark.parametrize(("scheduler", "setting", "expected"), [
    ("StepLR", "step_size=0", ("step_size must be an integer ≥ 1, got 0 (StepLR): the steps between two decays: 0 "
     "stops the run at the scheduler's first step (ZeroDivisionError), a negative count decays the rate at every step")),
    ("ReduceLROnPlateau", "factor=1.0", ("factor must be in (0, 1), got 1.0 (ReduceLROnPlateau): the rate is multiplied "
     "by factor at each plateau: 1 or more would never lower it (torch refuses it naming no field), 0 or less drops "
     "it to min_lr at the first plateau")),
])
def test_a_scheduler_setting_out_of_range_is_refused_in_one_line_before_the_run(tmp_path, capsys, scheduler, setting,
                                                                                expected):
    """memnet fit with StepLR step_size 0 stopped with a ZeroDivisionError traceback at the scheduler's first step,
    ReduceLROnPlateau factor 1 with torch's 'ValueError: Factor should be < 1.0.' traceback, exit 1, both after the
    run and its W&B run had started; refused before them, exit 2, in one line naming the field."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true", "--model.init_args.scheduler_interval=epoch",
              f"--model.init_args.scheduler=torch.optim.lr_scheduler.{scheduler}",
              f"--model.init_args.scheduler.init_args.{setting}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"memnet: model.init_args.scheduler.init_args.{expected}"
    assert not (tmp_path / "runs").exists()  # refused before the run and its W&B run started


def test_a_linear_start_setting_out_of_range_is_refused_naming_its_key_before_the_run(tmp_path, capsys):
    """memnet.optim.LinearStartStepLR refused step_size 0 at fit start, after the run and its W&B run had started,
    naming the bare argument: 'memnet: step_size must be a positive integer, got 0'; refused before the run, naming
    the config key, as a torch scheduler's setting."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMALL, *TINY, "--trainer.logger=true", "--model.init_args.scheduler_interval=epoch",
              "--model.init_args.scheduler=memnet.optim.LinearStartStepLR",
              "--model.init_args.scheduler.init_args.linear_start_epochs=1",
              "--model.init_args.scheduler.init_args.linear_start_lr=0.01",
              "--model.init_args.scheduler.init_args.step_size=0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "memnet: model.init_args.scheduler.init_args.step_size must be an integer ≥ 1, got 0 (LinearStartStepLR): the "
        "epochs between two reductions of the rate after the linear start")
    assert not (tmp_path / "runs").exists()  # refused before the run and its W&B run started


# (the factory's class, its settings, the last out of range, the config key, the class as named, torch's or Python's
# refusal): each stopped memnet fit with a traceback, exit 1, at fit start
REFUSED_BY_TORCH = [
    (SCHEDULERS.OneCycleLR, {"max_lr": 0.1, "total_steps": 10, "pct_start": 1.5}, "scheduler",
     "torch.optim.lr_scheduler.OneCycleLR", "Expected float between 0 and 1 pct_start, but got 1.5"),
    (SCHEDULERS.OneCycleLR, {"max_lr": 0.1, "total_steps": 0}, "scheduler", "torch.optim.lr_scheduler.OneCycleLR",
     "Expected positive integer total_steps, but got 0"),
    (SCHEDULERS.OneCycleLR, {"total_steps": 10, "max_lr": [0.1, 0.2]}, "scheduler",
     "torch.optim.lr_scheduler.OneCycleLR", "max_lr must have the same length as optimizer.param_groups"),
    (SCHEDULERS.CosineAnnealingWarmRestarts, {"T_0": 0}, "scheduler",
     "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts", "Expected positive integer T_0, but got 0"),
    (SCHEDULERS.CosineAnnealingWarmRestarts, {"T_0": 2, "T_mult": 0}, "scheduler",
     "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts", "Expected integer T_mult >= 1, but got 0"),
    (SCHEDULERS.LinearLR, {"start_factor": 0.0}, "scheduler", "torch.optim.lr_scheduler.LinearLR",
     "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."),
    (SCHEDULERS.ConstantLR, {"factor": 1.5}, "scheduler", "torch.optim.lr_scheduler.ConstantLR",
     "Constant multiplicative factor expected to be between 0 and 1."),
    (SCHEDULERS.StepLR, {"step_size": 2, "gamma": 0.5, "decay": 0.1}, "scheduler", "torch.optim.lr_scheduler.StepLR",
     "StepLR.__init__() got an unexpected keyword argument 'decay'"),
    (torch.optim.Adam, {"betas": (0.9, 1.0)}, "optimizer", "torch.optim.Adam",
     "Invalid beta parameter at index 1: 1.0"),
    (torch.optim.Adam, {"eps": -1.0}, "optimizer", "torch.optim.Adam", "Invalid epsilon value: -1.0"),
    (torch.optim.Adam, {"weight_decay": -0.1}, "optimizer", "torch.optim.Adam", "Invalid weight_decay value: -0.1"),
    (torch.optim.SGD, {"momentum": -0.5}, "optimizer", "torch.optim.SGD", "Invalid momentum value: -0.5"),
    (torch.optim.Adam, {"betas2": (0.9, 0.99)}, "optimizer", "torch.optim.Adam",
     "Adam.__init__() got an unexpected keyword argument 'betas2'"),
]


@pytest.mark.parametrize(("built", "settings", "name", "path", "refusal"), REFUSED_BY_TORCH,
                         ids=[f"{row[0].__name__}-{list(row[1])[-1]}" for row in REFUSED_BY_TORCH])
def test_a_setting_torch_refuses_is_said_naming_the_config_key_and_class(built, settings, name, path, refusal):
    """torch's own refusal of an optimiser's or a scheduler's setting (OneCycleLR pct_start 1.5: 'ValueError: Expected
    float between 0 and 1 pct_start, but got 1.5') came as it was, naming neither the config key nor the class; a
    MemnetError names both, raised from torch's error."""
    from functools import partial

    from memnet.training import configure_optimizers
    from memnet.utils import MemnetError

    given = {"optimizer" if name == "optimizer" else "scheduler": partial(built, **settings)}
    module = SequenceModule(nn.GRU(3, 4), **given)
    with pytest.raises(MemnetError, match=f"^{re.escape(f'model.init_args.{name} ({path}): {refusal}')}") as error:
        configure_optimizers(module, "step")
    assert isinstance(error.value.__cause__, (ValueError, TypeError))


def test_errors_that_are_not_the_settings_are_raised_as_they_were(monkeypatch):
    """Only the constructor's refusal of its arguments is the user's: a ValueError of memnet's own code that the
    constructor calls (a bug in LinearStartStepLR's rate, at the scheduler's initial step) and torch's check of the
    module's parameters keep their traceback."""
    from functools import partial

    from memnet.optim import LinearStartStepLR
    from memnet.training import configure_optimizers
    from memnet.utils import MemnetError

    def broken(self, epoch, base_lr):
        raise ValueError("a bug")

    monkeypatch.setattr(LinearStartStepLR, "rate", broken)
    scheduler = partial(LinearStartStepLR, linear_start_epochs=1, linear_start_lr=0.01, step_size=2)
    module = SequenceModule(nn.GRU(3, 4), scheduler=scheduler)
    with pytest.raises(ValueError, match="^a bug$") as error:
        configure_optimizers(module, "epoch")
    assert not isinstance(error.value, MemnetError)
    module = SequenceModule(nn.GRU(3, 4))
    monkeypatch.setattr(module, "parameters", lambda: iter(()))
    with pytest.raises(ValueError, match="empty parameter list") as error:
        configure_optimizers(module, "epoch")
    assert not isinstance(error.value, MemnetError)


@pytest.mark.parametrize(("given", "expected"), [
    (["--model.init_args.optimizer.init_args.betas=[0.9,1.0]"],
     "optimizer (torch.optim.Adam): Invalid beta parameter at index 1: 1.0"),
    ([*ONE_CYCLE, "--model.init_args.scheduler.init_args.total_steps=4",
      "--model.init_args.scheduler.init_args.pct_start=1.5"],
     "scheduler (torch.optim.lr_scheduler.OneCycleLR): Expected float between 0 and 1 pct_start, but got 1.5"),
])
def test_a_setting_torch_refuses_stops_fit_in_one_line_before_a_step(tmp_path, capsys, monkeypatch, given, expected):
    """memnet fit with Adam betas (0.9, 1.0) or OneCycleLR pct_start 1.5 stopped with torch's traceback, exit 1;
    one line naming the config key and the class, exit 2, before the first step. MEMNET_TRACEBACK=1 still shows
    torch's error."""
    command = ["fit", "--config", SMALL, *TINY, "--trainer.logger=false", *given]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"memnet: model.init_args.{expected}"
    assert not list(tmp_path.rglob("*.ckpt"))
    monkeypatch.setenv("MEMNET_TRACEBACK", "1")
    with pytest.raises(ValueError, match=re.escape(f"model.init_args.{expected}")) as error:
        main(command)  # raised, not a line and exit 2: Python prints the traceback, torch's error first
    torchs = error.value.__cause__
    assert type(torchs) is ValueError and "torch" in traceback.extract_tb(torchs.__traceback__)[-1].filename


def test_one_cycle_schedule_as_long_as_training_runs_to_the_end(tmp_path):
    main(["fit", "--config", SMALL, *TINY, *ONE_CYCLE, "--model.init_args.scheduler.init_args.total_steps=4"])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert torch.load(latest["last_checkpoint"], weights_only=False)["global_step"] == 4


def test_help_lists_every_subcommand_and_python_dash_m_memnet_runs_it():
    import subprocess
    import sys

    from memnet.cli import COMMANDS, LIGHTNING_COMMANDS

    done = subprocess.run([sys.executable, "-m", "memnet", "--help"], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == [*LIGHTNING_COMMANDS, *COMMANDS]
    assert {"fit", "evaluate", "probe", "suite", "data", "babi-table"} <= set(listed)


@pytest.mark.parametrize(("command", "shown"), [
    ("evaluate", ["sequences per length (default: 256)", "sequences per forward pass (default: 64)",
                  "seed of the evaluation sequences (default: 0)"]),
    ("probe", ["(0: untrained; default: 0)", "sequences of the batch probed (default: 16)",
               "or all (default: last)"]),
    ("figures", ["every training run (default: 0)"]),
])
def test_help_of_a_subcommand_gives_the_defaults_of_its_options(command, shown, capsys):
    """`memnet evaluate --help` said 'sequences per length' and not how many a run without the option scores (the
    README's table is of 256); the same of the seed, the batch, and of memnet probe's and memnet figures' options."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps the help at the terminal's width
    assert all(text in printed for text in shown), printed


def test_a_normal_invocation_prints_no_args_and_sys_argv_warning():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "memnet", "fit", "--config", SMALL, "--print_config"],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "class_path: memnet.models.ntm.NTM" in done.stdout
    assert "args parameter is intended" not in done.stderr


def test_output_cut_off_by_its_reader_ends_quietly_with_the_pipe_status():
    """``memnet configs | head``: the reader gone, no traceback, status 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "memnet", "configs"], check=False, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_lightnings_own_wandb_logger_in_a_config_logs_offline_unless_opted_in(tmp_path, monkeypatch, capsys):
    """``pytorch_lightning.loggers.WandbLogger`` defaults to ``offline=False``: without ``WANDB_MODE=online`` it went
    online, to the network, unasked. memnet's own logger given ``offline: false`` is left as given."""
    from pytorch_lightning.loggers import WandbLogger

    from memnet.callbacks import OfflineFirstWandbLogger
    from memnet.cli.lightning_cli import _offline_unless_opted_in

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    main(["fit", "--config", SMALL, *TINY, "--trainer.logger=pytorch_lightning.loggers.WandbLogger",
          f"--trainer.logger.save_dir={tmp_path / 'logs'}"])
    # the W&B run's folder (where W&B put it: after other runs in this process, not always under save_dir)
    wandb_dir = json.loads((tmp_path / "runs" / "latest.json").read_text())["wandb_dir"]
    assert Path(wandb_dir).name.startswith("offline-run-"), f"Lightning's WandbLogger did not log offline: {wandb_dir}"
    assert "W&B logs offline (WANDB_MODE=online to sync)" in capsys.readouterr().err

    monkeypatch.setenv("WANDB_MODE", "online")  # opted in: left online (no run is started here)
    plain, ours = WandbLogger(save_dir=str(tmp_path)), OfflineFirstWandbLogger(save_dir=str(tmp_path), offline=False)
    _offline_unless_opted_in([plain, ours])
    assert not plain._offline and not ours._offline
    monkeypatch.delenv("WANDB_MODE")
    _offline_unless_opted_in([plain, ours])
    assert plain._offline and not ours._offline


def test_a_wandb_error_during_training_stops_the_tracking_not_the_training(tmp_path, monkeypatch, caplog, capsys):
    """wandb's ``run.log`` raising (a full disk under the offline folder, its service gone) stopped the fit where it
    was, at its first validation here, before any checkpoint. It is warned once, nothing more goes to W&B, and the
    run trains to its end with its checkpoints and summary."""
    import logging

    from wandb.sdk.wandb_run import Run

    calls = []
    logged = Run.log

    def log(self, data, *args, **kwargs):
        calls.append(sorted(data))
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return logged(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", log)
    caplog.set_level(logging.WARNING)
    main(["fit", "--config", SMALL, *TINY, "--trainer.log_every_n_steps=1"])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert torch.load(latest["last_checkpoint"], weights_only=False)["global_step"] == 4
    assert Path(latest["best_checkpoint"]).is_file() and (Path(latest["run_dir"]) / "config.yaml").is_file()
    assert len(calls) == 3, f"W&B was called again after it failed: {calls}"
    warned = [r.getMessage() for r in caplog.records if "W&B logging failed" in r.getMessage()]
    assert len(warned) == 1 and "OSError: [Errno 28] No space left on device at step" in warned[0], warned
    assert "without W&B tracking for the rest of this run" in warned[0]
    assert "W&B logging stopped during training (OSError" in capsys.readouterr().out


def test_an_error_starting_the_wandb_run_still_stops_the_fit(monkeypatch):
    """Only W&B's calls while training are caught: wandb.init refusing its arguments (or online mode without a
    key) is the user's to see, before any training."""
    import wandb

    def init(*args, **kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)  # an earlier test's run, which Lightning's logger would take up
    with pytest.raises(wandb.errors.UsageError, match="api_key not configured"):
        main(["fit", "--config", SMALL, *TINY])


class FakeRun:
    """A stand-in for wandb's ``Run`` (no files, no network): records what it was given; ``log`` raises ``failure``
    from its ``fail_from``-th call on, ``finish`` raises ``finish_failure``."""

    def __init__(self, path: Path, *, failure: Exception | None = None, fail_from: int = 1,
                 finish_failure: Exception | None = None) -> None:
        self.dir, self.id, self.name, self.project = str(path / "files"), "fake0001", "fake", "memnet"
        self.failure, self.fail_from, self.finish_failure = failure, fail_from, finish_failure
        self.logged: list[list[str]] = []
        self.finished: list[int | None] = []
        self.config = type("Config", (), {"update": lambda *args, **kwargs: None})()

    def log(self, data, *args, **kwargs):
        self.logged.append(sorted(data))
        if self.failure is not None and len(self.logged) >= self.fail_from:
            raise self.failure

    def define_metric(self, *args, **kwargs):
        pass

    def finish(self, exit_code=None, **kwargs):
        self.finished.append(exit_code)
        if self.finish_failure is not None:
            raise self.finish_failure


def _fake_wandb(monkeypatch, run: FakeRun) -> None:
    """``wandb.init`` hands out ``run``; no run is in progress (an earlier test's, which Lightning's logger would
    take up)."""
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *args, **kwargs: run)
    monkeypatch.setattr(wandb, "run", None)


def test_lightnings_own_wandb_logger_in_a_config_is_guarded_as_memnets(tmp_path, monkeypatch, caplog, capsys):
    """``trainer.logger: pytorch_lightning.loggers.WandbLogger`` in a config: a W&B error while logging (a full disk
    under the offline folder) stopped the fit at its first log, before any checkpoint, where memnet's own logger
    warns once and trains on. Now it is guarded the same way."""
    import logging

    run = FakeRun(tmp_path, failure=OSError(28, "No space left on device"), fail_from=2)
    _fake_wandb(monkeypatch, run)
    caplog.set_level(logging.WARNING)
    main(["fit", "--config", SMALL, *TINY, "--trainer.log_every_n_steps=1",
          "--trainer.logger=pytorch_lightning.loggers.WandbLogger", f"--trainer.logger.save_dir={tmp_path / 'logs'}"])
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert torch.load(latest["last_checkpoint"], weights_only=False)["global_step"] == 4
    assert len(run.logged) == 2, f"W&B was called again after it failed: {run.logged}"
    warned = [r.getMessage() for r in caplog.records if "W&B logging failed" in r.getMessage()]
    assert len(warned) == 1 and "OSError: [Errno 28] No space left on device at step" in warned[0], warned
    assert "W&B logging stopped during training (OSError" in capsys.readouterr().out


def _failing_training_step(monkeypatch, error: BaseException) -> None:
    """The model's third training step raises ``error``."""
    step = SequenceModule.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step >= 2:
            raise error
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SequenceModule, "training_step", training_step)


@pytest.mark.parametrize("error, code", [(FloatingPointError("loss is nan at step 2"), 1), (KeyboardInterrupt(), 1)])
def test_a_failed_fit_finishes_its_wandb_run_with_a_non_zero_exit_code(tmp_path, monkeypatch, error, code):
    """A fit that failed (a diverged training, memnet's exit 1; Ctrl-C) left its W&B run unfinished: W&B recorded
    the process's exit, 0 for memnet's one-line errors (``raise SystemExit(1)`` is not ``sys.exit``), so a diverged
    run was shown as finished, and a later fit in the same process logged on into the failed run. It is finished
    once, with exit code 1, and the error is the one the user sees."""
    run = FakeRun(tmp_path)
    _fake_wandb(monkeypatch, run)
    _failing_training_step(monkeypatch, error)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6"])
    assert stopped.value.code == code
    assert run.finished == [1]


def test_a_failure_to_finish_the_wandb_run_does_not_hide_the_fits_error(tmp_path, monkeypatch, capsys, caplog):
    """W&B failing to finish the run (its service gone) is warned; the training's own error is the one raised."""
    import logging

    caplog.set_level(logging.WARNING)
    run = FakeRun(tmp_path, finish_failure=ConnectionResetError("the W&B service is gone"))
    _fake_wandb(monkeypatch, run)
    _failing_training_step(monkeypatch, FloatingPointError("loss is nan at step 2"))
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6"])
    assert stopped.value.code == 1 and "memnet: loss is nan at step 2" in capsys.readouterr().err
    assert run.finished == [1]
    assert "W&B could not finish the failed run (ConnectionResetError: the W&B service is gone)" in caplog.text


def test_a_wandb_run_the_user_started_is_not_finished_by_a_failed_fit(tmp_path, monkeypatch):
    """A run in progress before the fit (``wandb.init`` in a notebook), which the logger logs into, is the user's
    to finish."""
    import wandb

    run = FakeRun(tmp_path)
    monkeypatch.setattr(wandb, "run", run)
    _failing_training_step(monkeypatch, FloatingPointError("loss is nan at step 2"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", SMALL, *TINY, "--trainer.max_steps=6"])
    assert run.logged and run.finished == []


def test_a_wandb_run_given_to_the_logger_is_not_finished_by_a_failed_fit(tmp_path, monkeypatch):
    """A run given to the logger (``WandbLogger(experiment=run)``, Lightning's way to log into the user's own run) is
    the user's, as one in progress is: finalize("failed") finished it (exit code 1) under the code that still used
    it. Only a run the logger started itself is finished."""
    from memnet.callbacks import OfflineFirstWandbLogger

    _fake_wandb(monkeypatch, FakeRun(tmp_path))
    given = FakeRun(tmp_path)
    logger = OfflineFirstWandbLogger(save_dir=str(tmp_path), experiment=given)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("failed")
    assert given.logged == [["loss", "trainer/global_step"]] and given.finished == []

    started = FakeRun(tmp_path)
    _fake_wandb(monkeypatch, started)
    logger = OfflineFirstWandbLogger(save_dir=str(tmp_path))
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("failed")
    logger.finalize("failed")
    assert started.finished == [1]


def test_a_guarded_wandb_logger_subclass_keeps_its_own_finalize(tmp_path, monkeypatch):
    """guard_wandb_logger puts the guard in front of a user's WandbLogger subclass: the guard's finalize stood in
    front of the subclass's own, which was no longer called at a failure, nor at a success before any W&B run
    (its own cleanup skipped). It is called for every status, as before the class was guarded; an error there is
    warned, and the run the logger started is still finished once at a failure."""
    from pytorch_lightning.loggers import WandbLogger

    from memnet.callbacks import guard_wandb_logger

    class MyLogger(WandbLogger):
        def finalize(self, status):
            self.statuses = [*getattr(self, "statuses", []), status]
            if status == "aborted":
                raise RuntimeError("the user's finalize failed")

    run = FakeRun(tmp_path)
    _fake_wandb(monkeypatch, run)
    logger = guard_wandb_logger(MyLogger(save_dir=str(tmp_path), offline=True))
    logger.finalize("success")
    logger.finalize("aborted")
    logger.experiment  # noqa: B018 -- the run starts
    logger.finalize("failed")
    assert logger.statuses == ["success", "aborted", "failed"] and run.finished == [1]


def test_a_guarded_lightning_wandb_logger_pickles_as_a_guarded_one(tmp_path, monkeypatch):
    """Lightning's ``ddp_spawn`` pickles the trainer and its loggers: the guarded logger's class, made when guarded,
    is rebuilt on the other side, not refused by pickle or unpickled unguarded."""
    import pickle

    from pytorch_lightning.loggers import WandbLogger

    from memnet.callbacks import WandbTrackingGuard, guard_wandb_logger

    _fake_wandb(monkeypatch, FakeRun(tmp_path))
    logger = guard_wandb_logger(WandbLogger(save_dir=str(tmp_path), offline=True, project="p"))
    copied = pickle.loads(pickle.dumps(logger))
    assert isinstance(copied, WandbTrackingGuard) and type(copied) is type(logger) and copied._project == "p"
    assert guard_wandb_logger(logger) is logger and type(logger).__mro__[2] is WandbLogger
