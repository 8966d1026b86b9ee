"""The algorithmic tasks of the NTM paper (Graves et al. 2014, §4), as LightningDataModules.

Five tasks, each following the paper's set-up:

    CopyTask               copy a sequence of 8-bit vectors (lengths 1–20)
    RepeatCopyTask         copy it a given number of times, then an end marker (lengths 1–10, repeats 1–10)
    AssociativeRecallTask  items of three 6-bit vectors; given one, recall the next (2–6 items)
    DynamicNGramsTask      predict the next bit of a 6-gram sequence; the exact Bayes-optimal cost comes along
    PrioritySortTask       20 vectors with priorities in [−1, 1]; output the 16 highest, sorted

A task knows how to encode one example and how to sample a batch of them; the
``AlgorithmicDataModule`` turns any task into seeded train / validation / test
streams. Every batch is a dict:

    inputs   (B, T, input_size)    float, the sequence the model reads
    targets  (B, T, output_size)   float in {0, 1}, what it must write
    mask     (B, T)                1 on the steps whose output is scored, else 0
    length   int                   the task length this batch was drawn at

and, for dynamic n-grams, ``optimal_bits`` (B,), the Bayes-optimal cost of each
sequence in bits (float32; the data module computes it again from the bits where
``bf16-true`` precision cast it to bfloat16; priority sort's targets are sorted again
by the priorities as cast: ``AlgorithmicTask.after_cast``). All sequences of a batch share one length (drawn per batch),
so a batch costs exactly its length; only repeat copy, whose repeat count is
drawn per sequence, pads the shorter outputs (mask 0 after the end marker).

Every generator is vectorised over the batch and draws all its randomness from
the ``torch.Generator`` it is given: the same generator state gives the same batch.

The package, by job: ``base`` (``AlgorithmicTask``), ``copying`` (copy, repeat copy),
``recall``, ``ngrams``, ``sort`` (one task each) and ``data`` (``AlgorithmicDataModule``);
every name is importable from ``tasks.algorithmic`` (``tasks.algorithmic.CopyTask`` in configs).

Axes:  b - batch, t - time, d - features, i - items, k - steps of an item, c - contexts
"""

from tasks.algorithmic.base import AlgorithmicTask
from tasks.algorithmic.copying import CopyTask, RepeatCopyTask
from tasks.algorithmic.data import AlgorithmicDataModule, train_stream_seed
from tasks.algorithmic.ngrams import DynamicNGramsTask
from tasks.algorithmic.recall import AssociativeRecallTask
from tasks.algorithmic.sort import PrioritySortTask

__all__ = [
    "AlgorithmicDataModule",
    "AlgorithmicTask",
    "AssociativeRecallTask",
    "CopyTask",
    "DynamicNGramsTask",
    "PrioritySortTask",
    "RepeatCopyTask",
    "train_stream_seed",
]
