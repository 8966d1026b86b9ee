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


ROOT = README.parent
PINNED_AFTER = re.compile(r"\s+at\s+`[0-9a-f]{7,40}`")  # `memnet suite run ... --only E` at `5b8e2e8`: that commit's suite
PINNED_BEFORE = re.compile(r"as of commit `[0-9a-f]{7,40}`,?\s*$")  # (the suite as of commit `2b913d1`, `memnet suite run ...`)


def _suite_run_commands():
    """Every `memnet suite run SUITE ...` quoted in the README, docs/ and the configs' comments, as (where, command),
    the command's whitespace (a line break inside an inline code span) made single spaces. A command pinned to a
    commit (followed by "at `HASH`" or after "as of commit `HASH`") names that commit's suite file and is left out."""
    for path in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL):
            for line in block.splitlines():
                if "memnet suite run" in line:
                    yield path.name, line[line.index("memnet suite run"):].split("#")[0]
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        for span in re.finditer(r"`([^`]+)`", prose):
            code = " ".join(span.group(1).split())
            if not code.startswith("memnet suite run"):
                continue
            if PINNED_AFTER.match(prose, span.end()) or PINNED_BEFORE.search(prose[max(0, span.start() - 80):span.start()]):
                continue
            yield path.name, code
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            comment = line.partition("#")[2]
            if "memnet suite run" in comment:
                yield str(path.relative_to(ROOT)), comment[comment.index("memnet suite run"):]


def test_suite_commands_quoted_in_the_docs_name_experiments_that_exist():
    """A results row says the command that makes it, `memnet suite run configs/suites/X.yaml --only E`: the suite
    file exists and E is one of its experiments (a renamed or removed experiment leaves the row without a command)."""
    import yaml

    commands = list(_suite_run_commands())
    assert sum("--only" in command for _, command in commands) >= 10, commands  # the parsing found the results' commands
    broken = []
    for where, command in commands:
        tokens = command.split()
        if len(tokens) < 4 or not tokens[3].startswith("configs/"):  # `memnet suite run`, memnet suite run SUITE
            continue
        suite = tokens[3]
        if not (ROOT / suite).is_file():
            broken.append(f"{where}: {command}: no file {suite}")
            continue
        names = {experiment["name"] for experiment in yaml.safe_load((ROOT / suite).read_text())["experiments"]}
        if "--only" in tokens:
            for name in tokens[tokens.index("--only") + 1:]:
                if name.startswith(("-", "#")) or name in ("…", "..."):
                    break
                if name not in names:
                    broken.append(f"{where}: {command}: {suite} has no experiment {name!r} (it has {sorted(names)})")
    assert not broken, "\n".join(broken)
