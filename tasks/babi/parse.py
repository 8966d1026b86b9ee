"""Parsing of the bAbI files (Weston et al. 2015, v1.2): task names, tokens, stories and questions.

The format (one file per task and split)::

    1 Mary moved to the bathroom.
    2 John went to the hallway.
    3 Where is Mary? \tbathroom\t1

IDs restart at 1 for each story and go up by one; a question line carries the
question, the answer and the IDs of the supporting statements. The parser is
strict: a malformed line raises :class:`BabiFormatError` naming the file, the
line number and what was expected; nothing is dropped: statements after a story's
last question (which no question would read) are refused too. See ``tasks.babi`` for
the columns of an example.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

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
        ``answer``, ``supporting`` (indices into ``story``), ``task`` and
        ``story_index`` (the story's number in the file, from 0: the questions of
        one story share it).

    Raises:
        BabiFormatError: empty file, a file without a question, CR line endings, blank line, a line not
            ``ID text``, an ID that neither restarts at 1 nor goes up by one, a
            question line without exactly ``question<TAB>answer<TAB>IDs``, an
            empty question or answer, a question (a ``?``) without its tabs and
            answer fields, a supporting ID that is not an integer,
            points forward, outside the story or at a question, statements after
            the last question of their story (no example would hold them).
    """
    if text == "":
        raise BabiFormatError(source, None, "empty file: expected at least one story")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline
    examples: list[dict[str, Any]] = []
    story: list[list[str]] = []
    story_count = 0
    statement_index: dict[int, int] = {}  # line ID -> index into story, statements only
    question_ids: set[int] = set()
    unread: list[int] = []  # line numbers of this story's statements after its last question
    previous_id = 0

    def refuse_unread() -> None:  # statements no question reads would be dropped unseen
        if unread:
            where = f"line {unread[0]}" if len(unread) == 1 else f"lines {unread[0]}-{unread[-1]}"
            raise BabiFormatError(
                source, unread[0],
                f"statements {'after the last question of their story' if question_ids else 'of a story without a question'} "
                f"({where}): no question reads them; expected a "
                "question line 'ID question<TAB>answer<TAB>supporting IDs' after them, before the story ends",
            )
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
            refuse_unread()
            story, statement_index, question_ids = [], {}, set()
            story_count += 1
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
            unread.append(line_number)
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
        unread.clear()
        examples.append({
            "story": [list(sentence) for sentence in story],
            "query": query,
            "answer": " ".join(answer.lower().split()),  # one class, even of several words
            "supporting": supporting,
            "task": task,
            "story_index": story_count - 1,
        })
    if not examples:  # else the task would train or be tested on nothing, and its error read as a number
        raise BabiFormatError(source, None, "no question in the file: expected at least one line "
                                            "'ID question<TAB>answer<TAB>supporting IDs'")
    refuse_unread()
    return examples


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
