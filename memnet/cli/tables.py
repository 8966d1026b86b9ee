"""The one markdown and CSV table writer of the commands (evaluate, babi-table, suite report)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, align: Sequence[str] | None = None,
                   empty: str = "") -> str:
    """A GitHub markdown table, one line per row, ending in a newline.

    Args:
        header: the column titles (``|`` escaped).
        rows: the cells, one sequence per row (``str()`` of each; ``|`` escaped).
        align: per column ``"left"``, ``"right"`` or ``""`` (none); default none.
        empty: what an empty cell shows (``"–"`` where a blank would read as missing).
    """
    marks = {"left": " --- ", "right": " ---: ", "": " --- "}
    align = align or [""] * len(header)
    if len(align) != len(header):
        raise ValueError(f"align names {len(align)} columns for a header of {len(header)}")
    titles = [str(title).replace("|", "\\|") for title in header]  # a run named "a|b" is one column
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    for row in rows:
        cells = [str(cell).replace("|", "\\|") if str(cell) else empty for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same rows as CSV (quoted where a cell holds a comma or a quote), ending in a newline."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
