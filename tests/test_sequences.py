"""Sequence tasks: seq2seq token tasks, the Markov-bits task, the NARMA-10 and Mackey-Glass series."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from tasks import sequences
from tasks.algorithmic import AlgorithmicDataModule
from tasks.sequences import (
    EOS,
    FIRST_SYMBOL,
    MarkovBitsTask,
    ReverseTask,
    Seq2SeqCopyTask,
    SeriesDataModule,
    narma10,
)


@pytest.mark.parametrize("name", ["ReverseTask", "Seq2SeqCopyTask"])
def test_docstring_examples_hold(name):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    [test] = [t for t in finder.find(getattr(sequences, name), module=sequences) if t.name.endswith(name)]
    result = runner.run(test)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("length", [1, 4, 9])
def test_reverse_batch(length):
    task = ReverseTask(num_symbols=6)
    batch = task.sample_batch(torch.Generator().manual_seed(0), 3, length)
    source, target = batch["source"], batch["target"]
    assert source.shape == (3, length) and target.shape == (3, task.output_length(length))
    assert source.min() >= FIRST_SYMBOL and source.max() < task.input_size == 9
    torch.testing.assert_close(target[:, :-1], source.flip(1))
    assert torch.all(target[:, -1] == EOS)


def test_copy_with_fixed_output_length_ignores_the_source_length():
    task = Seq2SeqCopyTask(num_symbols=6, output_length=7)
    for length in (2, 5, 11):
        batch = task.sample_batch(torch.Generator().manual_seed(length), 3, length)
        assert batch["target"].shape == (3, 8)
        expected = batch["source"][:, torch.arange(7) % length]
        torch.testing.assert_close(batch["target"][:, :-1], expected)


def test_token_tasks_work_with_the_algorithmic_data_module():
    def batches(seed):
        dm = AlgorithmicDataModule(ReverseTask(num_symbols=5, max_length=6), batch_size=4, batches_per_epoch=3,
                                   val_lengths=[3, 7], val_size=5, seed=seed)
        return dm, list(dm.train_dataloader()), list(dm.val_dataloader())

    dm, train, val = batches(0)
    assert dm.input_size == dm.output_size == 8
    assert [b["source"].shape[1] for b in val] == [3, 3, 7, 7]
    _, train_again, _ = batches(0)
    for a, b in zip(train, train_again):
        assert torch.equal(a["source"], b["source"])
    _, other, _ = batches(1)
    assert any(not torch.equal(a["source"], b["source"]) for a, b in zip(train, other) if a["length"] == b["length"]) \
        or [a["length"] for a in train] != [b["length"] for b in other]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ReverseTask(num_symbols=0), "num_symbols must be a positive integer"),
        (lambda: Seq2SeqCopyTask(output_length=0), "output_length must be a positive integer"),
        (lambda: ReverseTask(num_symbols=4).encode(torch.tensor([[3, 7]])), r"source symbols must lie in \[3, 7\)"),
        (lambda: ReverseTask().encode(torch.tensor([[3.0, 4.0]])), "source must be a"),
        (lambda: MarkovBitsTask(flip_probability=0.0), r"flip_probability must lie in \(0, 0.5\]"),
        (lambda: MarkovBitsTask(flip_probability=0.7), r"flip_probability must lie in \(0, 0.5\]"),
        (lambda: SeriesDataModule(series="lorenz"), "series must be one of"),
        (lambda: SeriesDataModule(length=50, washout=50), r"washout must be an integer in \[0, length=50\)"),
        (lambda: SeriesDataModule(batch_size=0), "batch_size must be a positive integer"),
        (lambda: SeriesDataModule(series="narma10", horizon=5), "horizon must be 1 for series 'narma10'"),
        (lambda: ReverseTask().sample_batch(torch.Generator(), 2, 0), "length must be an integer ≥ 1"),
        (lambda: Seq2SeqCopyTask(output_length=4).sample_batch(torch.Generator(), 2, 0),
         "length must be an integer ≥ 1"),
        (lambda: MarkovBitsTask().sample_batch(torch.Generator(), 2, 0), "length must be an integer ≥ 1"),
    ],
)
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_markov_bits_flip_at_the_requested_rate_and_input_is_uninformative():
    task = MarkovBitsTask(width=5, flip_probability=0.1, min_length=30, max_length=30)
    batch = task.sample_batch(torch.Generator().manual_seed(0), 400, 30)
    targets = batch["targets"]
    assert targets.shape == (400, 30, 5) and set(targets.unique().tolist()) == {0.0, 1.0}
    flips = (targets[:, 1:] != targets[:, :-1]).float().mean().item()
    assert abs(flips - 0.1) < 0.01
    assert abs(targets[:, 0].mean().item() - 0.5) < 0.05
    assert torch.all(batch["inputs"][:, 0] == 1) and torch.all(batch["inputs"][:, 1:] == 0)
    assert torch.all(batch["mask"] == 1)
    h = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    assert task.entropy_bits(30) == pytest.approx(5 * (1 + 29 * h))


def test_narma10_matches_the_recurrence():
    u = 0.5 * torch.rand(2, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = narma10(u)
    for b in range(2):
        hist = [0.0] * 41  # hist[t] = y(t), y(0) = 0
        for t in range(40):
            window = sum(hist[max(0, t - 9) : t + 1])
            delayed = u[b, t - 9].item() if t >= 9 else 0.0
            hist[t + 1] = 0.3 * hist[t] + 0.05 * hist[t] * window + 1.5 * delayed * u[b, t].item() + 0.1
        torch.testing.assert_close(y[b], torch.tensor(hist[1:], dtype=torch.float64))


@pytest.mark.parametrize("series", ["narma10", "mackey_glass"])
def test_series_sets_are_seeded_washed_out_and_distinct(series):
    dm = SeriesDataModule(series=series, length=120, washout=20, batch_size=4, train_size=6, val_size=3,
                          test_size=3, seed=0)
    train = dm.make_set("train")
    assert [b["inputs"].shape for b in train] == [(4, 120, 1), (2, 120, 1)]
    assert dm.input_size == dm.output_size == 1
    batch = train[0]
    assert torch.all(batch["mask"][:, :20] == 0) and torch.all(batch["mask"][:, 20:] == 1)
    assert torch.isfinite(batch["targets"]).all() and batch["targets"].std() > 0.01
    again = SeriesDataModule(series=series, length=120, washout=20, batch_size=4, train_size=6, val_size=3,
                             test_size=3, seed=0).make_set("train")[0]
    assert torch.equal(batch["targets"], again["targets"])
    assert not torch.equal(batch["inputs"][:3], dm.make_set("val")[0]["inputs"])
    if series == "mackey_glass":  # the target is the input shifted by the horizon
        torch.testing.assert_close(batch["targets"][:, :-1], batch["inputs"][:, 1:])


@pytest.mark.parametrize("seed, split", [(3, "train"), (4, "val")])
def test_narma10_sets_redraw_diverged_sequences(seed, split):
    """NARMA-10 diverges in about one sequence of 1000 steps in 200: seed 3's training set and seed 4's
    validation set held one (inf, then NaN targets, a NaN NRMSE); such a sequence is drawn again."""
    targets = torch.cat([b["targets"] for b in SeriesDataModule(seed=seed).make_set(split)])
    assert torch.isfinite(targets).all() and targets.max() <= sequences.NARMA10_BOUND
    # a set in which nothing diverged is the plain draw
    generator = torch.Generator().manual_seed(1)
    inputs, targets = sequences.narma10_set(5, 300, generator=generator)
    plain = 0.5 * torch.rand(5, 300, generator=torch.Generator().manual_seed(1))
    assert torch.equal(inputs, plain) and torch.equal(targets, narma10(plain))


def _trainer_in_epoch(epoch: int, done: int):
    """What the training loaders read of a trainer: the epoch and its batches done (a resume mid-epoch)."""
    from types import SimpleNamespace

    current = SimpleNamespace(processed=done, completed=done)
    return SimpleNamespace(current_epoch=epoch, global_rank=0, world_size=1,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current))))


class _WorkerDraws(torch.utils.data.Dataset):
    """Item i and a number drawn in the worker that loads it (an augmentation's noise): the worker's seed shows."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        return torch.tensor([float(index), float(torch.rand(()))])


@pytest.mark.parametrize("done", [2, 0], ids=["mid-epoch", "at-an-epoch-end"])
def test_a_resumed_loader_seeds_its_workers_as_the_unbroken_run_did(done):
    """The loader's generator draws the seed of each epoch's workers; a loader made afresh on a resume started it
    again from its seed, so the resumed epoch's workers drew the first epoch's numbers. Its state is in the
    loader's state_dict (Lightning keeps it in the checkpoint): the resumed run draws what the unbroken one did."""
    from memnet.utils import EpochShuffle, ResumableLoader

    def loader(trainer):
        return ResumableLoader(_WorkerDraws(), batch_size=3, sampler=EpochShuffle(12, seed=0), num_workers=2,
                               generator=torch.Generator().manual_seed(0), trainer=trainer)

    unbroken = loader(None)
    epochs, saved = [], None
    for epoch in range(3):
        unbroken.trainer = _trainer_in_epoch(epoch, 0)
        batches = []
        for batch in unbroken:
            batches.append(batch)
            if (epoch, len(batches)) == ((1, done) if done else (0, 4)):  # the checkpoint: mid-epoch 1 or at its start
                saved = unbroken.state_dict()
        epochs.append(batches)
    assert not torch.equal(epochs[0][0][:, 1], epochs[1][0][:, 1])  # each epoch's workers draw their own
    resumed = loader(_trainer_in_epoch(1, done))
    resumed.load_state_dict(saved)  # Lightning restores it before the epoch's first batch
    again = list(resumed)
    resumed.trainer = _trainer_in_epoch(2, 0)
    again += list(resumed)
    assert len(again) == len(epochs[1][done:] + epochs[2])
    assert all(torch.equal(a, b) for a, b in zip(again, epochs[1][done:] + epochs[2]))
    fresh = loader(_trainer_in_epoch(1, done))  # a checkpoint without the state (written before it was kept)
    fresh.load_state_dict({})
    first = next(iter(fresh))
    assert torch.equal(first[:, 0], epochs[1][done][:, 0]) and not torch.equal(first[:, 1], epochs[1][done][:, 1])


def test_training_loaders_resumed_mid_epoch_give_the_epochs_remaining_batches():
    from memnet.utils import EpochShuffle, ResumableLoader

    data = SeriesDataModule(length=12, washout=2, batch_size=2, train_size=10, val_size=2, test_size=2)
    data.trainer = _trainer_in_epoch(0, 0)
    whole = [batch["inputs"] for batch in data.train_dataloader()]
    data.trainer = _trainer_in_epoch(0, 3)  # resumed after 3 of the epoch's 5 batches
    rest = [batch["inputs"] for batch in data.train_dataloader()]
    assert len(whole) == 5 and len(rest) == 2
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[3:]))
    assert len(data.train_dataloader()) == 5 and data.train_dataloader().state_dict() == {}  # resumable for Lightning

    epoch_1 = EpochShuffle(10, seed=0)
    epoch_1.set_epoch(1)
    expected = list(epoch_1)[6:]
    for workers in (0, 2):  # workers read the sampler when the loader's iterator is made: it must be set by then
        loader = ResumableLoader(list(range(10)), batch_size=3, sampler=EpochShuffle(10, seed=0),
                                 trainer=_trainer_in_epoch(1, 2), num_workers=workers)
        loader.sampler.set_epoch(2)  # what Lightning passes after a stop mid-epoch: the epochs processed, one ahead
        assert [i for batch in loader for i in batch.tolist()] == expected, f"num_workers={workers}"
