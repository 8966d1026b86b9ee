"""The 20 bAbI question-answering tasks (Weston et al. 2015, v1.2) as a LightningDataModule.

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

The format (one file per task and split)::

    1 Mary moved to the bathroom.
    2 John went to the hallway.
    3 Where is Mary? \tbathroom\t1

IDs restart at 1 for each story and go up by one; a question line carries the
question, the answer and the IDs of the supporting statements. The parser is
strict: a malformed line raises :class:`BabiFormatError` naming the file, the
line number and what was expected; nothing is dropped.

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
task's training questions, drawn with ``seed``.

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

import argparse
import gzip
import hashlib
import itertools
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from memnet.utils import distributed_sampler

TASK_NAMES: dict[int, str] = {
    1: "single-supporting-fact",
    2: "two-supporting-facts",
    3: "three-supporting-facts",
    4: "two-arg-relations",
    5: "three-arg-relations",
    6: "yes-no-questions",
    7: "counting",
    8: "lists-sets",
    9: "simple-negation",
    10: "indefinite-knowledge",
    11: "basic-coreference",
    12: "conjunction",
    13: "compound-coreference",
    14: "time-reasoning",
    15: "basic-deduction",
    16: "basic-induction",
    17: "positional-reasoning",
    18: "size-reasoning",
    19: "path-finding",
    20: "agents-motivations",
}
ALL_TASKS: tuple[int, ...] = tuple(TASK_NAMES)
LANGUAGES = ("en", "hn", "shuffled")
SIZES = ("1k", "10k")
Language = Literal["en", "hn", "shuffled"]
Size = Literal["1k", "10k"]

ARCHIVE_NAME = "tasks_1-20_v1-2.tar.gz"
ARCHIVE_TOP = "tasks_1-20_v1-2"
OFFICIAL_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"
OFFICIAL_SHA256 = "0364ebde659f14d11bc21744516c5ec49d3d06cb692733f66680771244998898"
# Archives whose content is known: the official tarball, and a byte-stable repack of
# its en, en-10k (less qa3 train), hn and shuffled folders.
KNOWN_SHA256: dict[str, str] = {
    OFFICIAL_SHA256: "official tasks_1-20_v1-2.tar.gz",
    "b97dd5867899be8124afffe6a60cd037b2812eb95efa37ea547447aa1101e8e5": "repack of en, en-10k, hn, shuffled",
}
DEFAULT_DATA_DIR = Path("data") / "babi"
DATA_DIR_ENV = "MEMNET_DATA_DIR"
CACHE_DIR_ENV = "MEMNET_CACHE_DIR"
CACHE_VERSION = 1  # bump when the parser or the columns change
REPO_ROOT = Path(__file__).resolve().parents[1]

PAD, UNK, SENTENCE_END, QUESTION_END = "<pad>", "<unk>", "<eos>", "<eoq>"
SPECIAL_TOKENS = (PAD, UNK, SENTENCE_END, QUESTION_END)
PAD_ID, UNK_ID, SENTENCE_END_ID, QUESTION_END_ID = range(4)
ANSWER_OFFSET = len(SPECIAL_TOKENS)  # answer class a is vocabulary token a + ANSWER_OFFSET


# ----------------------------------------------------------------------------- parsing


class BabiFormatError(ValueError):
    """A line of a bAbI file is not in the format; the message names file, line and expectation."""

    def __init__(self, source: str, line_number: int | None, message: str) -> None:
        where = f"{source}, line {line_number}" if line_number is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line_number = line_number


def tokenize(text: str) -> list[str]:
    """Lower-cased words of a sentence or question; ``.`` and ``?`` are dropped.

    >>> tokenize("Where is Mary? ")
    ['where', 'is', 'mary']
    """
    return text.replace(".", " ").replace("?", " ").lower().split()


def _parse_id(text: str, source: str, line_number: int, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise BabiFormatError(source, line_number, f"{what} must be a positive integer, got {text!r}")
    value = int(text)
    if value < 1:
        raise BabiFormatError(source, line_number, f"{what} must be a positive integer, got {text!r}")
    return value


def _looks_like_question(text: str) -> bool:
    """Whether a line's text (without its ID) is a question: it has a ``?`` not followed by the final ``.``.

    Every statement of the distribution ends with ``.``; the Hindi ones may end
    with ``?.`` ("Pallavi bhedia hai ?."), a question's text ends with ``?``.
    """
    return "?" in text and text[text.rindex("?") + 1:].strip() != "."


def parse_babi(text: str, *, source: str, task: int) -> list[dict[str, Any]]:
    """Parse the text of one bAbI file into examples, one per question.

    Args:
        text: the whole file, decoded.
        source: the file's name, used in error messages.
        task: the task number stored with every example.

    Returns:
        dicts with ``story`` (list of token lists, oldest first), ``query``,
        ``answer``, ``supporting`` (indices into ``story``) and ``task``.

    Raises:
        BabiFormatError: empty file, CR line endings, blank line, a line not
            ``ID text``, an ID that neither restarts at 1 nor goes up by one, a
            question line without exactly ``question<TAB>answer<TAB>IDs``, an
            empty question or answer, a question (a ``?``) without its tabs and
            answer fields, a supporting ID that is not an integer,
            points forward, outside the story or at a question.
    """
    if text == "":
        raise BabiFormatError(source, None, "empty file: expected at least one story")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline
    examples: list[dict[str, Any]] = []
    story: list[list[str]] = []
    statement_index: dict[int, int] = {}  # line ID -> index into story, statements only
    question_ids: set[int] = set()
    previous_id = 0
    for line_number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise BabiFormatError(source, line_number, "carriage return found: expected Unix line endings (LF only)")
        if line.strip() == "":
            raise BabiFormatError(source, line_number, "empty line: expected 'ID text' or 'ID question<TAB>answer<TAB>IDs'")
        id_text, space, rest = line.partition(" ")
        if not space:
            raise BabiFormatError(source, line_number, f"expected 'ID text' (an ID, a space, then text), got {line!r}")
        line_id = _parse_id(id_text, source, line_number, "the line ID")
        if line_id == 1:
            story, statement_index, question_ids = [], {}, set()
        elif previous_id == 0:
            raise BabiFormatError(source, line_number, f"the first line must have ID 1, got {line_id}")
        elif line_id != previous_id + 1:
            raise BabiFormatError(
                source, line_number,
                f"expected ID {previous_id + 1} (IDs go up by one in a story) or 1 (a new story), got {line_id}",
            )
        previous_id = line_id
        if "\t" not in rest:
            if _looks_like_question(rest):
                raise BabiFormatError(
                    source, line_number,
                    f"{rest.strip()!r} is a question (it has a '?') but no tabs: expected "
                    "'question<TAB>answer<TAB>supporting IDs'",
                )
            tokens = tokenize(rest)
            if not tokens:
                raise BabiFormatError(source, line_number, "a statement needs at least one word after the ID")
            statement_index[line_id] = len(story)
            story.append(tokens)
            continue
        fields = rest.split("\t")
        if len(fields) != 3:
            raise BabiFormatError(
                source, line_number,
                f"a question line needs 'question<TAB>answer<TAB>supporting IDs' (3 fields), got {len(fields)} fields",
            )
        question, answer, supporting_text = (field.strip() for field in fields)
        query = tokenize(question)
        if not query:
            raise BabiFormatError(source, line_number, "empty question: expected words before the first tab")
        if not answer:
            raise BabiFormatError(source, line_number, "empty answer: expected it between the first and second tab")
        supporting_ids = supporting_text.split()
        if not supporting_ids:
            raise BabiFormatError(source, line_number, "expected at least one supporting-fact ID after the second tab")
        supporting = []
        for item in supporting_ids:
            fact = _parse_id(item, source, line_number, "a supporting-fact ID")
            if fact >= line_id:
                raise BabiFormatError(
                    source, line_number,
                    f"supporting-fact ID {fact} must point to an earlier line of the story (< {line_id})",
                )
            if fact in question_ids:
                raise BabiFormatError(
                    source, line_number, f"supporting-fact ID {fact} points at a question, expected a statement"
                )
            if fact not in statement_index:
                raise BabiFormatError(source, line_number, f"supporting-fact ID {fact} is not a line of this story")
            supporting.append(statement_index[fact])
        question_ids.add(line_id)
        examples.append({
            "story": [list(sentence) for sentence in story],
            "query": query,
            "answer": " ".join(answer.lower().split()),  # one class, even of several words
            "supporting": supporting,
            "task": task,
        })
    return examples


# ----------------------------------------------------------------------------- files


def task_file(task: int, split: Literal["train", "test"], *, language: str = "en", size: str = "1k") -> str:
    """Path of a task's file inside the distribution, e.g. ``en-10k/qa3_three-supporting-facts_train.txt``."""
    check_tasks([task])
    folder = language if size == "1k" else f"{language}-10k"
    return f"{folder}/qa{task}_{TASK_NAMES[task]}_{split}.txt"


class BabiSource:
    """The distribution, in a tarball or a folder; reads files by their relative path.

    Args:
        root: the ``.tar.gz``, the extracted ``tasks_1-20_v1-2`` folder, or a folder
            holding either of them.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        self.archive: Path | None = None
        self.folder: Path | None = None
        if root.is_file():
            self.archive = root
        elif (root / ARCHIVE_TOP).is_dir():
            self.folder = root / ARCHIVE_TOP
        elif (root / "en").is_dir() or (root / "hn").is_dir() or (root / "shuffled").is_dir():
            self.folder = root
        elif (root / ARCHIVE_NAME).is_file():
            self.archive = root / ARCHIVE_NAME
        else:
            raise FileNotFoundError(
                f"no bAbI data in {root}: expected {ARCHIVE_NAME}, a {ARCHIVE_TOP}/ folder or en/ inside it "
                "(run `memnet data babi` to fetch it)"
            )
        self._members: dict[str, tarfile.TarInfo] | None = None
        self._tar: tarfile.TarFile | None = None

    @property
    def location(self) -> Path:
        return self.archive if self.archive is not None else self.folder  # type: ignore[return-value]

    def _open(self) -> dict[str, tarfile.TarInfo]:
        if self._members is None:
            members = {}
            try:
                self._tar = tarfile.open(self.archive, "r:gz")  # noqa: SIM115 - kept open for reads, see close()
                for member in self._tar.getmembers():
                    name = member.name.removeprefix("./")
                    name = name.removeprefix(ARCHIVE_TOP + "/")
                    if member.isfile():
                        members[name] = member
            except CORRUPT_ARCHIVE_ERRORS as error:
                self.close()
                raise self._corrupt(error) from None
            self._members = members
        return self._members

    def _corrupt(self, error: BaseException) -> CorruptArchiveError:
        return CorruptArchiveError(f"{self.archive}: the archive is truncated or corrupt "
                                   f"({type(error).__name__}: {error}); fetch it again with `memnet data babi`")

    def exists(self, relative: str) -> bool:
        if self.folder is not None:
            return (self.folder / relative).is_file()
        return relative in self._open()

    def read(self, relative: str) -> str:
        """The decoded text of ``relative``; a missing file is a ``FileNotFoundError`` naming it."""
        if not self.exists(relative):
            raise FileNotFoundError(f"{relative} is not in {self.location}")
        if self.folder is not None:
            data = (self.folder / relative).read_bytes()
        else:
            try:
                handle = self._tar.extractfile(self._open()[relative])  # type: ignore[union-attr]
                data = handle.read()  # type: ignore[union-attr]
            except CORRUPT_ARCHIVE_ERRORS as error:
                raise self._corrupt(error) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BabiFormatError(f"{self.location}/{relative}", None, f"not UTF-8 text ({error})") from None

    def fingerprint(self, relatives: Sequence[str]) -> str:
        """Changes when the data changes: the archive's sha256, or the files' sizes and times."""
        if self.archive is not None:
            return sha256_file(self.archive)
        parts = []
        for relative in relatives:
            stat = (self.folder / relative).stat()  # type: ignore[operator]
            parts.append(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar, self._members = None, None


def candidate_data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where the data is looked for, in order (see the module docstring)."""
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    candidates.append(DEFAULT_DATA_DIR)
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "babi")
    return candidates


def data_dir_from_env() -> Path | None:
    """The folder ``MEMNET_DATA_DIR`` names, or None when it is not set.

    Set, it must name an existing folder: an empty value, a missing folder or a
    file is an error naming the variable and its value, never silently replaced
    by another location.
    """
    if DATA_DIR_ENV not in os.environ:
        return None
    value = os.environ[DATA_DIR_ENV]
    expected = f"expected the folder holding {ARCHIVE_NAME} or {ARCHIVE_TOP}/ (or unset it)"
    if not value.strip():
        raise BabiDataDirError(f"{DATA_DIR_ENV} is set but empty; {expected}")
    path = Path(value).expanduser()
    if path.is_file():
        raise BabiDataDirError(f"{DATA_DIR_ENV}={value} is a file; {expected}")
    if not path.is_dir():
        raise BabiDataDirError(f"{DATA_DIR_ENV}={value} does not exist; {expected}")
    return path


class BabiDataDirError(FileNotFoundError):
    """Where the data should be is not usable; the message names the setting and its value."""


def find_source(data_dir: str | Path | None = None) -> BabiSource:
    """The first place holding the data; an explicit ``data_dir`` or ``MEMNET_DATA_DIR`` that does not is an error."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_dir {path} does not exist (expected {ARCHIVE_NAME} or a folder holding it)")
        return BabiSource(path)
    from_env = data_dir_from_env()
    if from_env is not None:
        try:
            return BabiSource(from_env)
        except FileNotFoundError as error:
            raise BabiDataDirError(f"{DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]}: {error}") from None
    tried = []
    for candidate in candidate_data_dirs(None):
        tried.append(str(candidate))
        try:
            return BabiSource(candidate)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        "bAbI data not found; looked in " + ", ".join(tried)
        + f". Run `memnet data babi` or set data_dir / {DATA_DIR_ENV}."
    )


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_tasks(tasks: Iterable[int]) -> list[int]:
    """The task numbers as a sorted list; each must be in 1-20 and appear once."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must name at least one task in 1-20")
    for task in tasks:
        if isinstance(task, bool) or not isinstance(task, int) or task not in TASK_NAMES:
            raise ValueError(f"tasks must be integers in 1-20, got {task!r}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks lists a task twice: {tasks}")
    return sorted(tasks)


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
        val_fraction: share of each task's training questions held out for validation.
        seed: draws the validation questions.

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
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")

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
               "train_1k_tasks": train_1k_tasks, "val_fraction": val_fraction, "seed": seed,
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
        order = np.random.default_rng([seed, task]).permutation(len(train))
        held_out = round(val_fraction * len(train))
        validation_rows = set(order[:held_out].tolist())
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


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


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
    ``o[i]:o[i+1]``), ``query_words``, ``query_offsets``, ``answer`` and ``task``.
    """
    columns = split.to_dict()
    words: list[int] = []
    sentence_offsets, story_offsets, query_words, query_offsets = [0], [0], [], [0]
    for story, query in zip(columns["story"], columns["query"]):
        for sentence in story[-memory_size:][::-1]:  # most recent first
            words.extend(vocabulary.encode(sentence))
            sentence_offsets.append(len(words))
        story_offsets.append(len(sentence_offsets) - 1)
        query_words.extend(vocabulary.encode(query))
        query_offsets.append(len(query_words))
    return {
        "words": np.asarray(words, dtype=np.int64),
        "sentence_offsets": np.asarray(sentence_offsets, dtype=np.int64),
        "story_offsets": np.asarray(story_offsets, dtype=np.int64),
        "query_words": np.asarray(query_words, dtype=np.int64),
        "query_offsets": np.asarray(query_offsets, dtype=np.int64),
        "answer": np.asarray([vocabulary.answer_class(a) for a in columns["answer"]], dtype=np.int64),
        "task": np.asarray(columns["task"], dtype=np.int64),
    }


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
        val_fraction: held-out share of each task's training questions.
        seed: draws the validation questions and shuffles training batches.
        num_workers: DataLoader workers.
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
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
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
                    _write_atomic(path, json.dumps({"tokens": list(self._vocabulary.tokens),
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

    def prepare_data(self) -> None:
        load_babi(data_dir=self.data_dir, cache_dir=self.cache_dir, language=self.language, size=self.size,
                  tasks=self.tasks, train_1k_tasks=self.train_1k_tasks, val_fraction=self.val_fraction, seed=self.seed)

    def split(self, name: str) -> EncodedSplit:
        """The encoded ``train``, ``validation`` or ``test`` split."""
        if name not in self._splits:
            folder = cache_folder(self.dataset)
            path = folder / f"encoded-{name}-memory{self.memory_size}.npz" if folder is not None else None
            if path is not None and path.is_file():
                with np.load(path) as stored:
                    arrays = {key: stored[key] for key in stored.files}
            else:
                arrays = encode_split(self.dataset[name], self.vocabulary, self.memory_size)
                if path is not None:
                    partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
                    np.savez(partial, **arrays)
                    os.replace(partial, path)
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
        """One split's loader; under DDP each process reads its own share (a ``DistributedSampler``
        shuffled by ``seed`` and the epoch), on one process the whole split shuffled by ``seed``."""
        split = self.split(name)
        sampler = distributed_sampler(split, self.trainer, shuffle=shuffle, seed=self.seed)
        if sampler is not None:
            return DataLoader(split, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_babi,
                              num_workers=self.num_workers)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(split, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=collate_babi, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


# ----------------------------------------------------------------------------- `memnet data babi`


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder, or is a link or a device."""


def check_archive_members(archive: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    """Every member, after checking that none escapes ``target``; raises naming the first bad one.

    Refused: absolute names, ``..`` components, symbolic and hard links, devices,
    FIFOs, and any name that resolves outside ``target``.
    """
    root = target.resolve()
    members = archive.getmembers()
    for member in members:
        name = member.name
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract")
        if ".." in Path(name).parts or ".." in name.replace("\\", "/").split("/"):
            raise UnsafeArchiveError(f"archive member {name!r} points outside the target folder ('..'); refusing to extract")
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"archive member {name!r} is a link (to {member.linkname!r}); refusing to extract")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"archive member {name!r} is not a regular file or folder; refusing to extract")
        destination = (root / name).resolve()
        if destination != root and root not in destination.parents:
            raise UnsafeArchiveError(f"archive member {name!r} would be written outside {root}; refusing to extract")
    return members


CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)  # a truncated or flipped .tar.gz


class CorruptArchiveError(ValueError):
    """An archive that cannot be read to its end (truncated, or bytes changed)."""


def _read_gzip_to_the_end(path: Path) -> None:
    """Decompress a gzip file to its end, so its CRC is checked (tarfile stops at the end-of-archive
    marker and would not notice changed bytes that still inflate); other files are left alone."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 20):
            pass


def safe_extract(archive_path: str | Path, target: str | Path) -> Path:
    """Extract a ``.tar.gz`` into ``target`` after :func:`check_archive_members`; returns ``target``.

    All or nothing: nothing is written unless every member is safe, and the
    members are extracted into a temporary folder inside ``target`` that is
    renamed into place only once the whole archive has been read. A truncated or
    corrupt archive raises :class:`CorruptArchiveError` naming it, and leaves
    ``target`` as it was.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target))
    try:
        try:
            _read_gzip_to_the_end(Path(archive_path))
            with tarfile.open(archive_path, "r:*") as archive:
                members = check_archive_members(archive, staging)
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    archive.extractall(staging, members=members)
        except UnsafeArchiveError:
            raise
        except CORRUPT_ARCHIVE_ERRORS as error:
            raise CorruptArchiveError(
                f"{archive_path}: the archive is truncated or corrupt ({type(error).__name__}: {error}); "
                f"nothing was extracted to {target}"
            ) from None
        for entry in sorted(staging.iterdir()):
            destination = target / entry.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif destination.exists() or destination.is_symlink():
                destination.unlink()
            os.replace(entry, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def verify_archive(path: str | Path, *, expected_sha256: str | None = None, official: bool = False) -> str:
    """The archive's sha256, checked against ``expected_sha256``, or the official one when ``official``.

    Returns a sentence saying what was verified. An archive whose checksum is
    unknown (not official, not the known repack, no ``expected_sha256``) is
    refused (:class:`CorruptArchiveError`): a flipped or truncated download is caught
    before anything is extracted.
    """
    digest = sha256_file(path)
    if expected_sha256 is not None:
        if digest != expected_sha256.lower():
            raise ValueError(f"{path}: sha256 {digest} does not match the expected {expected_sha256}")
        return f"sha256 {digest} matches the expected value"
    if official and digest != OFFICIAL_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the official archive's {OFFICIAL_SHA256}")
    if digest in KNOWN_SHA256:
        return f"sha256 {digest} verified ({KNOWN_SHA256[digest]})"
    raise CorruptArchiveError(
        f"{path}: sha256 {digest} is not the official bAbI v1.2 archive's ({OFFICIAL_SHA256}) nor a known "
        f"repack's: the file is truncated, corrupt or another archive; pass --sha256 {digest} to use it anyway"
    )


def data_main(argv: Sequence[str] | None = None) -> Path:
    """``memnet data babi``: fetch (or take a local copy of) the archive, verify it, extract it safely."""
    parser = argparse.ArgumentParser(
        prog="memnet data babi",
        description="Fetch the bAbI v1.2 archive (or take a local file), check its sha256 and extract it safely.",
    )
    parser.add_argument("--dest", default=None,
                        help=f"target folder (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    parser.add_argument("--archive", help=f"a local {ARCHIVE_NAME} to use instead of downloading")
    parser.add_argument("--url", default=OFFICIAL_URL, help="where to download from (default: the official URL)")
    parser.add_argument("--sha256", help="expected sha256 of the archive (default: known checksums)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.dest is None and DATA_DIR_ENV in os.environ:
        value = os.environ[DATA_DIR_ENV]
        if not value.strip() or Path(value).expanduser().is_file():
            data_dir_from_env()  # raises, naming the variable
    dest = Path(args.dest or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    stored = dest / ARCHIVE_NAME
    if args.archive:
        source = Path(args.archive).expanduser()
        if not source.is_file():
            parser.error(f"--archive {source} is not a file")
        message = verify_archive(source, expected_sha256=args.sha256)
        print(message)
        safe_extract(source, dest)  # from the given file: a failure names it and leaves dest as it was
        if source.resolve() != stored.resolve():
            shutil.copyfile(source, stored)
    else:
        partial = stored.with_name(stored.name + ".partial")
        print(f"downloading {args.url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(args.url, timeout=60) as response, open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise SystemExit(f"memnet data babi: could not download {args.url} ({error}); "
                             "download it yourself and pass --archive") from None
        try:
            message = verify_archive(partial, expected_sha256=args.sha256, official=args.url == OFFICIAL_URL)
        except ValueError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, stored)
        print(message)
        safe_extract(stored, dest)
    folder = dest / ARCHIVE_TOP
    count = sum(1 for _ in folder.rglob("*.txt")) if folder.is_dir() else 0
    print(f"extracted {count} text files to {folder}")
    return folder


# ----------------------------------------------------------------------------- the bAbI table


def babi_table(results: dict[str, dict[int, float]], *, tasks: Sequence[int] = ALL_TASKS) -> tuple[str, str]:
    """The papers' table: a row per task, a column per model, then mean error and failed tasks.

    Args:
        results: model name -> {task number -> test error in percent}.
        tasks: the rows.

    Returns:
        (markdown, csv). A task a model was not evaluated on is ``–`` (empty in
        CSV); the mean and the failed count (error > 5%) are over the tasks evaluated,
        with their number in brackets when it is not every row.
    """
    names = list(results)
    failed_above = 5.0  # percent, as in Weston et al. 2015

    def summary(errors: dict[int, float]) -> tuple[str, str]:
        values = [errors[t] for t in tasks if t in errors]
        if not values:
            return "", ""
        suffix = "" if len(values) == len(tasks) else f" ({len(values)} tasks)"
        mean = f"{sum(values) / len(values):.1f}{suffix}"
        return mean, f"{sum(v > failed_above for v in values)}{suffix}"

    header = ["task"] + names
    rows = [[f"{t}: {TASK_NAMES[t]}"] + [f"{results[n][t]:.1f}" if t in results[n] else "" for n in names]
            for t in tasks]
    summaries = [summary(results[n]) for n in names]
    rows.append(["mean error (%)"] + [s[0] for s in summaries])
    rows.append([f"failed tasks (> {failed_above:g}%)"] + [s[1] for s in summaries])
    markdown = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(names)]
    markdown += ["| " + " | ".join(cell or "–" for cell in row) + " |" for row in rows]

    def csv_cell(cell: str) -> str:
        return f'"{cell}"' if ("," in cell or '"' in cell) else cell

    csv = [",".join(csv_cell(c) for c in header)] + [",".join(csv_cell(c) for c in row) for row in rows]
    return "\n".join(markdown) + "\n", "\n".join(csv) + "\n"


def task_errors(metrics: dict[str, Any], stage: str = "test") -> dict[int, float]:
    """{task -> error %} from logged metrics named ``<stage>/task_<k>/error``."""
    errors = {}
    prefix = f"{stage}/task_"
    for key, value in metrics.items():
        if key.startswith(prefix) and key.endswith("/error"):
            errors[int(key[len(prefix):-len("/error")])] = float(value)
    return dict(sorted(errors.items()))


def evaluate_checkpoint(ckpt_path: str | Path, config: str | Path | None = None,
                        overrides: Sequence[str] = ()) -> dict[int, float]:
    """Test error per task of one checkpoint, run through ``memnet test`` with the run's config.

    The config defaults to ``config.yaml`` of the run folder (the parent of the
    checkpoint's folder), as saved by ``memnet fit``.
    """
    from memnet.cli import MemnetCLI

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path} is not a file")
    if config is None:
        config = ckpt_path.parent.parent / "config.yaml"
        if not Path(config).is_file():
            raise FileNotFoundError(f"no config.yaml beside {ckpt_path} (looked for {config}); pass --config")
    cli = MemnetCLI(args=["test", "--config", str(config), "--ckpt_path", str(ckpt_path), "--trainer.logger=false",
                          "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", *overrides])
    errors = task_errors(cli.trainer.callback_metrics)
    if not errors:
        raise ValueError(f"{ckpt_path}: the test logged no per-task errors (is its model a memnet QAModule?)")
    return errors


def table_main(argv: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """``memnet babi-table``: evaluate checkpoints on the test set and print the bAbI table."""
    parser = argparse.ArgumentParser(
        prog="memnet babi-table",
        description="Test error per bAbI task for each checkpoint, as a markdown and CSV table. "
                    "Checkpoints given the same --name (e.g. one per task) fill one column.",
    )
    parser.add_argument("--ckpt_path", action="append", default=[], help="a checkpoint (repeat for more)")
    parser.add_argument("--name", action="append", default=[],
                        help="column name of each --ckpt_path, in order (default: the run folder's name)")
    parser.add_argument("--config", action="append", default=[],
                        help="config of each --ckpt_path, in order (default: config.yaml of its run folder)")
    parser.add_argument("--results", action="append", default=[],
                        help="a JSON file written by --json, to add its columns without evaluating again")
    parser.add_argument("--markdown", help="also write the markdown table here")
    parser.add_argument("--csv", help="also write the CSV table here")
    parser.add_argument("--json", help="also write the per-task errors here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.ckpt_path and not args.results:
        parser.error("give at least one --ckpt_path or --results")
    for option in ("name", "config"):
        given = getattr(args, option)
        if given and len(given) != len(args.ckpt_path):
            parser.error(f"--{option} was given {len(given)} times for {len(args.ckpt_path)} --ckpt_path")
    results: dict[str, dict[int, float]] = {}
    for path in args.results:
        loaded = json.loads(Path(path).read_text())
        for name, errors in loaded.items():
            results.setdefault(name, {}).update({int(t): float(e) for t, e in errors.items()})
    for index, ckpt in enumerate(args.ckpt_path):
        name = args.name[index] if args.name else Path(ckpt).resolve().parent.parent.name
        config = args.config[index] if args.config else None
        results.setdefault(name, {}).update(evaluate_checkpoint(ckpt, config))
    markdown, csv = babi_table(results)
    print(markdown)
    print(csv)
    for path, text in ((args.markdown, markdown), (args.csv, csv),
                       (args.json, json.dumps(results, indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return results
