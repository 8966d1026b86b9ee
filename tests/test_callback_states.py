"""Callback states in checkpoints: keyed by each callback's settings, so two of one class keep their own."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from memnet.callbacks import ConvergenceDecay, LinearStartSwitch, RelapseWatch, SpikeClip
from memnet.controllers import LSTMController
from memnet.curriculum import LengthCurriculum
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from memnet.probe import GradientProbe
from memnet.utils import MemnetError
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

# per class: two instances of other settings, a state that tells each apart (set on the i-th), and how to read it
CASES = {
    "LinearStartSwitch": (lambda: [LinearStartSwitch(patience=1), LinearStartSwitch(patience=3)],
                          lambda c, i: setattr(c, "stale", 5 + i), lambda c: c.stale),
    "RelapseWatch": (lambda: [RelapseWatch(factor=10), RelapseWatch(factor=3)],
                     lambda c, i: c.update(0.5 + i, step=i), lambda c: (c.best, c.history)),
    "ConvergenceDecay": (lambda: [ConvergenceDecay(threshold=0.1), ConvergenceDecay(threshold=0.01)],
                         lambda c, i: setattr(c, "converged_step", 30 + i), lambda c: c.converged_step),
    "SpikeClip": (lambda: [SpikeClip(z=2.5), SpikeClip(z=3.0)],
                  lambda c, i: setattr(c, "steps", 100 + i), lambda c: c.steps),
    "LengthCurriculum": (lambda: [LengthCurriculum(every_n_epochs=5), LengthCurriculum(every_n_epochs=7)],
                         lambda c, i: setattr(c, "epochs_at_level", 2 + i), lambda c: c.epochs_at_level),
    "GradientProbe": (lambda: [GradientProbe(loss="last"), GradientProbe(loss="all")],
                      lambda c, i: c.curves.update({f"epoch {i}": torch.tensor([1.0 + i], dtype=torch.float64)}),
                      lambda c: {k: v.tolist() for k, v in c.curves.items()}),
}


def fit(tmp_path, callbacks, ckpt_path=None):
    """One epoch of two batches of a tiny copy-task NTM (no validation); from ``ckpt_path``, nothing more to train."""
    torch.manual_seed(0)
    task = CopyTask(width=3, min_length=1, max_length=3)
    data = AlgorithmicDataModule(task, batch_size=4, batches_per_epoch=2, val_size=4)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=8),
              memory_size=6, word_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(SequenceModule(net), datamodule=data, ckpt_path=ckpt_path)
    return trainer


def saved_run(tmp_path, callbacks, mark):
    trainer = fit(tmp_path, callbacks)
    for i, callback in enumerate(callbacks):
        mark(callback, i)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    return torch.load(tmp_path / "run.ckpt", weights_only=False)


@pytest.mark.parametrize("name", list(CASES))
def test_two_callbacks_of_one_class_resume_each_its_own_state(tmp_path, name):
    """Keyed by the class name, two instances shared one entry: Lightning refused the second, and with that
    refusal gone the later one's state would have been both's on a resume."""
    make, mark, read = CASES[name]
    saved = saved_run(tmp_path, make(), mark)
    keys = sorted(key for key in saved["callbacks"] if key.startswith(name))
    assert len(keys) == 2 and all(key.startswith(name + "{") for key in keys)
    resumed = make()
    fit(tmp_path, resumed, ckpt_path=tmp_path / "run.ckpt")
    expected = make()
    for i, callback in enumerate(expected):
        mark(callback, i)
    assert [read(c) for c in resumed] == [read(c) for c in expected]
    assert read(expected[0]) != read(expected[1])


@pytest.mark.parametrize("name", list(CASES))
def test_a_checkpoint_from_before_the_keyed_states_still_resumes_its_one_callback(tmp_path, name):
    """A checkpoint written when states were kept under the bare class name resumes its one callback of the class,
    without Lightning's warning that the checkpoint's callback is missing; two callbacks of the class cannot tell
    whose it is, and a state that would be lost is refused."""
    make, mark, read = CASES[name]
    single = make()[:1]
    saved = saved_run(tmp_path, single, mark)
    saved["callbacks"] = {(name if key == single[0].state_key else key): state
                          for key, state in saved["callbacks"].items()}
    torch.save(saved, tmp_path / "old.ckpt")
    resumed = make()[:1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, resumed, ckpt_path=tmp_path / "old.ckpt")
    assert not [w for w in caught if "Please add the following callbacks" in str(w.message)]
    assert read(resumed[0]) == read(single[0])
    with pytest.raises(MemnetError, match=rf"{name}: the checkpoint holds the state of .*{name}\b"):
        fit(tmp_path, make(), ckpt_path=tmp_path / "old.ckpt")


def test_a_callback_resumed_with_other_settings_takes_its_state_with_a_warning(tmp_path, caplog):
    saved_run(tmp_path, [RelapseWatch(factor=10)], lambda c, i: c.update(0.5, step=3))
    resumed = RelapseWatch(factor=4)
    with caplog.at_level("WARNING"):
        fit(tmp_path, [resumed], ckpt_path=tmp_path / "run.ckpt")
    assert resumed.best == 0.5 and resumed.history == [(3, 0.5)]
    assert ("the checkpoint's state is RelapseWatch{'monitor': 'val/bits_per_seq', 'factor': 10.0, 'floor': 1.0}, "
            "this run's RelapseWatch{'monitor': 'val/bits_per_seq', 'factor': 4.0, 'floor': 1.0}") in caplog.text


def test_two_callbacks_of_the_same_settings_are_refused_by_lightning():
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `RelapseWatch`"):
        pl.Trainer(callbacks=[RelapseWatch(restore_best=True), RelapseWatch()], logger=False)
