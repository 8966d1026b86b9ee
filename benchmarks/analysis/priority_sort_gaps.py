"""Where a priority-sort model's remaining cost lies: per sequence, against the closest priorities it must order.

Priority sort (NTM paper §4.5) asks for the 16 highest of 20 vectors, highest first; a sequence whose priorities
lie close together asks the model to tell them apart. For each of ``--num_sequences`` fresh sequences at the
training length this scores the checkpoint (bits and bit errors per sequence, as ``memnet evaluate``) and takes
the smallest gap between adjacent priorities among the 17 highest (the 16 outputs' order and the cut after the
16th), then prints the cost by bins of that gap. A model that sorts but resolves priorities only to some ε has
its errors in the bins below ε.

    python benchmarks/analysis/priority_sort_gaps.py runs/suites/priority-sort/dnc-priority-sort-40k/seed_0/\
checkpoints/last.ckpt --num_sequences 8192
"""

from __future__ import annotations

import argparse
import itertools

import torch

from memnet import metrics
from memnet.cli.evaluate import build, default_config, resolve_checkpoint
from memnet.protocols import sequence_batches

EDGES = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt_path", help="a priority-sort checkpoint (or 'latest')")
    parser.add_argument("--num_sequences", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    checkpoint = resolve_checkpoint(args.ckpt_path)
    model, datamodule = build([default_config(checkpoint)], checkpoint, torch.device("cpu"))
    model.eval()
    task = datamodule.task.for_evaluation()
    if not hasattr(task, "num_outputs"):
        parser.error(f"{checkpoint} is a {type(task).__name__} run, not priority sort")
    length, outputs = task.max_length, task.num_outputs
    generator = torch.Generator().manual_seed(args.seed)
    gaps, errors, bits = [], [], []
    for batch in sequence_batches(task, generator, length, args.num_sequences, args.batch_size):
        with torch.no_grad():
            logits = model.net(batch["inputs"])
        errors.append(metrics.bit_errors_per_sequence(logits, batch["targets"], batch["mask"]))
        bits.append(metrics.bits_per_sequence(logits, batch["targets"], batch["mask"]))
        top = batch["inputs"][:, :length, task.width].sort(dim=1, descending=True).values[:, : outputs + 1]
        gaps.append((top[:, :-1] - top[:, 1:]).min(dim=1).values)
    gap, error, cost = torch.cat(gaps), torch.cat(errors), torch.cat(bits)
    print(f"{checkpoint}: length {length}, {len(gap)} sequences: {cost.mean():.3f} bits, "
          f"{error.mean():.3f} bit errors per sequence, {100 * (error == 0).float().mean():.1f}% exact")
    print("| smallest gap | sequences | wrong | bits per sequence | share of the cost |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for low, high in itertools.pairwise(EDGES):
        chosen = (gap >= low) & (gap < high)
        if chosen.any():
            print(f"| [{low:g}, {high:g}) | {int(chosen.sum())} ({100 * chosen.float().mean():.1f}%) "
                  f"| {100 * (error[chosen] > 0).float().mean():.1f}% | {cost[chosen].mean():.3f} "
                  f"| {100 * cost[chosen].sum() / cost.sum():.1f}% |")


if __name__ == "__main__":
    main()
