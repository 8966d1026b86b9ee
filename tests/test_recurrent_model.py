"""RecurrentModel's conditional output, the ridge read-out and the modules that train them."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from memnet.controllers import (
    EchoStateController,
    ElmanRNN,
    FeedForwardController,
    GRUController,
    JordanRNN,
)
from memnet.lightning import ConditionalSequenceModule, RegressionModule, RidgeReadoutModule
from memnet.models.recurrent import (
    ConditionalState,
    RecurrentModel,
    RidgeAccumulator,
    ridge_regression,
)
from tasks.sequences import SeriesDataModule

B, T, D, K = 3, 7, 5, 4


def _conditional(feedback="bits"):
    torch.manual_seed(0)
    return RecurrentModel(D, K, controller=partial(GRUController, hidden_size=6), conditional=True,
                          feedback=feedback).double()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, D, generator=g, dtype=torch.float64),
            torch.randint(0, 2, (B, T, K), generator=g).double())


def test_teacher_forced_forward_equals_the_step_loop_fed_with_targets():
    model = _conditional()
    inputs, targets = _data()
    assert model.controller.input_size == D + K
    logits = model(inputs, targets=targets)
    state = model.initial_state(B)
    assert torch.all(state.prev_output == 0)
    for t in range(T):
        step_logits, state = model.step(inputs[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t])
        state = ConditionalState(state.controller, targets[:, t])  # teacher forcing: y(t) is the target


@pytest.mark.parametrize("feedback", ["bits", "probabilities", "one_hot"])
def test_free_running_feeds_back_its_own_predictions(feedback):
    model = _conditional(feedback)
    inputs, _ = _data(1)
    logits = model(inputs)
    # the same run, teacher-forced with the model's own feedback, gives the same logits
    fed = torch.zeros(B, T, K, dtype=torch.float64)
    for t in range(1, T):
        fed[:, t - 1] = model.feed_back(logits[:, t - 1])
    torch.testing.assert_close(model(inputs, targets=fed), logits)
    feedback_values = model.feed_back(logits[:, 0])
    if feedback == "bits":
        assert set(feedback_values.unique().tolist()) <= {0.0, 1.0}
    elif feedback == "one_hot":
        assert torch.all(feedback_values.sum(-1) == 1)


def test_running_free_where_scored_feeds_the_targets_of_unscored_steps():
    """Running free, an unscored step's prediction (never trained: copy's input phase) was fed back; given the
    targets and the mask, the model is fed the target after an unscored step, its own prediction after a scored one."""
    model = _conditional()
    inputs, targets = _data(3)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    logits = model(inputs, targets=targets, mask=mask)
    fed = targets.clone()
    for t in range(T - 1):
        fed[:, t] = torch.where(mask[:, t, None] > 0, model.feed_back(logits[:, t]), targets[:, t])
    torch.testing.assert_close(model(inputs, targets=fed), logits)
    torch.testing.assert_close(logits[2], model(inputs, targets=targets, mask=torch.ones(B, T))[2])  # all scored
    torch.testing.assert_close(logits[2], model(inputs)[2])  # all scored: free as without targets
    torch.testing.assert_close(logits[0, :4], model(inputs, targets=targets)[0, :4])  # up to the first scored step
    with pytest.raises(ValueError, match="mask is read with targets only"):
        model(inputs, mask=mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(3, 7\), got \(3, 6\)"):
        model(inputs, targets=targets, mask=mask[:, :6])


def test_the_free_running_scores_feed_the_targets_of_unscored_steps(tmp_path):
    """Scored at its last step alone, a model fed the targets before it runs free as it is teacher-forced: its
    free-running bits are its teacher-forced bits (they were those of the untrained guesses fed back)."""
    torch.manual_seed(7)
    net = RecurrentModel(1, K, controller=partial(GRUController, hidden_size=8), conditional=True)
    g = torch.Generator().manual_seed(7)
    targets = torch.randint(0, 2, (B, T, K), generator=g).float()
    mask = torch.zeros(B, T)
    mask[:, -1] = 1.0
    batch = {"inputs": torch.randn(B, T, 1, generator=g), "targets": targets, "mask": mask, "length": T}
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    module = ConditionalSequenceModule(net)
    metrics = _trainer(tmp_path).validate(module, dataloaders=loader, verbose=False)[0]
    assert metrics["val/free_bits_per_seq"] == pytest.approx(metrics["val/bits_per_seq"], rel=1e-6)
    prediction = pl.Trainer(logger=False, enable_progress_bar=False).predict(module, dataloaders=loader)[0]
    teacher_forced = (net(batch["inputs"], targets=targets) > 0).float() * mask.unsqueeze(-1)
    assert torch.equal(prediction["predictions"], teacher_forced)


def test_conditioning_changes_the_output_and_plain_models_refuse_targets():
    model = _conditional()
    inputs, targets = _data(2)
    assert not torch.allclose(model(inputs, targets=targets), model(inputs, targets=1 - targets))
    plain = RecurrentModel(D, K, controller=partial(ElmanRNN, hidden_size=3))
    with pytest.raises(ValueError, match="only read by a conditional model"):
        plain(inputs.float(), targets=targets.float())
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T, 4\)"):
        model(inputs, targets=targets[..., :2])
    with pytest.raises(ValueError, match="feedback must be one of"):
        RecurrentModel(D, K, conditional=True, feedback="sample")


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("controller", [partial(JordanRNN, hidden_size=3), partial(FeedForwardController, hidden_size=3),
                                        partial(EchoStateController, reservoir_size=9, sparsity=0.3)],
                         ids=["jordan", "feedforward", "esn"])
def test_inputs_of_the_wrong_shape_are_refused_in_one_line(controller, conditional):
    """A 2-d batch ran a Jordan network as (B, T) = (7, 5) and a feed-forward one as 7 steps of one sequence,
    and a wrong width or no steps failed inside the controller (mat1 and mat2, einsum, stack)."""
    model = RecurrentModel(D, K, controller=controller, conditional=conditional).double()
    for shape in [(T, D), (B, T, D + 1), (B, 0, D)]:
        with pytest.raises(ValueError, match=r"RecurrentModel: inputs (must have shape \(B, T, D_in=5\)|of shape)"):
            model(torch.zeros(shape, dtype=torch.float64))
    if not conditional:
        with pytest.raises(ValueError, match=r"RecurrentModel: inputs must have shape"):
            model.features(torch.zeros(T, D, dtype=torch.float64))


def test_an_unknown_engine_set_on_a_built_model_is_named():
    model = _conditional()
    model.engine = "fused"  # what a config override of the built model does; ran the eager loop silently
    with pytest.raises(ValueError, match=r"engine must be one of \['eager', 'compiled'\], got 'fused'"):
        model(_data()[0])


def test_ridge_solves_a_linear_problem_exactly():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(50, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 7, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    fitted_weight, fitted_bias = ridge_regression(features, features @ weight.T + bias, ridge=0.0)
    torch.testing.assert_close(fitted_weight, weight, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-9, rtol=1e-9)
    shrunk, _ = ridge_regression(features, features @ weight.T + bias, ridge=100.0)
    assert shrunk.norm() < 0.9 * weight.norm()


def test_accumulating_in_batches_with_a_mask_equals_one_solve():
    g = torch.Generator().manual_seed(4)
    features = torch.randn(4, 10, 6, generator=g, dtype=torch.float64)
    targets = torch.randn(4, 10, 2, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 10, generator=g) > 0.3).double()
    accumulator = RidgeAccumulator(6, 2)
    for i in range(4):
        accumulator.update(features[i : i + 1], targets[i : i + 1], mask[i : i + 1])
    keep = mask.bool()
    expected = ridge_regression(features[keep], targets[keep], ridge=0.1)
    for got, want in zip(accumulator.solve(ridge=0.1, dtype=torch.float64), expected):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"ridge must lie in \[0, inf\)"):
        accumulator.solve(ridge=-1.0)
    with pytest.raises(ValueError, match="no rows were accumulated"):
        RidgeAccumulator(6, 2).solve()


def test_an_infinite_ridge_is_refused():
    """ridge=inf passed the check and solved to an all-NaN read-out (inf · 0 in the system), exit 0."""
    g = torch.Generator().manual_seed(6)
    features, targets = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    with pytest.raises(ValueError, match=r"ridge must lie in \[0, inf\), got inf"):
        ridge_regression(features, targets, ridge=float("inf"))


def test_a_mask_of_another_shape_than_the_rows_is_refused():
    """A (T, B) mask for (B, T) rows was taken row by row (the wrong steps kept); another size was an IndexError."""
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    targets = torch.randn(2, 3, 1, generator=g, dtype=torch.float64)
    for mask in [torch.ones(3, 2), torch.ones(2, 3, 1), torch.ones(2, 4)]:
        accumulator = RidgeAccumulator(4, 1)
        with pytest.raises(ValueError, match=r"mask must have the leading shape of features \(2, 3\)"):
            accumulator.update(features, targets, mask)
        assert accumulator.count == 0


def _series(**kwargs):
    return SeriesDataModule(**{"series": "narma10", "length": 150, "washout": 30, "batch_size": 4, "train_size": 8,
                               "val_size": 4, "test_size": 4, "seed": 0, **kwargs})


def _trainer(tmp_path, epochs=1):
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)


def test_ridge_module_fits_a_readout_in_one_pass(tmp_path):
    """Targets that are an exact linear read-out of the reservoir are fitted to round-off."""
    reservoir = partial(EchoStateController, reservoir_size=20, spectral_radius=0.9, seed=5)
    teacher = RecurrentModel(1, 1, controller=reservoir)
    dm = _series()

    class Taught(pl.LightningDataModule):  # NARMA inputs, targets from the teacher's read-out
        def _relabel(self, batches):
            with torch.no_grad():
                return [dict(b, targets=teacher(b["inputs"])) for b in batches]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self._relabel(dm.make_set("train")), batch_size=None)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(self._relabel(dm.make_set("val")), batch_size=None)

    student = RecurrentModel(1, 1, controller=reservoir)
    assert not torch.allclose(student.output.weight, teacher.output.weight)
    module = RidgeReadoutModule(student, ridge=0.0)
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=Taught())
    torch.testing.assert_close(student.output.weight, teacher.output.weight, atol=1e-4, rtol=1e-3)
    assert trainer.callback_metrics["val/nrmse"] < 1e-3
    assert list(module.parameters()) and all(p.grad is None for p in module.parameters())


def test_a_ridge_fit_resumed_mid_epoch_keeps_the_rows_collected_before_the_checkpoint(tmp_path):
    """A checkpoint written after 2 of the epoch's 4 batches (as a pre-emption writes one) carries the ridge sums so
    far: the resumed run fits the read-out from all 4 batches, as the unbroken run (it fitted from the last 2)."""
    reservoir = partial(EchoStateController, reservoir_size=20, spectral_radius=0.9, seed=5)

    def module() -> RidgeReadoutModule:
        torch.manual_seed(0)
        return RidgeReadoutModule(RecurrentModel(1, 1, controller=reservoir), ridge=1e-6)

    class PreemptedAfterTwo(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                trainer.save_checkpoint(tmp_path / "preempted.ckpt")
                trainer.should_stop = True

    unbroken = module()
    _trainer(tmp_path).fit(unbroken, datamodule=_series(train_size=16))
    first = module()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                         callbacks=[PreemptedAfterTwo()])
    trainer.fit(first, datamodule=_series(train_size=16))
    resumed = module()
    _trainer(tmp_path).fit(resumed, datamodule=_series(train_size=16), ckpt_path=tmp_path / "preempted.ckpt")
    assert torch.equal(resumed.net.output.weight, unbroken.net.output.weight)
    assert torch.equal(resumed.net.output.bias, unbroken.net.output.bias)


def test_a_later_epoch_cut_short_keeps_the_read_out_fitted_from_the_whole_epoch_before(tmp_path):
    """Epoch 2 stopped by max_steps after 1 of its 4 batches refitted the read-out from that batch alone (the
    weights of the saved model from a quarter of the data); the fit from fewer rows never replaces the installed
    one, also in a run resumed from the first epoch's checkpoint."""

    def module() -> RidgeReadoutModule:
        torch.manual_seed(0)
        controller = partial(EchoStateController, reservoir_size=20, input_scaling=0.1, seed=5)
        return RidgeReadoutModule(RecurrentModel(1, 1, controller=controller), ridge=1e-6)

    def trainer(**kwargs) -> pl.Trainer:
        return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, **kwargs)

    class PreemptedInEpochTwo(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                trainer.save_checkpoint(tmp_path / "preempted.ckpt")
                trainer.should_stop = True

    whole = module()
    trainer(max_epochs=1).fit(whole, datamodule=_series(train_size=16))  # 4 batches an epoch
    cut = module()
    with pytest.warns(UserWarning, match="epoch 1 collected 480 rows .*fewer than the 1920 .*: it is kept"):
        trainer(max_epochs=2, max_steps=5).fit(cut, datamodule=_series(train_size=16))
    # written after epoch 2's first batch, resumed to max_steps 6: epoch 2 ends after 2 of its batches
    trainer(max_epochs=2, callbacks=[PreemptedInEpochTwo()]).fit(module(), datamodule=_series(train_size=16))
    resumed = module()
    with pytest.warns(UserWarning, match="epoch 1 collected 960 rows .*fewer than the 1920 .*: it is kept"):
        trainer(max_epochs=2, max_steps=6).fit(resumed, datamodule=_series(train_size=16),
                                               ckpt_path=tmp_path / "preempted.ckpt")
    for model in (cut, resumed):
        torch.testing.assert_close(model.net.output.weight, whole.net.output.weight, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.net.output.bias, whole.net.output.bias, rtol=1e-4, atol=1e-4)


def test_a_ridge_fit_counts_its_batches_as_steps_so_max_steps_and_the_best_checkpoint_work(tmp_path):
    """Its batches are its steps: global_step stayed 0, so max_steps never stopped it (max_epochs -1 ran forever)
    and the best checkpoint was never written (Lightning saves none at the step it saved last, 0)."""
    from memnet.callbacks import LastAndBestCheckpoint

    torch.manual_seed(0)
    module = RidgeReadoutModule(RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=20,
                                                                        seed=5)), ridge=1e-6)
    checkpoints = LastAndBestCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", save_last=True)
    trainer = pl.Trainer(max_epochs=3, max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[checkpoints])
    trainer.fit(module, datamodule=_series(train_size=16))  # 4 batches an epoch
    assert (trainer.global_step, trainer.current_epoch) == (6, 2)  # stopped inside the second epoch, not after 3
    assert Path(checkpoints.best_model_path).name == "epoch=0-step=4.ckpt"  # the first epoch's validation


def test_ridge_module_needs_a_readout():
    with pytest.raises(ValueError, match="features"):
        RidgeReadoutModule(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"ridge must lie in \[0, inf\)"):
        RidgeReadoutModule(RecurrentModel(1, 1), ridge=-1.0)
    with pytest.raises(ValueError, match=r"ridge must lie in \[0, inf\), got inf"):  # was refused a whole epoch later
        RidgeReadoutModule(RecurrentModel(1, 1), ridge=float("inf"))


def test_regression_module_trains_the_esn_readout_by_gradient(tmp_path):
    torch.manual_seed(6)
    net = RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=20, seed=6))
    reservoir = net.controller.recurrent_weight.clone()
    module = RegressionModule(net, optimizer=partial(torch.optim.Adam, lr=0.05))
    trainer = _trainer(tmp_path, epochs=8)
    before = trainer.validate(module, datamodule=_series(), verbose=False)[0]["val/nrmse"]
    trainer.fit(module, datamodule=_series())
    assert torch.equal(net.controller.recurrent_weight, reservoir)
    assert trainer.callback_metrics["val/nrmse"] < 0.5 * before


def test_conditional_module_logs_teacher_forced_and_free_running_costs(tmp_path):
    torch.manual_seed(7)
    net = RecurrentModel(1, K, controller=partial(GRUController, hidden_size=8), conditional=True)
    g = torch.Generator().manual_seed(7)
    targets = torch.randint(0, 2, (B, T, K), generator=g).float()
    batch = {"inputs": torch.zeros(B, T, 1), "targets": targets, "mask": torch.ones(B, T), "length": T}
    module = ConditionalSequenceModule(net)
    assert module.forward_kwargs(batch)["targets"] is targets
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = _trainer(tmp_path)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    for key in ("val/bits_per_seq", "val/free_bits_per_seq", "val/free_bit_errors_per_seq"):
        assert key in trainer.callback_metrics


def test_a_plain_sequence_module_refuses_a_conditional_network():
    """It passes no targets: the network would train free-running, on its own predictions, with no error."""
    from memnet.lightning import SequenceModule

    net = RecurrentModel(1, K, controller=partial(GRUController, hidden_size=8), conditional=True)
    with pytest.raises(ValueError, match=r"SequenceModule cannot train a conditional RecurrentModel "
                                         r"\(conditional=True\).*memnet\.lightning\.ConditionalSequenceModule"):
        SequenceModule(net)
    SequenceModule(RecurrentModel(1, K, controller=partial(GRUController, hidden_size=8)))  # not conditional: fine
    ConditionalSequenceModule(net)  # the module that feeds it the targets


@pytest.mark.parametrize("module", [RegressionModule, RidgeReadoutModule])
def test_a_regression_module_refuses_a_conditional_network(module):
    """It passes no targets: RegressionModule trained the network free-running on its own predictions, fed back
    as bits (logits > 0) of a real-valued series, with no error; RidgeReadoutModule stopped at its first batch."""
    net = RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=9, sparsity=0.3),
                         conditional=True)
    with pytest.raises(ValueError, match=rf"{module.__name__} cannot train a conditional RecurrentModel "
                                         r"\(conditional=True\): it passes no targets"):
        module(net)
    module(RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=9, sparsity=0.3)))  # fine


def test_a_config_training_a_conditional_network_with_a_plain_module_stops_in_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from memnet.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "gru" / "markov_conditional.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--model.class_path", "memnet.lightning.SequenceModule",
              "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "SequenceModule cannot train a conditional RecurrentModel" in err
    assert "use memnet.lightning.ConditionalSequenceModule" in err


def test_a_validation_in_mid_epoch_keeps_the_rows_so_far(tmp_path):
    """With ``val_check_interval: 0.5`` the read-out of the epoch's end is fitted on every training batch, not on
    those after the mid-epoch validation."""
    torch.manual_seed(0)
    net = RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=20, spectral_radius=0.9, seed=5))
    dm = SeriesDataModule(series="narma10", length=150, washout=30, batch_size=4, train_size=16, val_size=4,
                          test_size=4, seed=0)
    module = RidgeReadoutModule(net, ridge=1e-6)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                         val_check_interval=0.5)
    trainer.fit(module, datamodule=dm)
    assert len(dm.make_set("train")) == 4
    everything = RidgeAccumulator(net.output.in_features, 1)
    for batch in dm.make_set("train"):
        with torch.no_grad():
            everything.update(net.features(batch["inputs"]), batch["targets"], batch["mask"])
    weight, bias = everything.solve(ridge=1e-6)
    torch.testing.assert_close(net.output.weight, weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net.output.bias, bias, atol=1e-5, rtol=1e-4)
