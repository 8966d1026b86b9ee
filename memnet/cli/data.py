"""``memnet data NAME``: fetch, verify and extract a data set (today: ``babi``).

    memnet data babi [--dest DIR] [--archive FILE] [--url URL] [--sha256 HEX]

The work is the data set's own (``tasks.babi.archive.data_main``); this command names
the data sets and turns their refusals into one-line errors.
"""

from __future__ import annotations

from collections.abc import Sequence

DATASETS = ("babi",)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``memnet data``."""
    argv = list(argv or [])
    if not argv or argv[0] not in DATASETS:
        raise SystemExit(f"memnet data: name a data set, one of {', '.join(DATASETS)} "
                         "(e.g. `memnet data babi --help`)")
    from tasks.babi.archive import UnsafeArchiveError, data_main

    try:
        data_main(argv[1:])
    except (UnsafeArchiveError, ValueError, OSError) as error:
        raise SystemExit(f"memnet data {argv[0]}: {error}") from None
