"""Length-grouped training batches (``memnet.utils.LengthGroupedSampler``, the bAbI data module's
``group_by_length``): every question once an epoch, batches of similar length, seeded, and shared
out between DDP ranks."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from memnet.models.reader import story_to_sequence
from memnet.utils import LengthGroupedSampler
from tasks import babi
from tasks.babi import BabiDataModule, collate_babi, sequence_lengths

LENGTHS = torch.randint(1, 200, (103,), generator=torch.Generator().manual_seed(0))


def _batches_through_a_loader(sampler: LengthGroupedSampler) -> list[list[int]]:
    loader = DataLoader(list(range(len(LENGTHS))), batch_size=sampler.batch_size, sampler=sampler)
    return [batch.tolist() for batch in loader]


def test_every_example_once_in_batches_of_similar_length():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=8, pool_batches=4, seed=1)
    batches = _batches_through_a_loader(sampler)
    assert batches == [b.tolist() for b in sampler.batches()]  # the DataLoader builds the sampler's batches
    assert sorted(i for b in batches for i in b) == list(range(103)) and len(sampler) == 103
    assert [len(b) for b in batches] == [8] * 12 + [7]  # the one short batch comes last
    # within a pool the batches hold disjoint ranges of length: sorted, then cut
    whole = LengthGroupedSampler(LENGTHS, batch_size=8, pool_batches=100, seed=1)
    spans = sorted((int(LENGTHS[b].min()), int(LENGTHS[b].max())) for b in whole.batches())
    assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(spans))
    # and the padding to the batch's longest falls well below that of random batches
    def padded(batch_list):
        return sum(int(LENGTHS[b].max()) * len(b) for b in batch_list)
    random_batches = torch.randperm(103, generator=torch.Generator().manual_seed(1)).split(8)
    assert padded(whole.batches()) < 0.7 * padded(random_batches)


def test_seeded_by_seed_and_epoch():
    a, b = LengthGroupedSampler(LENGTHS, 8, 4, seed=3), LengthGroupedSampler(LENGTHS, 8, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedSampler(LENGTHS, 8, 4, seed=4)) != first
    # no two seeds share an epoch's order (seed + epoch made seed 3's epoch 1 seed 4's epoch 0)
    orders = []
    for seed in range(4):
        sampler = LengthGroupedSampler(LENGTHS, 8, 4, seed=seed)
        for epoch in range(4):
            sampler.set_epoch(epoch)
            orders.append(tuple(sampler))
    assert len(set(orders)) == len(orders)
    # the order of batches is shuffled, not longest first
    maxima = [int(LENGTHS[batch].max()) for batch in LengthGroupedSampler(LENGTHS, 8, 100, seed=3).batches()]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)


def test_ranks_share_out_whole_batches():
    shares = [LengthGroupedSampler(LENGTHS, 8, 4, num_replicas=3, rank=r, seed=0) for r in range(3)]
    batches = [share.batches() for share in shares]
    assert {len(b) for b in batches} == {5}  # 103 examples -> 120 = 5 rounds of 3 batches of 8
    assert all(len(batch) == 8 for share in batches for batch in share)
    assert all(len(share) == 40 == len(list(share)) for share in shares)
    seen = torch.cat([torch.cat(b) for b in batches])
    assert set(seen.tolist()) == set(range(103)) and len(seen) == 120  # 17 repeated to fill the last round
    assert _batches_through_a_loader(shares[1]) == [b.tolist() for b in batches[1]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"pool_batches": 0}, "pool_batches must be a positive integer"),
        ({"num_replicas": 2, "rank": 2}, r"rank must lie in \[0, 2\)"),
        ({"lengths": []}, "at least one example"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"lengths": LENGTHS, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        LengthGroupedSampler(**arguments)


def _split(story_lengths):
    vocabulary = babi.Vocabulary.build(["a"], [f"w{i}" for i in range(40)])

    class Split:
        def to_dict(self):
            rows = [{"story": [[f"w{s}"] * (1 + s % 3) for s in range(n)], "query": ["w0"] * (1 + n % 2),
                     "answer": "a", "task": 1} for n in story_lengths]
            return {k: [r[k] for r in rows] for k in ("story", "query", "answer", "task")}

    return babi.EncodedSplit(babi.encode_split(Split(), vocabulary, memory_size=5))


def test_sequence_lengths_are_the_readers_token_counts():
    split = _split([0, 1, 3, 7, 2])
    batch = collate_babi([split[i] for i in range(len(split))])
    _, lengths = story_to_sequence(batch["story"], batch["query"])
    assert sequence_lengths(split.arrays).tolist() == lengths.tolist()


def test_data_module_groups_training_batches_only():
    module = BabiDataModule(tasks=[1], batch_size=2, seed=3, group_by_length=2)
    split = _split([5, 0, 1, 4, 2, 3, 1])
    module._splits = {"train": split, "validation": split, "test": split}
    train = module.train_dataloader()
    assert isinstance(train.sampler, LengthGroupedSampler)
    expected = LengthGroupedSampler(sequence_lengths(split.arrays), batch_size=2, pool_batches=2, seed=3)
    assert [b.tolist() for b in train.sampler.batches()] == [b.tolist() for b in expected.batches()]
    assert [b["answer"].shape[0] for b in train] == [2, 2, 2, 1]
    assert module.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"
    module.trainer = SimpleNamespace(global_rank=1, world_size=2)
    shared = module.train_dataloader().sampler
    assert isinstance(shared, LengthGroupedSampler) and (shared.rank, shared.num_replicas) == (1, 2)
    assert len(shared) == 4  # 7 questions -> 8 = 2 rounds of 2 ranks x 2


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "50"])
def test_data_module_refuses_a_bad_pool(value):
    with pytest.raises(ValueError, match=f"group_by_length must be None or a positive number.*{value!r}"):
        BabiDataModule(group_by_length=value)
