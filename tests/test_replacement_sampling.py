"""Training batches drawn with replacement (``memnet.utils.EpochDraws``, the bAbI data module's
``sampling: replacement``), as the authors' MemN2N code draws them: seeded by the epoch, so a
resumed run draws what the unbroken one drew, and each DDP process its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from memnet.utils import EpochDraws, EpochShuffle
from tasks import babi
from tasks.babi import BabiDataModule


def test_draws_with_replacement_seeded_by_the_epoch_and_the_rank():
    sampler = EpochDraws(100, 96, seed=3)
    epochs = [list(sampler) for _ in range(3)]  # without set_epoch each pass is the next epoch
    assert all(len(e) == 96 and all(0 <= i < 100 for i in e) for e in epochs)
    assert all(len(set(e)) < 96 for e in epochs)  # a question twice in an epoch: with replacement
    assert len(set(epochs[0])) < 100  # and some never
    assert epochs[0] != epochs[1] != epochs[2]
    again = EpochDraws(100, 96, seed=3)
    again.set_epoch(2)
    assert list(again) == epochs[2]  # a run resumed at epoch 2 draws the unbroken run's third epoch
    other = EpochDraws(100, 96, seed=3, rank=1)
    assert list(other) != epochs[0]  # another process, its own draws
    assert list(EpochDraws(100, 96, seed=4)) != epochs[0]
    # uniform: 200 epochs of 96 draws, each question within 5 s.d. of 192
    counts = torch.bincount(torch.tensor([i for _ in range(200) for i in sampler]), minlength=100)
    assert (counts - 192).abs().max() < 5 * (192 * 0.99) ** 0.5
    with pytest.raises(ValueError, match="size 0, count 4"):
        EpochDraws(0, 4, seed=0)


def _split(questions: int):
    vocabulary = babi.Vocabulary.build(["a"], [f"w{i}" for i in range(questions)])

    class Split:
        def to_dict(self):
            rows = [{"story": [[f"w{i}"]], "query": [f"w{i}"], "answer": "a", "task": 1} for i in range(questions)]
            return {k: [r[k] for r in rows] for k in ("story", "query", "answer", "task")}

    return babi.EncodedSplit(babi.encode_split(Split(), vocabulary, memory_size=5))


def _stories(loader) -> list[list[int]]:
    return [batch["story"][:, 0, 0].tolist() for batch in loader]  # each question's one word: its own


def test_the_data_module_draws_the_authors_batches():
    module = BabiDataModule(tasks=[1], batch_size=8, seed=3, sampling="replacement")
    split = _split(70)
    module._splits = {"train": split, "validation": split, "test": split}
    train = module.train_dataloader()
    assert isinstance(train.sampler, EpochDraws)
    unbroken = [_stories(train) for _ in range(3)]
    assert [len(b) for b in unbroken[0]] == [8] * 8  # ⌊70 / 8⌋ full batches, as randi(·, batch_size, 1) each
    assert len({q for b in unbroken[0] for q in b}) < 64  # some question twice
    resumed = module.train_dataloader()  # a fresh loader, as after a resume; Lightning sets the epoch
    resumed.sampler.set_epoch(2)
    assert _stories(resumed) == unbroken[2]
    assert module.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"  # evaluation in order
    shuffled = BabiDataModule(tasks=[1], batch_size=8, seed=3)
    shuffled._splits = module._splits
    assert isinstance(shuffled.train_dataloader().sampler, EpochShuffle)  # the default is unchanged
    module.trainer = SimpleNamespace(global_rank=1, world_size=2)
    shared = module.train_dataloader().sampler
    assert (shared.rank, len(shared)) == (1, 32)  # ⌊70 / (8 · 2)⌋ batches of 8 on each of the 2 processes


@pytest.mark.parametrize("kwargs, message", [
    ({"sampling": "bootstrap"}, r"sampling must be one of \('shuffle', 'replacement'\), got 'bootstrap'"),
    ({"sampling": "replacement", "group_by_length": 50}, "give one of the two"),
])
def test_bad_sampling_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BabiDataModule(**kwargs)


def test_lightning_keeps_each_ddp_process_its_own_draws():
    """Under DDP Lightning puts a DistributedSamplerWrapper around a sampler that is not a DistributedSampler: it
    gave each process half of its own draws (2 batches of 8 an epoch at 70 questions, 2 processes, not ⌊70 / 16⌋ =
    4), reshuffled by Lightning's seed, and set the epoch on the wrapper, not on the draws."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import RunningStage

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    module = BabiDataModule(tasks=[1], batch_size=8, seed=3, sampling="replacement")
    split = _split(70)
    module._splits = {"train": split, "validation": split, "test": split}
    module.trainer = trainer
    loader = trainer._data_connector._prepare_dataloader(module.train_dataloader(), shuffle=True,
                                                         mode=RunningStage.TRAINING)
    assert isinstance(loader.sampler, EpochDraws) and len(loader) == 4  # the epoch Lightning counts
    own = EpochDraws(70, 32, seed=3, rank=0)  # the trainer's epoch 0 (the loader sets it), process 0's draws
    words = [int(split[i]["story"][0, 0]) for i in own]
    assert [q for batch in _stories(loader) for q in batch] == words
