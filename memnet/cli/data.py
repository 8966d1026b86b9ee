"""``memnet data NAME``: fetch, verify and extract a data set (today: ``babi``).

    memnet data babi [--dest DIR] [--archive FILE] [--url URL] [--sha256 HEX]

The work is the data set's own (``tasks.babi.archive.data_main``); this command names
the data sets and turns their refusals into one-line errors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

DATASETS = ("babi",)
USAGE = f"""usage: memnet data {{{','.join(DATASETS)}}} [options]   (memnet data NAME --help for its options)

Fetch, verify and extract a data set.

data sets:
  babi  the 20 bAbI tasks v1.2 (Weston et al. 2015): download or take a local archive, check its sha256, extract"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``memnet data``; returns the exit status: 2 for a name it does not know, a refused
    archive or a failed download (one line naming the URL, the error and ``--archive``), as every ``memnet``
    command; ``memnet data --help`` lists the data sets."""
    argv = list(argv or [])
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in DATASETS:
        given = f"unknown data set {argv[0]!r}" if argv else "name a data set"
        print(f"memnet data: {given}, one of {', '.join(DATASETS)} (e.g. `memnet data babi --help`)",
              file=sys.stderr)
        return 2
    from memnet.cli.typos import CommandParser
    from tasks.babi.archive import UnsafeArchiveError, data_main

    try:
        data_main(argv[1:], parser_class=CommandParser)
    except (UnsafeArchiveError, ValueError, OSError) as error:
        print(f"memnet data {argv[0]}: {error}", file=sys.stderr)
        return 2
    return 0
