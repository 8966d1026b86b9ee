"""Figures: the NTM paper's picture of memory access, error versus length, a suite report's plots.

Uses matplotlib's Agg backend, so nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from memnet.metrics import BABI_TASK_KEYS as BABI_TASKS
from memnet.metrics import FAILED_TASK_ERROR
from memnet.utils import save_figure_atomic

TOUCHED_WEIGHT = 0.01  # a slot counts as touched once any head gives it this much weight
MARGIN_SLOTS = 2  # untouched slots shown on either side of the touched ones
MIN_ROWS = 8  # the fewest memory rows a panel shows
SUITE_LOG_SCALE_RATIO = 100.0  # a length plot whose values span more than this factor gets a log y-axis


def touched_window(touched: torch.Tensor) -> tuple[int, int]:
    """The circular window of slots to draw: (first slot, number of rows).

    ``touched`` (N,) bool marks the slots any head used. The window is the complement of
    the longest circular run of untouched slots, widened by ``MARGIN_SLOTS`` on each side (by
    fewer where that run is shorter than both margins, so that the touched slots stay in one piece)
    and to at least ``MIN_ROWS`` rows (never more than N); with every slot touched, slots 0 to N − 1.

    >>> touched_window(torch.tensor([True, False, False, False, False, False, False, False, False, False,
    ...                              False, False, False, False, True, True]))   # slots 14, 15, 0 of 16
    (12, 8)
    """
    n = touched.numel()
    if not bool(touched.any()):
        return 0, n
    marks = touched.tolist()
    best_len, best_end = -1, 0  # longest circular run of untouched slots, and the slot after it
    run = 0
    for i in range(2 * n):
        if not marks[i % n]:
            run += 1
            if run > best_len and run <= n:
                best_len, best_end = run, (i + 1) % n
        else:
            run = 0
    best_len = max(best_len, 0)
    # the untouched slots shown, split before and after the touched ones: at most MARGIN_SLOTS a side, and no more
    # than there are (every slot touched: none, slot 0 first; a margin taken from the touched run split it in two)
    margins = min(2 * MARGIN_SLOTS, best_len)
    rows = n - best_len + margins
    start = (best_end - margins // 2) % n
    if rows < MIN_ROWS:
        start = (start - (min(n, MIN_ROWS) - rows) // 2) % n
        rows = min(n, MIN_ROWS)
    return start, rows


def colour_scale(values: torch.Tensor) -> tuple[float, float, str]:
    """(vmin, vmax, colour map) for an input or target panel of ``values`` (T, D).

    Values in [0, 1] (bits, probabilities): 0 to 1 in grey, as before. Values outside it are shown,
    not clipped (repeat copy's count channel is (r − mean) / std, −1.22 for 1 of 1–3 repeats):
    with a negative value a scale symmetric about 0 (red above, blue below, 0 white), else 0 to the largest.
    """
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return 0.0, 1.0, "gray_r"
    if low < 0:
        bound = max(-low, high)
        return -bound, bound, "RdBu_r"
    return 0.0, high, "gray_r"


def first_sequence_steps(batch: dict) -> int:
    """The steps of ``batch``'s first sequence that are its own, not padding to the batch's longest.

    A sequence that ends earlier than another of its batch (repeat copy's per-sequence repeat counts)
    is padded after its last scored step: ``mask`` (B, T) is 0 there for it and 1 for a longer one.
    The first sequence keeps T − (L − l) steps, l its last scored step and L the batch's latest; a
    tail unscored in every sequence is kept (it is no sequence's padding). Without a mask: T.
    """
    steps = batch["inputs"].shape[1]
    mask = batch.get("mask")
    if mask is None or not bool((mask[0] > 0).any()):
        return steps
    scored = torch.arange(steps, device=mask.device) * (mask > 0)  # (B, T): the step where scored, else 0
    last = scored.amax(dim=1)  # (B,) each sequence's last scored step
    return steps - int(last.max() - last[0])


def plot_memory_access(
    path: str | Path,
    *,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    outputs: torch.Tensor,
    read_weights: torch.Tensor,
    write_weights: torch.Tensor,
    title: str = "",
) -> Path:
    """Draw one example's input, target, output and head weightings over time.

    Args:
        path: where to save the PNG (folders are created).
        inputs: (T, D_in) the input sequence; values outside [0, 1] (repeat copy's count) are drawn on a
            scale that covers them (:func:`colour_scale`), named in the panel's title.
        targets: (T, D_out) the target (drawn as the inputs are).
        outputs: (T, D_out) the model's output probabilities.
        read_weights: (T, R, N) read weightings.
        write_weights: (T, H_w, N) write weightings.
        title: figure title.

    Returns:
        The path written. Memory rows are cropped to the slots any head touched,
        taken circularly (heads that shift left from slot 0 wrap to slot N − 1), and
        labelled with their slot numbers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    read_weights = read_weights.detach().float().cpu()
    write_weights = write_weights.detach().float().cpu()
    touched = torch.cat([read_weights, write_weights], dim=1).amax(dim=(0, 1)) > TOUCHED_WEIGHT
    start, rows = touched_window(touched)
    slots = (torch.arange(rows) + start) % touched.numel()  # the slot shown in each row
    read_weights, write_weights = read_weights[..., slots], write_weights[..., slots]

    panels = [("input", inputs), ("target", targets), ("output", outputs)]
    panels += [(f"write head {h}", write_weights[:, h]) for h in range(write_weights.shape[1])]
    panels += [(f"read head {r}", read_weights[:, r]) for r in range(read_weights.shape[1])]
    heights = [max(2.0, min(6.0, p.shape[1] / 6)) for _, p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (name, panel) in zip(axes[:, 0], panels):
        image = panel.detach().float().cpu().T  # features (or slots) down, time across
        if name in ("input", "target"):
            low, high, cmap = colour_scale(image)
        else:  # output probabilities and weightings: in [0, 1]
            low, high, cmap = 0.0, 1.0, "gray_r" if name == "output" else "viridis"
        ax.imshow(image, aspect="auto", cmap=cmap, interpolation="nearest", vmin=low, vmax=high)
        ax.set_ylabel("slot" if "head" in name else "bit")
        scale = "" if (low, high) == (0.0, 1.0) else f" (colour scale {low:.3g} to {high:.3g})"
        ax.set_title(name + scale, fontsize=9, loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # time steps are whole numbers
        if "head" in name:
            ticks = list(range(0, rows, max(1, rows // 6)))
            ax.set_yticks(ticks, [str(int(slots[i])) for i in ticks])
    axes[-1, 0].set_xlabel("time step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_dnc_memory(
    path: str | Path,
    *,
    usage: torch.Tensor,
    link: torch.Tensor,
    read_modes: torch.Tensor | None = None,
    title: str = "",
) -> Path:
    """Draw one DNC example's usage over time, its final link matrix and its read modes.

    Args:
        path: where to save the PNG (folders are created).
        usage: (T, N) usage u_t at every step.
        link: (N, N) a link matrix L (e.g. the last step's); L[i, j]: slot i written after j.
        read_modes: optional (T, R, 3) read modes (backward, content, forward).
        title: figure title.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    usage, link = usage.detach().float().cpu(), link.detach().float().cpu()
    panels = 2 + (read_modes is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4), squeeze=False)
    axes[0, 0].imshow(usage.T, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
    axes[0, 0].set(title="usage", xlabel="time step", ylabel="slot")
    axes[0, 1].imshow(link, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    axes[0, 1].set(title="link matrix (row written after column)", xlabel="slot j", ylabel="slot i")
    if read_modes is not None:
        modes = read_modes.detach().float().cpu()
        for r in range(modes.shape[1]):
            for m, (name, style) in enumerate([("backward", ":"), ("content", "-"), ("forward", "--")]):
                axes[0, 2].plot(modes[:, r, m], style, label=f"head {r} {name}")
        axes[0, 2].set(title="read modes", xlabel="time step", ylim=(-0.05, 1.05))
        axes[0, 2].legend(fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_error_vs_length(
    path: str | Path,
    *,
    rows: list[dict],
    train_range: tuple[int, int] | None = None,
    title: str = "",
    train_repeats: tuple[int, int] | None = None,
) -> Path:
    """Bits per sequence and bit errors per sequence versus task length, training range shaded.

    Rows of fixed repeat counts (``memnet evaluate --repeats``, a ``repeats`` in each) are drawn as a line
    per repeat count; rows of one length and several repeat counts as one line versus the repeats, the
    training repeats (``train_repeats``) shaded.

    Args:
        path: where to save the PNG (folders are created).
        rows: one dict per length with ``length``, ``bits_per_seq``, ``bit_errors_per_seq``
            (and optionally ``optimal_bits_per_seq``, drawn dashed, and ``repeats``), as ``memnet evaluate`` writes.
        train_range: (shortest, longest) training length, shaded; None for no shading.
        title: figure title.
        train_repeats: (fewest, most) training repeats, shaded where the repeats are the x axis.

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError("rows must hold at least one length to plot, got none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x_key, shaded = "length", train_range
    if any("repeats" in row for row in rows) and len({row["length"] for row in rows}) == 1:
        x_key, shaded = "repeats", train_repeats  # one length at several repeat counts: versus the repeats
    line_key = "repeats" if x_key == "length" and any("repeats" in row for row in rows) else None
    rows = sorted(rows, key=lambda row: row[x_key])
    lines: dict[Any, list[dict]] = {}
    for row in rows:
        lines.setdefault(row.get(line_key) if line_key else None, []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for ax, key, label in ((axes[0, 0], "bits_per_seq", "bits per sequence"),
                           (axes[0, 1], "bit_errors_per_seq", "bit errors per sequence")):
        if shaded is not None:
            ax.axvspan(shaded[0] - 0.5, shaded[1] + 0.5, color="tab:green", alpha=0.15,
                       label=f"training {'lengths' if x_key == 'length' else 'repeats'} {shaded[0]}–{shaded[1]}")
        for count, members in sorted(lines.items(), key=lambda item: item[0] or 0):
            name = ("model" if x_key == "length" else f"model, length {rows[0]['length']}") if count is None \
                else f"{count} repeats"
            ax.plot([row[x_key] for row in members], [row[key] for row in members], "o-", label=name)
        if key == "bits_per_seq" and all("optimal_bits_per_seq" in row for row in rows):
            ax.plot([row[x_key] for row in rows], [row["optimal_bits_per_seq"] for row in rows], "k--",
                    label="Bayes-optimal")
        ax.set(xlabel=x_key, ylabel=label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_suite_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """A suite report's figures (``memnet suite report``), as PNG; returns the files written.

    ``lengths.png``: bits per sequence versus length per experiment (mean ± std over seeds),
    one panel per task, hollow markers where a length was measured only by training's validation.
    ``babi.png``: test error per bAbI task per model (another split named), the published
    references as markers, the 5% failure line. ``report`` is ``memnet.cli.suite.report.build_report``'s.
    A figure with nothing to draw is not written, and one an earlier report left in ``folder`` is removed.
    """
    written = []
    metadata = {"Software": None}  # no version stamp: the same report gives the same bytes
    rows = [r for r in report["lengths"] if any(s is not None for s in r["bits_per_seq"].values())]
    if rows:
        tasks = sorted({r["task"] for r in rows})
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for row in (r for r in rows if r["task"] == task):
                points = sorted((int(n), s) for n, s in row["bits_per_seq"].items() if s is not None)
                line = ax.errorbar(
                    [n for n, _ in points],
                    [s["mean"] for _, s in points],
                    yerr=[s["std"] for _, s in points],
                    marker="o",
                    capsize=3,
                    label=row["experiment"],
                )
                # lengths measured only by training's validation ("(val)" in the table): hollow markers
                validated = [(n, s) for n, s in points if str(n) in row.get("validation_only", ())]
                if validated:
                    ax.plot([n for n, _ in validated], [s["mean"] for _, s in validated], linestyle="none", marker="o",
                            markersize=8, markerfacecolor="white", color=line[0].get_color(), zorder=3,
                            label=f"{row['experiment']} (training's validation)")
                if row["training_range"]:  # the longest training length
                    ax.axvline(row["training_range"][1], color="grey", linestyle=":", linewidth=0.8)
            values = [
                s["mean"]
                for r in rows
                if r["task"] == task
                for s in r["bits_per_seq"].values()
                if s
            ]
            if values and min(values) > 0 and max(values) / min(values) > SUITE_LOG_SCALE_RATIO:
                ax.set_yscale("log")
            ax.set_title(task)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("bits per sequence")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "lengths.png"
        save_figure_atomic(fig, path, dpi=100, metadata=metadata)
        plt.close(fig)
        written.append(path)
    babi = report["babi"]
    if babi and any(m["runs"] for m in babi["models"]):
        models = [m for m in babi["models"] if m["runs"]]
        fig, ax = plt.subplots(figsize=(12, 4))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            xs = [int(t) + (i - (len(models) - 1) / 2) * width for t in BABI_TASKS]
            ys = [(model["per_task"][t] or {}).get("mean", float("nan")) for t in BABI_TASKS]
            es = [(model["per_task"][t] or {}).get("std", 0.0) for t in BABI_TASKS]
            split = model.get("split", "test")
            ax.bar(xs, ys, width=width, yerr=es, capsize=2,
                   label=model["experiment"] + ("" if split == "test" else f" ({split} split)"))
        markers = iter("xv^sd+")
        for ref in babi["references"]:
            if ref.get("per_task"):
                ax.plot(
                    [int(t) for t in BABI_TASKS],
                    [ref["per_task"][t] for t in BABI_TASKS],
                    linestyle="none",
                    marker=next(markers, "."),
                    color="black",
                    markersize=4,
                    zorder=3,
                    label=f"{ref['label']} (published)",
                )
        ax.set_xlim(0.5, len(BABI_TASKS) + 0.5)
        ax.axhline(
            FAILED_TASK_ERROR,
            color="red",
            linestyle="--",
            linewidth=0.8,
            label="5% (failed above)",
        )
        ax.set_xticks([int(t) for t in BABI_TASKS])
        ax.set_xlabel("bAbI task")
        splits = sorted({m.get("split", "test") for m in models})
        ax.set_ylabel("test error %" if splits == ["test"] else f"error % ({', '.join(splits)} split)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "babi.png"
        save_figure_atomic(fig, path, dpi=100, metadata=metadata)
        plt.close(fig)
        written.append(path)
    for name in ("lengths.png", "babi.png"):  # nothing to draw now: an earlier report's figure would pass for this one's
        if folder / name not in written:
            (folder / name).unlink(missing_ok=True)
    return written
