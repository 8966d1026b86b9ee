"""The copy task and the algorithmic data module: encoding, masks, seeding, resumption."""

from __future__ import annotations

import doctest
import sys

import pytest
import torch

from tasks.algorithmic import AlgorithmicDataModule, CopyTask


def test_docstring_example_holds():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    [test] = [t for t in finder.find(CopyTask, module=sys.modules[CopyTask.__module__]) if t.name.endswith("CopyTask")]
    result = runner.run(test)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("length", [1, 5, 20])
def test_sample_batch_layout(length):
    task = CopyTask(width=8)
    batch = task.sample_batch(torch.Generator().manual_seed(0), 3, length)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    steps = 2 * length + 1
    assert inputs.shape == (3, steps, 9) and targets.shape == (3, steps, 8) and mask.shape == (3, steps)
    # the target is the input sequence, emitted after the delimiter
    torch.testing.assert_close(targets[:, length + 1 :], inputs[:, :length, :8])
    # the delimiter is on exactly at step `length`, and the input is blank after it
    assert torch.all(inputs[:, :, 8].argmax(1) == length) and inputs[:, :, 8].sum() == 3
    assert torch.all(inputs[:, length + 1 :] == 0)
    # the mask covers exactly the output phase
    assert torch.all(mask[:, : length + 1] == 0) and torch.all(mask[:, length + 1 :] == 1)
    assert torch.all(targets[:, : length + 1] == 0)


def test_same_seed_same_batches_and_different_seed_differs():
    def first_batches(seed):
        dm = AlgorithmicDataModule(CopyTask(), batch_size=4, batches_per_epoch=3, seed=seed)
        return [b["inputs"] for b in dm.train_dataloader()]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))


def test_epochs_differ_and_resume_reproduces_the_stream():
    dm = AlgorithmicDataModule(CopyTask(), batch_size=4, batches_per_epoch=2, seed=1)
    loader = dm.train_dataloader()
    epoch0 = [b["inputs"] for b in loader]
    state = dm.state_dict()
    epoch1 = [b["inputs"] for b in loader]
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(epoch0, epoch1))
    resumed = AlgorithmicDataModule(CopyTask(), batch_size=4, batches_per_epoch=2, seed=1)
    resumed.load_state_dict(state)
    again = [b["inputs"] for b in resumed.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(epoch1, again))


def test_lengths_stay_in_range_and_validation_is_fixed():
    dm = AlgorithmicDataModule(CopyTask(min_length=3, max_length=6), batch_size=2, batches_per_epoch=50,
                               val_lengths=[6, 12], val_size=5)
    lengths = {int(b["length"]) for b in dm.train_dataloader()}
    assert lengths <= set(range(3, 7)) and len(lengths) > 1
    val_a = list(dm.val_dataloader())
    val_b = list(dm.val_dataloader())
    assert [int(b["length"]) for b in val_a] == [6, 6, 6, 12, 12, 12]
    assert sum(b["inputs"].shape[0] for b in val_a) == 10
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(val_a, val_b))
    assert dm.input_size == 9 and dm.output_size == 8


@pytest.mark.parametrize(
    "kwargs, name",
    [({"min_length": 0}, "min_length"), ({"min_length": 5, "max_length": 4}, "max_length"), ({"width": 0}, "width")],
)
def test_bad_task_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CopyTask(**kwargs)


def test_bad_data_module_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        AlgorithmicDataModule(CopyTask(), batch_size=0)
    with pytest.raises(ValueError, match="val_lengths"):
        AlgorithmicDataModule(CopyTask(), val_lengths=[0])
