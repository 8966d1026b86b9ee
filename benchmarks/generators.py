"""Items (sequences) per second of every algorithmic task generator, at the paper's training sizes.

    python benchmarks/generators.py [--batch_size 32] [--seconds 2] [--out benchmarks/results/generators.json]

Each generator draws batches at lengths uniform over its training range (as in training)
for about ``--seconds`` seconds, on one CPU thread; reported: sequences per second, and
how that compares with the training step it feeds (a NTM step on a batch costs ~0.1–1 s
on a CPU core, so anything above a few thousand sequences per second never limits it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tasks.algorithmic import (
    AssociativeRecallTask,
    CopyTask,
    DynamicNGramsTask,
    PrioritySortTask,
    RepeatCopyTask,
)

TASKS = {
    "copy": CopyTask(),
    "repeat_copy": RepeatCopyTask(),
    "associative_recall": AssociativeRecallTask(),
    "ngrams": DynamicNGramsTask(),
    "priority_sort": PrioritySortTask(),
}


def measure(task, batch_size: int, seconds: float, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    task.sample_batch(generator, batch_size, task.max_length)  # warm-up
    sequences, steps, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = task.sample_batch(generator, batch_size, task.sample_length(generator))
        sequences += batch["inputs"].shape[0]
        steps += batch["inputs"].shape[0] * batch["inputs"].shape[1]
    elapsed = time.perf_counter() - started
    return {"sequences_per_s": sequences / elapsed, "steps_per_s": steps / elapsed, "batches": sequences // batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: measure(task, args.batch_size, args.seconds) for name, task in TASKS.items()}
    print(f"| task | sequences / s | time steps / s |  (batch {args.batch_size}, 1 CPU thread, torch {torch.__version__})")
    print("| --- | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['sequences_per_s']:,.0f} | {r['steps_per_s']:,.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"batch_size": args.batch_size, "machine": platform.processor() or
                                              platform.machine(), "torch": torch.__version__,
                                              "results": results}, indent=2))


if __name__ == "__main__":
    main()
