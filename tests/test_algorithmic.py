"""The NTM paper's task suite: worked examples, layouts, masks, the Bayes-optimal n-gram cost, seeding, bad input."""

from __future__ import annotations

import doctest
import itertools
import math
import sys

import pytest
import torch

from tasks.algorithmic import (
    AlgorithmicDataModule,
    AssociativeRecallTask,
    CopyTask,
    DynamicNGramsTask,
    PrioritySortTask,
    RepeatCopyTask,
)

TASKS = [CopyTask, RepeatCopyTask, AssociativeRecallTask, DynamicNGramsTask, PrioritySortTask]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.__name__)
def test_docstring_examples_hold(cls):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    [test] = [t for t in finder.find(cls, module=sys.modules[cls.__module__]) if t.name.endswith(cls.__name__)]
    result = runner.run(test)
    assert result.attempted >= 3 and result.failed == 0


def default_length(cls):
    return {CopyTask: 5, RepeatCopyTask: 3, AssociativeRecallTask: 4, DynamicNGramsTask: 30, PrioritySortTask: 20}[cls]


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.__name__)
def test_same_seed_same_batch_other_seed_differs(cls):
    task = cls()
    length = default_length(cls)
    a, b, c = (task.sample_batch(seeded(s), 3, length) for s in (4, 4, 5))
    for key in ("inputs", "targets", "mask"):
        assert torch.equal(a[key], b[key])
    assert not (a["inputs"].shape == c["inputs"].shape and torch.equal(a["inputs"], c["inputs"]))


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.__name__)
def test_shapes_sizes_and_mask_count(cls):
    task = cls()
    length = default_length(cls)
    batch = task.sample_batch(seeded(), 3, length)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    steps = inputs.shape[1]
    assert inputs.shape == (3, steps, task.input_size)
    assert targets.shape == (3, steps, task.output_size) and mask.shape == (3, steps)
    assert steps <= task.sequence_length(length)
    assert torch.all(mask.sum(1) <= task.output_length(length))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    if cls is not DynamicNGramsTask:  # (n-grams: every step has a next bit; the coins are just not scored)
        assert torch.all(targets * (1 - mask[..., None]) == 0)  # the target is silent where nothing is scored
    assert batch["length"] == length


def test_memory_needed():
    assert CopyTask().memory_needed(120) == 120
    assert RepeatCopyTask().memory_needed(10) == 10
    assert AssociativeRecallTask(item_length=3).memory_needed(6) == 18
    assert DynamicNGramsTask(order=6).memory_needed(200) == 32
    assert PrioritySortTask().memory_needed(20) == 20


# ---- repeat copy ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 4])
def test_repeat_copy_layout(length):
    task = RepeatCopyTask(width=5, max_repeats=4)
    bits = torch.randint(0, 2, (3, length, 5), generator=seeded()).float()
    repeats = torch.tensor([1, 4, 2])
    batch = task.encode(bits, repeats)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    assert inputs.shape[1] == length + 2 + 4 * length
    for b, r in enumerate(repeats.tolist()):
        out = slice(length + 1, length + 1 + r * length)
        torch.testing.assert_close(targets[b, out, :5], bits[b].repeat(r, 1))
        end = length + 1 + r * length
        assert targets[b, :, 5].nonzero().flatten().tolist() == [end]  # one end marker, right after the copies
        # the mask covers exactly the output phase: the copies and the end marker
        assert mask[b].nonzero().flatten().tolist() == list(range(length + 1, end + 1))
        assert inputs[b, length, 6] == pytest.approx(task.normalise_repeats(torch.tensor(float(r))).item())
    assert torch.all(inputs[:, length + 1 :] == 0) and torch.all(inputs[:, :, 5].argmax(1) == length)


def test_repeat_count_is_normalised_over_the_training_repeats():
    task = RepeatCopyTask(min_repeats=1, max_repeats=10)
    values = task.normalise_repeats(torch.arange(1, 11, dtype=torch.float64))
    assert values.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert values.var(unbiased=False).item() == pytest.approx(1.0)


def test_repeat_copy_repeats_per_batch_has_no_padding():
    task = RepeatCopyTask(repeats_per_batch=True)
    batch = task.sample_batch(seeded(3), 6, 4)
    counts = batch["inputs"][:, 4, task.width + 1]
    assert torch.all(counts == counts[0])
    assert torch.all(batch["mask"][:, 5:] == 1)
    per_sequence = RepeatCopyTask().sample_batch(seeded(3), 64, 2)
    assert (per_sequence["mask"] == 0).any(dim=0)[3:].any()  # some sequences end early: padding


def test_repeat_copy_given_repeats():
    batch = RepeatCopyTask().sample_batch(seeded(), 2, 3, repeats=12)
    assert batch["mask"].sum(1).tolist() == [37.0, 37.0]


# ---- associative recall ---------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [2, 5])
def test_associative_recall_answer_is_the_item_after_the_query(num_items):
    task = AssociativeRecallTask(width=6, item_length=3)
    batch = task.sample_batch(seeded(num_items), 4, num_items)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    k, w = 3, 6
    listed = inputs[:, : num_items * (k + 1)].reshape(4, num_items, k + 1, w + 2)
    assert torch.all(listed[:, :, 0, w] == 1) and torch.all(listed[:, :, 1:, w:] == 0)
    items = listed[:, :, 1:, :w]
    start = num_items * (k + 1)
    assert torch.all(inputs[:, start, w + 1] == 1) and torch.all(inputs[:, start + k + 1, w + 1] == 1)
    query = inputs[:, start + 1 : start + 1 + k, :w]
    for b in range(4):
        matches = [i for i in range(num_items - 1) if torch.equal(items[b, i], query[b])]
        assert matches, "the query is one of the items that have a successor"
        torch.testing.assert_close(targets[b, -k:], items[b, matches[0] + 1])
    assert torch.all(mask[:, -k:] == 1) and torch.all(mask[:, :-k] == 0)
    assert inputs.shape[1] == task.sequence_length(num_items)
    assert torch.all(inputs[:, -k:] == 0)


# ---- dynamic n-grams ------------------------------------------------------------------------


def brute_force_optimal(bits: list[int], order: int) -> list[float]:
    """P(next = 1) at each step t, by counting with Python loops; ½ before a full context."""
    out = []
    for t in range(len(bits) - 1):
        if t < order - 2:
            out.append(0.5)
            continue
        context = tuple(bits[t - order + 2 : t + 1])
        ones = zeros = 0
        for s in range(order - 2, t):
            if tuple(bits[s - order + 2 : s + 1]) == context:
                ones += bits[s + 1]
                zeros += 1 - bits[s + 1]
        out.append((ones + 0.5) / (ones + zeros + 1))
    return out


@pytest.mark.parametrize("order", [2, 3, 4])
def test_bayes_optimal_estimator_matches_a_brute_force_count(order):
    task = DynamicNGramsTask(order=order, min_length=order, max_length=40)
    batch = task.sample_batch(seeded(order), 3, 23)
    inputs, targets = batch["inputs"][..., 0], batch["targets"][..., 0]
    probabilities = task.optimal_probabilities(inputs, targets)
    for b in range(3):
        bits = inputs[b].long().tolist() + [int(targets[b, -1])]
        expected = torch.tensor(brute_force_optimal(bits, order))
        torch.testing.assert_close(probabilities[b], expected)
        cost = -sum(math.log2(p if bit else 1 - p) for p, bit, m in
                    zip(expected.tolist(), bits[1:], batch["mask"][b].tolist()) if m)
        assert batch["optimal_bits"][b].item() == pytest.approx(cost, rel=1e-5)


def test_ngram_mask_scores_the_table_drawn_bits_only():
    task = DynamicNGramsTask(order=6, min_length=6, max_length=200)
    batch = task.sample_batch(seeded(), 2, 12)
    assert batch["inputs"].shape == (2, 11, 1)
    assert batch["mask"][0].tolist() == [0.0] * 4 + [1.0] * 7
    assert task.output_length(12) == 7


def test_ngram_tables_follow_beta_half_half_and_drive_the_bits():
    task = DynamicNGramsTask(order=6)
    tables = task.sample_tables(seeded(), 4000)
    assert tables.shape == (4000, 32) and tables.min() >= 0 and tables.max() <= 1
    # Beta(½, ½): mean ½, variance 1/8, and P(p < 0.1) = (2/π) asin(√0.1) ≈ 0.205
    assert tables.mean().item() == pytest.approx(0.5, abs=0.01)
    assert tables.var().item() == pytest.approx(0.125, abs=0.005)
    assert (tables < 0.1).float().mean().item() == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.1)), abs=0.01)
    # a table of certainties is followed exactly: a 1 always after a context ending in 0, else 0
    contexts = torch.arange(32)
    table = (contexts % 2 == 0).float().expand(2, 32)
    bits = task.generate(table, 40, seeded(1))
    for b in range(2):
        for t in range(5, 40):
            assert bits[b, t] == 1 - bits[b, t - 1]


def test_ngram_contexts_read_the_last_bits_most_recent_lowest():
    task = DynamicNGramsTask(order=4, min_length=4, max_length=10)
    contexts = task.contexts(torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]]))
    assert contexts.tolist() == [[-1, -1, 4, 1, 3]]  # 100, 001, 011 read oldest first


# ---- priority sort --------------------------------------------------------------------------


def test_priority_sort_outputs_the_highest_priorities_in_order():
    task = PrioritySortTask()
    batch = task.sample_batch(seeded(), 5, 20)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    assert inputs.shape == (5, 37, 10) and torch.all(inputs[:, 20, 9] == 1)
    priorities = inputs[:, :20, 8]
    assert priorities.min() >= -1 and priorities.max() <= 1
    for b in range(5):
        ranked = sorted(range(20), key=lambda i: -priorities[b, i].item())[:16]
        torch.testing.assert_close(targets[b, 21:], inputs[b, ranked, :8])
    assert torch.all(mask[:, :21] == 0) and torch.all(mask[:, 21:] == 1)


def test_priority_sort_puts_the_earlier_of_equal_priorities_first():
    task = PrioritySortTask(width=6, num_outputs=16, min_length=40, max_length=40)
    bits = torch.arange(40).bitwise_and(torch.tensor([1, 2, 4, 8, 16, 32])[:, None]).ne(0).T.float()  # 40 distinct
    priorities = torch.tensor([0.5, -0.25, 0.75, 0.0] * 10)  # each value ten times
    targets = task.encode(bits[None], priorities[None])["targets"][0, 41:]
    expected = [i for i in range(2, 40, 4)] + [i for i in range(0, 40, 4)][:6]  # the 0.75s, then the 0.5s, in input order
    torch.testing.assert_close(targets, bits[expected])


def test_priority_sort_generalises_to_more_inputs():
    batch = PrioritySortTask().sample_batch(seeded(), 2, 40)
    assert batch["inputs"].shape[1] == 40 + 1 + 16


# ---- scoring --------------------------------------------------------------------------------


def test_scoring_reads_only_the_mask():
    task = CopyTask(width=4)
    batch = task.sample_batch(seeded(), 3, 5)
    perfect = (batch["targets"] * 2 - 1) * 30.0  # confident and right on every step
    assert torch.all(task.bits_per_sequence(perfect, batch) < 1e-6)
    assert torch.all(task.bit_errors(perfect, batch) == 0) and torch.all(task.accuracy(perfect, batch) == 1)
    wrong_outside = perfect.clone()
    wrong_outside[:, :6] = -wrong_outside[:, :6] + 5.0  # errors before the output phase do not count
    assert torch.all(task.bit_errors(wrong_outside, batch) == 0)
    flipped = perfect.clone()
    flipped[:, 6, 0] = -flipped[:, 6, 0]
    assert task.bit_errors(flipped, batch).tolist() == [1.0, 1.0, 1.0]
    assert task.accuracy(flipped, batch).tolist() == pytest.approx([0.8] * 3)
    zero = torch.zeros_like(perfect)
    assert task.bits_per_sequence(zero, batch).tolist() == pytest.approx([20.0] * 3)  # 5 × 4 bits at 1 bit each
    assert task.loss(zero, batch).item() == pytest.approx(math.log(2))


# ---- data module and curriculum support -----------------------------------------------------


def test_length_mix_draws_from_the_whole_range_and_is_saved():
    dm = AlgorithmicDataModule(CopyTask(min_length=1, max_length=9), batch_size=2, batches_per_epoch=60, seed=3)
    dm.length_range = (2, 2)
    assert {b["length"] for b in dm.train_dataloader()} == {2}
    dm.length_mix = 0.5
    lengths = [b["length"] for b in dm.train_dataloader()]
    assert 2 in lengths and len(set(lengths)) > 3 and set(lengths) <= set(range(1, 10))
    state = dm.state_dict()
    assert state["length_range"] == [2, 2] and state["length_mix"] == 0.5
    other = AlgorithmicDataModule(CopyTask(min_length=1, max_length=9), seed=3)
    other.load_state_dict(state)
    assert other.length_range == (2, 2) and other.length_mix == 0.5


def test_data_module_with_every_task_gives_linked_sizes_and_fixed_validation():
    for cls in TASKS:
        task = cls()
        dm = AlgorithmicDataModule(task, batch_size=2, batches_per_epoch=1, val_size=3, val_lengths=[task.max_length])
        assert (dm.input_size, dm.output_size) == (task.input_size, task.output_size)
        first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
        assert all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(first, second))


@pytest.mark.parametrize("cls", TASKS, ids=lambda cls: cls.__name__)
def test_validation_and_test_sets_are_the_same_whatever_the_batch_size(cls):
    # an NTM trained with batches of 16 and an LSTM with 32 are validated on the same sequences
    from memnet.protocols import join_batches

    task = cls()
    sets = []
    for batch_size in (16, 32):
        dm = AlgorithmicDataModule(task, batch_size=batch_size, val_size=70, val_lengths=[task.max_length])
        sets.append((join_batches(list(dm.val_dataloader())), join_batches(list(dm.test_dataloader()))))
    for first, second in zip(*sets):
        assert first["inputs"].shape[0] in (70, 512) and torch.equal(first["inputs"], second["inputs"])
        assert torch.equal(first["targets"], second["targets"]) and torch.equal(first["mask"], second["mask"])


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: RepeatCopyTask(min_length=5, max_length=3), "max_length"),
        (lambda: RepeatCopyTask(min_repeats=4, max_repeats=2), "max_repeats"),
        (lambda: RepeatCopyTask(min_repeats=0), "min_repeats"),
        (lambda: RepeatCopyTask(width=0), "width"),
        (lambda: AssociativeRecallTask(min_length=1), "min_length"),
        (lambda: AssociativeRecallTask(item_length=0), "item_length"),
        (lambda: AssociativeRecallTask(min_length=6, max_length=2), "max_length"),
        (lambda: DynamicNGramsTask(order=1), "order"),
        (lambda: DynamicNGramsTask(order=6, min_length=5), "min_length"),
        (lambda: DynamicNGramsTask(min_length=200, max_length=100), "max_length"),
        (lambda: PrioritySortTask(num_outputs=21, min_length=20), "num_outputs"),
        (lambda: PrioritySortTask(min_length=20, max_length=19), "max_length"),
    ],
)
def test_impossible_configurations_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: CopyTask(width=True), "width"),
        (lambda: CopyTask(min_length=True), "min_length"),
        (lambda: CopyTask(max_length=True), "max_length"),
        (lambda: RepeatCopyTask(max_repeats=True), "max_repeats"),
        (lambda: AlgorithmicDataModule(CopyTask(), batch_size=True), "batch_size"),
        (lambda: AlgorithmicDataModule(CopyTask(), val_lengths=[True]), "val_lengths"),
    ],
)
def test_a_bool_is_not_a_size(make, field):
    # YAML's `yes` / `true` parses to True, which isinstance(..., int) accepts as 1
    with pytest.raises(ValueError, match=field):
        make()


def test_bound_is_in_the_message():
    with pytest.raises(ValueError, match=r"num_outputs.*≤ min_length \(10\)"):
        PrioritySortTask(num_outputs=16, min_length=10, max_length=20)
    with pytest.raises(ValueError, match=r"max_length must be an integer ≥ min_length \(5\)"):
        RepeatCopyTask(min_length=5, max_length=3)


@pytest.mark.parametrize(
    "task, length",
    [(CopyTask(), 0), (AssociativeRecallTask(), 1), (DynamicNGramsTask(), 5), (PrioritySortTask(), 15)],
)
def test_sample_batch_refuses_lengths_the_task_cannot_encode(task, length):
    with pytest.raises(ValueError, match="length"):
        task.sample_batch(seeded(), 2, length)


def test_data_module_refuses_bad_ranges():
    dm = AlgorithmicDataModule(CopyTask(min_length=2, max_length=8))
    with pytest.raises(ValueError, match=r"length_range.*min_length \(2\).*max_length \(8\)"):
        dm.length_range = (1, 5)
    with pytest.raises(ValueError, match="length_range"):
        dm.length_range = (6, 5)
    with pytest.raises(ValueError, match="length_mix"):
        dm.length_mix = 1.5
    with pytest.raises(ValueError, match="val_lengths"):
        AlgorithmicDataModule(AssociativeRecallTask(), val_lengths=[1])


def test_every_generator_draws_batches_of_one_and_of_many_distinct_sequences():
    for cls in TASKS:
        task = cls()
        for batch_size in (1, 256):
            batch = task.sample_batch(seeded(), batch_size, default_length(cls))
            assert batch["inputs"].shape[0] == batch_size == batch["mask"].shape[0]
        distinct = {tuple(row.flatten().tolist()) for row in batch["inputs"]}
        assert len(distinct) > 250, cls.__name__


def test_all_repeat_counts_and_items_are_reachable():
    task = RepeatCopyTask(min_repeats=2, max_repeats=4)
    batch = task.sample_batch(seeded(), 400, 2)
    counts = set((batch["mask"].sum(1) - 1).div(2).long().tolist())
    assert counts == {2, 3, 4}
    recall = AssociativeRecallTask()
    queries = set()
    for seed in range(3):
        b = recall.sample_batch(seeded(seed), 50, 4)
        listed = b["inputs"][:, :16].reshape(50, 4, 4, 8)[:, :, 1:, :6]
        answers = b["targets"][:, -3:]
        for i, j in itertools.product(range(50), range(1, 4)):
            if torch.equal(listed[i, j], answers[i]):
                queries.add(j - 1)
    assert queries == {0, 1, 2}


def test_repeats_per_batch_is_for_training_only():
    task = RepeatCopyTask(repeats_per_batch=True, min_repeats=2, max_repeats=7)
    scored = task.for_evaluation()
    assert not scored.repeats_per_batch and (scored.min_repeats, scored.max_repeats) == (2, 7)
    assert scored.repeats_std == task.repeats_std  # the same count encoding
    dm = AlgorithmicDataModule(task, batch_size=64, batches_per_epoch=2, val_lengths=[3], val_size=64)
    [val] = list(dm.val_dataloader())
    assert len(set(val["mask"].sum(1).tolist())) > 1  # several repeat counts in one validation batch
    train = next(iter(dm.train_dataloader()))
    assert len(set(train["mask"].sum(1).tolist())) == 1
    assert CopyTask().for_evaluation().__class__ is CopyTask
