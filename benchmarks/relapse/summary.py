"""Summarise the long runs of benchmarks/relapse/results/*.jsonl: first validation below 0.1 bits, the worst after it.

    python benchmarks/relapse/summary.py [NAME_GLOB]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def summarise(path: Path, level: float = 0.1) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = next((r for r in rows if r["val_bits"] < level), None)
    after = [r for r in rows if first is not None and r["step"] >= first["step"]]
    worst = max(after, key=lambda r: r["val_bits"]) if after else None
    return {"run": path.stem, "steps": rows[-1]["step"] if rows else 0,
            "wall_min": round(rows[-1].get("wall_s", 0) / 60, 1) if rows else None,
            "first_below": first["step"] if first else None,
            "worst_after": (worst["step"], worst["val_bits"]) if worst else None,
            "last": rows[-1]["val_bits"] if rows else None}


def main() -> None:
    pattern = sys.argv[1] if len(sys.argv) > 1 else "*"
    print("| run | steps | wall (min) | first below 0.1 bits | worst after it (step) | last |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path in sorted(RESULTS.glob(f"{pattern}.jsonl")):
        if "wall_s" not in path.read_text():
            continue  # the older files (other formats, no wall times) are summarised in docs/results.md
        s = summarise(path)
        worst = f"{s['worst_after'][1]:.3g} ({s['worst_after'][0]})" if s["worst_after"] else "—"
        print(f"| {s['run']} | {s['steps']} | {s['wall_min']} | {s['first_below'] or '—'} | {worst} | {s['last']:.3g} |")


if __name__ == "__main__":
    main()
