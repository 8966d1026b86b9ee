"""``memnet evaluate``: length generalisation of a trained checkpoint.

    memnet evaluate --ckpt_path PATH|latest [--config CFG ...] --lengths 20 40 80 120
                    [--repeats 10 20] [--memory_size N] [--num_sequences 256] [--batch_size 64] [--seed 0]
                    [--out DIR] [--device cpu|cuda] [--wandb]

The checkpoint's network and task are rebuilt (``memnet.cli.rebuild``) from the
run's ``config.yaml`` (the folder above the checkpoint's ``checkpoints/``; or the
``--config`` files given), the weights are loaded, and at every length
``num_sequences`` fresh sequences (seeded by ``--seed`` and the length, drawn in blocks of
``memnet.protocols.DRAW_BLOCK``, so the same whatever ``--batch_size``) are scored in sub-batches of
``batch_size``, so memory stays bounded however long they are.

Repeats: for a task with a repeat count (repeat copy), ``--repeats R [R ...]`` scores every
(length, repeats) pair of ``--lengths`` × ``--repeats``, each sequence of a row with exactly R
repeats (the task's ``with_repeats``), the count normalised over the TRAINED range of repeats (the
config's ``min_repeats``–``max_repeats``: 20 repeats reads 5.048 for a model trained on 1–10), and the
same sequences at every R of a length (the seed is the length's). The rows, tables and
``results.json`` gain a ``repeats`` column (and ``results.json`` the list ``repeats`` and the training
range ``train_repeats``); without ``--repeats`` the count is drawn per sequence over the training
counts and nothing about repeats is written. The memory is sized by length alone, as without it.

Memory: a network with a ``memory_size`` (NTM, DNC) runs at each length with the
ratio of slots to needed slots it was trained with (see :func:`slots_for`: a
model trained with 128 slots at lengths ≤ 20 runs length 100 with 640), so the
table measures the model, not a starved memory; ``--memory_size`` fixes N, and a
length that needs more slots is refused with an error naming it. Every row
names its N. A length costly to run (steps × slots above ``COSTLY_STEP_SLOTS``)
is announced with a warning and reports progress after every sub-batch.
``latest`` is the best (else last) checkpoint of the run named in ``runs/latest.json``.

Writes to ``--out`` (default ``<run>/evaluation``):

    table.md, table.csv    length[, repeats], slots, bits per sequence, bit errors per sequence,
                           sequences, exact (% of sequences with no wrong bit)
                           [, optimal bits per sequence, for dynamic n-grams]
    results.json           the same rows under "lengths", with the checkpoint, config and training range
    error_vs_length.png    bits and bit errors per sequence versus length, training range shaded (with
                           --repeats a line per repeat count; at one length, versus the repeats)
    memory_access_lenL.png the NTM figure for one example at the first length (memory models only;
                           a DNC adds memory_access_lenL_dnc.png, its usage and links)

as one set: they are written into a hidden folder in ``--out`` and replace an earlier evaluation's set there
only once all are written, ``results.json`` last, so a kill or a failure part way leaves the earlier set whole,
never this evaluation's table beside an earlier ``results.json`` (of other lengths, another checkpoint); an
earlier evaluation's memory-access figure of another first length goes with its set. It
prints the markdown table. ``--wandb`` also logs the table and figures to a W&B
run (offline unless ``WANDB_MODE=online``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from memnet import metrics
from memnet.callbacks import draw_memory_access
from memnet.cli import tables
from memnet.cli.rebuild import (  # noqa: F401  (re-exported for callers of memnet.evaluation)
    RebuildError,
    build,
    default_config,
    fit_only_keys,
    instantiate,
    load_checkpoint,
    resolve_checkpoint,
)
from memnet.cli.typos import CommandParser
from memnet.models.core import ENGINES, MemoryModel
from memnet.models.recurrent import LOOP_ENGINES
from memnet.plots import plot_error_vs_length
from memnet.protocols import (
    EVALUATION_FILE,
    EvaluationResult,
    LengthRow,
    ResultSchemaError,
    SequenceTask,
    read_evaluation,
    sequence_batches,
)
from memnet.utils import parameter_dtype, replace_file_set, wandb_mode
from tasks.sequences import TokenTask

COLUMNS = ("length", "slots", "bits_per_seq", "bit_errors_per_seq", "sequences", "exact_pct")
EVALUATION_FILES = ("table.md", "table.csv", "error_vs_length.png", EVALUATION_FILE)  # and memory_access_lenL[_dnc].png
EvaluationError = RebuildError  # a request `memnet evaluate` cannot honour (bad path, length, memory size)

HEADERS = {
    "length": "length",
    "repeats": "repeats",
    "slots": "slots",
    "bits_per_seq": "bits per sequence",
    "bit_errors_per_seq": "bit errors per sequence",
    "sequences": "sequences",
    "exact_pct": "exact (%)",
    "optimal_bits_per_seq": "optimal bits per sequence",
    "free_bits_per_seq": "free-running bits per sequence",
    "nonfinite_sequences": "sequences with non-finite outputs",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        prog="memnet evaluate", description="Length generalisation of a trained checkpoint."
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint file, or 'latest' (runs/latest.json)")
    parser.add_argument("--config", action="append", default=None,
                        help="config file(s) to build the model and task (default: the run's config.yaml)")
    parser.add_argument("--lengths", type=int, nargs="+", required=True, help="task lengths to evaluate")
    parser.add_argument("--repeats", type=int, nargs="+", default=None,
                        help="repeat counts to evaluate at every length, for a task with one (repeat copy); "
                             "default: drawn per sequence over the training counts")
    parser.add_argument("--memory_size", type=int, default=None,
                        help="fix the memory slots N at every length (default: the trained ratio of slots to length)")
    parser.add_argument("--num_sequences", type=int, default=256, help="sequences per length (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=64, help="sequences per forward pass (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation sequences (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/evaluation)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--engine", default=None,
                        help="the network's execution path here: eager, fused (NTM, DNC) or compiled (default: the "
                             "checkpoint's). A compiled checkpoint compiles graphs of its own for the evaluation's "
                             "batches and memory, which can take longer than a short evaluation itself")
    parser.add_argument("--wandb", action="store_true", help="also log the table and figures to W&B")
    args = parser.parse_args(argv)
    for name in ("num_sequences", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.memory_size is not None and args.memory_size < 1:
        parser.error(f"--memory_size must be a positive integer, got {args.memory_size}")
    bad = [n for n in args.lengths if n < 1]
    if bad:
        parser.error(f"--lengths must be positive integers, got {bad}")
    repeated = sorted({n for n in args.lengths if args.lengths.count(n) > 1})
    if repeated:  # evaluated twice, and two rows of one length in the tables
        parser.error(f"--lengths names length(s) {', '.join(map(str, repeated))} more than once")
    if args.repeats is not None:
        bad = [r for r in args.repeats if r < 1]
        if bad:
            parser.error(f"--repeats must be positive integers (repeat counts ≥ 1), got {bad}")
        repeated = sorted({r for r in args.repeats if args.repeats.count(r) > 1})
        if repeated:
            parser.error(f"--repeats names count(s) {', '.join(map(str, repeated))} more than once")
    if args.device is not None:  # refused before the slow rebuild, not as torch's traceback after it
        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device must be cpu or cuda (cuda:N for the N-th GPU), got {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return args


def set_engine(net: torch.nn.Module, engine: str) -> None:
    """Run ``net`` on ``engine`` (``--engine``), or raise ``EvaluationError`` naming what it accepts."""
    if not hasattr(net, "engine"):
        raise EvaluationError(f"--engine: {type(net).__name__} has no execution engine to choose")
    engines = ENGINES if isinstance(net, MemoryModel) else LOOP_ENGINES
    if engine not in engines:
        raise EvaluationError(f"--engine: {type(net).__name__} runs on {', '.join(engines)}; got {engine!r}")
    net.engine = engine


def takes_memory_size(net: torch.nn.Module) -> bool:
    """Whether ``net.forward`` accepts ``memory_size`` (a network with an addressable memory)."""
    try:
        return "memory_size" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


def slots_for(task: SequenceTask, length: int, trained: int | None, fixed: int | None, *,
              trained_length: int | None = None) -> int | None:
    """Memory slots N at ``length``: ``fixed`` if given (refused when too small), else the trained ratio.

    The default keeps the ratio of slots to the slots the task needs that the
    model was trained with: N = max(trained N, needed(L), ⌈trained N · needed(L) /
    needed(L_train)⌉), with L_train the longest training length (``trained_length``,
    default ``task.max_length``). A model trained with N = 128 at lengths ≤ 20 never
    saw a memory more than 20/128 full; at N = L it is full, and a trained NTM then
    fails (6,156 bits per sequence at length 150 with N = 150, 3.1 at length 20 with
    N = 22 against 747 with N = 20). Keeping the ratio keeps the model in the
    regime it was trained in. (N = trained N + L would also leave room, but fills
    the memory to L / (L + N) → 1 at long lengths, a density training never had.)
    """
    if trained is None:
        return None
    needed = int(task.memory_needed(length))
    if fixed is not None:
        if needed > fixed:
            raise EvaluationError(
                f"--lengths: length {length} needs at least {needed} memory slots, "
                f"but --memory_size is {fixed}; raise --memory_size to ≥ {needed} or drop length {length}"
            )
        return fixed
    trained_length = trained_length if trained_length is not None else getattr(task, "max_length", None)
    proportional = 0
    if trained_length is not None:
        proportional = math.ceil(trained * needed / max(1, int(task.memory_needed(trained_length))))
    return max(trained, needed, proportional)


# Above this many (time steps × memory slots) per sequence, ``memnet evaluate`` warns about the cost and
# reports progress after every sub-batch (the NTM paper's copy at length 120 with 128 slots is 3·10^4).
COSTLY_STEP_SLOTS = 5 * 10**8


def cost_warning(task: Any, length: int, slots: int | None, batch_size: int, num_sequences: int,
                 word_size: int | None = None) -> str | None:
    """A one-line warning when a length is costly to evaluate (steps × slots per sequence), else None."""
    steps = int(task.sequence_length(length)) if hasattr(task, "sequence_length") else length
    work = steps * (slots or 1)
    if work <= COSTLY_STEP_SLOTS:
        return None
    state = "" if slots is None or word_size is None else (
        f", a memory of {batch_size * slots * word_size * 4 / 2**30:.1f} GiB per sub-batch of {batch_size}")
    return (f"warning: length {length} runs {steps:,} steps over N={slots} slots per sequence "
            f"({work:.1e} step-slots{state}) for {num_sequences} sequences; this is slow. "
            "Lower --num_sequences, --batch_size, the length or --memory_size to make it cheaper")


def evaluate_length(
    model: Any, task: Any, length: int, *, slots: int | None, num_sequences: int, batch_size: int,
    seed: int, device: torch.device, progress: bool = False, repeats: int | None = None,
) -> tuple[LengthRow, dict]:
    """Score ``num_sequences`` fresh sequences at ``length`` in sub-batches; returns the row and the first batch.

    With ``repeats`` (a task with a repeat count: ``task.with_repeats``), every sequence has exactly that many
    repeats and the row says so; the sequences' bits are those of ``length`` at any ``repeats``.
    With ``progress``, a line per sub-batch (sequences done, seconds) goes to stderr.
    """
    started = time.time()
    where = f"length {length}" if repeats is None else f"length {length}, {repeats} repeats"
    if repeats is not None:
        task = task.with_repeats(repeats)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    totals = {"bits": 0.0, "errors": 0.0, "exact": 0.0, "optimal": 0.0, "nonfinite": 0}
    has_optimal = False
    first_batch = None
    done = 0
    kwargs = {} if slots is None else {"memory_size": slots}
    conditional = bool(getattr(model.net, "conditional", False))  # fed its previous output (memnet.models.recurrent)
    for batch in sequence_batches(task, generator, length, num_sequences, batch_size):
        n = batch["mask"].shape[0]
        first_batch = first_batch or batch
        dtype = parameter_dtype(model)
        if metrics.accumulation_dtype(dtype) != dtype and hasattr(task, "after_cast"):  # a bf16 / fp16 model
            batch = task.after_cast({**batch, "inputs": batch["inputs"].to(dtype)})
        inputs = batch["inputs"].to(device=device, dtype=dtype)
        targets = batch["targets"].to(device=device, dtype=dtype)
        mask = batch["mask"].to(device=device, dtype=dtype)
        with torch.no_grad():
            if conditional:  # scored as validation scores it (fed the previous target), and free-running beside
                logits = model.net(inputs, targets=targets, **kwargs)
                # free where scored: fed the targets after the unscored steps, as its validation runs it
                free_logits = model.net(inputs, targets=targets, mask=mask, **kwargs)
                free = metrics.bits_per_sequence(free_logits, targets, mask)
                totals["free"] = totals.get("free", 0.0) + float(free.sum())
            else:
                logits = model.net(inputs, **kwargs)
        bits = metrics.bits_per_sequence(logits, targets, mask)
        errors = metrics.bit_errors_per_sequence(logits, targets, mask)
        totals["bits"] += float(bits.sum())
        totals["errors"] += float(errors.sum())
        totals["exact"] += float((errors == 0).sum())
        totals["nonfinite"] += int((~torch.isfinite(bits)).sum())  # NaN or inf on a scored step
        if "optimal_bits" in batch:
            has_optimal = True
            totals["optimal"] += float(batch["optimal_bits"].sum())
        done += n
        if progress:
            print(f"{where}, N={slots}: {done}/{num_sequences} sequences ({time.time() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    row: LengthRow = {
        "length": length,
        **({} if repeats is None else {"repeats": repeats}),  # with --repeats only: else the row is as it was
        "slots": slots,
        "bits_per_seq": totals["bits"] / done,
        "bit_errors_per_seq": totals["errors"] / done,
        "sequences": done,
        "exact_pct": 100.0 * totals["exact"] / done,
    }
    if has_optimal:
        row["optimal_bits_per_seq"] = totals["optimal"] / done
    if "free" in totals:
        row["free_bits_per_seq"] = totals["free"] / done
    if totals["nonfinite"]:
        row["nonfinite_sequences"] = totals["nonfinite"]
    return row, first_batch


def markdown_table(rows: list[LengthRow]) -> str:
    """The rows of :func:`evaluate_length` as a markdown table (a column per score)."""
    columns = _columns(rows)
    return tables.markdown_table([HEADERS[c] for c in columns], _cells(rows, columns), align=["right"] * len(columns))


def _cells(rows: list[LengthRow], columns: list[str]) -> list[list[str]]:
    return [[_cell(row.get(c)) for c in columns] for row in rows]


def _columns(rows: list[dict]) -> list[str]:
    columns = list(COLUMNS)
    if any("repeats" in row for row in rows):
        columns.insert(columns.index("length") + 1, "repeats")
    if any("optimal_bits_per_seq" in row for row in rows):
        columns.append("optimal_bits_per_seq")
    if any("free_bits_per_seq" in row for row in rows):
        columns.append("free_bits_per_seq")
    if any("nonfinite_sequences" in row for row in rows):
        columns.append("nonfinite_sequences")
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def run(args: argparse.Namespace) -> dict:
    """Evaluate as ``args`` say; write the files; return the results dict."""
    started = time.time()
    checkpoint = resolve_checkpoint(args.ckpt_path)
    out = Path(args.out) if args.out else checkpoint.resolve().parent.parent / "evaluation"
    if out.exists() and not out.is_dir():  # refused before the slow rebuild and the run, not at the mkdir after it
        raise EvaluationError(f"--out: {out} is a file, not a folder; give --out a folder (it is made if missing)")
    configs = args.config or [default_config(checkpoint)]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, datamodule = build(configs, checkpoint, device)
    task = getattr(datamodule, "task", None)
    if not isinstance(task, SequenceTask):
        raise EvaluationError(
            f"--config: the data module {type(datamodule).__name__} has no algorithmic task "
            "(memnet evaluate measures length generalisation of tasks.algorithmic tasks)"
        )
    if isinstance(task, TokenTask):  # its batches hold source and target tokens, no inputs, targets or mask to score
        raise EvaluationError(
            f"--config: {type(task).__name__} is a token task of an encoder-decoder, scored by sequence accuracy, "
            "not by bits per sequence; measure its lengths with memnet test --config CONFIG --ckpt_path CKPT "
            "--data.init_args.test_lengths '[5, 10, 20]' (test/len_L/sequence_accuracy)"
        )
    task = task.for_evaluation()  # undo training-only shortcuts (repeat copy's repeats_per_batch)
    if args.repeats is not None and not hasattr(task, "with_repeats"):
        raise EvaluationError(
            f"--repeats {' '.join(map(str, args.repeats))}: {type(task).__name__} has no repeat count "
            "(only repeat copy's sequences have one, tasks.algorithmic.RepeatCopyTask); drop --repeats"
        )
    for length in args.lengths:
        try:
            task.check_length(length, "--lengths")
        except ValueError as error:
            raise EvaluationError(str(error)) from None
    net = model.net
    if args.engine is not None:
        set_engine(net, args.engine)
    trained = int(net.memory_size) if takes_memory_size(net) and hasattr(net, "memory_size") else None
    if trained is None and args.memory_size is not None:
        raise EvaluationError(f"--memory_size: {type(net).__name__} has no external memory to size")
    slots = {n: slots_for(task, n, trained, args.memory_size) for n in args.lengths}  # refuse before running
    if hasattr(net, "initial_state"):
        for size in sorted({s for s in slots.values() if s is not None}):
            try:  # what the network itself refuses at a size (a sparse DNC's K above it), before anything is written
                net.initial_state(1, memory_size=size)
            except ValueError as error:
                raise EvaluationError(f"--memory_size {size}: {error}") from None

    pairs = [(length, repeats) for length in args.lengths for repeats in (args.repeats or [None])]
    lost = _rows_lost(out / EVALUATION_FILE, pairs)
    if lost:  # said before the run, so that it can still be stopped: an evaluation of long lengths costs hours
        print(f"memnet evaluate: warning: {out / EVALUATION_FILE} holds length(s) {', '.join(lost)}, "
              "which this evaluation replaces without measuring; give --out another folder to keep them",
              file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    rows, first = [], None
    word_size = getattr(net, "word_size", None)
    for length, repeats in pairs:
        named = f"length {length}" + ("" if repeats is None else f", {repeats} repeats")
        warning = cost_warning(task if repeats is None else task.with_repeats(repeats), length, slots[length],
                               min(args.batch_size, args.num_sequences), args.num_sequences, word_size)
        if warning:
            print(f"memnet evaluate: {warning}", file=sys.stderr, flush=True)
        row, batch = evaluate_length(model, task, length, slots=slots[length], num_sequences=args.num_sequences,
                                     batch_size=args.batch_size, seed=args.seed, device=device,
                                     progress=warning is not None, repeats=repeats)
        rows.append(row)
        first = first or (length, repeats, batch)
        print(f"length {length:>4}" + ("" if repeats is None else f", {repeats:>3} repeats")
              + f": {row['bits_per_seq']:.3f} bits, {row['bit_errors_per_seq']:.3f} bit errors "
              f"per sequence ({row['sequences']} sequences, N={slots[length]})", file=sys.stderr)
        if row.get("nonfinite_sequences"):
            print(f"memnet evaluate: warning: {named}: the network's outputs were NaN or infinite on scored "
                  f"steps of {row['nonfinite_sequences']} of {row['sequences']} sequences; their cost, and so the "
                  "mean bits per sequence, is not finite", file=sys.stderr, flush=True)

    train_range = (getattr(task, "min_length", None), getattr(task, "max_length", None))
    table = markdown_table(rows)
    title = f"{type(net).__name__} on {type(task).__name__}"
    length, repeats, batch = first
    drawn: dict[str, Path | None] = {}

    def write_set(staging: Path) -> None:
        # each file written whole into the staging folder, results.json last; the earlier evaluation's set is
        # replaced only once all of them are (memnet.utils.replace_file_set): a kill, a full disk or a figure that
        # fails part way used to leave this evaluation's table.md beside an earlier results.json of other lengths
        (staging / "table.md").write_text(table)
        (staging / "table.csv").write_text(tables.csv_table(_columns(rows), [[row.get(c) for c in _columns(rows)]
                                                                            for row in rows]))
        plot = plot_error_vs_length(staging / "error_vs_length.png", rows=rows,
                                    train_range=None if None in train_range else train_range, title=title,
                                    train_repeats=results.get("train_repeats"))
        figure = draw_memory_access(model, batch, staging / f"memory_access_len{length}.png",
                                    title=f"{title}, length {length}"
                                          + ("" if repeats is None else f", {repeats} repeats"), **({} if slots[length] is None
                                                                           else {"memory_size": slots[length]}))
        drawn.update(plot=out / plot.name, figure=None if figure is None else out / figure.name)
        results["figures"] = {"error_vs_length": str(drawn["plot"]),
                              "memory_access": None if figure is None else str(drawn["figure"])}
        (staging / EVALUATION_FILE).write_text(json.dumps(results, indent=2))

    results: EvaluationResult = {
        "checkpoint": str(checkpoint),
        "config": [str(c) for c in configs],
        "task": type(task).__name__,
        "model": type(net).__name__,
        "engine": getattr(net, "engine", None),
        "train_range": list(train_range),
        "trained_memory_size": trained,
        "seed": args.seed,
        "wall_s": round(time.time() - started, 2),
        "figures": {},
        "lengths": rows,
    }
    if args.repeats is not None:  # only then: an evaluation without --repeats writes what it always did
        results["repeats"] = list(args.repeats)
        results["train_repeats"] = [task.min_repeats, task.max_repeats]
    replace_file_set(out, write_set, belongs=is_evaluation_file, last=EVALUATION_FILE)
    plot, figure = drawn["plot"], drawn["figure"]
    print(table)
    print(f"wrote {out}/table.md, table.csv, results.json, {plot.name}"
          + ("" if figure is None else f", {figure.name}"))
    if args.wandb:
        _log_wandb(results, rows, out)
    return results


def is_evaluation_file(name: str) -> bool:
    """Whether a file named ``name`` in an ``--out`` folder is one of the set an evaluation writes (replaced as one
    by the next evaluation there: a memory-access figure of another first length included)."""
    return name in EVALUATION_FILES or re.fullmatch(r"memory_access_len\d+(_dnc)?\.png", name) is not None


def _rows_lost(path: Path, pairs: list[tuple[int, int | None]]) -> list[str]:
    """The rows of an earlier ``results.json`` at ``path`` that an evaluation of the (length, repeats) ``pairs``
    (repeats None: drawn) would drop, named '2' or, for a row of fixed repeats, '2 (12 repeats)'."""
    try:
        rows = read_evaluation(path)["lengths"]
    except (OSError, ValueError, ResultSchemaError):  # none there, or unreadable: nothing a reader could lose
        return []
    lost = sorted({(row["length"], row.get("repeats")) for row in rows} - set(pairs),
                  key=lambda pair: (pair[0], pair[1] or 0))
    return [str(length) if repeats is None else f"{length} ({repeats} repeats)" for length, repeats in lost]


def _log_wandb(results: dict, rows: list[dict], out: Path) -> None:
    import wandb

    columns = _columns(rows)
    run = wandb.init(project="memnet", job_type="evaluate", dir=str(out), config=results,
                     mode=wandb_mode())
    run.log({"evaluation/table": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
             "evaluation/error_vs_length": wandb.Image(results["figures"]["error_vs_length"])}
            | ({"evaluation/memory_access": wandb.Image(results["figures"]["memory_access"])}
               if results["figures"]["memory_access"] else {}))
    run.finish()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``memnet evaluate``."""
    args = parse_args(argv)
    try:
        run(args)
    except EvaluationError as error:
        print(f"memnet evaluate: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
