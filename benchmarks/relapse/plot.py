"""The README's relapse figure: validation cost against step, before and after the fix, one seed.

    python benchmarks/relapse/plot.py --before A.jsonl --after B.jsonl --out docs/images/ntm_copy_relapse.png

Each input is a JSON-lines file of ``{"step": ..., "val_bits": ...}`` rows (as written by
``vallog.ValidationLog`` or ``diagnostics.AddressingDiagnostics``); other rows are ignored, repeated
steps kept once. The README's figure: the two seed-0 runs of ``long_runs.sh``, without and with the fix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_curve(path: Path) -> tuple[list[int], list[float]]:
    points: dict[int, float] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "val_bits" in row:
            points[int(row["step"])] = float(row["val_bits"])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="NTM copy, seed 0: validation cost at length 20")
    parser.add_argument("--before-label", default="before: Adam")
    parser.add_argument("--after-label", default="after: Adam, then ConvergenceDecay (lr x 0.1, AMSGrad)")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for path, label, style in ((args.before, args.before_label, "C3-"), (args.after, args.after_label, "C0-")):
        steps, values = read_curve(path)
        ax.plot(steps, values, style, marker=".", label=label, lw=1.2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.axhline(0.1, color="grey", ls="--", lw=1)
    ax.set_xlabel("training step (batches of 16)")
    ax.set_ylabel("bits per sequence")
    ax.set_title(args.title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
