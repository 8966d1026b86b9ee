"""Lightning's own ``Module.load_from_checkpoint(path)`` of a checkpoint ``memnet fit`` wrote gives the trained
module back, for every memnet LightningModule; a checkpoint without the network's config is one line saying
how to load it."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tiny_run import tiny_run

from memnet.cli import main
from memnet.cli.rebuild import build
from memnet.controllers import LSTMController
from memnet.lightning import (
    ConditionalSequenceModule,
    QAModule,
    RegressionModule,
    RidgeReadoutModule,
    Seq2SeqModule,
    SequenceModule,
)
from memnet.models.ntm import NTM
from memnet.utils import MemnetError
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

ROOT = Path(__file__).resolve().parents[1]
BABI = Path(os.environ.get("MEMNET_BABI_ARCHIVE")
            or ROOT.parent / "shared" / "data" / "babi" / "tasks_1-20_v1-2.tar.gz")
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.limit_val_batches=1"]
SMALL_DATA = ["--data.init_args.batch_size=3", "--data.init_args.batches_per_epoch=2", "--data.init_args.val_size=3"]
# each module class with a shipped config cut down to a couple of steps
RUNS = {
    "seq2seq": (Seq2SeqModule, ["--config", "seq2seq/reverse_bahdanau", "--trainer.max_steps=2", *SMALL_DATA,
                                "--model.init_args.net.init_args.encoder.init_args.hidden_size=6",
                                "--model.init_args.net.init_args.decoder.init_args.hidden_size=6",
                                "--model.init_args.scheduler=torch.optim.lr_scheduler.StepLR",
                                "--model.init_args.scheduler.init_args.step_size=3"]),
    "conditional": (ConditionalSequenceModule, ["--config", "gru/markov_conditional", "--trainer.max_steps=2",
                                                *SMALL_DATA, "--data.init_args.val_lengths=[12]"]),
    "ridge": (RidgeReadoutModule, ["--config", "esn/narma10", "--data.init_args.length=60",
                                   "--data.init_args.washout=10", "--data.init_args.train_size=6",
                                   "--data.init_args.val_size=3", "--data.init_args.test_size=3",
                                   "--data.init_args.batch_size=3",
                                   "--model.init_args.net.init_args.controller.init_args.reservoir_size=9"]),
    "regression": (RegressionModule, ["--config", "esn/narma10_sgd", "--trainer.max_steps=2",
                                      "--trainer.max_epochs=null", "--data.init_args.length=60",
                                      "--data.init_args.washout=10", "--data.init_args.train_size=6",
                                      "--data.init_args.val_size=3", "--data.init_args.test_size=3",
                                      "--data.init_args.batch_size=3",
                                      "--model.init_args.net.init_args.controller.init_args.reservoir_size=9"]),
    "qa": (QAModule, ["--config", "memn2n/babi_task_1k", "--trainer.max_steps=2", "--trainer.max_epochs=null",
                      f"--data.init_args.data_dir={BABI}", "--data.init_args.tasks=[1]",
                      "--data.init_args.batch_size=4", "--model.init_args.net.init_args.embedding_size=6"]),
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def fitted(args: list[str]) -> Path:
    """``memnet fit`` with ``args``, no logger; the run's last checkpoint."""
    main(["fit", *args, *QUIET])
    return Path(json.loads(Path("runs/latest.json").read_text())["last_checkpoint"])


def same_weights(loaded: torch.nn.Module, trained: torch.nn.Module) -> None:
    mine, theirs = loaded.state_dict(), trained.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), name


def test_a_memnet_fit_checkpoint_loads_with_load_from_checkpoint_as_rebuild_builds_it():
    """Lightning's traceback was jsonargparse's `the following arguments are required: module.net`."""
    Path("tiny.yaml").write_text(tiny_run(trainer={"precision": "64-true"}))
    checkpoint = fitted(["--config", "tiny.yaml", "--model.init_args.optimizer=torch.optim.SGD",
                         "--model.init_args.optimizer.init_args.lr=0.2"])
    module = SequenceModule.load_from_checkpoint(checkpoint, map_location="cpu")
    rebuilt, _ = build([checkpoint.parents[1] / "config.yaml"], checkpoint, torch.device("cpu"))
    assert isinstance(module.net, NTM) and module.net.memory_size == 7 and module.device.type == "cpu"
    same_weights(module, rebuilt)  # float64, as the run trained: not rounded to float32
    inputs = torch.rand(3, 6, 4, dtype=torch.float64)  # (B, T, D): the tiny copy task's 3 bits and a delimiter
    assert torch.equal(module.eval()(inputs), rebuilt(inputs))
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.2  # the run's, not Adam
    # a config, not a copy of the weights: the hyper-parameters hold no tensor and no module
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved["net"]["class_path"] == "memnet.models.ntm.NTM" and saved["net"]["init_args"]["input_size"] == 4
    assert plain(saved)


def plain(value) -> bool:
    """YAML-like data only: no tensor, module or other object."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


@pytest.mark.parametrize("name", list(RUNS))
def test_every_module_class_loads_its_memnet_fit_checkpoint(name):
    cls, args = RUNS[name]
    if name == "qa" and not BABI.is_file():
        pytest.skip(f"bAbI archive not found at {BABI} (set MEMNET_BABI_ARCHIVE)")
    checkpoint = fitted(args)
    module = cls.load_from_checkpoint(checkpoint, map_location="cpu")
    rebuilt, _ = build([checkpoint.parents[1] / "config.yaml"], checkpoint, torch.device("cpu"))
    assert type(module) is type(rebuilt) and repr(module.net) == repr(rebuilt.net)
    same_weights(module, rebuilt)
    if name == "ridge":  # the fitted read-out, on the reservoir's features
        inputs = torch.rand(2, 7, 1)
        assert torch.equal(module.eval()(inputs), rebuilt(inputs))
    if name == "seq2seq":
        assert isinstance(module.configure_optimizers()["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_a_checkpoint_without_the_network_config_is_one_line_saying_how_to_load_it():
    """A checkpoint an earlier memnet fit wrote (no net, optimizer, scheduler in its hyper-parameters)."""
    Path("tiny.yaml").write_text(tiny_run())
    checkpoint = fitted(["--config", "tiny.yaml"])
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for name in ("net", "optimizer", "scheduler"):
        del state["hyper_parameters"][name]
    old = checkpoint.with_name("old.ckpt")
    torch.save(state, old)
    config = checkpoint.parents[1] / "config.yaml"
    with pytest.raises(MemnetError) as error:
        SequenceModule.load_from_checkpoint(old, map_location="cpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{old}: SequenceModule.load_from_checkpoint cannot rebuild")
    assert f"memnet.cli.rebuild.build(['{config.resolve()}'], '{old}', torch.device('cpu'))" in message
    assert f"memnet export --ckpt_path {old} --out <folder>" in message and "memnet.models.load" in message
    rebuilt, _ = build([config.resolve()], old, torch.device("cpu"))  # as the message says
    same_weights(rebuilt, SequenceModule.load_from_checkpoint(checkpoint, map_location="cpu"))
    # the commands still take it
    main(["test", "--ckpt_path", str(old), "--config", str(config), *QUIET])


def test_a_module_built_in_python_saves_no_network_and_is_loaded_with_it_given(tmp_path):
    torch.manual_seed(0)
    task = CopyTask(width=3, min_length=1, max_length=3)
    data = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=2, val_size=3)

    def network():
        return NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
                   memory_size=5, word_size=3)

    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, limit_val_batches=1)
    trained = SequenceModule(network(), eval_memory_size=8)
    trainer.fit(trained, datamodule=data)
    (checkpoint,) = tmp_path.glob("**/*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "net" not in saved and saved["eval_memory_size"] == 8  # no pickled network in the checkpoint
    with pytest.raises(MemnetError, match=r"built in Python with a network object.*net=<the network>"):
        SequenceModule.load_from_checkpoint(checkpoint, map_location="cpu")
    loaded = SequenceModule.load_from_checkpoint(checkpoint, map_location="cpu", net=network())
    same_weights(loaded, trained)
    assert loaded.hparams["eval_memory_size"] == 8
