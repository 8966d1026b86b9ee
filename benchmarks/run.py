"""NTM copy-task training throughput: sequences per second and peak memory.

One training step = forward + backward + optimiser step on a batch of copy
sequences of length 20 (41 time steps), with the NTM paper's sizes (LSTM
controller of 100 units, memory 128 x 20, one read and one write head).

For each batch size the measurement runs in a fresh process (so its peak memory
is its own): ``--warmup`` untimed steps, then ``--repeats`` timed repetitions of
``--steps`` steps; the median repetition is reported. Torch's thread count is
stated (set it with ``--threads``). On CUDA the peak is
``torch.cuda.max_memory_allocated``; on the CPU it is the process's peak
resident set size above the size it had before the first step.

    python benchmarks/run.py --batch-sizes 1 16 128 --out benchmarks/results/ntm_copy_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path


def measure(batch_size: int, *, length: int, steps: int, repeats: int, warmup: int, threads: int, device: str) -> dict:
    import torch

    from memnet.controllers import LSTMController
    from memnet.lightning import sequence_metrics
    from memnet.models.ntm import NTM
    from tasks.algorithmic import CopyTask

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    task = CopyTask(width=8, min_length=1, max_length=20)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=100),
              memory_size=128, word_size=20).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in task.sample_batch(generator, batch_size, length).items()}
               for _ in range(4)]

    def train_step(batch):
        metrics = sequence_metrics(net(batch["inputs"]), batch["targets"], batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizer.step()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        train_step(batches[i % len(batches)])
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            train_step(batches[i % len(batches)])
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "batch_size": batch_size,
        "sequence_length": length,
        "time_steps": task.sequence_length(length),
        "seconds_per_step_median": median / steps,
        "seconds_per_step_all": [t / steps for t in times],
        "sequences_per_second": batch_size * steps / median,
        "peak_memory_mb": round(peak_mb, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": _cpu_name(), "logical_cpus": _cpu_count()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single is not None:  # child process: one batch size, JSON on stdout
        import torch

        threads = args.threads or torch.get_num_threads()
        print(json.dumps(measure(args.single, length=args.length, steps=args.steps, repeats=args.repeats,
                                 warmup=args.warmup, threads=threads, device=args.device)))
        return

    rows = []
    for batch_size in args.batch_sizes:
        command = [sys.executable, __file__, "--single", str(batch_size), "--length", str(args.length),
                   "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   "--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    report = {"benchmark": "ntm_copy_train_step", "machine": machine(args.device), "results": rows,
              "settings": {"steps": args.steps, "repeats": args.repeats, "warmup": args.warmup}}
    print(f"NTM copy-task training throughput (length {args.length}, {rows[0]['time_steps']} time steps), "
          f"{report['machine']['processor']}, {report['machine']['logical_cpus']} logical CPUs, "
          f"torch {report['machine']['torch']}, device {args.device}")
    print("| batch | torch threads | s / step (median) | sequences / s | peak memory (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['batch_size']} | {row['torch_threads']} | {row['seconds_per_step_median']:.4f} | "
              f"{row['sequences_per_second']:.1f} | {row['peak_memory_mb']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
