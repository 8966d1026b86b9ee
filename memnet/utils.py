"""Small helpers shared across memnet: argument checks, each process's share of the data and its place in a resumed
epoch, seeded draws kept in checkpoints, the W&B mode, fsync and what a killed save leaves behind."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DistributedSampler


def is_integer(value: object) -> bool:
    """True for an ``int`` that is not a ``bool``: ``True`` is not a size, a length or a count.

    >>> is_integer(3), is_integer(True), is_integer(3.0)
    (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for an ``int`` or ``float`` that is not a ``bool``: a metric read back as ``true`` is no score.

    >>> is_number(0.5), is_number(3), is_number(True), is_number("1")
    (True, True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive integer.

    >>> check_positive(memory_size=128, num_reads=0)
    Traceback (most recent call last):
    ...
    ValueError: num_reads must be a positive integer, got 0
    """
    for name, value in values.items():
        if not is_integer(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval [low, high].

    ``low_open`` / ``high_open`` exclude an end: (low, high], [low, high), (low, high).
    """
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def distributed_position(trainer: Any) -> tuple[int, int]:
    """(rank, world size) of this process in ``trainer``'s run; (0, 1) without a trainer or on one device.

    Data modules use it to give every DDP process its own share of the data.
    """
    if trainer is None:
        return 0, 1
    return int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))


def gather_objects(value: Any, trainer: Any) -> list[Any]:
    """``value`` of every DDP process of ``trainer``'s run, by rank: ``[value]`` on one process.

    A collective under DDP (``torch.distributed.all_gather_object``, pickled): every process must call it
    at the same point, with a picklable value.
    """
    _, world_size = distributed_position(trainer)
    if world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def in_set_order(shares: list[list[Any]]) -> list[Any]:
    """The items of a fixed set from the processes' ``shares`` (by rank), in the set's order.

    Rank r of W holds the items r, r + W, r + 2W, … (:class:`UnrepeatedDistributedSampler`): item k of
    share r is the set's item r + kW.

    >>> in_set_order([["a", "c", "e"], ["b", "d"]])
    ['a', 'b', 'c', 'd', 'e']
    """
    longest = max((len(share) for share in shares), default=0)
    return [share[k] for k in range(longest) for share in shares if k < len(share)]


def distributed_sampler(dataset: Sized, trainer: Any, *, shuffle: bool, seed: int) -> DistributedSampler | None:
    """A ``DistributedSampler`` giving this process its share of a training set ``dataset``, or None on one process.

    The share is rank r's every world-size-th example (shuffled by ``seed`` and the
    epoch when ``shuffle``; Lightning calls ``set_epoch``). Where the size is not a
    multiple of the world size, the first examples of the order are repeated so every
    process has as many batches (``torch.utils.data.DistributedSampler``'s rule): right
    for training, where the processes step together, wrong for a score. Fixed
    validation and test sets use :func:`evaluation_sampler`.
    """
    rank, world_size = distributed_position(trainer)
    if world_size <= 1:
        return None
    return MixedSeedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)


class MixedSeedDistributedSampler(DistributedSampler):
    """``torch.utils.data.DistributedSampler`` with epoch e of ``seed`` shuffled by ``mix_seed(seed, e)``.

    torch's own shuffles epoch e by seed + e, so seed s's epoch 1 is seed s + 1's epoch 0:
    the runs of consecutive seeds (a suite's) would train on the same orders one epoch apart.
    Everything else (the share, the repetition up to a whole round) is torch's.
    """

    def __iter__(self):
        seed, epoch = self.seed, self.epoch
        self.seed, self.epoch = mix_seed(seed, epoch), 0
        try:
            return super().__iter__()  # a list's iterator, built before the finally
        finally:
            self.seed, self.epoch = seed, epoch


def evaluation_sampler(dataset: Sized, trainer: Any, *, unit: str) -> UnrepeatedDistributedSampler | None:
    """An :class:`UnrepeatedDistributedSampler` giving this process its share of a fixed validation or test set, or
    None on one process: every example is scored on exactly one process. ``unit`` names an example in the error
    for a set smaller than the processes (``"question"``)."""
    rank, world_size = distributed_position(trainer)
    if world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, unit=unit)


class UnrepeatedDistributedSampler(DistributedSampler):
    """Process ``rank``'s share of a fixed set, in order, every example on exactly one process.

    Rank r takes the examples r, r + W, r + 2W, … of the W processes, so the shares differ
    by one example at most. ``torch.utils.data.DistributedSampler`` instead repeats the
    first examples until the size divides by W, and a score over the shares counted them
    twice: the validation metrics of a run on two processes were not those of the set.
    (Lightning's ``UnrepeatedDistributedSampler`` does the same for predictions.)

    The processes may then run one batch more or fewer: every score of memnet's modules
    is summed over the epoch and reduced across the processes once, at its end
    (``memnet.training.StageMetrics``), so no process waits in a collective that another
    never calls. A process must have at least one example, though: Lightning skips the
    validation of a process without batches, and the others would wait for it at the
    epoch's end forever. A set smaller than W is refused (``MemnetError``) on every process.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of putting
    its own, repeating one, in its place.

    Args:
        dataset: the set (only its length is used).
        num_replicas: W, the processes sharing it.
        rank: this process, in [0, W).
        unit: what an example is, for the error message (``"sequence"``, ``"question"``).
    """

    def __init__(self, dataset: Sized, *, num_replicas: int, rank: int, unit: str = "example") -> None:
        check_positive(num_replicas=num_replicas)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank!r}")
        size = len(dataset)
        if size < num_replicas:
            raise MemnetError(
                f"a validation or test set of {size} {unit}{'' if size == 1 else 's'} cannot be shared out "
                f"between {num_replicas} processes: each needs at least one (a process without a batch skips "
                "validation and the others wait for it); use a larger set or fewer devices")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, size, num_replicas))
        self.total_size = size

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def batches_done(trainer: Any) -> int:
    """The training batches of the current epoch done when its data is (re)started: 0, except in a run resumed
    from a checkpoint written in the middle of an epoch, where Lightning restores its place in the epoch and
    runs only the epoch's remaining batches, but from a loader started afresh."""
    fit_loop = getattr(trainer, "fit_loop", None)
    if fit_loop is None:
        return 0
    # a checkpoint written at a batch's end (on_train_batch_end) counts it as processed, not yet completed;
    # Lightning counts it as completed when it restarts (and then as processed no more)
    current = fit_loop.epoch_loop.batch_progress.current
    return int(max(current.processed, current.completed))


def epoch_cut_short(trainer: Any) -> bool:
    """Whether the training epoch ending now stopped before its last batch: ``max_steps`` (or ``max_time``, a stop)
    reached part way. Lightning still calls ``on_train_epoch_end`` on the part trained, and a checkpoint written
    then resumes the epoch where it stopped and ends it again (:func:`resume_cut_short_epoch`); Lightning steps no
    per-epoch schedule at such an end."""
    fit_loop = getattr(trainer, "fit_loop", None)
    if fit_loop is None:
        return False
    progress = fit_loop.epoch_loop.batch_progress
    return not (progress.current.ready == trainer.num_training_batches or progress.is_last_batch)


def resume_cut_short_epoch(checkpoint: dict[str, Any]) -> bool:
    """Mark a checkpoint written at the end of an epoch cut short as written in its middle; True when it did.

    Stopped part way through an epoch (``max_steps``, ``max_time``), Lightning counts the epoch as processed
    before ``on_train_epoch_end``, where last.ckpt is written, though batches were left (``is_last_batch``
    false). Resumed with ``max_steps`` it goes on with the epoch, one ahead in its count of processed epochs;
    resumed with ``max_epochs`` it takes the epoch as finished (``_FitLoop.restarting`` looks at that count
    alone): it dropped the epoch's remaining batches and its per-epoch schedule step, trained every later epoch
    at the previous epoch's rate, and stopped at once when the cut epoch was the last one. Counted back as
    started but not processed (Lightning's state of a checkpoint written after a batch), the fit loop restarts
    in the epoch's middle under either limit and trains its remaining batches, as the unbroken run did.

    Edits ``checkpoint["loops"]["fit_loop"]`` in place; to be called before Lightning restores its loops (a
    LightningModule's ``on_load_checkpoint``). A checkpoint written elsewhere is left as it is.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = fit_loop.get("epoch_progress"), fit_loop.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict):
        return False
    if batches.get("is_last_batch", True) or not batches["current"]["completed"]:
        return False  # at an epoch's real end, or before its first batch
    current = epochs["current"]
    if not current["ready"] == current["started"] == current["processed"] > 0:
        return False  # written in the middle of the epoch (after a batch, at a validation): Lightning restarts there
    for counts in (epochs["current"], epochs["total"]):
        counts["processed"] -= 1
        # and as not completed either, where it was written after fit ended (trainer.save_checkpoint)
        counts["completed"] = min(counts["completed"], counts["processed"])
    return True


def epoch_end_skipped_by_resume(checkpoint: dict[str, Any]) -> int | None:
    """The epoch whose end a resume from ``checkpoint`` leaves out, or None where the resume runs it.

    A checkpoint written at the end of an epoch's last batch, before the epoch's end (Lightning's
    ``ModelCheckpoint`` saves one of ``every_n_train_steps`` or ``train_time_interval`` at a batch's end;
    memnet's :class:`memnet.callbacks.LastAndBestCheckpoint` puts it off to the epoch's end), is resumed by
    Lightning with the next epoch: the epoch's validation at its end, its ``on_train_epoch_end`` (a
    curriculum's step, a relapse check, its logged training values) and its per-epoch schedule step never run.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = fit_loop.get("epoch_progress"), fit_loop.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict) or not batches.get("is_last_batch", False):
        return None
    batch, epoch = batches["current"], epochs["current"]
    if batch["completed"] != batch["processed"] - 1 or epoch["processed"] != epoch["started"] - 1:
        return None  # written after the batch (at the epoch's validation or end), or in an epoch's middle
    return int(epoch["processed"])


class ResumableLoader(torch.utils.data.DataLoader):
    """A training loader that takes up a resumed epoch where its checkpoint was written.

    Resumed in the middle of an epoch, Lightning restores its place in the epoch and runs only the
    epoch's remaining batches, but from a loader started afresh: without this they would be the
    epoch's first batches, trained on twice, and its last ones never. This loader leaves out the
    batches :func:`batches_done` counts, and sets its sampler's epoch to the trainer's
    ``current_epoch`` (Lightning passes the epochs *processed*, which the last.ckpt of a run stopped in
    the middle of an epoch by ``max_steps`` or ``max_time`` counts one ahead unless
    :func:`resume_cut_short_epoch` counted it back: its resume would shuffle the epoch as the next one).

    Its place is the trainer's. Its ``state_dict`` (kept by Lightning in the checkpoint's loop state;
    having one also tells Lightning that the loader is resumable) holds its ``generator``'s state, where
    it has one: the generator draws the seed of each epoch's worker processes (and a ``RandomSampler``'s
    order), and a loader made afresh started it again from its seed, so a resumed run's workers drew
    what the first epoch's had drawn. Restored, an epoch resumed in its middle draws from the
    generator's state at the epoch's start (its workers as the unbroken run's), the next epoch from its
    state at the checkpoint. Without a generator the seeds come from torch's global generator, whose
    state memnet's modules keep (:class:`memnet.training.MemnetModule`): the unbroken run's after a
    resume at an epoch's end; in an epoch's middle they are drawn aside, leaving the global draws as
    the unbroken run's. ``persistent_workers`` keep their generators over epochs, which a resume starts anew:
    what such workers draw differs from the resume on (the batches' order does not; memnet's data draws nothing
    in its workers).

    Args:
        trainer: the trainer whose place it follows (the data module's; None: a plain loader).
        *args, **kwargs: ``DataLoader``'s.
    """

    def __init__(self, *args: Any, trainer: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer = trainer
        self._epoch_start: tuple[int | None, torch.Tensor] | None = None  # (epoch, generator state) of this pass
        self._restored: dict | None = None  # the checkpoint's state, for the first pass after a resume

    def __iter__(self):
        return self._resumed()

    def _resumed(self):
        # at the first batch asked for, not when iter() is called: Lightning calls it before it restores its place
        # in the epoch and sets the sampler's epoch. DataLoader's own iterator is made here too, after set_epoch:
        # with workers it reads the sampler as it is made (to fill their queues), so made earlier it took the
        # order of the epoch the sampler was set to before
        epoch = getattr(self.trainer, "current_epoch", None)
        if epoch is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        done = batches_done(self.trainer)
        restored, self._restored = self._restored, None
        if self.generator is not None:
            if restored and done > 0 and restored.get("epoch") == epoch:
                self.generator.set_state(restored["epoch_start"])  # the epoch again, its draws as they were
            elif restored and done == 0:
                self.generator.set_state(restored["now"])  # the next epoch, from where the checkpoint left it
            self._epoch_start = (epoch, self.generator.get_state())
        # resumed mid-epoch: the unbroken run drew the loader's seed and these batches before its checkpoint, whose
        # state of torch's global generator is restored (memnet.training.MemnetModule): they are not drawn from it again
        with torch.random.fork_rng(devices=[], enabled=done > 0):
            iterator = super().__iter__()
            for _ in range(done):  # drawn and dropped: the sampler's order goes on after them
                next(iterator, None)
        yield from iterator

    def state_dict(self) -> dict:
        """The generator's state at the start of the epoch being drawn and now (empty without a generator)."""
        if self.generator is None or self._epoch_start is None:
            return {}
        epoch, start = self._epoch_start
        return {"epoch": epoch, "epoch_start": start, "now": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep the checkpoint's generator states for the first pass (the place in the epoch is the trainer's)."""
        self._restored = dict(state_dict) if state_dict else None


class EpochShuffle(torch.utils.data.Sampler):
    """One process's shuffled order of ``size`` examples for the epoch Lightning sets, seeded by ``seed``.

    The order of epoch e is the one ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    gives at its e-th full pass (the loader's seed draw, the permutation, the sampler's trailing
    draw, per pass), but computed from e: a run resumed at epoch e shuffles as the unbroken run did,
    where a fresh loader would start again from epoch 0's order. Without ``set_epoch`` each pass
    takes the next epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # the earlier passes' draws, in the loader's order
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            torch.randperm(self.size, generator=generator)
            torch.randperm(self.size, generator=generator)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        self.epoch += 1
        return iter(order)


class EpochDraws(DistributedSampler):
    """``count`` of ``size`` examples drawn uniformly *with* replacement for the epoch Lightning sets.

    The batches of the authors' MemN2N code (``randi(length(train_range), batch_size, 1)``, ⌊size /
    batch⌋ batches an epoch): an example may come twice in an epoch, or not at all. The draws of
    epoch e come from ``seed``, e and the process's ``rank`` alone, so a run resumed at epoch e
    draws what the unbroken run drew, and each DDP process its own. Without ``set_epoch`` each pass
    takes the next epoch. It is a ``DistributedSampler`` so that Lightning keeps it under DDP: in
    its place Lightning's wrapper gave each of ``num_replicas`` processes a 1/``num_replicas`` share
    of its own draws, and set the epoch on the wrapper only.
    """

    def __init__(self, size: int, count: int, seed: int, rank: int = 0, num_replicas: int | None = None) -> None:
        num_replicas = rank + 1 if num_replicas is None else num_replicas  # the draws depend on the rank alone
        if size < 1 or count < 1:
            raise ValueError(f"EpochDraws needs examples to draw from and a number of draws, got size {size}, "
                             f"count {count}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"EpochDraws: rank must lie in [0, num_replicas), got rank {rank}, "
                             f"num_replicas {num_replicas}")
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.count = size, count
        self.num_samples = self.total_size = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        generator = torch.Generator().manual_seed(mix_seed(mix_seed(self.seed, self.epoch), self.rank))
        draws = torch.randint(self.size, (self.count,), generator=generator).tolist()
        self.epoch += 1
        return iter(draws)


def mix_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for stream ``stream`` of base seed ``seed`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def process_rank() -> int:
    """This process's rank in the ``torch.distributed`` process group (DDP), 0 outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class SeededDraws:
    """A module's own seeded ``torch.Generator`` for what it draws in training, kept in checkpoints.

    ``generator(device)`` makes it from ``seed`` on first use (and again on another device);
    ``state()`` and ``set_state(state)`` are what a module's ``rng_state`` / ``set_rng_state``
    return and take, so that :class:`memnet.training.MemnetModule` saves the draws' position in
    a checkpoint and a resumed run continues them instead of drawing the seed's first ones again.
    A state set before the generator exists is applied when it is made.

    Under DDP every process draws its own: rank r > 0 seeds it with ``mix_seed(seed, r)``, rank 0 (and a
    single process) with ``seed`` itself. With the seed alone, every process drew the same noise for its
    batch's sequence i (an NTM's random initial memories, MemN2N's random-noise time rows, a seq2seq's
    teacher-forcing coin flips): two processes of batch B had B patterns where one process of batch 2B has 2B.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending: dict | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = process_rank()  # made at the first draw in training, when DDP's processes are set up
            generator = torch.Generator(device=device).manual_seed(self.seed if rank == 0 else mix_seed(self.seed, rank))
            pending, self._pending = self._pending, None
            if pending is not None and pending["device"] == generator.device.type:
                generator.set_state(pending["state"])
            elif pending is not None:
                warnings.warn(f"a random generator's state was saved on {pending['device']}; on "
                              f"{generator.device.type} its draws start again from seed {self.seed}", stacklevel=3)
            self._generator = generator
        return self._generator

    def state(self) -> dict | None:
        """The generator's state (None: nothing drawn yet and nothing restored)."""
        if self._generator is None:
            return self._pending
        return {"device": self._generator.device.type, "state": self._generator.get_state()}

    def set_state(self, state: dict) -> None:
        self._generator, self._pending = None, state


class LengthGroupedSampler(DistributedSampler):
    """A training order whose batches hold examples of similar length: less padding to step through.

    A model that steps through time (a sequence reader on bAbI) pays for every step
    of a batch's longest example; in random batches of bAbI 1k joint, 44% of those
    steps are real tokens. This sampler gives, for each epoch (seeded by ``seed``
    and the epoch that Lightning sets with ``set_epoch``):

    1. the indices shuffled (by ``seed`` and the epoch mixed, so no two runs of
       different seeds share an epoch's order);
    2. cut into pools of ``pool_batches`` batches, each pool sorted by ``lengths``,
       longest first, and cut into batches of ``batch_size``;
    3. the batches shuffled, so the order of lengths, like the order of examples,
       is random; batches are as random as the pools are large.

    A ``DataLoader`` with the same ``batch_size`` (no ``shuffle``) then builds
    exactly these batches. On one process every example comes once an epoch and
    the one short batch, if any, comes last. On ``num_replicas`` processes (DDP) the
    examples are first made a multiple of ``batch_size × num_replicas`` by repeating
    the first shuffled ones (``DistributedSampler``'s rule), and process ``rank``
    takes every ``num_replicas``-th batch, so each process has as many full batches.
    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of
    putting its own in its place.

    Args:
        lengths: (N,) the length of each example (a list, NumPy array or tensor of numbers).
        batch_size: examples per batch, the ``DataLoader``'s.
        pool_batches: batches per pool (HF transformers' ``group_by_length`` uses 50).
        num_replicas: processes sharing the data.
        rank: this process.
        seed: the shuffles' seed.
    """

    def __init__(self, lengths: Sized, batch_size: int, pool_batches: int = 50, *, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        check_positive(batch_size=batch_size, pool_batches=pool_batches, num_replicas=num_replicas)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank!r}")
        if len(lengths) == 0:
            raise ValueError("LengthGroupedSampler needs at least one example, got an empty lengths")
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = torch.as_tensor(lengths)  # (N,)
        self.batch_size = batch_size
        self.pool_batches = pool_batches
        if num_replicas == 1:
            self.num_samples = self.total_size = len(self.lengths)
        else:
            per_round = batch_size * num_replicas
            self.total_size = -(-len(self.lengths) // per_round) * per_round
            self.num_samples = self.total_size // num_replicas

    def batches(self) -> list[torch.Tensor]:
        """This process's batches of this epoch, in order: index tensors of shape (batch_size,), the last maybe shorter."""
        # seed and epoch mixed, not added: with seed + epoch, seed s's epoch 1 was seed s + 1's epoch 0, so the
        # runs of consecutive seeds saw the same orders one epoch apart
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.lengths), generator=generator)
        if self.total_size > len(order):  # DDP: repeat the first shuffled examples up to a whole round
            repeats = -(-self.total_size // len(order))
            order = order.repeat(repeats)[: self.total_size]
        pool = self.batch_size * self.pool_batches
        batches: list[torch.Tensor] = []
        for start in range(0, len(order), pool):
            members = order[start:start + pool]
            members = members[torch.argsort(-self.lengths[members], stable=True)]
            batches.extend(members.split(self.batch_size))
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()] + short
        return batches[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(torch.cat(self.batches()).tolist())

    def __len__(self) -> int:
        return self.num_samples


def parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (the default dtype if it has none).

    A batch built outside the Trainer (a callback, ``memnet evaluate``) is cast to it,
    so a model trained in ``64-true`` or ``bf16-true`` precision gets inputs it can multiply.
    """
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.get_default_dtype()


def check_sequence_inputs(inputs: torch.Tensor, input_size: int, *, model: str,
                          memory_size: int | None = None) -> None:
    """Refuse, with one line naming ``model``, what a sequence model's ``forward`` cannot run.

    ``inputs`` must be (B, T, D_in) with D_in = ``input_size``, B ≥ 1 and T ≥ 1; a
    ``memory_size`` given for the call must be a positive integer (0 is not "the
    trained size").
    """
    if inputs.dim() != 3 or inputs.shape[-1] != input_size:
        raise ValueError(f"{model}: inputs must have shape (B, T, D_in={input_size}), got {tuple(inputs.shape)}")
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(f"{model}: inputs of shape {tuple(inputs.shape)} are empty; "
                         "a batch needs at least one sequence (B ≥ 1) of at least one step (T ≥ 1)")
    if memory_size is not None and (isinstance(memory_size, bool) or not isinstance(memory_size, int)
                                    or memory_size < 1):
        raise ValueError(f"{model}: memory_size must be a positive integer, got {memory_size!r}")


def check_token_ids(vocabulary: int, option: str, *, model: str, **ids: torch.Tensor) -> None:
    """Refuse token ids outside ``[0, vocabulary)``, naming the largest (or smallest) and the vocabulary size.

    An embedding indexed past its V rows is an ``IndexError`` without a name on the CPU, and a device-side
    assert or, on some devices, rows of other memory read silently. One ``aminmax`` per tensor
    (a token model's batch, not a step of the NTM or DNC); skipped while ``torch.compile`` traces.

    Args:
        vocabulary: V, the embedding's rows.
        option: the constructor argument that sets V (``input_size``), named in the message.
        model: the model's name, for the message.
        **ids: the id tensors by their ``forward`` names (``story=``, ``query=``), of any shape.
    """
    if torch.compiler.is_compiling():
        return
    for name, tensor in ids.items():
        if not tensor.numel():
            continue
        low, high = torch.aminmax(tensor)  # one pass: 8 µs for a (32, 50, 12) story where (<0 | >=V).any() took 34
        smallest, largest = int(low), int(high)
        if smallest < 0 or largest >= vocabulary:
            bad = largest if largest >= vocabulary else smallest
            raise ValueError(f"{model}: {name} holds token id {bad} (ids from {smallest} to {largest}), but the "
                             f"vocabulary has {vocabulary} ids, 0 to {vocabulary - 1} ({option}={vocabulary}); "
                             f"{option} must count every token of the data")


def wandb_mode() -> str:
    """W&B's mode for ``wandb.init(mode=...)``: ``online`` only when the user opted in (``WANDB_MODE=online``),
    ``disabled`` when ``WANDB_MODE=disabled`` says so, else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "offline")
    return mode if mode in ("online", "disabled") else "offline"


WANDB_RUN_FOLDER = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-.+")  # W&B's folder of one run: <time>-<id>[-n]


def logged_wandb_id(save_dir: str | Path, run_id: str | None = None) -> str | None:
    """The id of the W&B run logged last under ``save_dir`` (W&B's ``<save_dir>/wandb/``), or whether run ``run_id``
    was logged there (then ``run_id`` or None).

    W&B keeps each run it starts there as ``[offline-]run-<YYYYMMDD_HHMMSS>-<id>/run-<id>.wandb``; the id is read
    from the file's name, since a folder's name may carry a suffix W&B added to tell two of one second apart.
    """
    found = []
    for path in (Path(save_dir) / "wandb").glob("*run-*/run-*.wandb"):
        match = WANDB_RUN_FOLDER.fullmatch(path.parent.name)
        logged = path.stem.removeprefix("run-")
        if match and not path.parent.is_symlink() and run_id in (None, logged):  # latest-run links to one of them
            found.append((match.group(1), path.stat().st_mtime, logged))
    return max(found)[2] if found else None


def wandb_offline() -> bool:
    """W&B logs offline (to local files) unless the user opted in with ``WANDB_MODE=online`` or turned it off."""
    return wandb_mode() == "offline"


def accepts_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (by name or through ``**kwargs``).

    Read from its signature; a callable without one is assumed to accept it.
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def logged_step(trainer: Any) -> int:
    """The step Lightning logs this moment's metrics at (``trainer/global_step`` on W&B's axis).

    Lightning logs with its count of batches that stepped, which a validation at an epoch's end (or
    every ``val_check_interval``) runs before counting the batch just trained: ``val/*`` of the
    validation after step G land at G − 1. Images and events drawn from that validation are logged
    at the same step, so that they sit beside its metrics.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


def fitting(trainer: Any) -> bool:
    """False under ``trainer.validate`` / ``test`` / ``predict``: what changes training (the softmax switch, a decay,
    a restore), records its history or draws figures of it acts on a fit's validations only. A trainer without a
    state (a test's stand-in) counts as fitting."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return fn is None or fn == "fit"


def validation_count(trainer: Any) -> int:
    """How many validation epochs of this fit came before the one running now (``current_epoch`` outside a fit).

    With ``check_val_every_n_epoch`` c a fit validates after epochs c − 1, 2c − 1, …: a callback that acts
    every k validation epochs counts them, not the epochs (``current_epoch % k`` is never 0 when c = k = 2).
    """
    every = getattr(trainer, "check_val_every_n_epoch", None)
    if not fitting(trainer) or not isinstance(every, int) or every <= 1:
        return int(trainer.current_epoch)
    return (trainer.current_epoch + 1) // every - 1


def validation_file_name(trainer: Any, suffix: str = ".png") -> str:
    """The name of a file drawn at this validation: ``epoch_EEEE_step_SSSSSSSS.png``.

    The epoch (4 digits) and ``trainer.global_step`` (8 digits: the optimiser steps taken, as in a checkpoint's
    ``step=``). An epoch alone named every validation of an epoch alike (``val_check_interval`` < 1, or a run
    trained by ``max_steps`` in one long epoch), and each overwrote the one before; with the step no two
    validations of a fit share a name, and the names sort in the order they were drawn. A validation inside a
    window of ``accumulate_grad_batches`` (batches trained since the last step) shares its step with the one
    before it: it adds the epoch's batches trained so far, ``epoch_EEEE_step_SSSSSSSS_batch_BBBBBBBB.png``
    (accumulating 4 batches, validating every 2: the validations after batches 4 and 6 both were step 1, and the
    second overwrote the first). Such a name sorts after the step's own.
    """
    name = f"epoch_{int(trainer.current_epoch):04d}_step_{int(trainer.global_step):08d}"
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if fitting(trainer) and loop is not None and loop._should_accumulate():
        name += f"_batch_{int(loop.batch_progress.current.completed):08d}"
    return name + suffix


def write_file_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(file)`` with ``file`` open for binary writing on a file of this process's own beside ``path``, renamed
    onto it, as :func:`write_text_atomic` does for text (``np.savez``, ``torch.save``: a reader never sees half)."""

    def _write(partial: Path) -> None:
        with partial.open("wb") as file:
            write(file)

    _write_beside(Path(path), _write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a file of this process's own beside it, renamed onto it: a reader, or
    another process writing the same file (two runs of a suite ending together), never sees half of it."""
    _write_beside(Path(path), lambda partial: partial.write_text(text))


# the host in a partial file's name: a pid names a process on one machine only (a results folder shared by the
# nodes of a cluster); a host name's separators are kept out of the file name
_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
LEGACY_PARTIAL_AGE = 3600.0  # seconds: a partial file named without a host (the earlier namings), its pid gone, is stale
# seconds: a .<name>.<host>.<pid>.partial of this host, its pid gone, is stale only once unwritten this long; a pid
# another pid namespace gave (a container sharing the folder and the host name) is not seen here, and its live
# writer's file, removed, failed its rename; a writer renames its file as soon as the last byte is written
STALE_PARTIAL_AGE = 300.0
_WRITER = r"(?:(?P<host>[A-Za-z0-9_.-]+)\.)?(?P<pid>\d+)"  # <host>.<pid> or, the earlier naming, <pid> alone


def _write_beside(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(partial)`` to a file of this process's own beside ``path`` (``.<name>.<host>.<pid>.partial``), then
    rename it onto ``path``; the partial file is removed whatever happens, and an ``OSError`` is named by ``path``
    (:func:`_named`). Once renamed, the partial files of ``path`` that killed writers left are removed
    (:func:`remove_stale_partials_in` given its name)."""
    partial = partial_beside(path)
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as error:  # named by the file asked for, not the one beside it ("cannot use t.md: Is a directory")
        raise _named(error, path) from None
    finally:
        partial.unlink(missing_ok=True)
    remove_stale_partials_in(path.parent, path.name)


def partial_beside(path: Path) -> Path:
    """This process's own file beside ``path`` to write it to before the rename: ``.<name>.<host>.<pid>.partial``."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.partial")


class PartialName(NamedTuple):
    """What the name of a partial file says: the file it was written for, and by whom.

    Three namings, newest first: ``.<name>.<host>.<pid>.partial`` (:func:`partial_beside`),
    ``.<name>.<pid>.partial`` (an earlier memnet's ``write_text_atomic``) and ``.<name>.partial`` (an earlier
    memnet's checkpoint, a model export's folder).
    """

    target: str  # the file it was for: "last.ckpt"
    host: str | None  # the writer's host; None in the two earlier namings
    pid: int | None  # the writer's pid; None in .<name>.partial


def read_partial_name(name: str, target: str | None = None) -> PartialName | None:
    """The partial file ``name`` read as one of the three namings of :class:`PartialName`; None if it is not one
    (or, given ``target``, not one of ``target``'s).

    Given ``target`` the name is read exactly: given ``a.b``, ``.a.b.7.partial`` is its file of pid 7 (the
    earlier naming) and ``.a.b.c.7.partial`` host ``c``'s. Without it (a folder's leftovers, whatever file each was for), the
    newest naming the name fits: ``.a.b.7.partial`` could be ``a.b``'s of pid 7 or ``a``'s of host ``b``, and is
    read as ``a``'s of host ``b`` (so never removed unless ``b`` is this host); ``.a.7.partial`` as ``a``'s of pid
    7; ``.a.b.partial`` as ``a.b``'s, no writer named.

    >>> read_partial_name(".last.ckpt.node1.4242.partial")
    PartialName(target='last.ckpt', host='node1', pid=4242)
    >>> read_partial_name(".record.json.4242.partial", "record.json")
    PartialName(target='record.json', host=None, pid=4242)
    >>> read_partial_name(".last.ckpt.partial")
    PartialName(target='last.ckpt', host=None, pid=None)
    """
    if not name.startswith(".") or not name.endswith(".partial") or len(name) <= len("..partial"):
        return None
    middle = name[1:-len(".partial")]  # <name>[.<host>][.<pid>]
    if target is not None:
        if middle == target:
            return PartialName(target, None, None)
        writer = re.fullmatch(_WRITER, middle[len(target) + 1:]) if middle.startswith(f"{target}.") else None
        return None if writer is None else PartialName(target, writer["host"], int(writer["pid"]))
    ours = re.fullmatch(r"(?P<target>.+)\." + re.escape(_HOST) + r"\.(?P<pid>\d+)", middle)  # a host with dots too
    if ours is not None:
        return PartialName(ours["target"], _HOST, int(ours["pid"]))
    for naming in (r"(?P<target>.+)\.(?P<host>[A-Za-z0-9_.-]+?)\.(?P<pid>\d+)", r"(?P<target>.+)\.(?P<pid>\d+)"):
        if (named := re.fullmatch(naming, middle)) is not None:
            return PartialName(named["target"], named.groupdict().get("host"), int(named["pid"]))
    return PartialName(middle, None, None)


def is_stale_partial(path: Path, partial: PartialName) -> bool:
    """Whether the partial file (or folder) ``path``, named as ``partial`` says, is a killed writer's leftover.

    Only if no writer can still be at it: one of another host is never stale (its pid means nothing here), nor one
    whose pid is this process's or any process's here (``os.kill(pid, 0)``). Then only once unwritten (its own
    time, not a link's target's) for ``STALE_PARTIAL_AGE`` if of this host (a live writer in another pid namespace,
    a container sharing the folder and the host name, has a pid not seen here), for ``LEGACY_PARTIAL_AGE`` if named
    without a host (the earlier namings: it may be another host's, or, without a pid, anyone's).
    """
    if partial.host is not None and partial.host != _HOST:
        return False
    if partial.pid is not None and (partial.pid == os.getpid() or _process_alive(partial.pid)):
        return False
    age = STALE_PARTIAL_AGE if partial.host is not None else LEGACY_PARTIAL_AGE
    try:
        return time.time() - path.lstat().st_mtime >= age
    except OSError:
        return False


def remove_stale_partials_in(folder: Path, target: str | None = None) -> None:
    """Remove the partial files (or folders, or links: never what a link points to) in ``folder`` that killed
    writers left: those of ``target`` after a write of it (``write_text_atomic``), or, without it, whatever file
    each was for (a checkpoint folder: a save killed while writing ``epoch=0-step=2.ckpt`` left one that no later
    save names).

    One rule for both (:func:`read_partial_name`, :func:`is_stale_partial`): a ``.<name>.<host>.<pid>.partial`` only
    of this host, of a pid no process has here, unwritten for ``STALE_PARTIAL_AGE``; one of the earlier namings
    (``.<name>.<pid>.partial``, ``.<name>.partial``) once unwritten for ``LEGACY_PARTIAL_AGE``, its pid gone. A live
    writer's (another run saving into the same folder) and another host's are left alone, and so is what cannot be
    removed. Without ``target`` a ``.<a>.<b>.<pid>.partial`` is read as host ``b``'s (:func:`read_partial_name`)."""
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return
    for name in names:
        partial = read_partial_name(name, target)
        if partial is not None and is_stale_partial(folder / name, partial):
            remove_leftover(folder / name)


def _process_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _named(error: OSError, path: Path) -> OSError:
    """``error`` (of writing or renaming a ``.partial`` file) as the same error of ``path``, which the user named."""
    return type(error)(error.errno, error.strerror, str(path)) if error.errno else error


def save_figure_atomic(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` through a file of this process's own beside it, renamed onto it (as
    :func:`write_text_atomic`): a kill or a full disk while drawing leaves the earlier figure whole, never half a
    PNG. The format is ``path``'s suffix (the file beside it ends in ``.partial``)."""
    path = Path(path)
    _write_beside(path, lambda partial: fig.savefig(partial, format=path.suffix.lstrip(".") or None, **kwargs))


def replace_file_set(folder: Path, write: Callable[[Path], Any], *, belongs: Callable[[str], bool],
                     last: str) -> None:
    """Write a set of files into ``folder`` as one: never some of them beside an earlier set's others.

    ``write(staging)`` writes the new set into a hidden folder of this process's own in ``folder``
    (``.<last>.<pid>.set.partial``); only once all of it is written are the earlier set's files (each name in
    ``folder`` that ``belongs``) removed, ``last`` first, and the new ones renamed in, ``last`` last. A failure or a
    kill while writing leaves the earlier set as it was; one while renaming leaves files of the new set alone,
    without ``last``: a folder holding ``last`` holds one whole set. The staging folder is removed whatever happens
    (a ``kill -9`` leaves it, hidden; no reader of the folder picks it up).
    """
    folder = Path(folder)
    staging = folder / f".{last}.{os.getpid()}.set.partial"
    remove_leftover(staging)
    staging.mkdir(parents=True)
    try:
        write(staging)
        new = sorted((path.name for path in staging.iterdir()), key=lambda name: name == last)
        old = sorted((path for path in folder.iterdir() if belongs(path.name) and not path.is_dir()),
                     key=lambda path: path.name != last)
        for path in old:
            path.unlink(missing_ok=True)
        for name in new:
            try:
                os.replace(staging / name, folder / name)
            except OSError as error:  # named by the file of the set, not the one in the staging folder
                raise _named(error, folder / name) from None
        fsync(folder)
    finally:
        remove_leftover(staging)


def remove_leftover(path: Path) -> None:
    """Remove what a save that was killed left at ``path``: a file, or a folder with everything in it.

    A save writes beside its target and renames into place, so what it leaves is never the target itself;
    whatever cannot be removed is left as it is (the save that writes there next reports it, naming the file).
    """
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk; a file system that cannot is left as it is."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def run_dir(trainer: Any) -> Path:
    """The folder of a Lightning run: the parent of its checkpoint folder.

    Without checkpointing (e.g. ``fast_dev_run``) it is ``<root>/runs/debug``, so a
    debug run never writes into the working directory itself.
    """
    callback = trainer.checkpoint_callback
    if not trainer.fast_dev_run and callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath).parent
    return Path(trainer.default_root_dir) / "runs" / "debug"


class MemnetError(ValueError):
    """A problem with the user's input or files that memnet explains in one line.

    The ``memnet`` command prints its message alone (no traceback) and exits with
    status 2. It is a ``ValueError``, so callers that catch those still do.
    """


def monitored_value(trainer: Any, monitor: str, owner: str) -> Any:
    """The value of ``monitor`` after a validation, for a callback that acts on it; a name nothing logged is refused.

    A callback whose monitor was mistyped, or names a metric its module does not log (``val/bits_per_seq`` of a
    bAbI run), found no value at every validation and did nothing, exit 0: a linear start never ended (its
    ``max_epochs`` cap was not reached either), a decay or a relapse never came. A ``train/`` name may be absent at
    a validation inside the first epoch (its epoch value comes at the epoch's end): None then.
    """
    value = trainer.callback_metrics.get(monitor)
    if value is None and not monitor.startswith("train/"):
        logged = ", ".join(sorted(name for name in trainer.callback_metrics if not name.startswith("train/")))
        raise MemnetError(f"{owner} monitor {monitor!r} is not a metric this run logs after a validation; "
                          f"it logs: {logged or 'none'}")
    return value


def run_config_candidates(checkpoint: str | os.PathLike) -> list[Path]:
    """Where the ``config.yaml`` of the run a checkpoint belongs to may be, first to last: the parent of its
    ``checkpoints/`` folder, then beside it. Only a folder named ``checkpoints`` is a run's: for a checkpoint kept
    anywhere else (``exported/model.ckpt``) the folder above is not its run, and a ``config.yaml`` of another run
    there would build the wrong model."""
    folder = Path(checkpoint).resolve().parent
    candidates = [folder.parent / "config.yaml", folder / "config.yaml"]
    return candidates if folder.name == "checkpoints" else candidates[1:]
