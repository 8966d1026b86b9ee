"""Replay NTM copy training from a checkpoint, step by step, with diagnostics (issue 14).

Rebuilds configs/ntm/copy.yaml's model, optimiser and schedule from a Lightning
checkpoint saved at global step s, regenerates the exact training batches of
steps s, s+1, ... (epoch e = step // 100 draws from the generator seeded with
(seed, e)), and trains them as Lightning does (loss, backward, gradient norm
clipped to 1, Adam step, scheduler step), writing the per-step diagnostics of
``AddressingDiagnostics`` and the validation cost every ``--val_every`` steps.
Variants change one thing from the checkpoint on (``--lr_scale``, ``--adam_eps``,
``--beta2``, ``--no_clip``), to test a suspected cause.

    python benchmarks/relapse/replay.py CKPT --steps 100 --out replay.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from diagnostics import AddressingDiagnostics

from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule, sequence_metrics
from memnet.models.ntm import NTM
from tasks.algorithmic import AlgorithmicDataModule, CopyTask
from tasks.algorithmic.data import _mix


def batches_from(dm: AlgorithmicDataModule, step: int):
    """The training batches of global steps ``step``, ``step + 1``, ... as the training stream draws them."""
    epoch, index = divmod(step, dm.batches_per_epoch)
    while True:
        dm.epoch = epoch
        for i, batch in enumerate(iter(dm.train_dataloader().dataset)):
            if i >= index:
                yield batch
        epoch, index = epoch + 1, 0


@torch.no_grad()
def validate(module, batches) -> float:
    module.eval()
    total = sum(float(sequence_metrics(module(b["inputs"]), b["targets"], b["mask"])["bits_per_seq"]) * len(b["inputs"])
                for b in batches)
    module.train()
    return total / sum(len(b["inputs"]) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--val_every", type=int, default=25)
    parser.add_argument("--lr_scale", type=float, default=1.0, help="multiply the schedule's learning rate")
    parser.add_argument("--adam_eps", type=float, default=None, help="replace Adam's epsilon")
    parser.add_argument("--beta2", type=float, default=None, help="replace Adam's beta2")
    parser.add_argument("--engine", default="eager",
                        help="NTM engine; eager (default) steps the controller with controller.step, so the LSTM is recorded")
    parser.add_argument("--no_clip", action="store_true", help="no gradient-norm clipping")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = CopyTask(width=8, min_length=1, max_length=20)
    dm = AlgorithmicDataModule(task, batch_size=16, batches_per_epoch=100, val_lengths=[20], val_size=128,
                               seed=args.seed)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=100),
              memory_size=128, word_size=20, num_reads=1, num_writes=1, shift_range=1, memory_init="constant",
              engine=args.engine)
    module = SequenceModule(net)
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(ckpt["state_dict"])
    optimizer = torch.optim.Adam(module.parameters(), lr=0.003)
    optimizer.load_state_dict(ckpt["optimizer_states"][0])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.003, total_steps=6000, pct_start=0.05)
    scheduler.load_state_dict(ckpt["lr_schedulers"][0])
    if args.adam_eps is not None:
        for group in optimizer.param_groups:
            group["eps"] = args.adam_eps
    if args.beta2 is not None:
        for group in optimizer.param_groups:
            group["betas"] = (group["betas"][0], args.beta2)
    start = int(ckpt["global_step"])
    val_batches = dm.fixed_batches([20], 128, _mix(args.seed, -1))

    out = Path(args.out)
    out.unlink(missing_ok=True)
    diag = AddressingDiagnostics(str(out))
    diag.setup(None, module)
    trainer = SimpleNamespace(global_step=start)
    module.train()
    with out.open("a") as f:
        f.write(json.dumps({"step": start, "val_bits": validate(module, val_batches)}) + "\n")
    for step, batch in zip(range(start, start + args.steps), batches_from(dm, start)):
        trainer.global_step = step
        diag.on_train_batch_start(trainer, module, batch, 0)
        loss = sequence_metrics(module(batch["inputs"]), batch["targets"], batch["mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        diag.on_before_optimizer_step(trainer, module, optimizer)
        if not args.no_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        if args.lr_scale != 1.0:
            for group in optimizer.param_groups:
                group["lr"] *= args.lr_scale
        optimizer.step()
        if args.lr_scale != 1.0:
            for group in optimizer.param_groups:
                group["lr"] /= args.lr_scale
        scheduler.step()
        diag.on_train_batch_end(trainer, module, loss.detach(), batch, 0)
        if (step + 1 - start) % args.val_every == 0:
            value = validate(module, val_batches)
            with out.open("a") as f:
                f.write(json.dumps({"step": step + 1, "val_bits": value}) + "\n")
            print(f"step {step + 1}: val {value:.4g} bits", flush=True)
            if not math.isfinite(value):
                break


if __name__ == "__main__":
    main()
