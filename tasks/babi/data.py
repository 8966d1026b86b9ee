"""The bAbI data module: datasets, vocabulary, encoding and batches (Weston et al. 2015, v1.2).

The data is the official ``tasks_1-20_v1-2`` distribution, read from the tarball
itself or from an extracted folder; nothing is generated. Where it is looked for
(first hit wins):

    1. ``data_dir`` of the data module (a folder, or the ``.tar.gz`` itself)
    2. the environment variable ``MEMNET_DATA_DIR``: when set it must name a folder
       holding the data; empty, missing, a file or without the data is an error
       naming it, not a reason to look elsewhere
    3. ``data/babi`` under the working directory (where ``memnet data babi`` puts it)
    4. ``shared/data/babi`` beside the repository (a checkout's sibling folder)

In each folder the tarball ``tasks_1-20_v1-2.tar.gz``, an extracted
``tasks_1-20_v1-2/`` or the language folders themselves (``en/``, ...) are
accepted. ``memnet data babi`` fetches or copies the official archive, checks
its sha256 and extracts it safely.

The files are parsed strictly by ``tasks.babi.parse`` (errors name the file and line).

Each question becomes one example with the columns

    story       list of sentences, each a list of tokens, **oldest first** (the
                file's order); questions of the story are not part of it
    query       the question's tokens
    answer      the answer as one string; lists (task 8) and paths (task 19)
                stay one string ("apple,football", "n,w"), as do the Hindi
                answers of two words ("rasoi ghar"): one class per distinct
                answer, as in the MemN2N paper
    supporting  indices of the supporting sentences in ``story`` (0 = oldest)
    task        the task number, 1-20

Tokens are lower-cased words; ``.`` and ``?`` are dropped. The
``datasets.DatasetDict`` (train / validation / test) is cached on disk
(``cache_dir``, default ``$MEMNET_CACHE_DIR`` or ``~/.cache/memnet/babi``) under a
key made of the options and the data's fingerprint, so a second run loads it
without parsing. Validation is ``val_fraction`` (10% as in the paper) of each
task's training stories, drawn with ``seed``: whole stories, so that no validation question
is a copy of a training one (``val_holdout``).

The vocabulary is ``<pad>`` (0), ``<unk>`` (1), ``<eos>`` (2, ends a sentence
in a reader's token sequence), ``<eoq>`` (3, ends the question), then the
distinct answers (answer class ``a`` is token ``a + 4``, so a model may tie its
answer weights to its word embeddings), then the other words of the training
files, sorted. Words seen only in test files map to ``<unk>``; answers of every
split have a class (an answer never seen in training is simply never predicted).

A batch (from :class:`BabiCollator`) holds, with slot 0 the **most recent** sentence::

    story         (B, N, J) long  token ids; N = the batch's longest story after
                                  keeping the ``memory_size`` most recent sentences,
                                  J = its longest sentence; 0 = padding
    query         (B, Jq)   long  question token ids, 0 = padding
    answer        (B,)      long  answer class
    task          (B,)      long  task number
    story_length  (B,)      long  sentences kept (≤ memory_size)

Worked example: the story above with ``memory_size=1`` keeps only "john went to
the hallway" in slot 0; the answer "bathroom" is class ``k`` where it is the
k-th answer in sorted order.

Axes:  b - batch, n - memory slots (sentences), j - words
"""


from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from memnet.utils import (
    EpochDraws,
    EpochShuffle,
    LengthGroupedSampler,
    MemnetError,
    ResumableLoader,
    distributed_position,
    distributed_sampler,
    evaluation_sampler,
    fitting,
    write_file_atomic,
    write_text_atomic,
)
from tasks.babi.archive import find_source, task_file
from tasks.babi.parse import ALL_TASKS, LANGUAGES, SIZES, Language, Size, check_tasks, parse_babi

CACHE_DIR_ENV = "MEMNET_CACHE_DIR"
CACHE_VERSION = 3  # bump when the parser, the columns or the split change (2: validation holds out whole stories;
#                    3: statements after a story's last question are refused, no longer dropped)
VAL_HOLDOUTS = ("story", "question")
SAMPLINGS = ("shuffle", "replacement")

PAD, UNK, SENTENCE_END, QUESTION_END = "<pad>", "<unk>", "<eos>", "<eoq>"
SPECIAL_TOKENS = (PAD, UNK, SENTENCE_END, QUESTION_END)
PAD_ID, UNK_ID, SENTENCE_END_ID, QUESTION_END_ID = range(4)
ANSWER_OFFSET = len(SPECIAL_TOKENS)  # answer class a is vocabulary token a + ANSWER_OFFSET


# ----------------------------------------------------------------------------- datasets


def babi_features():
    import datasets

    return datasets.Features({
        "story": datasets.Sequence(datasets.Sequence(datasets.Value("string"))),
        "query": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "supporting": datasets.Sequence(datasets.Value("int32")),
        "task": datasets.Value("int32"),
    })


def _columns(examples: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [example[name] for example in examples] for name in ("story", "query", "answer", "supporting", "task")}


def load_babi(
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    language: Language = "en",
    size: Size = "1k",
    tasks: Sequence[int] = ALL_TASKS,
    train_1k_tasks: Sequence[int] = (),
    val_fraction: float = 0.1,
    seed: int = 0,
    val_holdout: Literal["story", "question"] = "story",
):
    """The ``datasets.DatasetDict`` (train / validation / test) of the selected tasks.

    Args:
        data_dir: where the distribution is (see :func:`find_source`).
        cache_dir: where the built dataset is cached; default ``$MEMNET_CACHE_DIR``
            or ``~/.cache/memnet/babi``.
        language: ``en``, ``hn`` or ``shuffled``.
        size: ``1k`` or ``10k`` training questions per task.
        tasks: task numbers (1-20).
        train_1k_tasks: with ``size="10k"``, tasks whose training file is read from
            the 1k set instead (e.g. ``[3]``, whose 10k training file is missing in
            some copies). Stated in the config, never implicit.
        val_fraction: share of each task's training stories (``val_holdout: question``: questions) held out
            for validation.
        seed: draws the validation stories (or questions).
        val_holdout: ``story`` (default): whole stories are held out, ``val_fraction`` of each
            task's stories, so no validation question shares its story with a training one;
            ``question``: single questions, as before version 2 of the cache, which left exact
            copies of training examples in validation (a story asks the same question twice:
            more than half of the validation questions of tasks 15, 17 and 18 in 1k).

    Raises:
        FileNotFoundError: a requested file is absent (named).
        ValueError: an option out of range.
    """
    import datasets

    tasks = check_tasks(tasks)
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    train_1k_tasks = sorted(train_1k_tasks)
    for task in train_1k_tasks:
        if task not in tasks:
            raise ValueError(f"train_1k_tasks lists task {task!r}, which is not among tasks {tasks}")
    if train_1k_tasks and size != "10k":
        raise ValueError(f"train_1k_tasks only applies to size '10k', got size {size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1): validation needs examples, got {val_fraction!r}")
    if val_holdout not in VAL_HOLDOUTS:
        raise ValueError(f"val_holdout must be one of {VAL_HOLDOUTS}, got {val_holdout!r}")

    source = find_source(data_dir)
    files = {}
    for task in tasks:
        train_size = "1k" if task in train_1k_tasks else size
        files[task] = (task_file(task, "train", language=language, size=train_size),
                       task_file(task, "test", language=language, size=size))
    relatives = sorted(name for pair in files.values() for name in pair)

    def check_present() -> None:
        missing = [name for name in relatives if not source.exists(name)]
        if missing:
            hint = ""
            if any("en-10k/qa3_" in name and name.endswith("_train.txt") for name in missing):
                hint = " (leave task 3 out of tasks, or read its training file from 1k with train_1k_tasks: [3])"
            raise FileNotFoundError(f"requested bAbI file(s) absent from {source.location}: {', '.join(missing)}{hint}")

    if source.folder is not None:
        check_present()  # a folder's fingerprint needs the files
    options = {"version": CACHE_VERSION, "language": language, "size": size, "tasks": tasks,
               "train_1k_tasks": train_1k_tasks, "val_fraction": val_fraction, "seed": seed, "val_holdout": val_holdout,
               "data": source.fingerprint(relatives)}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]
    cache_root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "memnet" / "babi")
    cached = cache_root.expanduser() / f"babi-{key}"
    if (cached / "dataset_dict.json").is_file():
        source.close()
        return datasets.load_from_disk(str(cached))
    check_present()

    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for task, (train_name, test_name) in files.items():
        train = parse_babi(source.read(train_name), source=f"{source.location}/{train_name}", task=task)
        test = parse_babi(source.read(test_name), source=f"{source.location}/{test_name}", task=task)
        if val_holdout == "question":
            order = np.random.default_rng([seed, task]).permutation(len(train))
            validation_rows = set(order[:round(val_fraction * len(train))].tolist())
        else:  # whole stories: a question and its repeat in the same story stay on one side
            stories = sorted({example["story_index"] for example in train})
            order = np.random.default_rng([seed, task]).permutation(len(stories))
            held = {stories[i] for i in order[:round(val_fraction * len(stories))].tolist()}
            validation_rows = {i for i, example in enumerate(train) if example["story_index"] in held}
        if not 0 < len(validation_rows) < len(train):  # a task missing from a split would drop out of its errors
            source.close()
            raise ValueError(
                f"val_fraction {val_fraction} holds out {len(validation_rows)} of the {len(train)} training questions "
                f"of task {task} ({train_name}, val_holdout {val_holdout!r}): each task needs questions in both "
                "training and validation"
            )
        splits["train"] += [example for i, example in enumerate(train) if i not in validation_rows]
        splits["validation"] += [example for i, example in enumerate(train) if i in validation_rows]
        splits["test"] += test
    source.close()
    features = babi_features()
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_dict(_columns(examples), features=features) for name, examples in splits.items()
    })
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".babi-{key}-", dir=cached.parent))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a one-off local save; its bars would only clutter training logs
    try:
        dataset.save_to_disk(str(partial))
    finally:
        if bars:
            datasets.enable_progress_bars()
    try:
        os.replace(partial, cached)
    except OSError:  # another process cached it first
        shutil.rmtree(partial, ignore_errors=True)
    return datasets.load_from_disk(str(cached))


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Token ids: specials, then answers (class a = token a + ANSWER_OFFSET), then other words.

    Attributes:
        tokens: all tokens; ``tokens[i]`` has id ``i``.
        num_answers: A, the number of answer classes.
    """

    tokens: tuple[str, ...]
    num_answers: int

    @classmethod
    def build(cls, answers: Iterable[str], words: Iterable[str]) -> Vocabulary:
        answer_list = sorted(set(answers))
        answer_set = set(answer_list)
        other = sorted(set(words) - answer_set - set(SPECIAL_TOKENS))
        return cls(tokens=tuple(SPECIAL_TOKENS) + tuple(answer_list) + tuple(other), num_answers=len(answer_list))

    @classmethod
    def from_dataset(cls, dataset) -> Vocabulary:
        """Answers of every split; words of the training file (train + validation)."""
        answers = [a for split in dataset.values() for a in split["answer"]]
        words: set[str] = set()
        for name in ("train", "validation"):
            if name in dataset:
                for story in dataset[name]["story"]:
                    for sentence in story:
                        words.update(sentence)
                for query in dataset[name]["query"]:
                    words.update(query)
        return cls.build(answers, words)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {token: i for i, token in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def answers(self) -> tuple[str, ...]:
        return self.tokens[ANSWER_OFFSET:ANSWER_OFFSET + self.num_answers]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids; unknown words map to ``<unk>`` (1)."""
        index = self._index  # type: ignore[attr-defined]
        return [index.get(token, UNK_ID) for token in tokens]

    def answer_class(self, answer: str) -> int:
        index = self._index.get(answer)  # type: ignore[attr-defined]
        if index is None or not ANSWER_OFFSET <= index < ANSWER_OFFSET + self.num_answers:
            raise KeyError(f"answer {answer!r} has no class in this vocabulary")
        return index - ANSWER_OFFSET

    def decode_answer(self, answer_class: int) -> str:
        return self.answers[answer_class]


# ----------------------------------------------------------------------------- encoding and batches


def cache_folder(dataset) -> Path | None:
    """The folder a cached ``DatasetDict`` was loaded from, or None for one built in memory."""
    try:
        files = next(iter(dataset.values())).cache_files
    except StopIteration:
        return None
    return Path(files[0]["filename"]).parents[1] if files else None


def encode_split(split, vocabulary: Vocabulary, memory_size: int) -> dict[str, np.ndarray]:
    """Token ids of one split, flat: the ``memory_size`` most recent sentences of each story, most recent first.

    Returns arrays ``words`` (all kept sentences' ids, concatenated), ``sentence_offsets``
    (sentence k is ``words[o[k]:o[k+1]]``), ``story_offsets`` (example i has sentences
    ``o[i]:o[i+1]``), ``query_words``, ``query_offsets``, ``answer``, ``task`` and
    ``supporting_lost`` (bool: a supporting sentence of the question is older than those kept).

    Warns, with the count per task, when a question's supporting sentence is older than the
    ``memory_size`` kept: the question can then not be answered from the memory
    (:func:`_warn_lost_supporting`, which the data module calls again on arrays read from its cache).
    """
    columns = split.to_dict()
    supporting = columns.get("supporting") or [[] for _ in columns["story"]]
    lost = [bool(facts) and min(facts) < len(story) - memory_size for story, facts in zip(columns["story"], supporting)]
    words: list[int] = []
    sentence_offsets, story_offsets, query_words, query_offsets = [0], [0], [], [0]
    for story, query in zip(columns["story"], columns["query"]):
        for sentence in story[-memory_size:][::-1]:  # most recent first
            words.extend(vocabulary.encode(sentence))
            sentence_offsets.append(len(words))
        story_offsets.append(len(sentence_offsets) - 1)
        query_words.extend(vocabulary.encode(query))
        query_offsets.append(len(query_words))
    arrays = {
        "words": np.asarray(words, dtype=np.int64),
        "sentence_offsets": np.asarray(sentence_offsets, dtype=np.int64),
        "story_offsets": np.asarray(story_offsets, dtype=np.int64),
        "query_words": np.asarray(query_words, dtype=np.int64),
        "query_offsets": np.asarray(query_offsets, dtype=np.int64),
        "answer": np.asarray([vocabulary.answer_class(a) for a in columns["answer"]], dtype=np.int64),
        "task": np.asarray(columns["task"], dtype=np.int64),
        "supporting_lost": np.asarray(lost, dtype=bool),
    }
    _warn_lost_supporting(arrays, memory_size)
    return arrays


def _warn_lost_supporting(arrays: dict[str, np.ndarray], memory_size: int) -> None:
    """Warn, with the count per task, of the questions whose supporting sentence the memory cut dropped
    (``supporting_lost`` of :func:`encode_split`'s arrays); nothing when none was."""
    lost = arrays["supporting_lost"]
    if not lost.any():
        return
    tasks, counts = np.unique(arrays["task"][lost], return_counts=True)
    per_task = ", ".join(f"task {task}: {n}" for task, n in zip(tasks.tolist(), counts.tolist()))
    warnings.warn(f"memory_size {memory_size} drops a supporting sentence of {int(lost.sum())} of the "
                  f"{len(lost)} questions ({per_task}); raise memory_size to keep them", stacklevel=3)


def sequence_lengths(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) int64: each example's length as a sequence reader reads it, from the arrays of :func:`encode_split`:
    the kept sentences' words, an ``<eos>`` after each, the question's words and ``<eoq>``
    (``memnet.models.reader.story_to_sequence``)."""
    story_words = np.diff(arrays["sentence_offsets"][arrays["story_offsets"]])
    sentences = np.diff(arrays["story_offsets"])
    return story_words + sentences + np.diff(arrays["query_offsets"]) + 1


class EncodedSplit(Dataset):
    """One split as token ids (see :func:`encode_split`).

    Item ``i`` is a dict with ``story`` (S_i, J_i) int64, slot 0 the most recent
    sentence, ``query`` (Jq_i,), ``answer``, ``task``.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["answer"])

    def __getitem__(self, index: int) -> dict:
        a = self.arrays
        first, last = a["story_offsets"][index], a["story_offsets"][index + 1]
        bounds = a["sentence_offsets"][first:last + 1]
        lengths = np.diff(bounds)
        story = np.zeros((len(lengths), max(1, int(lengths.max(initial=0)))), dtype=np.int64)
        for row, (start, stop) in enumerate(itertools.pairwise(bounds)):
            story[row, :stop - start] = a["words"][start:stop]
        query = a["query_words"][a["query_offsets"][index]:a["query_offsets"][index + 1]]
        return {"story": story, "query": query, "answer": int(a["answer"][index]), "task": int(a["task"][index])}


def collate_babi(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples to the batch's longest story, sentence and question.

    Returns the batch described in the module docstring.
    """
    batch_size = len(items)
    slots = max(1, max(item["story"].shape[0] for item in items))
    words = max(1, max(item["story"].shape[1] for item in items))
    query_words = max(1, max(len(item["query"]) for item in items))
    story = np.zeros((batch_size, slots, words), dtype=np.int64)
    query = np.zeros((batch_size, query_words), dtype=np.int64)
    for b, item in enumerate(items):
        s, j = item["story"].shape
        story[b, :s, :j] = item["story"]
        query[b, :len(item["query"])] = item["query"]
    return {
        "story": torch.from_numpy(story),
        "query": torch.from_numpy(query),
        "answer": torch.tensor([item["answer"] for item in items], dtype=torch.long),
        "task": torch.tensor([item["task"] for item in items], dtype=torch.long),
        "story_length": torch.tensor([item["story"].shape[0] for item in items], dtype=torch.long),
    }


class BabiDataModule(pl.LightningDataModule):
    """bAbI tasks for QA models ``forward(story, query) -> answer logits (B, A)``.

    ``input_size`` is the vocabulary size V and ``output_size`` the number of
    answer classes A; the CLI links them to the network's ``input_size`` and
    ``output_size``.

    Args:
        data_dir: the distribution (folder or tarball); default: see the module docstring.
        cache_dir: cache of the built ``DatasetDict``; default ``$MEMNET_CACHE_DIR`` or
            ``~/.cache/memnet/babi``.
        language: ``en``, ``hn`` or ``shuffled``.
        size: ``1k`` or ``10k``.
        tasks: one task, a list, or ``"all"`` (the 20 tasks, joint training).
        train_1k_tasks: with ``10k``, tasks whose training file comes from ``1k``.
        memory_size: most recent sentences kept per story (50 in the MemN2N paper).
        batch_size: questions per batch (32 in the paper).
        val_fraction: held-out share of each task's training stories (``val_holdout: question``: questions).
        seed: draws the validation stories (or questions) and shuffles training batches.
        num_workers: DataLoader workers.
        group_by_length: None (default): training batches drawn at random. A number k:
            training questions of similar length batched together, to cut the padding a
            sequence reader steps through (:class:`memnet.utils.LengthGroupedSampler`:
            shuffled, sorted within pools of k batches by the length of the reader's token
            sequence, the batches shuffled); 50 is the usual pool. Validation and test keep
            their order.
        val_holdout: ``story`` (default) holds out whole stories, ``question`` single
            questions, which leaves copies of training questions in validation
            (:func:`load_babi`); the results measured before the change used ``question``.
        sampling: how the training batches are drawn: ``shuffle`` (default), every question once
            an epoch in a shuffled order; ``replacement``, the authors' MemN2N code's
            ``randi``: ⌊questions / batch_size⌋ batches of questions drawn uniformly with
            replacement (:class:`memnet.utils.EpochDraws`; under DDP each process draws
            ⌊questions / (batch_size · processes)⌋ batches of its own). Not with ``group_by_length``.
    """

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        language: Language = "en",
        size: Size = "1k",
        tasks: int | list[int] | Literal["all"] = "all",
        train_1k_tasks: list[int] | None = None,
        memory_size: int = 50,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        group_by_length: int | None = None,
        val_holdout: Literal["story", "question"] = "story",
        sampling: Literal["shuffle", "replacement"] = "shuffle",
    ) -> None:
        super().__init__()
        if tasks == "all":
            task_list = list(ALL_TASKS)
        elif isinstance(tasks, int) and not isinstance(tasks, bool):
            task_list = [tasks]
        elif isinstance(tasks, (list, tuple)):
            task_list = list(tasks)
        else:
            raise ValueError(f"tasks must be a task number, a list of them or 'all', got {tasks!r}")
        self.tasks = check_tasks(task_list)
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        for name, value in (("memory_size", memory_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if group_by_length is not None and (isinstance(group_by_length, bool) or not isinstance(group_by_length, int)
                                            or group_by_length < 1):
            raise ValueError(f"group_by_length must be None or a positive number of batches per pool, "
                             f"got {group_by_length!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if sampling == "replacement" and group_by_length is not None:
            raise ValueError(f"sampling 'replacement' draws each batch's questions at random, group_by_length "
                             f"({group_by_length}) batches questions of similar length: give one of the two")
        self.sampling = sampling
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1): validation needs examples, got {val_fraction!r}")
        if val_holdout not in VAL_HOLDOUTS:
            raise ValueError(f"val_holdout must be one of {VAL_HOLDOUTS}, got {val_holdout!r}")
        self.val_holdout = val_holdout
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.language = language
        self.size = size
        self.train_1k_tasks = list(train_1k_tasks or [])
        self.memory_size = memory_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self._dataset = None
        self._vocabulary: Vocabulary | None = None
        self._splits: dict[str, EncodedSplit] = {}

    @property
    def dataset(self):
        """The ``datasets.DatasetDict`` (built or loaded from the cache on first use)."""
        if self._dataset is None:
            self._dataset = load_babi(
                data_dir=self.data_dir, cache_dir=self.cache_dir, language=self.language, size=self.size,
                tasks=self.tasks, train_1k_tasks=self.train_1k_tasks, val_fraction=self.val_fraction, seed=self.seed,
                val_holdout=self.val_holdout,
            )
        return self._dataset

    @property
    def vocabulary(self) -> Vocabulary:
        """Built from the data once, then kept as ``vocabulary.json`` beside the cached dataset."""
        if self._vocabulary is None:
            folder = cache_folder(self.dataset)
            path = folder / "vocabulary.json" if folder is not None else None
            if path is not None and path.is_file():
                stored = json.loads(path.read_text())
                self._vocabulary = Vocabulary(tokens=tuple(stored["tokens"]), num_answers=stored["num_answers"])
            else:
                self._vocabulary = Vocabulary.from_dataset(self.dataset)
                if path is not None:
                    write_text_atomic(path, json.dumps({"tokens": list(self._vocabulary.tokens),
                                                        "num_answers": self._vocabulary.num_answers}))
        return self._vocabulary

    @property
    def input_size(self) -> int:
        """V, the vocabulary size (token ids of ``story`` and ``query``)."""
        return len(self.vocabulary)

    @property
    def output_size(self) -> int:
        """A, the number of answer classes."""
        return self.vocabulary.num_answers

    def state_dict(self) -> dict:
        return {"seed": self.seed, "val_fraction": self.val_fraction, "val_holdout": self.val_holdout,
                "language": self.language, "size": self.size, "tasks": list(self.tasks),
                "train_1k_tasks": sorted(self.train_1k_tasks)}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resume continues one run: another seed or hold-out (another split of the training file), or other
        files (``language``, ``size``, ``tasks``, ``train_1k_tasks``: other questions, another vocabulary) is
        refused. A key the checkpoint lacks (written before it was kept) is not checked.

        ``validate``, ``test`` and ``predict`` (``memnet babi-table``, a suite's evaluation) continue no run: the
        test split is the test file whatever the seed and hold-out, and a validation scores the split they draw
        (as ``memnet test`` of an algorithmic task scores its seed's sets). Other files are still refused there:
        the vocabulary, and so the token ids the checkpoint's model reads, comes from them.
        """
        split_keys = ("seed", "val_fraction", "val_holdout")
        for key, value in self.state_dict().items():
            saved = state_dict.get(key, value)
            if saved == value or (key in split_keys and not fitting(self.trainer)):
                continue
            if not fitting(self.trainer):
                raise MemnetError(
                    f"data {key} {value!r} given, but the checkpoint was trained with {saved!r}: its model reads the "
                    f"vocabulary of those bAbI files; score it with data.init_args.{key} {saved!r} in its config")
            what = "its split of the training questions" if key in split_keys else "training on its bAbI files"
            raise MemnetError(
                f"data {key} {value!r} given, but the checkpoint was trained with {saved!r}: "
                f"resuming continues {what}; pass --data.init_args.{key} {saved}, or start a new run")

    def prepare_data(self) -> None:
        load_babi(data_dir=self.data_dir, cache_dir=self.cache_dir, language=self.language, size=self.size,
                  tasks=self.tasks, train_1k_tasks=self.train_1k_tasks, val_fraction=self.val_fraction, seed=self.seed,
                  val_holdout=self.val_holdout)

    def split(self, name: str) -> EncodedSplit:
        """The encoded ``train``, ``validation`` or ``test`` split."""
        if name not in self._splits:
            folder = cache_folder(self.dataset)
            path = folder / f"encoded-{name}-memory{self.memory_size}.npz" if folder is not None else None
            arrays = None
            if path is not None and path.is_file():
                with np.load(path) as stored:
                    arrays = {key: stored[key] for key in stored.files}
                if "supporting_lost" in arrays:  # read back, the cut warns as it did when the split was encoded
                    _warn_lost_supporting(arrays, self.memory_size)
                else:  # written before the arrays kept it: encoded again
                    arrays = None
            if arrays is None:
                arrays = encode_split(self.dataset[name], self.vocabulary, self.memory_size)
                if path is not None:
                    write_file_atomic(path, lambda file: np.savez(file, **arrays))
            self._splits[name] = EncodedSplit(arrays)
        return self._splits[name]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split("train")
            self.split("validation")
        if stage in (None, "validate"):
            self.split("validation")
        if stage in (None, "test", "predict"):
            self.split("test")

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        """One split's loader. Training (``shuffle``): under DDP each process reads its own share (a
        ``DistributedSampler`` shuffled by ``seed`` and the epoch), on one process the whole split shuffled by
        ``seed``; with ``group_by_length`` in batches of similar length (a ``LengthGroupedSampler``, itself a
        ``DistributedSampler``, on one process or many); with ``sampling: replacement`` batches drawn with
        replacement (an ``EpochDraws``, each process its own). Validation and test, in order: under DDP each process
        answers its own share, every question on exactly one process (an ``UnrepeatedDistributedSampler``)."""
        split = self.split(name)
        if shuffle and self.group_by_length is not None:
            rank, world_size = distributed_position(self.trainer)
            sampler = LengthGroupedSampler(sequence_lengths(split.arrays), self.batch_size, self.group_by_length,
                                           num_replicas=world_size, rank=rank, seed=self.seed)
        elif shuffle and self.sampling == "replacement":
            rank, world_size = distributed_position(self.trainer)
            batches = max(1, len(split) // (self.batch_size * world_size))
            sampler = EpochDraws(len(split), batches * self.batch_size, self.seed, rank, world_size)
        elif shuffle:
            sampler = distributed_sampler(split, self.trainer, shuffle=True, seed=self.seed)
        else:
            sampler = evaluation_sampler(split, self.trainer, unit="question")
        generator = None
        if isinstance(sampler, EpochDraws):  # the loader's generator seeds workers only, as for EpochShuffle
            generator = torch.Generator().manual_seed(self.seed)
        if sampler is None and shuffle:
            # one process: the epoch's order from the seed and the epoch (a resumed run does not replay epoch 0's);
            # the loader's own generator only seeds workers, and keeps the global RNG untouched as before
            sampler, generator = EpochShuffle(len(split), self.seed), torch.Generator().manual_seed(self.seed)
        if shuffle:  # training: resumed in the middle of an epoch, the rest of its order, not its first batches again
            return ResumableLoader(split, batch_size=self.batch_size, sampler=sampler, generator=generator,
                                   collate_fn=collate_babi, num_workers=self.num_workers, trainer=self.trainer)
        return DataLoader(split, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_babi,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
