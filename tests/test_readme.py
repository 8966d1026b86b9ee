"""The README's Python example is itself a test."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 -- the README is ours


def test_readme_make_train_table_is_what_memnet_evaluate_prints():
    """The table of `make train` in the README is memnet evaluate's own, cell for cell (its exact (%) column
    read 100.0 where memnet evaluate prints 100.000)."""
    from memnet.cli.evaluate import markdown_table

    lines = README.read_text().splitlines()
    start = lines.index("| length | slots | bits per sequence | bit errors per sequence | sequences | exact (%) |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    shown = lines[start:end]
    rows = []
    for line in shown[2:]:
        length, slots, bits, errors, sequences, exact = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append({"length": int(length), "slots": int(slots), "bits_per_seq": float(bits),
                     "bit_errors_per_seq": float(errors), "sequences": int(sequences), "exact_pct": float(exact)})
    assert len(rows) == 4
    assert markdown_table(rows).splitlines() == shown
