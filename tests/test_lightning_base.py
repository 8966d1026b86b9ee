"""memnet.lightning: the modules share one base (set-up, finite-loss check, stage triplet, epoch metrics)."""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from memnet.lightning import (
    ConditionalSequenceModule,
    MemnetModule,
    QAModule,
    RegressionModule,
    RidgeReadoutModule,
    Seq2SeqModule,
    SequenceModule,
)


def test_every_module_stands_on_the_one_base():
    for module in (SequenceModule, ConditionalSequenceModule, QAModule, Seq2SeqModule, RegressionModule,
                   RidgeReadoutModule):
        assert issubclass(module, MemnetModule)
    for module in (SequenceModule, QAModule, Seq2SeqModule, RegressionModule):
        assert module.training_step is MemnetModule.training_step
        assert module.configure_optimizers is MemnetModule.configure_optimizers


def test_hyperparameters_of_the_subclass_are_saved_and_the_net_is_not():
    module = SequenceModule(nn.Linear(3, 2), eval_memory_size=64, scheduler_interval="step")
    assert module.hparams["eval_memory_size"] == 64 and module.hparams["scheduler_interval"] == "step"
    assert "net" not in module.hparams and "optimizer" not in module.hparams
    with pytest.raises(ValueError, match="scheduler_interval must be 'step' or 'epoch'"):
        RegressionModule(nn.Linear(3, 2), scheduler_interval="batch")


class _Diverged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, inputs):
        return inputs[..., :1] * self.scale * float("nan")


def test_regression_training_stops_on_a_non_finite_loss():
    batch = {"inputs": torch.ones(2, 5, 3), "targets": torch.zeros(2, 5, 1), "mask": torch.ones(2, 5)}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(FloatingPointError, match="training loss became nan at step 0"):
        trainer.fit(RegressionModule(_Diverged()), train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))


def test_epoch_metrics_start_empty_every_epoch():
    """The NRMSE of a validation epoch counts that epoch's batches only (torchmetrics state reset)."""
    module = RegressionModule(nn.Linear(3, 1))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randn(2, 4, 3, generator=g), "targets": torch.randn(2, 4, 1, generator=g),
                "mask": torch.ones(2, 4)} for _ in range(2)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    first = trainer.validate(module, dataloaders=loader, verbose=False)[0]["val/nrmse"]
    again = trainer.validate(module, dataloaders=loader, verbose=False)[0]["val/nrmse"]
    assert first == pytest.approx(again)
    only_one = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches[:1], batch_size=None),
                                verbose=False)[0]["val/nrmse"]
    assert only_one != pytest.approx(first)


def test_the_nrmse_of_an_epoch_of_several_outputs_is_the_mean_of_each_outputs():
    """Each output normalised by its own variance over the epoch's scored steps, then averaged (an output offset
    from the other by 5 no longer counts as spread)."""
    from memnet.training import NRMSESums

    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randn(2, 4, 3, generator=g), "targets": torch.randn(2, 4, 2, generator=g) + torch.tensor(
        [0.0, 5.0]), "mask": torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])} for _ in range(2)]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(RegressionModule(net), dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                              verbose=False)[0]["val/nrmse"]
    with torch.no_grad():
        scored = [(net(b["inputs"])[b["mask"].bool()], b["targets"][b["mask"].bool()]) for b in batches]  # (n, 2)
    predictions, y = (torch.cat(part).double() for part in zip(*scored))
    each = torch.sqrt(((predictions - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0))  # (2,)
    assert logged == pytest.approx(float(each.mean()), rel=1e-5)
    # an epoch's sums saved by an older memnet, (4,) of one output, go on accumulating
    metric, sums = NRMSESums(), torch.tensor([[3.0], [2.0], [5.0], [2.0]], dtype=torch.float64)
    metric.sums = sums.flatten()
    metric.update(sums)
    nrmse, mse = metric.compute()  # and the mean squared error, Σ(y−ŷ)²/n
    assert (float(nrmse), float(mse)) == pytest.approx((1.0, 1.5))  # √(6 / (10 − 4²/4)), 6 / 4


def test_an_epoch_of_constant_targets_stops_with_the_stage_named():
    """A validation epoch of constant targets logged ``val/nrmse`` = inf, and early stopping took it as a score."""
    from memnet.utils import MemnetError

    module = RegressionModule(nn.Linear(3, 1))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    batch = {"inputs": torch.randn(2, 4, 3), "targets": torch.ones(2, 4, 1), "mask": torch.ones(2, 4)}
    with pytest.raises(MemnetError, match=r"the val epoch's score: the targets are constant over the 8 scored"):
        trainer.validate(module, dataloaders=torch.utils.data.DataLoader([batch], batch_size=None), verbose=False)


class _NaNGradientOnce(nn.Module):
    """A linear map whose weight gets a NaN gradient in the backward pass number ``bad`` (0-based)."""

    def __init__(self, bad: int | None = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.backwards = 0
        self.bad = bad
        self.linear.weight.register_hook(self._hook)

    def _hook(self, grad):
        self.backwards += 1
        return grad * float("nan") if self.bad is not None and self.backwards - 1 == self.bad else grad

    def forward(self, inputs):
        return self.linear(inputs)


def _regression_batches(n):
    g = torch.Generator().manual_seed(0)
    return [{"inputs": torch.randn(2, 5, 3, generator=g), "targets": torch.randn(2, 5, 1, generator=g),
             "mask": torch.ones(2, 5)} for _ in range(n)]


def _fit(module, steps):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_regression_batches(steps), batch_size=None))
    return trainer


def test_a_step_with_nan_gradients_is_skipped_and_training_goes_on():
    """A finite loss whose backward overflowed (the NTM's repeat copy, step 29,278) no longer writes NaN into
    the weights: the step is skipped, the optimiser state does not move, the run goes on."""
    net = _NaNGradientOnce(bad=1)
    module = RegressionModule(net)
    with pytest.warns(UserWarning, match=r"non-finite gradients at step 1 \(epoch 0\) in net.linear.weight: "
                                         r"the step was skipped \(1 skipped in all\)"):
        trainer = _fit(module, 4)
    assert trainer.global_step == 4 and module.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())
    state = trainer.optimizers[0].state
    assert int(state[net.linear.weight]["step"]) == 3  # Adam took 3 steps of 4: the skipped one changed nothing
    assert int(state[net.linear.bias]["step"]) == 3  # every parameter's step is dropped, not only the bad one's


class _HugeGradients(nn.Module):
    """A linear map whose gradients are 1e20 times the loss's: finite, but their squares overflow float32."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        for parameter in self.linear.parameters():
            parameter.register_hook(lambda grad: grad * 1e20)

    def forward(self, inputs):
        return self.linear(inputs)


def test_a_global_clip_of_gradients_whose_squares_overflow_clips_them_to_the_norm_asked():
    """trainer.gradient_clip_val (torch's clip_grad_norm_): the float32 norm of gradients of ~1e20 was inf and its
    clip coefficient 0, so the step moved nothing; the gradients are finite, so no skipped step either."""
    from functools import partial

    from memnet.metrics import masked_mse

    net = _HugeGradients()
    [batch] = _regression_batches(1)
    weight, bias = (p.detach().clone().requires_grad_() for p in net.linear.parameters())
    loss = masked_mse(nn.functional.linear(batch["inputs"], weight, bias), batch["targets"], batch["mask"])
    direction = torch.cat([g.flatten() for g in torch.autograd.grad(loss, (weight, bias))]).double()
    before = torch.cat([p.detach().flatten() for p in net.parameters()]).double()
    module = RegressionModule(net, optimizer=partial(torch.optim.SGD, lr=1.0))
    _fit(module, 1)  # gradient_clip_val=1.0
    step = torch.cat([p.detach().flatten() for p in net.parameters()]).double() - before
    assert module.skipped_steps == 0
    torch.testing.assert_close(step, -direction / direction.norm(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_a_negative_gradient_clip_is_refused_before_a_step(algorithm):
    """trainer.gradient_clip_val -1 was taken: torch scaled the gradients by a negative factor (norm: -1/|g|,
    value: every entry -1), so the run climbed its loss, exit 0."""
    from functools import partial

    from memnet.utils import MemnetError

    net = nn.Linear(3, 1)
    before = [p.detach().clone() for p in net.parameters()]
    module = RegressionModule(net, optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=-1.0, gradient_clip_algorithm=algorithm)
    with pytest.raises(MemnetError, match=r"trainer.gradient_clip_val must be ≥ 0 .*got -1.0"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_regression_batches(2), batch_size=None))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_skipped_step_leaves_parameters_and_adam_state_untouched():
    net = nn.Linear(3, 1)
    module = SequenceModule(net)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    before = [p.detach().clone() for p in module.parameters()]
    moments = optimizer.state[net.weight]["exp_avg"].clone()
    net(torch.ones(1, 3)).sum().backward()
    net.bias.grad[0] = float("inf")
    with pytest.warns(UserWarning, match="in net.bias: the step was skipped"):
        assert module.skip_nonfinite_step(optimizer)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert torch.equal(optimizer.state[net.weight]["exp_avg"], moments)
    # a finite step is not touched, and resets the count of skips in a row
    net(torch.ones(1, 3)).sum().backward()
    assert not module.skip_nonfinite_step(optimizer) and module.skipped_in_a_row == 0
    assert net.weight.grad is not None
    net.weight.grad[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="in net.weight: the step was skipped"):
        assert module.skip_nonfinite_step(None)  # without an optimiser: the module's own parameters
    assert net.weight.grad is None and net.bias.grad is None


def test_nonfinite_grads_stop_names_the_step_and_the_parameter():
    net = nn.Linear(3, 1)
    module = SequenceModule(net, nonfinite_grads="stop")
    optimizer = torch.optim.Adam(module.parameters())
    net(torch.ones(1, 3)).sum().backward()
    net.weight.grad[0, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"gradients became non-finite at step 0 \(epoch 0\) in "
                                                 r"net.weight \(the loss was finite\)"):
        module.skip_nonfinite_step(optimizer)
    with pytest.raises(ValueError, match="nonfinite_grads must be 'skip' or 'stop', got 'ignore'"):
        SequenceModule(net, nonfinite_grads="ignore")


def test_too_many_nonfinite_steps_in_a_row_stop_training():
    from memnet.training import MAX_SKIPPED_IN_A_ROW

    net = nn.Linear(3, 1)
    module = SequenceModule(net)
    optimizer = torch.optim.Adam(module.parameters())
    for _ in range(MAX_SKIPPED_IN_A_ROW):
        net(torch.ones(1, 3)).sum().backward()
        net.weight.grad[0, 0] = float("nan")
        with pytest.warns(UserWarning, match="the step was skipped"):
            module.skip_nonfinite_step(optimizer)
    net(torch.ones(1, 3)).sum().backward()
    net.weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite in 11 steps in a row"):
        module.skip_nonfinite_step(optimizer)


def test_huge_but_finite_gradients_are_not_skipped():
    """A gradient norm that overflows float32 from finite entries is not a non-finite gradient."""
    from memnet.training import nonfinite_gradients

    weight = nn.Parameter(torch.zeros(4))
    weight.grad = torch.full((4,), 3e19)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    assert not torch.isfinite(torch.linalg.vector_norm(weight.grad))
    assert nonfinite_gradients(optimizer) == []
    weight.grad[2] = float("-inf")
    assert nonfinite_gradients(optimizer) == [weight]


def test_the_count_of_skipped_steps_is_kept_in_checkpoints():
    module = SequenceModule(nn.Linear(3, 1))
    module.skipped_steps = 3
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = SequenceModule(nn.Linear(3, 1))
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.skipped_steps == 3
    older = SequenceModule(nn.Linear(3, 1))
    older.skipped_steps = 5
    older.on_load_checkpoint({})  # a checkpoint written before the count existed
    assert older.skipped_steps == 0


def test_a_resumed_run_stops_after_as_many_skipped_steps_in_a_row_as_the_unbroken_run():
    """The count of skipped steps in a row was not in checkpoints: a run resumed after 10 of them went on skipping
    where the unbroken run stopped at the 11th."""
    from memnet.training import MAX_SKIPPED_IN_A_ROW

    module = SequenceModule(nn.Linear(3, 1))
    module.skipped_steps = module.skipped_in_a_row = MAX_SKIPPED_IN_A_ROW
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    net = nn.Linear(3, 1)
    resumed = SequenceModule(net)
    resumed.on_load_checkpoint(checkpoint)
    net(torch.ones(1, 3)).sum().backward()
    net.weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite in 11 steps in a row"):
        resumed.skip_nonfinite_step(torch.optim.Adam(resumed.parameters()))


class _PerStep(nn.Module):
    """(B, T, D) -> (B, T, D) logits, one linear map at every time step."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(width, width)

    def forward(self, inputs):
        return self.linear(inputs)


def _sequence_batch(length: int, batch_size: int, seed: int, width: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 2 * length, width, generator=g)
    mask = torch.cat([torch.zeros(batch_size, length), torch.ones(batch_size, length)], dim=1)
    return {"inputs": inputs, "targets": (torch.rand(batch_size, 2 * length, width, generator=g) > 0.5).float(),
            "mask": mask, "length": torch.tensor(length)}


def test_validation_loss_is_per_scored_bit_and_per_length_scores_are_their_lengths_own():
    """Batches of 4 sequences of length 2 and 2 of length 10: ``val/loss`` is the epoch's nats over its scored bits
    (not a mean of the batches' per-bit losses weighted by their sequences), and each length's bits per sequence
    is that of its own sequences."""
    from memnet.metrics import binary_loss, bits_per_sequence

    module = SequenceModule(_PerStep())
    batches = [_sequence_batch(2, 4, seed=1), _sequence_batch(10, 2, seed=2), _sequence_batch(2, 4, seed=3)]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]
    with torch.no_grad():
        logits = [module(b["inputs"]) for b in batches]
    nats = sum(binary_loss(x, b["targets"], b["mask"]) * b["mask"].sum() * 3 for x, b in zip(logits, batches))
    scored_bits = sum(b["mask"].sum() * 3 for b in batches)
    assert logged["val/loss"] == pytest.approx(float(nats / scored_bits), rel=1e-5)
    by_sequences = sum(binary_loss(x, b["targets"], b["mask"]) * len(b["inputs"]) for x, b in zip(logits, batches)) / 10
    assert logged["val/loss"] != pytest.approx(float(by_sequences), rel=1e-3)
    bits = {length: torch.cat([bits_per_sequence(x, b["targets"], b["mask"]) for x, b in zip(logits, batches)
                               if int(b["length"]) == length]).mean() for length in (2, 10)}
    assert {k for k in logged if "/len_" in k} == {f"val/len_{n}/{name}" for n in (2, 10)
                                                      for name in ("bits_per_seq", "bit_errors_per_seq")}
    for length, value in bits.items():
        assert logged[f"val/len_{length}/bits_per_seq"] == pytest.approx(float(value), rel=1e-5)
    assert logged["val/bits_per_seq"] == pytest.approx(float((bits[2] * 8 + bits[10] * 2) / 10), rel=1e-5)


def test_seq2seq_validation_scores_are_per_token_and_per_sequence_of_the_epoch():
    from memnet.metrics import sequence_accuracy, token_metrics
    from memnet.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    net = Seq2Seq(8, 8, embedding_size=4)
    module = Seq2SeqModule(net)
    g = torch.Generator().manual_seed(0)

    def batch(length, size):
        target = torch.cat([torch.randint(3, 8, (size, length), generator=g), torch.full((size, 1), 2)], dim=1)
        return {"source": torch.randint(3, 8, (size, length), generator=g), "target": target, "length": torch.tensor(length)}

    batches = [batch(2, 5), batch(9, 1)]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]
    module.eval()
    with torch.no_grad():
        scores = [token_metrics(module(b["source"], b["target"]), b["target"]) for b in batches]
        right = [sequence_accuracy(net.generate(b["source"], max_length=b["target"].shape[1]), b["target"]) for b in batches]
    tokens = [b["target"].numel() for b in batches]  # no PAD in these targets
    assert logged["val/loss"] == pytest.approx(sum(float(s["loss"]) * n for s, n in zip(scores, tokens)) / sum(tokens),
                                               rel=1e-5)
    assert logged["val/token_accuracy"] == pytest.approx(
        sum(float(s["token_accuracy"]) * n for s, n in zip(scores, tokens)) / sum(tokens), rel=1e-5)
    assert logged["val/sequence_accuracy"] == pytest.approx(float(torch.cat(right).mean()))
    assert logged["val/len_2/sequence_accuracy"] == pytest.approx(float(right[0].mean()))
    assert logged["val/len_9/sequence_accuracy"] == pytest.approx(float(right[1].mean()))


def test_seq2seq_targets_of_pad_alone_weigh_nothing_and_an_epoch_of_them_is_refused():
    """A validation batch whose targets are all PAD (no token to score) made ``val/loss`` NaN (its loss, a mean
    over no token, times 0 tokens); an epoch of them logged a NaN loss and a token accuracy of 0 as if measured."""
    from memnet.metrics import sequence_accuracy, token_metrics
    from memnet.models.seq2seq import Seq2Seq
    from memnet.utils import MemnetError

    torch.manual_seed(0)
    net = Seq2Seq(8, 8, embedding_size=4)
    module = Seq2SeqModule(net)
    g = torch.Generator().manual_seed(0)
    scored = {"source": torch.randint(3, 8, (3, 2), generator=g), "length": 2,
              "target": torch.cat([torch.randint(3, 8, (3, 4), generator=g), torch.full((3, 1), 2)], dim=1)}
    pad_only = {"source": torch.randint(3, 8, (2, 5), generator=g), "target": torch.zeros(2, 3, dtype=torch.long),
                "length": 5}
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)

    def validate(batches):
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        return trainer.validate(module, dataloaders=loader, verbose=False)[0]

    logged = validate([scored, pad_only])
    module.eval()
    with torch.no_grad():
        expected = token_metrics(module(scored["source"], scored["target"]), scored["target"])
        right = sequence_accuracy(net.generate(scored["source"], max_length=5), scored["target"])
    assert logged["val/loss"] == pytest.approx(float(expected["loss"]), rel=1e-5)
    assert logged["val/token_accuracy"] == pytest.approx(float(expected["token_accuracy"]), rel=1e-5)
    assert logged["val/sequence_accuracy"] == pytest.approx(float(right.mean()))
    assert "val/len_5/sequence_accuracy" not in logged  # a length of PAD targets alone has no score
    with pytest.raises(MemnetError, match=r"the val epoch had no token to score: all its targets are PAD \(id 0\)"):
        validate([pad_only])


def test_seq2seq_training_batch_of_pad_targets_alone_adds_no_nan_to_the_epoch():
    """A training batch whose targets were all PAD logged its loss, a mean over no token (NaN), with weight 1:
    the epoch's ``train/loss`` came out NaN. It now adds nothing, and its loss is a zero with a graph."""
    from memnet.metrics import token_metrics
    from memnet.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    net = Seq2Seq(8, 8, embedding_size=4)
    module = Seq2SeqModule(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    g = torch.Generator().manual_seed(0)
    scored = {"source": torch.randint(3, 8, (3, 2), generator=g), "length": 2,
              "target": torch.cat([torch.randint(3, 8, (3, 4), generator=g), torch.full((3, 1), 2)], dim=1)}
    pad_only = {"source": torch.randint(3, 8, (2, 5), generator=g), "target": torch.zeros(2, 3, dtype=torch.long),
                "length": 5}
    loss = module.model_step(pad_only, "train")
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([scored, pad_only], batch_size=None))
    logged = trainer.callback_metrics
    module.eval()
    with torch.no_grad():  # lr 0: the weights the scored batch saw; teacher forcing 1
        expected = token_metrics(module(scored["source"], scored["target"]), scored["target"])
    assert torch.isfinite(logged["train/loss_epoch"])
    assert float(logged["train/loss_epoch"]) == pytest.approx(float(expected["loss"]), rel=1e-5)


def test_training_epoch_loss_is_per_scored_bit_and_token_accuracy_per_token():
    """``train/loss`` over an epoch of batches of length 1 and 12 is the epoch's nats over its scored bits, as
    ``val/loss`` on the same batches (a mean of the batches' losses weighted by sequences was 0.798 against 0.739);
    the seq2seq ``train/loss`` and ``train/token_accuracy`` are per token of the epoch."""
    from memnet.metrics import binary_loss, token_metrics
    from memnet.models.seq2seq import Seq2Seq

    frozen = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.0)}
    module = SequenceModule(_PerStep(), **frozen)
    batches = [_sequence_batch(1, 4, seed=1), _sequence_batch(12, 4, seed=2)]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    with torch.no_grad():
        logits = [module(b["inputs"]) for b in batches]
    nats = sum(binary_loss(x, b["targets"], b["mask"]) * b["mask"].sum() * 3 for x, b in zip(logits, batches))
    scored_bits = sum(b["mask"].sum() * 3 for b in batches)
    assert float(trainer.callback_metrics["train/loss_epoch"]) == pytest.approx(float(nats / scored_bits), rel=1e-5)

    torch.manual_seed(0)
    net = Seq2Seq(8, 8, embedding_size=4)
    module = Seq2SeqModule(net, **frozen)
    g = torch.Generator().manual_seed(0)

    def batch(length, size):
        target = torch.cat([torch.randint(3, 8, (size, length), generator=g), torch.full((size, 1), 2)], dim=1)
        return {"source": torch.randint(3, 8, (size, length), generator=g), "target": target, "length": length}

    batches = [batch(1, 4), batch(12, 4)]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    module.eval()
    with torch.no_grad():
        scores = [token_metrics(module(b["source"], b["target"]), b["target"]) for b in batches]
    tokens = [b["target"].numel() for b in batches]  # no PAD in these targets
    for name in ("loss", "token_accuracy"):
        per_token = sum(float(s[name]) * n for s, n in zip(scores, tokens)) / sum(tokens)
        assert float(trainer.callback_metrics[f"train/{name}_epoch"]) == pytest.approx(per_token, rel=1e-5)


def test_gradscaler_overflows_under_16_mixed_are_left_to_the_scaler():
    """With ``precision: 16-mixed`` the GradScaler's overflow at a too-high scale (routine: it skips the step and
    lowers its scale) was counted as a non-finite step, warned about, and stopped training under
    ``nonfinite_grads: stop`` at step 0."""
    import warnings

    from pytorch_lightning.plugins.precision import MixedPrecision

    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randn(4, 5, 3, generator=g), "targets": 300 * torch.randn(4, 5, 1, generator=g),
                "mask": torch.ones(4, 5)} for _ in range(6)]
    torch.manual_seed(0)
    module = RegressionModule(nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 1)), nonfinite_grads="stop")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", plugins=[plugin], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert plugin.scaler.get_scale() < 2.0**16  # the scaler did meet overflows, and skipped those steps itself
    assert trainer.global_step == 6 and module.skipped_steps == 0
    assert not [w for w in caught if "non-finite gradients" in str(w.message)]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def _one_cycle_per_epoch():
    import functools

    torch.manual_seed(0)
    return RegressionModule(nn.Linear(3, 1), scheduler=functools.partial(
        torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01, total_steps=3), scheduler_interval="epoch")


def test_resuming_a_one_cycle_schedule_stepped_per_epoch_compares_epochs(tmp_path):
    """A OneCycleLR of 3 epochs (``scheduler_interval: epoch``) resumed to ``trainer.max_steps`` 6 (3 epochs of 2
    batches) was refused as if its total_steps counted optimiser steps; more epochs than its total are refused."""
    from memnet.utils import MemnetError

    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False}
    first = pl.Trainer(max_steps=4, **options)
    first.fit(_one_cycle_per_epoch(), train_dataloaders=loader)
    first.save_checkpoint(tmp_path / "last.ckpt")
    resumed = pl.Trainer(max_steps=6, **options)
    resumed.fit(_one_cycle_per_epoch(), train_dataloaders=loader, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 6
    with pytest.raises(MemnetError, match="schedule is 3 epochs long .* cannot resume to trainer.max_epochs 5"):
        pl.Trainer(max_epochs=5, **options).fit(_one_cycle_per_epoch(), train_dataloaders=loader,
                                                ckpt_path=tmp_path / "last.ckpt")


def test_resuming_a_one_cycle_schedule_stepped_per_batch_by_epochs_is_refused_before_its_first_step(tmp_path):
    """A per-step OneCycleLR of 4 steps (2 epochs of 2 batches) resumed to trainer.max_epochs 4 with total_steps 8 in
    the config (the checkpoint's 4 come back): the budget by epochs was not compared, and the resumed run trained
    to the schedule's end and stopped with torch's traceback ("Tried to step 5 times ... total steps is 4")."""
    import functools

    from memnet.utils import MemnetError

    def one_cycle(total):
        torch.manual_seed(0)
        return RegressionModule(nn.Linear(3, 1), scheduler=functools.partial(
            torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01, total_steps=total), scheduler_interval="step")

    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False}
    first = pl.Trainer(max_epochs=2, **options)
    first.fit(one_cycle(4), train_dataloaders=loader)
    first.save_checkpoint(tmp_path / "last.ckpt")
    resumed = pl.Trainer(max_epochs=4, **options)
    with pytest.raises(MemnetError, match=r"schedule is 4 steps long .* cannot resume to the 8 steps of "
                                          r"trainer.max_epochs 4; resume with trainer.max_epochs at most 2"):
        resumed.fit(one_cycle(8), train_dataloaders=loader, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 4  # refused before a step


def _one_cycle(total, interval, optimizer=torch.optim.Adam, max_lr=0.01):
    import functools

    torch.manual_seed(0)
    return RegressionModule(nn.Linear(3, 1), optimizer=optimizer, scheduler_interval=interval, scheduler=functools.partial(
        torch.optim.lr_scheduler.OneCycleLR, max_lr=max_lr, total_steps=total))


ONE_CYCLE_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                     "enable_model_summary": False, "limit_val_batches": 0}


def test_a_per_epoch_one_cycle_schedule_given_only_max_steps_is_checked_in_epochs():
    """scheduler_interval: epoch with trainer.max_steps only (max_epochs -1) was not checked: a 3-epoch schedule
    under max_steps 8 (4 epochs of 2 batches) trained 3 epochs and stopped with torch's traceback at the end of
    the fourth ("Tried to step 4 times. The specified number of total steps is 3"). It is refused before a step."""
    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    trainer = pl.Trainer(max_steps=8, **ONE_CYCLE_TRAINER)
    with pytest.raises(ValueError, match=re.escape(
            "OneCycleLR total_steps is 3 epochs but training runs for 4 (the epochs of trainer.max_steps 8, 2 steps "
            "an epoch); the schedule would end early and stop training with an error. Set "
            "model.init_args.scheduler.init_args.total_steps to at least 4, or lower trainer.max_steps.")):
        trainer.fit(_one_cycle(3, "epoch"), train_dataloaders=loader)
    assert trainer.global_step == 0
    trainer = pl.Trainer(max_steps=6, **ONE_CYCLE_TRAINER)  # 3 epochs: the whole schedule
    trainer.fit(_one_cycle(3, "epoch"), train_dataloaders=loader)
    assert trainer.global_step == 6


@pytest.mark.parametrize(("interval", "total", "limits", "warning"), [
    ("step", 10, {"max_steps": 4}, ("OneCycleLR total_steps is 10 steps but training stops after 4 (trainer.max_steps): "
     "the rate never anneals, the run ends 40.0% into its schedule; set model.init_args.scheduler.init_args."
     "total_steps to 4 for a whole cycle")),
    ("step", 10, {"max_epochs": 3}, ("OneCycleLR total_steps is 10 steps but training stops after 6 (trainer.max_epochs"
     " 3 of 2 steps)")),
    ("epoch", 5, {"max_steps": 4}, ("OneCycleLR total_steps is 5 epochs but training stops after 2 (the epochs of "
     "trainer.max_steps 4, 2 steps an epoch)")),
    ("epoch", 5, {"max_epochs": 9, "max_steps": 4}, "OneCycleLR total_steps is 5 epochs but training stops after 2"),
])
def test_a_one_cycle_schedule_longer_than_the_training_is_said_in_one_line(caplog, interval, total, limits, warning):
    """A run shorter than its OneCycleLR (max_steps 4 of a 10-step schedule) ended before the rate annealed, the
    schedule the config gave cut without a word."""
    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    with caplog.at_level("WARNING", logger="memnet"):
        pl.Trainer(**limits, **ONE_CYCLE_TRAINER).fit(_one_cycle(total, interval), train_dataloaders=loader)
    said = [record.getMessage() for record in caplog.records if "OneCycleLR total_steps" in record.getMessage()]
    assert len(said) == 1 and said[0].startswith(warning) and "\n" not in said[0], said


@pytest.mark.parametrize("fast_dev_run", [True, 3])
def test_a_fast_dev_run_is_not_warned_that_its_one_cycle_schedule_never_anneals(caplog, fast_dev_run):
    """`memnet fit --trainer.fast_dev_run true` on a OneCycleLR config (ntm/copy_small, 4000 steps) printed 'OneCycleLR
    total_steps is 4000 steps but training stops after 1 (trainer.max_steps): the rate never anneals, ...', a
    max_steps the user never gave, on a run cut short on purpose; not said there. A schedule shorter than the
    fast_dev_run is still refused."""
    loader = torch.utils.data.DataLoader(_regression_batches(4), batch_size=None)
    with caplog.at_level("WARNING", logger="memnet"):
        pl.Trainer(fast_dev_run=fast_dev_run, **ONE_CYCLE_TRAINER).fit(_one_cycle(10, "step"),
                                                                        train_dataloaders=loader)
    assert not [record for record in caplog.records if "OneCycleLR total_steps" in record.getMessage()], caplog.text
    with pytest.raises(ValueError, match="OneCycleLR total_steps is 2 steps but training runs for 3"):
        pl.Trainer(fast_dev_run=3, **ONE_CYCLE_TRAINER).fit(_one_cycle(2, "step"), train_dataloaders=loader)


def test_an_optimiser_lr_that_one_cycle_overrides_is_said_to_change_nothing(caplog):
    import functools

    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    # None: Adam's default lr (0.001), which a config without an lr gets filled in: not the user's, not said
    for lr, said in ((0.1, True), (0.01, False), (None, False)):
        caplog.clear()
        optimizer = functools.partial(torch.optim.Adam, **({} if lr is None else {"lr": lr}))
        with caplog.at_level("WARNING", logger="memnet"):
            pl.Trainer(max_steps=2, **ONE_CYCLE_TRAINER).fit(_one_cycle(2, "step", optimizer=optimizer),
                                                             train_dataloaders=loader)
        messages = [record.getMessage() for record in caplog.records if "changes nothing" in record.getMessage()]
        assert messages == ([
            ("the optimiser's lr 0.1 changes nothing: OneCycleLR sets the rate from its max_lr 0.01 "
            "(model.init_args.scheduler.init_args.max_lr); give the rate there")] if said else []), messages


@pytest.mark.parametrize(("interval", "limits", "message"), [
    ("step", {}, "stepped every step .*scheduler_interval: step"),
    ("epoch", {"check_val_every_n_epoch": 2}, "not every epoch is validated .*check_val_every_n_epoch 2"),
])
def test_a_plateau_schedule_without_its_metric_is_refused_before_the_first_step(interval, limits, message):
    """Stepped where no validation had logged val/loss (every step, or an epoch end without a validation),
    ReduceLROnPlateau stopped the run with Lightning's traceback (MisconfigurationException: 'ReduceLROnPlateau
    conditioned on metric val/loss which is not available') after the first step or the first epoch's training."""
    torch.manual_seed(0)
    module = RegressionModule(nn.Linear(3, 1), scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau,
                              scheduler_interval=interval)
    loader = torch.utils.data.DataLoader(_regression_batches(2), batch_size=None)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **limits)
    with pytest.raises(ValueError, match=f"ReduceLROnPlateau .*{message}"):
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 0
    every_epoch = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
    every_epoch.fit(RegressionModule(nn.Linear(3, 1), scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau),
                    train_dataloaders=loader, val_dataloaders=loader)
    assert every_epoch.global_step == 4


@pytest.mark.parametrize("value", [0, -3, 2.5, 64.0, True, "64"])
def test_eval_memory_size_must_be_a_positive_integer(value):
    """2.5, 64.0 and True were taken as a number of slots, and "64" failed with a TypeError naming nothing."""
    with pytest.raises(ValueError, match=rf"eval_memory_size must be a positive integer, got {value!r}"):
        SequenceModule(nn.Linear(3, 2), eval_memory_size=value)


@pytest.mark.parametrize("value", [True, 2.0, -1])
def test_print_predictions_must_be_a_non_negative_integer(value):
    with pytest.raises(ValueError, match=rf"print_predictions must be a non-negative integer, got {value!r}"):
        Seq2SeqModule(nn.Linear(3, 2), print_predictions=value)


@pytest.mark.parametrize("value", [True, 2.5, "0", 2**64, -(2**63) - 1])
def test_the_teacher_forcing_seed_must_be_an_integer_torch_takes(value):
    with pytest.raises(ValueError, match=r"seed \(of the teacher-forcing coin flips\) must be an integer in "
                                         rf"\[-2\*\*63, 2\*\*64\), got {re.escape(repr(value))}"):
        Seq2SeqModule(nn.Linear(3, 2), seed=value)
    Seq2SeqModule(nn.Linear(3, 2), seed=-1)  # torch.Generator takes it


def test_eval_memory_size_on_a_network_without_memory_is_refused_naming_the_setting():
    """It failed at the first validation batch with "forward() got an unexpected keyword argument 'memory_size'"."""
    from memnet.models.recurrent import RecurrentModel

    module = SequenceModule(RecurrentModel(3, 3), eval_memory_size=64)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"model.init_args.eval_memory_size \(64\) needs a network with memory slots"):
        trainer.validate(module, dataloaders=torch.utils.data.DataLoader([_sequence_batch(2, 2, seed=0)],
                                                                          batch_size=None), verbose=False)


def test_seq2seq_greedy_decoding_with_a_nan_logit_is_a_wrong_sequence():
    """A decoder whose winning logit overflowed to NaN (inf − inf) decodes the target still (arg-max takes NaN
    for the largest value): ``val/sequence_accuracy`` read it as exact, where the teacher-forced token accuracy,
    over the same NaN logits, is 0. A NaN model never scores as accurate."""
    from memnet.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    net = Seq2Seq(9, 8, embedding_size=4)
    g = torch.Generator().manual_seed(1)
    target = torch.cat([torch.randint(3, 8, (3, 4), generator=g), torch.full((3, 1), 2)], dim=1)  # (B, T), EOS last
    batch = {"source": torch.randint(3, 9, (3, 2), generator=g), "target": target, "length": 2}
    step = [0]

    def nan_on_the_target(module, inputs, logits):
        """logits -10 but NaN on the target token: of every step (B, T, V), or of the greedy step (B, V)."""
        if logits.dim() == 3:
            step[0] = 0
            return torch.full_like(logits, -10.0).scatter(-1, target.unsqueeze(-1), float("nan"))
        step[0] += 1
        return torch.full_like(logits, -10.0).scatter(-1, target[:, step[0] - 1 : step[0]], float("nan"))

    net.output.register_forward_hook(nan_on_the_target)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(Seq2SeqModule(net), dataloaders=torch.utils.data.DataLoader([batch], batch_size=None),
                              verbose=False)[0]
    assert logged["val/token_accuracy"] == 0.0
    assert logged["val/sequence_accuracy"] == 0.0
    assert logged["val/len_2/sequence_accuracy"] == 0.0


class _LogsBatchValue(MemnetModule):
    """Logs each batch's ``value`` under ``train/value``, weighted by its sequences (the rows of ``x``)."""

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        self.log(f"{stage}/value", batch["value"], on_step=True, on_epoch=True, batch_size=batch["x"].shape[0],
                 sync_dist=True)
        return self.net(batch["x"]).mean()


def test_a_training_epoch_value_under_ddp_is_its_exact_weighted_mean(monkeypatch):
    """Under DDP (sync_dist) Lightning averages the epoch's summed weights over the processes; an integer weight
    was averaged by integer division (gloo: a sum copied back into the int tensor divided by the world size).
    Two processes, simulated: the all-reduce is Lightning's own (``_sync_ddp``, gloo) with the other process's
    sums zero. Batches of 3 and 4 sequences, values 1 and 2: 11/7, not (11/2) / ⌊7/2⌋ = 11/6."""
    from lightning_fabric.utilities.distributed import _sync_ddp

    monkeypatch.setattr(torch.distributed, "barrier", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *args, **kwargs: None)  # + the other's zeros
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args, **kwargs: 2)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *args, **kwargs: "gloo")

    class TwoProcesses(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # after the data loaders were set up (no DistributedSampler)
            monkeypatch.setattr(type(trainer._accelerator_connector), "is_distributed", property(lambda _: True))
            monkeypatch.setattr(trainer.strategy, "reduce", lambda tensor, group=None, reduce_op="mean":
                                _sync_ddp(tensor, group=group, reduce_op=reduce_op))

    batches = [{"x": torch.ones(3, 2), "value": torch.tensor(1.0)}, {"x": torch.ones(4, 2), "value": torch.tensor(2.0)}]
    trainer = pl.Trainer(max_epochs=1, callbacks=[TwoProcesses()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_LogsBatchValue(nn.Linear(2, 1)),
                train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert float(trainer.callback_metrics["train/value_step"]) == 1.0  # the simulated reduction ran: (2 + 0) / 2
    assert float(trainer.callback_metrics["train/value_epoch"]) == pytest.approx(11 / 7, rel=1e-6)


def test_regression_training_epoch_loss_is_per_scored_value_as_in_validation():
    """``train/loss`` over an epoch of two batches of 2 series, 12 and 2 scored values, is the epoch's squared
    error over its scored values, as ``val/loss`` on the same batches; it was weighted by sequences (here the
    plain mean of the two batches' MSEs)."""
    from functools import partial

    from memnet.metrics import masked_mse

    g = torch.Generator().manual_seed(3)

    def batch(scored_steps: int) -> dict:
        mask = torch.zeros(2, 7)
        mask[:, 7 - scored_steps:] = 1.0
        return {"inputs": torch.randn(2, 7, 3, generator=g), "targets": torch.randn(2, 7, 1, generator=g),
                "mask": mask}

    batches = [batch(6), batch(1)]
    torch.manual_seed(0)
    module = RegressionModule(nn.Linear(3, 1), optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    with torch.no_grad():
        mse = [masked_mse(module(b["inputs"]), b["targets"], b["mask"]) for b in batches]
    per_value = float((mse[0] * 12 + mse[1] * 2) / 14)
    assert abs(float(sum(mse)) / 2 - per_value) > 0.05 * per_value  # the two weightings differ here
    assert float(trainer.callback_metrics["train/loss_epoch"]) == pytest.approx(per_value, rel=1e-5)
    logged = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    assert logged["val/loss"] == pytest.approx(per_value, rel=1e-5)
