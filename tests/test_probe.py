"""The gradient-through-time probe: one norm per step, known geometric decay, agreement with autograd."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from memnet.controllers import ElmanRNN, GRUController, LSTMController
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from memnet.models.recurrent import RecurrentModel
from memnet.probe import GradientProbe, gradient_through_time, last_step_loss, plot_gradient_panels

B, T, D, K, H = 3, 11, 5, 4, 6


def _data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(B, T, D, generator=g, dtype=dtype)
    targets = torch.randint(0, 2, (B, T, K), generator=g).to(dtype)
    return inputs, targets


def _linear_regime_rnn(scale: float) -> RecurrentModel:
    """A vanilla RNN with W = scale · I and no input or bias: h stays 0, tanh′ = 1, ∂h(t)/∂h(t−1) = scale · I."""
    torch.manual_seed(1)
    model = RecurrentModel(D, K, controller=partial(ElmanRNN, hidden_size=H)).double()
    rnn = model.controller.rnn
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(scale * torch.eye(H))
        rnn.weight_ih_l0.zero_()
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return model


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.25])
def test_vanilla_rnn_gradient_is_geometric_in_the_recurrent_scale(scale):
    model = _linear_regime_rnn(scale)
    inputs, targets = _data()
    norms = gradient_through_time(model, inputs, targets)
    assert norms.shape == (T,) and norms.dtype == torch.float64
    # ∂L/∂h_in(t) = scale^(T−t) · ∂L/∂h(T−1), with ∂L/∂h(T−1) = Vᵀ (σ(c) − y) / B
    probabilities = torch.sigmoid(model.output.bias).expand(B, K)
    last = ((probabilities - targets[:, -1]) @ model.output.weight / B).norm().item()
    expected = torch.tensor([scale ** (T - t) * last for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(norms, expected)


def test_first_norm_equals_autograd_through_the_initial_state():
    torch.manual_seed(2)
    model = RecurrentModel(D, K, controller=partial(LSTMController, hidden_size=H, num_layers=2)).double()
    inputs, targets = _data(2)
    norms = gradient_through_time(model, inputs, targets, loss="all")
    h0 = torch.zeros(2, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(2, B, H, dtype=torch.float64, requires_grad=True)
    logits = model(inputs, state=(h0, c0))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / B
    gh, gc = torch.autograd.grad(loss, (h0, c0))
    assert norms[0].item() == pytest.approx(torch.sqrt(gh.pow(2).sum() + gc.pow(2).sum()).item(), rel=1e-9)


def test_last_step_loss_only_sees_scored_steps():
    model = _linear_regime_rnn(0.5)
    inputs, targets = _data(3)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[:, -3:] = 0  # the last scored step is T − 4: the states entering the last three steps get nothing
    norms = gradient_through_time(model, inputs, targets, mask=mask)
    assert torch.all(norms[-3:] == 0) and torch.all(norms[:-3] > 0)


def test_last_step_loss_scores_each_sequence_at_its_own_last_scored_step():
    from memnet.probe import last_step_loss

    logits = torch.randn(2, 5, 3, dtype=torch.float64)
    targets = torch.randint(0, 2, (2, 5, 3)).double()
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float64)  # the second ends at step 2
    expected = sum(torch.nn.functional.binary_cross_entropy_with_logits(logits[b, t], targets[b, t], reduction="sum")
                   for b, t in ((0, 4), (1, 2))) / 2
    assert last_step_loss(logits, targets, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    flipped = targets.clone()
    flipped[1, 4] = 1 - flipped[1, 4]  # an unscored target of the shorter sequence changes nothing
    assert last_step_loss(logits, flipped, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    # a sequence with no scored step is not in the mean either: the loss of a batch is its scored sequences' mean
    padded = (torch.cat([logits, torch.randn(1, 5, 3, dtype=torch.float64)]), torch.cat([targets, targets[:1]]),
              torch.cat([mask, torch.zeros(1, 5, dtype=torch.float64)]))
    assert last_step_loss(*padded).item() == pytest.approx(expected.item(), rel=1e-12)


def test_all_steps_loss_is_a_mean_over_the_scored_sequences():
    from memnet.probe import all_steps_loss

    logits = torch.randn(3, 4, 2, dtype=torch.float64)
    targets = torch.randint(0, 2, (3, 4, 2)).double()
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)  # the third: nothing scored
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(logits[0, :3], targets[0, :3], reduction="sum") + bce(logits[1, 1], targets[1, 1], reduction="sum")) / 2
    assert all_steps_loss(logits, targets, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    assert all_steps_loss(logits, targets, torch.zeros(3, 4, dtype=torch.float64)).item() == 0.0


def test_ntm_state_parts():
    torch.manual_seed(4)
    ntm = NTM(D, K, controller=partial(LSTMController, hidden_size=H), memory_size=7, word_size=3, num_reads=2)
    inputs, targets = _data(4, torch.float32)
    whole = gradient_through_time(ntm, inputs, targets)
    controller = gradient_through_time(ntm, inputs, targets, state_part="controller")
    assert whole.shape == controller.shape == (T,)
    assert torch.isfinite(whole).all() and torch.all(whole > 0)
    assert torch.all(controller <= whole * (1 + 1e-9))
    assert torch.any(controller < whole * 0.999)  # memory and read vectors carry some of it


def test_each_part_of_a_memory_state_and_the_initial_memory_in_h0(monkeypatch):
    """‖∂L/∂h(0)‖ of an NTM was reported whole: almost all of it ∂L/∂M(0), the initial memory's, scaled by the
    1/‖M(0)‖ of content addressing's cosine (every entry 1e-6), not gradient carried through time. Each part
    of the state is measured on its own (float64: the memory part at t = 0 against autograd)."""
    import memnet.memory
    from memnet.models.dnc import DNC
    from memnet.probe import gradient_through_time_by_part

    torch.manual_seed(7)
    ntm = NTM(D, K, controller=partial(LSTMController, hidden_size=H), memory_size=7, word_size=3,
              num_reads=2).double()
    inputs, targets = _data(7)
    parts = gradient_through_time_by_part(ntm, inputs, targets)
    assert list(parts) == ["controller", "memory", "read_vectors", "weights"]
    assert all(norms.shape == (T,) and norms.dtype == torch.float64 for norms in parts.values())
    whole = torch.stack([norms.pow(2) for norms in parts.values()]).sum(0).sqrt()
    torch.testing.assert_close(whole, gradient_through_time(ntm, inputs, targets), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["controller"], gradient_through_time(ntm, inputs, targets,
                                                                          state_part="controller"), rtol=1e-12, atol=0)
    # the memory part at t = 0 is ‖∂L/∂M(0)‖ of the initial memory the loop starts from, by autograd
    state = ntm.initial_state(B, dtype=torch.float64)
    memory = state.memory.clone().requires_grad_(True)
    state, outputs = state._replace(memory=memory), []
    for t in range(T):
        logits, state = ntm.step(inputs[:, t], state)
        outputs.append(logits)
    (grad,) = torch.autograd.grad(last_step_loss(torch.stack(outputs, 1), targets, torch.ones(B, T)), memory)
    assert parts["memory"][0].item() == pytest.approx(grad.norm().item(), rel=1e-9)
    # it is the initial memory's scale: the same network from a constant of 1e-4 has a tenth of it (or less) at
    # t = 0 and the same gradients afterwards; at 1e-6 it is the bulk of ‖∂L/∂h(0)‖ and far above t = 1's
    monkeypatch.setattr(memnet.memory, "CONSTANT_INIT", 1e-4)
    larger = gradient_through_time_by_part(ntm, inputs, targets)
    assert parts["memory"][0] > 10 * larger["memory"][0]
    torch.testing.assert_close(larger["controller"][1:], parts["controller"][1:], rtol=0.05, atol=0)
    torch.testing.assert_close(larger["memory"][1:], parts["memory"][1:], rtol=0.05, atol=0)
    assert parts["memory"][0] > 0.99 * whole[0] and parts["memory"][0] > 10 * parts["memory"][1]
    monkeypatch.undo()
    # a DNC's parts are its state's fields; a state without fields is the one part "state"
    torch.manual_seed(8)
    dnc = DNC(D, K, controller=partial(LSTMController, hidden_size=H), memory_size=7, word_size=3, num_reads=2)
    dnc_parts = gradient_through_time_by_part(dnc, inputs.float(), targets.float())
    assert list(dnc_parts) == ["controller", "memory", "read_vectors", "read_weights", "write_weights", "usage",
                               "precedence", "link"]
    assert list(gradient_through_time_by_part(_linear_regime_rnn(0.5), inputs, targets)) == ["state"]


def test_the_probe_measures_the_network_without_dropout_and_leaves_its_mode():
    # a fresh network is in training mode: the probe drew dropout masks, two calls gave two curves
    torch.manual_seed(6)
    model = RecurrentModel(D, K, controller=partial(LSTMController, hidden_size=H, num_layers=2, dropout=0.5)).double()
    inputs, targets = _data(6)
    first, second = gradient_through_time(model, inputs, targets), gradient_through_time(model, inputs, targets)
    assert model.training
    expected = gradient_through_time(model.eval(), inputs, targets)
    assert not model.training
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=0)


def test_the_probe_works_in_inference_mode():
    # trainer.validate runs the callback's hook in inference mode, where enable_grad records nothing
    model = _linear_regime_rnn(0.5)
    inputs, targets = _data()
    expected = gradient_through_time(model, inputs, targets)
    with torch.inference_mode():
        inputs, targets = inputs.clone(), targets.clone()  # inference tensors, as a validation batch is
        norms = gradient_through_time(model, inputs, targets, mask=torch.ones(B, T, dtype=torch.float64))
    torch.testing.assert_close(norms, expected)


def test_bad_arguments_are_named():
    model = _linear_regime_rnn(0.5)
    inputs, targets = _data()
    with pytest.raises(ValueError, match="loss must be one of"):
        gradient_through_time(model, inputs, targets, loss="first")
    with pytest.raises(ValueError, match="state_part must be"):
        gradient_through_time(model, inputs, targets, state_part="memory")
    with pytest.raises(ValueError, match="must share B and T"):
        gradient_through_time(model, inputs, targets[:, :-1])
    with pytest.raises(TypeError, match="initial_state"):
        gradient_through_time(torch.nn.Linear(2, 2), inputs, targets)
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        GradientProbe(every_n_epochs=0)


def test_plot_writes_a_png(tmp_path):
    path = plot_gradient_panels(tmp_path / "p.png", {"a": {"RNN": torch.rand(T), "zero": torch.zeros(T)},
                                                     "b": {"LSTM": torch.rand(T)}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_batch_run():
    """An Elman network, its one batch of float32 sequences and a loader of that batch."""
    torch.manual_seed(5)
    net = RecurrentModel(D, K, controller=partial(ElmanRNN, hidden_size=H))
    inputs, targets = _data(5, torch.float32)
    batch = {"inputs": inputs, "targets": targets, "mask": torch.ones(B, T), "length": T}
    return net, inputs, targets, torch.utils.data.DataLoader([batch], batch_size=None)


def test_callback_draws_and_logs_during_training(tmp_path):
    net, _, _, loader = _one_batch_run()
    probe = GradientProbe(max_sequences=2)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe])
    trainer.fit(SequenceModule(net), train_dataloaders=loader, val_dataloaders=loader)
    assert list(probe.curves) == ["epoch 0, step 1", "epoch 1, step 2"]
    assert probe.last_path.parts[-2:] == ("gradient_probe", "epoch_0001_step_00000002.png")
    assert probe.last_path.exists() and tmp_path in probe.last_path.parents
    assert "probe/log10_grad_first" in trainer.callback_metrics
    assert probe.curves["epoch 1, step 2"].shape == (T,)


@pytest.mark.parametrize("schedule", [{"max_epochs": 1, "val_check_interval": 0.5},  # two validations in an epoch
                                      {"max_steps": 4, "val_check_interval": 2}])  # by steps, in one long epoch
def test_callback_keeps_one_figure_and_curve_per_validation_of_one_epoch(tmp_path, schedule):
    net, inputs, targets, _ = _one_batch_run()
    batch = {"inputs": inputs, "targets": targets, "mask": torch.ones(B, T), "length": T}
    train = torch.utils.data.DataLoader([batch] * (2 if "max_epochs" in schedule else 100), batch_size=None)
    val = torch.utils.data.DataLoader([batch], batch_size=None)
    probe = GradientProbe(max_sequences=2)
    trainer = pl.Trainer(**schedule, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe])
    trainer.fit(SequenceModule(net), train_dataloaders=train, val_dataloaders=val)
    steps = (1, 2) if "max_epochs" in schedule else (2, 4)
    assert list(probe.curves) == [f"epoch 0, step {step}" for step in steps]  # was one "epoch 0", overwritten
    drawn = sorted(p.name for p in probe.last_path.parent.glob("*.png"))
    assert drawn == [f"epoch_0000_step_{step:08d}.png" for step in steps]


def test_callback_counts_validation_epochs_not_epochs(tmp_path):
    # validations after epochs 1, 3, 5: every second one is after epochs 1 and 5 (current_epoch % 2 is never 0)
    net, _, _, loader = _one_batch_run()
    probe = GradientProbe(every_n_epochs=2, max_sequences=2)
    trainer = pl.Trainer(max_epochs=6, check_val_every_n_epoch=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[probe])
    trainer.fit(SequenceModule(net), train_dataloaders=loader, val_dataloaders=loader)
    assert list(probe.curves) == ["epoch 1, step 2", "epoch 5, step 6"]


def test_callback_probes_under_trainer_validate(tmp_path):
    net, inputs, targets, loader = _one_batch_run()
    probe = GradientProbe(max_sequences=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe])
    trainer.validate(SequenceModule(net), dataloaders=loader)
    torch.testing.assert_close(probe.curves["epoch 0, step 0"], gradient_through_time(net, inputs[:2], targets[:2]))
    assert "probe/log10_grad_first" in trainer.callback_metrics
    # no figure: `memnet validate` has no run folder of its own, and drawing made a stray runs/memnet/<id>/
    assert probe.last_path is None and not list(tmp_path.rglob("*.png"))


def test_callback_logs_each_part_of_a_memory_state(tmp_path):
    """probe/log10_grad_first of an NTM is mostly its initial memory's: each part's own is logged too."""
    from memnet.probe import gradient_through_time_by_part

    torch.manual_seed(9)
    net = NTM(D, K, controller=partial(LSTMController, hidden_size=H), memory_size=7, word_size=5)
    inputs, targets = _data(9, torch.float32)
    loader = torch.utils.data.DataLoader([{"inputs": inputs, "targets": targets, "mask": torch.ones(B, T),
                                           "length": T}], batch_size=None)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[GradientProbe(max_sequences=2)])
    trainer.validate(SequenceModule(net), dataloaders=loader)
    parts = gradient_through_time_by_part(net, inputs[:2], targets[:2])
    for part, norms in parts.items():
        for key, t in (("first", 0), ("last", -1)):
            logged = float(trainer.callback_metrics[f"probe/{part}/log10_grad_{key}"])
            assert logged == pytest.approx(torch.log10(norms[t]).item(), rel=1e-5)
    assert float(trainer.callback_metrics["probe/log10_grad_first"]) == pytest.approx(
        torch.log10(torch.stack([n[0] for n in parts.values()]).norm()).item(), rel=1e-5)


def test_callback_probes_with_the_memory_size_of_validation(tmp_path, monkeypatch):
    """With ``eval_memory_size`` the validation runs with N = 13 slots where training had 7: so does the probe."""
    torch.manual_seed(3)
    net = NTM(D, K, controller=partial(LSTMController, hidden_size=H), memory_size=7, word_size=5)
    inputs, targets = _data(3, torch.float32)
    loader = torch.utils.data.DataLoader([{"inputs": inputs, "targets": targets, "mask": torch.ones(B, T),
                                           "length": T}], batch_size=None)
    sizes = []
    initial_state = net.initial_state
    monkeypatch.setattr(net, "initial_state", lambda *a, **k: sizes.append(k.get("memory_size")) or initial_state(*a, **k))
    probe = GradientProbe(max_sequences=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe])
    trainer.validate(SequenceModule(net, eval_memory_size=13), dataloaders=loader)
    assert sizes == [13, 13]  # the validation batch, then the probe (was None: the training N)
    monkeypatch.undo()
    expected = gradient_through_time(net, inputs[:2], targets[:2], memory_size=13)
    torch.testing.assert_close(probe.curves["epoch 0, step 0"], expected)
    assert not torch.allclose(expected, gradient_through_time(net, inputs[:2], targets[:2]))
    # a LightningModule handed to the function itself is probed as it evaluates too
    torch.testing.assert_close(gradient_through_time(SequenceModule(net, eval_memory_size=13), inputs[:2],
                                                     targets[:2]), expected)


def test_memnet_probe_command_draws_the_comparison(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from memnet.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "probe" / "rnn.yaml"
    monkeypatch.chdir(tmp_path)
    main(["probe", str(config), "--out", str(tmp_path / "probe.png"), "--max-sequences", "2",
          "--train-steps", "0", "1"])
    assert (tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "0 training steps" in out and "1 training steps" in out and "RNN (ρ(W) = " in out


def test_the_command_tables_a_memory_models_parts(tmp_path, monkeypatch, capsys):
    """The table gave an NTM's ‖∂L/∂h(0)‖ whole, its initial memory's part (scaled by 1/1e-6) unsaid: each part
    is a row below the model's, with t = 1 beside t = 0, and a note says what the memory's part of h(0) is."""
    from memnet.cli import main

    config = _tiny_ntm_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    main(["probe", str(config), "--out", str(tmp_path / "probe.png"), "--max-sequences", "2"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.startswith(("NTM_SMALL", "  "))}
    assert list(rows) == ["NTM_SMALL", "controller", "memory", "read_vectors", "weights"]
    assert "‖∂L/∂h(1)‖" in out and all(len(values) == 4 for values in rows.values())  # t = 0, 1, T/2, T − 1
    whole = torch.tensor(list(rows.values())[1:]).pow(2).sum(0).sqrt()
    torch.testing.assert_close(whole, torch.tensor(rows["NTM_SMALL"]), rtol=2e-3, atol=0)  # printed to 4 digits
    assert rows["memory"][0] > 0.99 * rows["NTM_SMALL"][0]  # h(0)'s norm is the initial memory's
    assert "initial memory M(0)" in out and "compare such a model from t = 1" in out


def test_two_configs_of_one_file_name_get_two_labels():
    from memnet.cli.probe import compare

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = [str(root / "lstm" / "copy.yaml"), str(root / "gru" / "copy.yaml")]
    assert list(compare(configs, train_steps=[0], max_sequences=1)[0]) == ["LSTM/COPY", "GRU/COPY"]  # was one "COPY"
    with pytest.raises(ValueError, match="labels must differ"):
        compare(configs, labels=["A", "A"], train_steps=[0])


def test_the_wandb_chart_is_logged_on_lightnings_step_axis(tmp_path):
    """Without an explicit W&B step: one behind W&B's own counter (every logged row advances it) is dropped."""
    from pytorch_lightning.loggers import WandbLogger

    class Run:  # stands in for the wandb run; records what was logged and how
        def __init__(self):
            self.calls = []
            self.config = type("Config", (), {"update": lambda *args, **kwargs: None})()

        def define_metric(self, *args, **kwargs):
            pass

        def log(self, data, step=None, **kwargs):
            self.calls.append((sorted(data), step))

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    logger._experiment = Run()
    torch.manual_seed(5)
    net = RecurrentModel(D, K, controller=partial(ElmanRNN, hidden_size=H))
    inputs, targets = _data(5, torch.float32)
    loader = torch.utils.data.DataLoader([{"inputs": inputs, "targets": targets, "mask": torch.ones(B, T), "length": T}],
                                         batch_size=None)
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[GradientProbe(max_sequences=2)])
    trainer.fit(SequenceModule(net), train_dataloaders=loader, val_dataloaders=loader)
    curves = [(keys, step) for keys, step in logger._experiment.calls if "gradient_probe/curve" in keys]
    assert curves == [(["gradient_probe/curve", "trainer/global_step"], None)]


def test_a_conditional_model_is_probed_as_it_is_evaluated():
    """The probe fed a conditional model its own predictions of unscored steps too; it runs it free where scored,
    as its free-running scores do, fed the targets after the unscored steps."""
    torch.manual_seed(3)
    net = RecurrentModel(2, 3, controller=partial(GRUController, hidden_size=5), conditional=True).double()
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (4, 6, 3), generator=g).double()
    mask = torch.zeros(4, 6, dtype=torch.float64)
    mask[:, 3:] = 1.0
    seen = []

    def loss(logits, targets, mask):
        seen.append(logits.detach())
        return last_step_loss(logits, targets, mask)

    norms = gradient_through_time(net, inputs, targets, mask=mask, loss=loss)
    torch.testing.assert_close(seen[0], net(inputs, targets=targets, mask=mask))
    controller = gradient_through_time(net, inputs, targets, mask=mask, state_part="controller")
    assert torch.all(norms >= controller) and norms[-1] > controller[-1]  # y(t−1) counted in h(t) with all


def test_the_command_trains_a_conditional_model_with_teacher_forcing():
    """A conditional network trains on the true previous outputs, as ``memnet fit`` trains it (its module passes
    the targets): the command's curve after 2 steps is that of the network trained so by hand."""
    from memnet.cli.probe import compare
    from memnet.cli.rebuild import instantiate
    from memnet.metrics import sequence_metrics

    config = str(Path(__file__).resolve().parents[1] / "configs" / "gru" / "markov_conditional.yaml")
    curve = compare([config], train_steps=[2], max_sequences=2)[2]["MARKOV_CONDITIONAL"]

    cli = instantiate([config])  # the same seed: the same initial weights and batches
    module, data = cli.model, cli.datamodule
    optimizer = module.optimizer(module.parameters())
    probe_batch = next(iter(data.val_dataloader()))
    for batch in list(data.train_dataloader())[:2]:
        logits = module.net(batch["inputs"], targets=batch["targets"])
        loss = sequence_metrics(logits, batch["targets"], batch["mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        optimizer.step()
    expected = gradient_through_time(module.net, probe_batch["inputs"][:2], probe_batch["targets"][:2],
                                     mask=probe_batch["mask"][:2])
    torch.testing.assert_close(curve, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("loss", "said"), [("last", "loss at the last scored step of T = "),
                                            ("all", "loss at every scored step of T = ")])
def test_the_command_titles_its_panels_with_the_loss_it_probed(tmp_path, monkeypatch, loss, said):
    import memnet.cli.probe as command

    titles = []
    drawn = command.plot_gradient_panels
    monkeypatch.setattr(command, "plot_gradient_panels", lambda path, panels: titles.extend(panels) or drawn(path, panels))
    config = Path(__file__).resolve().parents[1] / "configs" / "probe" / "rnn.yaml"
    monkeypatch.chdir(tmp_path)
    command.main([str(config), "--out", str(tmp_path / "probe.png"), "--max-sequences", "2", "--loss", loss])
    assert titles == [f"{said}101, at initialisation"]  # "all" was titled "loss at the last step"


def test_the_command_probes_with_the_memory_size_of_validation(tmp_path, monkeypatch):
    """A config with ``eval_memory_size`` validates with N = 11 slots where training has 6: ``memnet probe``
    probed the first validation batch with the training N (the callback probes with 11)."""
    from memnet.cli.probe import compare

    config = _tiny_ntm_config(tmp_path, model="    eval_memory_size: 11\n")
    sizes = []
    initial_state = NTM.initial_state
    monkeypatch.setattr(NTM, "initial_state",
                        lambda self, *a, **k: sizes.append(k.get("memory_size")) or initial_state(self, *a, **k))
    compare([config], train_steps=[0], max_sequences=2)
    assert sizes == [11]  # was [None]: the training N


@pytest.mark.parametrize("config", ["seq2seq/reverse.yaml", "esn/narma10.yaml"])
def test_the_command_refuses_a_config_whose_model_is_not_a_binary_sequence_module(tmp_path, monkeypatch, capsys,
                                                                                 config):
    """A seq2seq config stopped with KeyError: 'inputs' (a traceback); an ESN on NARMA-10 was trained and probed
    with the binary cross-entropy of its real-valued targets, exit 0."""
    from memnet.cli import main

    path = Path(__file__).resolve().parents[1] / "configs" / config
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(path), "--out", str(tmp_path / "probe.png"), "--train-steps", "0"])
    assert exit_info.value.code == 2
    assert f"config {path}: memnet probe trains and probes networks on binary sequences" in capsys.readouterr().err
    assert not (tmp_path / "probe.png").exists()


def _tiny_ntm_config(tmp_path, *, model: str = "") -> Path:
    """configs/probe/ntm.yaml, small (N = 6 slots of 3, LSTM 4, length 3); ``model`` lines under ``model.init_args:``."""
    ntm = Path(__file__).resolve().parents[1] / "configs" / "probe" / "ntm.yaml"
    config = tmp_path / "ntm_small.yaml"
    config.write_text(f"extends: {ntm}\n"
                      "model:\n  init_args:\n" + model + "    net:\n      init_args:\n"
                      "        memory_size: 6\n        word_size: 3\n        controller:\n          init_args:\n"
                      "            hidden_size: 4\n"
                      "data:\n  init_args:\n    task:\n      init_args:\n        max_length: 3\n    val_lengths: [3]\n")
    return config


def _tiny_rnn_config(tmp_path, *, trainer: str = "", model: str = "") -> Path:
    """configs/probe/rnn.yaml, small; ``trainer`` lines under ``trainer:``, ``model`` under ``model.init_args:``."""
    rnn = Path(__file__).resolve().parents[1] / "configs" / "probe" / "rnn.yaml"
    config = tmp_path / "rnn_tiny.yaml"
    config.write_text(f"extends: {rnn}\n" + (f"trainer:\n{trainer}" if trainer else "")
                      + "model:\n  init_args:\n    net:\n      init_args:\n        controller:\n          init_args:\n"
                      "            hidden_size: 5\n" + model
                      + "data:\n  init_args:\n    task:\n      init_args:\n        max_length: 3\n    val_lengths: [3]\n"
                      "    batches_per_epoch: 2\n")
    return config


def test_the_command_trains_with_the_configs_scheduler_and_clipping(tmp_path):
    """The probe's loop trained at the optimiser's first rate, its gradients clipped by norm, whatever the config's
    scheduler (a step decay by 10 after each step here, per epoch of 2 batches below) and gradient_clip_algorithm
    (value) said; it trains as memnet fit does, the curve after 3 steps that of the network trained so by hand."""
    from memnet.cli.probe import compare
    from memnet.cli.rebuild import instantiate
    from memnet.metrics import sequence_metrics

    for interval in ("step", "epoch"):
        config = _tiny_rnn_config(
            tmp_path, trainer="  gradient_clip_val: 0.01\n  gradient_clip_algorithm: value\n",
            model=("    scheduler:\n      class_path: torch.optim.lr_scheduler.StepLR\n"
                   f"      init_args: {{step_size: 1, gamma: 0.1}}\n    scheduler_interval: {interval}\n"))
        (curve,) = compare([config], train_steps=[3], max_sequences=2)[3].values()
        cli = instantiate([config])  # the same seed: the same initial weights and batches
        module, data = cli.model, cli.datamodule
        optimizer = module.optimizer(module.parameters())
        scheduler = module.scheduler(optimizer)
        probe_batch = next(iter(data.val_dataloader()))
        for i, batch in enumerate([*data.train_dataloader(), *data.train_dataloader()][:3]):
            if interval == "epoch" and i == 2:  # the first pass over the loader's 2 batches is over
                scheduler.step()
            loss = sequence_metrics(module.net(batch["inputs"]), batch["targets"], batch["mask"])["loss"]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(module.parameters(), 0.01)
            optimizer.step()
            if interval == "step":
                scheduler.step()
        expected = gradient_through_time(module.net, probe_batch["inputs"][:2], probe_batch["targets"][:2],
                                         mask=probe_batch["mask"][:2])
        torch.testing.assert_close(curve, expected, rtol=1e-12, atol=0)


def test_the_command_names_what_its_loop_does_not_apply(tmp_path, capsys):
    """Callbacks, a plateau schedule, accumulation: applied by memnet fit, silently left out by the probe's loop;
    named in one warning line (the config's GradientProbe, configs/probe/rnn.yaml's, not). A OneCycleLR shorter than the probe's training is refused before it starts."""
    from memnet.cli.probe import compare

    config = _tiny_rnn_config(
        tmp_path, trainer=("  accumulate_grad_batches: 2\n  callbacks:\n"
                           "    - {class_path: pytorch_lightning.callbacks.EarlyStopping, init_args: {monitor: val/loss}}\n"),
        model="    scheduler:\n      class_path: torch.optim.lr_scheduler.ReduceLROnPlateau\n    scheduler_interval: epoch\n")
    compare([config], train_steps=[1], max_sequences=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if "memnet probe: warning" in line]
    assert lines == [(f"memnet probe: warning: {config}: the probe's training loop does not apply "
                     "model.init_args.scheduler ReduceLROnPlateau (it steps on validations); trainer.callbacks "
                     "EarlyStopping; trainer.accumulate_grad_batches 2 (memnet fit does; the loop applies the "
                     "optimiser, a per-step or per-epoch scheduler and gradient clipping)")]
    one_cycle = _tiny_rnn_config(tmp_path, model=(
        "    scheduler:\n      class_path: torch.optim.lr_scheduler.OneCycleLR\n"
        "      init_args: {max_lr: 0.01, total_steps: 3}\n    scheduler_interval: step\n"))
    with pytest.raises(ValueError, match=r"its OneCycleLR schedule is 3 steps long \(total_steps\), but "
                                         r"--train-steps asks for 4; probe at most 3 steps"):
        compare([one_cycle], train_steps=[0, 4], max_sequences=2)
    compare([one_cycle], train_steps=[3], max_sequences=2)  # the whole schedule: no error
    assert "memnet probe: warning" not in capsys.readouterr().err


def test_a_wandb_error_leaves_the_probe_and_the_training_going(tmp_path):
    """The probe logged its chart straight to the W&B run: after W&B failed (and memnet's logger stopped tracking),
    its chart raised again and stopped the fit. It goes through the logger now, which logs nothing more."""
    from memnet.callbacks import OfflineFirstWandbLogger

    class Run:  # stands in for a wandb run whose every log fails (a full disk, its service gone)
        def __init__(self):
            self.calls = 0
            self.config = type("Config", (), {"update": lambda *args, **kwargs: None})()

        def log(self, data, step=None, **kwargs):
            self.calls += 1
            raise OSError(28, "No space left on device")

    logger = OfflineFirstWandbLogger(save_dir=str(tmp_path))
    logger._experiment = Run()
    torch.manual_seed(5)
    net = RecurrentModel(D, K, controller=partial(ElmanRNN, hidden_size=H))
    inputs, targets = _data(5, torch.float32)
    loader = torch.utils.data.DataLoader([{"inputs": inputs, "targets": targets, "mask": torch.ones(B, T), "length": T}],
                                         batch_size=None)
    probe = GradientProbe(max_sequences=2)
    trainer = pl.Trainer(max_epochs=2, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe],
                         log_every_n_steps=1)
    trainer.fit(SequenceModule(net), train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 2 and probe.last_path is not None and probe.last_path.is_file()
    assert logger._experiment.calls == 1 and logger.stopped.startswith("OSError: [Errno 28] No space left on device")
