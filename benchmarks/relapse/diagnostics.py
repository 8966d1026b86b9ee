"""Per-step diagnostics of an NTM in training, for finding the cause of a relapse (issue 14).

``AddressingDiagnostics`` is a Lightning callback that writes one JSON line per
training step: the loss, the learning rate, the gradient norm before clipping
(all and per part), the size of the parameter update, and statistics of what
the heads and the controller produced during that step's forward pass (key
strengths β, sharpening γ, interpolation gates g, shift distributions, the
weightings' entropy, the memory's norm, the LSTM's gate pre-activations and cell
state; the LSTM only on the ``eager`` engine, whose steps call ``controller.step``). Used from a config as ``class_path: diagnostics.AddressingDiagnostics``
with this folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange

ENTROPY_EPS = 1e-12


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis."""
    return -(p * torch.log(p.clamp_min(ENTROPY_EPS))).sum(-1)


class _Recorder:
    """Accumulates max / mean of named statistics over the time steps of one forward pass."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.stats.setdefault(name, []).append(float(value))

    def summary(self) -> dict[str, float]:
        out = {}
        for name, values in self.stats.items():
            kind = name.rsplit("_", 1)[-1]
            if kind == "max":
                out[name] = max(values)
            elif kind == "min":
                out[name] = min(values)
            else:
                out[name] = sum(values) / len(values)
        return out


class AddressingDiagnostics(pl.Callback):
    """Writes per-step diagnostics of an NTM's training to ``path`` (JSON lines).

    Args:
        path: the output file.
        start_step: first global step recorded (earlier steps only cost nothing).
    """

    def __init__(self, path: str, start_step: int = 0) -> None:
        self.path = Path(path)
        self.start_step = start_step
        self.recorder: _Recorder | None = None
        self.row: dict = {}
        self.before: dict[str, torch.Tensor] = {}

    def setup(self, trainer, pl_module, stage=None) -> None:
        net = pl_module.net
        heads, controller = net.heads, net.controller
        self.path.parent.mkdir(parents=True, exist_ok=True)
        callback = self
        heads_forward = heads.forward
        controller_step = controller.step

        def recorded_heads(hidden, prev_weights, memory, **kwargs):
            out = heads_forward(hidden, prev_weights, memory, **kwargs)
            if callback.recorder is not None:
                callback._record_heads(heads, hidden, memory, out)
            return out

        def recorded_step(x, state):
            if callback.recorder is not None and hasattr(controller, "lstm"):
                callback._record_lstm(controller, x, state)
            return controller_step(x, state)

        heads.forward = recorded_heads
        controller.step = recorded_step

    @torch.no_grad()
    def _record_heads(self, heads, hidden, memory, out) -> None:
        rec = self.recorder
        params = heads.project(hidden)
        address, _ = params.split(
            [heads.num_heads * heads.address_width, heads.num_writes * 2 * heads.word_size], dim=-1
        )
        address = rearrange(address, "b (h p) -> b h p", h=heads.num_heads)
        key, strength, gate, shifts, gamma = address.split([heads.word_size, 1, 1, heads.shift_window, 1], dim=-1)
        beta = F.softplus(strength.squeeze(-1))
        g = torch.sigmoid(gate.squeeze(-1))
        gam = 1 + F.softplus(gamma.squeeze(-1))
        s = F.softmax(shifts, dim=-1)
        r = heads.num_reads
        for name, part in (("read", slice(0, r)), ("write", slice(r, None))):
            rec.add(f"beta_{name}_mean", beta[:, part].mean())
            rec.add(f"beta_{name}_max", beta[:, part].max())
            rec.add(f"gamma_{name}_mean", gam[:, part].mean())
            rec.add(f"gamma_{name}_max", gam[:, part].max())
            rec.add(f"gate_{name}_mean", g[:, part].mean())
            rec.add(f"shift_entropy_{name}_mean", _entropy(s[:, part]).mean())
            rec.add(f"shift_pre_{name}_max", shifts[:, part].abs().max())
            rec.add(f"weight_entropy_{name}_mean", _entropy(out.weights[:, part]).mean())
            rec.add(f"weight_entropy_{name}_min", _entropy(out.weights[:, part]).min())
            rec.add(f"weight_peak_{name}_mean", out.weights[:, part].max(-1).values.mean())
            rec.add(f"key_norm_{name}_max", key[:, part].norm(dim=-1).max())
        rec.add("add_abs_max", out.add.abs().max())
        rec.add("erase_mean", out.erase.mean())
        slot_norms = memory.norm(dim=-1)  # (B, N)
        rec.add("memory_slot_norm_max", slot_norms.max())
        rec.add("memory_slot_norm_mean", slot_norms.mean())
        rec.add("hidden_abs_mean", hidden.abs().mean())

    @torch.no_grad()
    def _record_lstm(self, controller, x, state) -> None:
        rec = self.recorder
        lstm = controller.lstm
        h, c = state[0][0], state[1][0]
        pre = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
        _i, f, _g, _o = pre.chunk(4, dim=-1)
        rec.add("lstm_pre_abs_max", pre.abs().max())
        rec.add("lstm_pre_abs_mean", pre.abs().mean())
        rec.add("lstm_saturated_frac_mean", (pre.abs() > 5).float().mean())
        rec.add("lstm_cell_abs_max", c.abs().max())
        rec.add("lstm_forget_mean", torch.sigmoid(f).mean())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.start_step:
            self.recorder = None
            return
        self.recorder = _Recorder()
        self.row = {"step": trainer.global_step, "length": int(batch["inputs"].shape[1])}
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.recorder is None:
            return
        parts: dict[str, float] = {}
        total = 0.0
        for name, p in pl_module.named_parameters():
            if p.grad is None:
                continue
            sq = float(p.grad.pow(2).sum())
            total += sq
            part = name.split(".")[1]
            parts[part] = parts.get(part, 0.0) + sq
        self.row["grad_norm"] = math.sqrt(total)
        for part, sq in parts.items():
            self.row[f"grad_norm_{part}"] = math.sqrt(sq)
        self.row["lr"] = optimizer.param_groups[0]["lr"]
        # Adam's second-moment estimate: its smallest square root, where an update is largest per gradient
        v = [s["exp_avg_sq"] for s in optimizer.state.values() if "exp_avg_sq" in s]
        if v:
            flat = torch.cat([x.flatten() for x in v])
            self.row["adam_sqrt_v_median"] = float(flat.sqrt().median())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is None:
            return
        self.row["loss"] = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        sq, parts = 0.0, {}
        for name, p in pl_module.named_parameters():
            d = float((p.detach() - self.before[name]).pow(2).sum())
            sq += d
            part = name.split(".")[1]
            parts[part] = parts.get(part, 0.0) + d
        self.row["update_norm"] = math.sqrt(sq)
        for part, d in parts.items():
            self.row[f"update_norm_{part}"] = math.sqrt(d)
        self.row.update(self.recorder.summary())
        with self.path.open("a") as f:
            f.write(json.dumps(self.row) + "\n")
        self.recorder = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/bits_per_seq")
        if value is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "val_bits": float(value)}) + "\n")
