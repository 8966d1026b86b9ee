"""Training throughput of memnet's models on each execution path, in one table.

One training step = forward + loss + backward + gradient clipping (norm 1) +
Adam step, on a batch of copy sequences of length 20 (41 time steps) for the
sequence models, or of bAbI-sized stories for MemN2N:

    NTM      LSTM 100, memory 128 × 20, one read and one write head (the NTM paper)
    DNC      LSTM 64, memory 16 × 20, four read heads
    MemN2N   3 hops, embedding 20, 50 sentences of 7 words, vocabulary 40 (synthetic ids)
    MemN2N-bAbI  the bAbI joint recipe's network (configs/memn2n/babi_joint_10k.yaml: 3 hops,
             embedding 50, vocabulary 178 with 58 answers, memory of 50 slots nil-padded, the
             authors' position encoding, time rows, random noise) on stories shaped like bAbI
             joint's: 1-17 sentences of 3-8 words (17.7% of the 50 slots hold a sentence in
             bAbI 1k joint's training batches, 5.6 words a sentence)
    LSTM     the baseline: one LSTM layer of 100 units and a linear read-out

Paths: ``eager`` (the reference functions), ``fused`` (memnet.fused and the
hoisted input and output layers; NTM and DNC only) and ``compiled``
(``torch.compile``: of the fused step for NTM and DNC, of the whole network for
the others). Every (model, batch, path) runs in a fresh process, so that its
peak memory is its own and a compile is not shared: ``--warmup`` untimed steps
(the first one compiles; its time beyond a step's is reported as compile time),
then timed repetitions of ``--steps`` steps until ``--min-seconds`` have passed
(at least ``--repeats``); the median repetition is reported. The peak memory is
that of the timed steps, after the warm-up (a compile's own memory is not in it):
on CUDA ``torch.cuda.max_memory_allocated`` (parameters, optimiser state and
activations); on the CPU the process's peak resident set over the timed steps
(``VmHWM``, reset after the warm-up through ``/proc/self/clear_refs``) less its
resident set before the model was built, with memnet's modules (and for ``compiled``, torch's compiler) already
imported. The ``graphed`` path's compile time is
its warm-up and capture.

On a GPU: ``--compile-mode reduce-overhead`` compiles with inductor's CUDA graphs
(the ``compile_mode`` of NTM and DNC), ``--unroll K`` sets the compiled engine's time
steps per call, ``--precision tf32|bf16`` runs the matmuls in TF32 or the forward
under bfloat16 autocast, and the path ``graphed`` captures the whole training step
(forward, backward, clipping and a capturable Adam step of the ``fused`` engine) as
one CUDA graph and replays it: a measurement of what a step costs without any
launch or Python overhead (sequence lengths fixed), not a path the trainer takes.

``--peer-ntm PATH`` and ``--peer-dnc PATH`` put a checkout of
loudinthecloud/pytorch-ntm or ixaxaar/pytorch-dnc (the folder that holds its
``ntm`` or ``dnc`` package) beside memnet, built with the same sizes and timed
with the same step; their code is imported from there, never copied.

    python benchmarks/run.py --threads 2                    # the CPU table (make bench)
    python benchmarks/run.py --device cuda --batch-sizes 1 128 4096
    python benchmarks/run.py --models NTM --peer-ntm ~/src/pytorch-ntm

A setting that fails (an error, a ``compiled`` one that memnet ran uncompiled, or over ``--timeout``) is a
row ``failed: <why>``; the others are measured, the table printed and the JSON written all the same, and
the exit status is 1. Interrupted (Ctrl-C), the runner keeps the rows measured so far: their table is printed
and, with ``--out bench.json``, they are written beside it as ``bench.partial.json`` (``"partial": true``),
the complete ``bench.json`` of an earlier run left as it was; the exit status is 130. A later complete run
writes ``bench.json`` and removes that ``bench.partial.json``, saying so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("NTM", "DNC", "MemN2N", "MemN2N-bAbI", "LSTM")
PATHS = ("eager", "fused", "compiled")
GPU_PATHS = ("graphed",)  # CUDA only, never by default
PRECISIONS = ("fp32", "tf32", "bf16")
PEERS = {"pytorch-ntm": "NTM", "pytorch-dnc": "DNC"}
LENGTH = 20  # copy sequence length: 2·20 + 1 = 41 time steps
WIDTH = 8


def paths_of(model: str) -> tuple[str, ...]:
    """The execution paths a model has (peers have their own single path)."""
    if model in ("NTM", "DNC"):
        return PATHS + GPU_PATHS
    if model in ("MemN2N", "MemN2N-bAbI", "LSTM"):
        return ("eager", "compiled")
    return ("eager",)


def build(model: str, path: str, device: str, peer_path: str | None = None, length: int = LENGTH,
          compile_mode: str | None = None, unroll: int | None = None):
    """The network, a batch maker ``(generator, batch_size) -> batch`` and ``loss(net, batch)``."""
    import torch
    import torch.nn.functional as F

    from memnet.controllers import LSTMController
    from memnet.lightning import sequence_metrics
    from tasks.algorithmic import CopyTask

    task = CopyTask(width=WIDTH, min_length=1, max_length=length)

    def copy_batch(generator, batch_size):
        batch = task.sample_batch(generator, batch_size, length)
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def copy_loss(logits, batch):
        return sequence_metrics(logits, batch["targets"], batch["mask"])["loss"]

    engine = "fused" if path == "graphed" else path
    options = {"compile_unroll": unroll} if path == "compiled" else {}
    if path == "compiled" and compile_mode is not None:  # else the model's default (auto)
        options["compile_mode"] = compile_mode
    if model in ("NTM", "DNC", "LSTM"):
        if model == "NTM":
            from memnet.models.ntm import NTM

            net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=100),
                      memory_size=128, word_size=20, engine=engine, **options)
        elif model == "DNC":
            from memnet.models.dnc import DNC

            net = DNC(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=64),
                      memory_size=16, word_size=20, num_reads=4, engine=engine, **options)
        else:
            from memnet.models.recurrent import RecurrentModel

            net = RecurrentModel(task.input_size, task.output_size,
                                 controller=partial(LSTMController, hidden_size=100))
        net = net.to(device)
        forward = torch.compile(net, mode=compile_mode) if model == "LSTM" and path == "compiled" else net
        return net, copy_batch, lambda batch: copy_loss(forward(batch["inputs"]), batch)

    if model in ("MemN2N", "MemN2N-bAbI"):
        from memnet.models.memn2n import PAD_ID, MemN2N

        if model == "MemN2N":  # every slot full, synthetic ids; answer ids follow 4 reserved tokens
            vocabulary, answers, slots, words = 40, 20, 50, 7
            net = MemN2N(vocabulary, answers, embedding_size=20, hops=3, memory_size=slots, seed=0)
        else:  # the bAbI joint recipe's network
            vocabulary, answers, slots, words = 178, 58, 50, 11
            net = MemN2N(vocabulary, answers, embedding_size=50, hops=3, memory_size=slots, encoding="position",
                         position_scale="authors", sentence_length=12, empty_memory="nil",
                         answer_layer="vocabulary", temporal=True, random_noise=0.1, tying="adjacent", seed=0)
        net = net.to(device)
        forward = torch.compile(net, mode=compile_mode) if path == "compiled" else net

        def sentences(generator, shape, low, high):  # (*shape, words) ids, PAD_ID after each one's words
            ids = torch.randint(1, vocabulary, (*shape, words), generator=generator)
            length = torch.randint(low, high + 1, shape, generator=generator)
            return ids.masked_fill(torch.arange(words) >= length[..., None], PAD_ID)

        def story_batch(generator, batch_size):
            if model == "MemN2N":
                story = torch.randint(1, vocabulary, (batch_size, slots, words), generator=generator)
                query = torch.randint(1, vocabulary, (batch_size, words), generator=generator)
            else:  # 1-17 sentences of 3-8 words a story, questions of 3-6 words
                story = sentences(generator, (batch_size, slots), 3, 8)
                filled = torch.randint(1, 18, (batch_size,), generator=generator)
                story = story.masked_fill((torch.arange(slots) >= filled[:, None])[..., None], PAD_ID)
                query = sentences(generator, (batch_size,), 3, 6)
            answer = torch.randint(0, answers, (batch_size,), generator=generator)
            return {"story": story.to(device), "query": query.to(device), "answer": answer.to(device)}

        return net, story_batch, lambda b: F.cross_entropy(forward(b["story"], b["query"]), b["answer"])

    if model == "pytorch-ntm":  # loudinthecloud/pytorch-ntm, imported from the user's checkout
        sys.path.insert(0, str(peer_path))
        from ntm.aio import EncapsulatedNTM

        net = EncapsulatedNTM(task.input_size, task.output_size, 100, 1, 1, 128, 20).to(device)

        def peer_ntm_loss(batch):
            inputs = batch["inputs"]
            net.init_sequence(inputs.shape[0])
            outputs = torch.stack([net(inputs[:, t])[0] for t in range(inputs.shape[1])], dim=1)
            return F.binary_cross_entropy(outputs.clamp(1e-6, 1 - 1e-6), batch["targets"])

        return net, copy_batch, peer_ntm_loss

    if model == "pytorch-dnc":  # ixaxaar/pytorch-dnc, imported from the user's checkout or install
        if peer_path:
            sys.path.insert(0, str(peer_path))
        from dnc import DNC as PeerDNC

        net = PeerDNC(task.input_size, 64, rnn_type="lstm", num_layers=1, num_hidden_layers=1, nr_cells=16,
                      cell_size=20, read_heads=4, batch_first=True).to(device)

        def peer_dnc_loss(batch):
            outputs, _ = net(batch["inputs"], None, reset_experience=True)
            if outputs.shape[:2] != batch["inputs"].shape[:2]:  # time-first in some releases
                outputs = outputs.transpose(0, 1)
            # its output layer has the input's width; the first D_out features are the logits
            return copy_loss(outputs[..., : task.output_size], batch)

        return net, copy_batch, peer_dnc_loss

    raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS) + list(PEERS)}")


def measure(model: str, path: str, batch_size: int, *, steps: int, repeats: int, min_seconds: float,
            warmup: int, threads: int, device: str, peer_path: str | None = None, length: int = LENGTH,
            compile_mode: str | None = None, unroll: int | None = None, precision: str = "fp32") -> dict:
    """One (model, path, batch size) in this process: throughput, peak memory, compile time."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))  # cuda:N: synchronise, reset and read that device, not device 0
    _import_models(compiler=path == "compiled")  # their modules' memory (Lightning's among them) is not the model's
    fallbacks = _Fallbacks() if path == "compiled" else None  # the compiled engine's word that it did not compile
    rss_base = _proc_status_mb("VmRSS")  # the process before the model is built
    if path == "graphed" and not cuda:
        raise SystemExit("the graphed path captures CUDA graphs: it needs --device cuda")
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net, make_batch, loss_of = build(model, path, device, peer_path, length, compile_mode, unroll)
    # a capturable Adam keeps its step count on the device, so that a CUDA graph can replay its update
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, capturable=path == "graphed")
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(generator, batch_size) for _ in range(4)]
    autocast = (partial(torch.autocast, device_type=device.split(":")[0], dtype=torch.bfloat16)
                if precision == "bf16" else contextlib.nullcontext)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def eager_step(batch):
        with autocast():
            loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    train_step = eager_step
    capture_seconds = 0.0
    if path == "graphed":
        capture_began = time.perf_counter()
        static = {k: v.clone() if torch.is_tensor(v) else v for k, v in batches[0].items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            for _ in range(3):
                eager_step(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the grads in the graph's pool
        with torch.cuda.graph(graph):
            with autocast():
                loss = loss_of(static)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()

        def train_step(batch):
            for key, value in batch.items():
                if torch.is_tensor(value):
                    static[key].copy_(value)
            graph.replay()

        sync()
        capture_seconds = time.perf_counter() - capture_began

    start = time.perf_counter()
    train_step(batches[0])
    sync()
    first_step = time.perf_counter() - start
    for i in range(1, warmup):
        train_step(batches[i % len(batches)])
    sync()
    # the peak of the timed steps only: the compile of the first step is behind us
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak_reset = _reset_peak_rss()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        for i in range(steps):
            train_step(batches[i % len(batches)])
        sync()
        times.append((time.perf_counter() - start) / steps)
    per_step = statistics.median(times)
    if fallbacks is not None and fallbacks.detach():  # the steps timed were (partly) the fused path's
        raise SystemExit(f"not compiled: {fallbacks.messages[0].removeprefix('memnet: ')}")
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    elif peak_reset and rss_base is not None:
        peak_mb = _proc_status_mb("VmHWM") - rss_base
    else:  # no /proc: the growth of the lifetime peak over the timed steps
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    compiled = path in ("compiled", "graphed")
    return {
        "model": model,
        "path": path,
        "compile_mode": compile_mode if path == "compiled" else None,
        "unroll": unroll if path == "compiled" else None,
        "precision": precision,
        "batch_size": batch_size,
        "time_steps": 2 * length + 1,
        "seconds_per_step_median": per_step,
        "seconds_per_step_all": times,
        "sequences_per_second": batch_size / per_step,
        "peak_memory_mb": round(peak_mb, 1),
        "compile_seconds": round(capture_seconds + max(first_step - per_step, 0.0), 2) if compiled else None,
        "compilations": getattr(net, "compilations", None) if path == "compiled" else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }


class _Fallbacks(logging.Handler):
    """The warnings of memnet's compiled engine (``memnet.models.core``) while it is measured: each says it ran
    a step uncompiled (torch cannot compile here, the compiler failed, or its limit of graphs was reached), so
    the steps timed as ``compiled`` were the fused path's, and the setting is a failure that names why."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        logging.getLogger("memnet.models.core").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def detach(self) -> list[str]:
        """Stop listening; the warnings heard."""
        logging.getLogger("memnet.models.core").removeHandler(self)
        return self.messages


def _import_models(compiler: bool = False) -> None:
    """Import what :func:`build` imports for memnet's models (and with ``compiler``, what ``torch.compile``
    imports at its first call), so that the CPU peak's baseline holds them."""
    import memnet.controllers
    import memnet.lightning  # sequence_metrics; it imports pytorch_lightning (~100 MB resident)
    import memnet.models.dnc
    import memnet.models.memn2n
    import memnet.models.ntm
    import memnet.models.recurrent  # noqa: F401
    import tasks.algorithmic  # noqa: F401

    if compiler:  # dynamo and inductor: ~40 MB resident, the compiler's, not the step's
        import torch._dynamo
        import torch._inductor.compile_fx  # noqa: F401


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": _cpu_name(), "logical_cpus": _cpu_count()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _proc_status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB, or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set (``VmHWM``) to its current size; False where Linux cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def first_error(stderr: str) -> str:
    """The first exception line of a failed setting's stderr (the cause, before any error it led to)."""
    lines = stderr.strip().splitlines() or ["no output"]
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*: .+")
    return next((line for line in lines if pattern.match(line)), lines[-1])


def path_label(row: dict) -> str:
    """The path with what sets it apart: ``compiled (reduce-overhead, unroll 8, bf16)``."""
    notes = [str(row[key]) if key != "unroll" else f"unroll {row[key]}"
             for key in ("compile_mode", "unroll") if row.get(key) is not None]
    if row.get("precision", "fp32") != "fp32":
        notes.append(row["precision"])
    return f"{row['path']} ({', '.join(notes)})" if notes else row["path"]


def table(report: dict) -> str:
    """The markdown table of a report."""
    info = report["machine"]
    where = info.get("gpu") or f"{info['processor']}, {info['logical_cpus']} logical CPUs"
    length = report["settings"]["length"]
    lines = [
        (f"Training throughput (copy length {length}, {2 * length + 1} time steps; MemN2N: 50 × 7-word stories; MemN2N-bAbI: bAbI-shaped stories), "
         f"{where}, torch {info['torch']}, device {report['settings']['device']}"),
        "",
        "| model | batch | path | sequences / s | ms / step | peak memory (MB) | compile (s) | torch threads |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['batch_size']} | {row['path']} | failed: {row['error']} "
                         "| | | | |")
            continue
        compile_s = "—" if row["compile_seconds"] is None else f"{row['compile_seconds']:.1f}"
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {path_label(row)} | {row['sequences_per_second']:,.1f} | "
            f"{1000 * row['seconds_per_step_median']:.1f} | {row['peak_memory_mb']:.0f} | {compile_s} | "
            f"{row['torch_threads']} |"
        )
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """An argparse type: a whole number ≥ 1 (a batch size, a length, a count of steps, repetitions or threads):
    0 would time an empty batch, divide by zero steps, or silently mean torch's default threads or unroll."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Measure every setting asked for, print the table and write the JSON; returns the exit status: 1 if a
    setting failed (its row says why), after the whole table and the results of the others are out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS + GPU_PATHS)
    parser.add_argument("--compile-mode", default=None,
                        help="inductor's mode for the compiled path, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--unroll", type=positive_int, default=None, help="time steps per call of the compiled engine")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="tf32: TF32 matmuls; bf16: the forward under bfloat16 autocast")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=None,
                        help="default 1 32 128 on the CPU, 1 128 4096 on CUDA")
    parser.add_argument("--length", type=positive_int, default=LENGTH, help="copy sequence length (2·L + 1 time steps)")
    parser.add_argument("--compile-batch-sizes", type=positive_int, nargs="+", default=None,
                        help="run the compiled path only at these batch sizes (default: every batch size)")
    parser.add_argument("--steps", type=positive_int, default=2, help="timed steps per repetition")
    parser.add_argument("--repeats", type=positive_int, default=3, help="at least this many repetitions")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="and repetitions for at least this long")
    parser.add_argument("--warmup", type=positive_int, default=2, help="untimed steps first (the first one compiles)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peer-ntm", type=Path, default=None,
                        help="a checkout of loudinthecloud/pytorch-ntm (the folder holding its ntm package)")
    parser.add_argument("--peer-dnc", type=Path, default=None,
                        help="a checkout of ixaxaar/pytorch-dnc (the folder holding its dnc package)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to one setting")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--single", nargs=3, default=None, help=argparse.SUPPRESS)  # MODEL PATH BATCH
    parser.add_argument("--peer-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = {"steps": args.steps, "repeats": args.repeats, "min_seconds": args.min_seconds,
               "warmup": args.warmup, "device": args.device, "length": args.length,
               "compile_mode": args.compile_mode, "unroll": args.unroll, "precision": args.precision}
    if "graphed" in args.paths and not args.device.startswith("cuda"):
        parser.error("--paths graphed captures CUDA graphs: it needs --device cuda")

    if args.single is not None:  # child process: one setting, JSON on stdout
        import torch

        model, path, batch_size = args.single
        threads = args.threads or torch.get_num_threads()
        print(json.dumps(measure(model, path, int(batch_size), threads=threads, peer_path=args.peer_path,
                                 **options)))
        return 0

    import torch

    try:  # refused now: each setting would fail on it, then the machine's description with a traceback
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # the timer synchronises CUDA only
        parser.error(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        parser.error(f"--device {args.device}: no such CUDA device here (torch {torch.__version__} sees "
                     f"{torch.cuda.device_count()})")
    for flag, checkout, package, peer in (("--peer-ntm", args.peer_ntm, "ntm", "pytorch-ntm"),
                                          ("--peer-dnc", args.peer_dnc, "dnc", "pytorch-dnc")):
        if checkout is not None and not (checkout / package / "__init__.py").is_file():
            parser.error(f"{flag} {checkout}: expected the folder that holds the {package!r} package "
                         f"({checkout / package / '__init__.py'} not found)")
        if checkout is not None and PEERS[peer] not in args.models:  # it runs beside memnet's model only
            parser.error(f"{flag}: {peer} runs beside memnet's {PEERS[peer]}, which --models leaves out "
                         f"({' '.join(args.models)}); add {PEERS[peer]} to --models")
    if args.out is not None:  # refused now, not by a traceback after minutes of measuring
        existing = next(folder for folder in (args.out.parent, *args.out.parent.parents) if folder.exists())
        if args.out.is_dir():
            parser.error(f"--out {args.out}: is a folder; expected the path of the JSON file to write")
        if not existing.is_dir():
            parser.error(f"--out {args.out}: {existing} is a file, not a folder")
    for model in args.models:  # a model none of whose paths is asked for would be left out of the table unsaid
        if not set(args.paths) & set(paths_of(model)):
            parser.error(f"--models {model}: it runs on {', '.join(paths_of(model))}, none of --paths "
                         f"{' '.join(args.paths)}; add one of its paths or leave {model} out of --models")
    batch_sizes = args.batch_sizes or ([1, 128, 4096] if args.device.startswith("cuda") else [1, 32, 128])
    unmeasured = [size for size in args.compile_batch_sizes or [] if size not in batch_sizes]
    if "compiled" in args.paths and unmeasured:  # its compiled rows would be left out of the table unsaid
        parser.error(f"--compile-batch-sizes {' '.join(map(str, unmeasured))}: not among the batch sizes measured "
                     f"({' '.join(map(str, batch_sizes))}); the compiled path runs at the batch sizes of both")
    settings = []
    for model in args.models:
        for batch_size in batch_sizes:
            for path in args.paths:
                skip = path == "compiled" and args.compile_batch_sizes and batch_size not in args.compile_batch_sizes
                if path in paths_of(model) and not skip:
                    settings.append((model, path, batch_size, None))
            for peer, checkout in (("pytorch-ntm", args.peer_ntm), ("pytorch-dnc", args.peer_dnc)):
                if checkout is not None and PEERS[peer] == model:
                    settings.append((peer, "eager", batch_size, checkout))

    rows: list[dict] = []
    try:
        measure_all(settings, rows, args)
    except KeyboardInterrupt:  # Ctrl-C part way through `make bench`: the rows measured so far are kept
        return interrupted(rows, settings, args, options)

    report = {"benchmark": "train_step", "machine": machine(args.device), "results": rows,
              "settings": {**options, "threads": args.threads}}
    print(table(report))
    if args.out:
        from memnet.utils import write_text_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        # written beside it, then renamed over it: a write cut short (a full disk, Ctrl-C) leaves the file as it
        # was, never a truncated JSON in its place
        write_text_atomic(args.out, json.dumps(report, indent=2))
        print(f"written {args.out}")
        stale = partial_path(args.out)
        if stale.is_file():  # an interrupted run's rows: this complete run is --out now, and they would be read for it
            stale.unlink()
            print(f"removed {stale} (the rows of an interrupted earlier run; {args.out} is this complete run's)")
    failed = sum("error" in row for row in rows)
    if failed:
        print(f"{failed} of {len(rows)} settings failed (their rows say why)", file=sys.stderr)
        return 1
    return 0


def partial_path(out: Path) -> Path:
    """Where an interrupted run writes its rows: ``bench.partial.json`` beside ``bench.json`` (removed by a complete run)."""
    return out.with_name(f"{out.stem}.partial{out.suffix or '.json'}")


def interrupted(rows: list[dict], settings: list[tuple], args: argparse.Namespace, options: dict) -> int:
    """Print and keep the rows measured before a Ctrl-C; exit status 130 (128 + SIGINT, as a shell reports it).

    The rows go to :func:`partial_path` (``"partial": true``, written atomically), never over ``--out``: a
    complete result of an earlier run stays whole, and a reader of ``--out`` never takes part of a run for all
    of it. Without ``--out`` only the table is printed.
    """
    report = {"benchmark": "train_step", "partial": True, "machine": machine(args.device), "results": rows,
              "settings": {**options, "threads": args.threads},
              "settings_measured": len(rows), "settings_planned": len(settings)}
    print(table(report))
    counted = f"{len(rows)} of {len(settings)} settings measured"
    if args.out is None:
        print(f"interrupted: {counted}; no --out, nothing written", file=sys.stderr)
        return 130
    from memnet.utils import write_text_atomic

    where = partial_path(args.out)
    where.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(where, json.dumps(report, indent=2))
    kept = f"{args.out} left as it was" if args.out.exists() else f"{args.out} not written"
    print(f"interrupted: {counted}, written to {where} (marked partial); {kept}", file=sys.stderr)
    return 130


def measure_all(settings: list[tuple], rows: list[dict], args: argparse.Namespace) -> None:
    """Measure each setting in a fresh process, appending its row to ``rows`` as it comes (a failure is a row)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for model, path, batch_size, checkout in settings:
        command = [sys.executable, __file__, "--single", model, path, str(batch_size), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--min-seconds", str(args.min_seconds),
                   "--warmup", str(args.warmup), "--device", args.device, "--length", str(args.length),
                   "--precision", args.precision]
        if args.compile_mode:
            command += ["--compile-mode", args.compile_mode]
        if args.unroll:
            command += ["--unroll", str(args.unroll)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if checkout is not None:
            command += ["--peer-path", str(checkout)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            rows.append({"model": model, "path": path, "batch_size": batch_size,
                         "error": f"over --timeout {args.timeout:.0f} s"})
            continue
        if result.returncode != 0:
            last = first_error(result.stderr)
            rows.append({"model": model, "path": path, "batch_size": batch_size, "error": last[:200]})
            print(f"{model} {path} batch {batch_size} failed: {last}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    raise SystemExit(main())
