"""RelapseWatch: fires on a relapse and not on noise, reports it, restores the best weights exactly, lowers the lr."""

from __future__ import annotations

import random

import pytest
import pytorch_lightning as pl
import torch

from memnet.callbacks import ConvergenceDecay, RelapseWatch, SpikeClip
from memnet.utils import MemnetError


def test_fires_on_a_relapse_once_per_excursion():
    # learns (160 -> 0.05 bits), relapses to 130 for two validations, recovers, relapses again
    history = [160.0, 150.0, 4.0, 0.5, 0.05, 0.06, 130.5, 4.4, 0.08, 0.04, 29.1, 0.03]
    watch = RelapseWatch(factor=10, floor=1.0)
    fired = [watch.update(value, step=100 * (i + 1) - 1) for i, value in enumerate(history)]
    steps = [event["step"] for event in fired if event is not None]
    assert steps == [699, 1099]
    assert watch.events[0] == {"step": 699, "epoch": 0, "value": 130.5, "best": 0.05}
    assert watch.events[1]["best"] == 0.04


def test_quiet_on_noise_and_on_slow_learning():
    rng = random.Random(0)
    watch = RelapseWatch(factor=10, floor=1.0)
    for i in range(500):  # noise around a small best stays under the absolute floor
        assert watch.update(rng.uniform(0.01, 0.9), step=i) is None
    early = RelapseWatch(factor=10, floor=1.0)
    for i, value in enumerate([160, 158, 163, 155, 161, 90, 120, 40, 60, 2.0, 9.0]):  # bumpy learning, < 10x best
        assert early.update(float(value), step=i) is None


def test_factor_and_floor_both_settable():
    strict = RelapseWatch(factor=2, floor=0.1)
    strict.update(0.1, step=0)
    assert strict.threshold() == pytest.approx(0.2)
    assert strict.update(0.19, step=1) is None
    assert strict.update(0.21, step=2) is not None
    assert RelapseWatch(factor=10, floor=5.0).threshold() == float("inf")  # nothing to relapse from yet
    nan = RelapseWatch()
    nan.update(0.05, step=0)
    assert nan.update(float("nan"), step=1) is not None  # a NaN cost is a relapse, not ignored


@pytest.mark.parametrize("kwargs, field", [({"factor": 1.0}, "factor"), ({"floor": -1}, "floor"),
                                           ({"lr_factor": 0.0}, "lr_factor"), ({"lr_factor": 2}, "lr_factor")])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RelapseWatch(**kwargs)


class ScriptedValidation(pl.LightningModule):
    """A tiny model whose validation cost is scripted per epoch, so a relapse can be staged."""

    def __init__(self, costs):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.costs = costs

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/bits_per_seq", self.costs[self.current_epoch])

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=100)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit_scripted(tmp_path, costs, watch, snapshots, extra=(), module_class=None):
    class Snapshot(pl.Callback):  # the weights and Adam's moments as each validation saw them (runs before the watch)
        def on_validation_epoch_end(self, trainer, pl_module):
            snapshots.append(({k: v.clone() for k, v in pl_module.state_dict().items()},
                              {k: v["exp_avg"].clone() for k, v in trainer.optimizers[0].state.items()},
                              trainer.optimizers[0].param_groups[0]["lr"]))

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    torch.manual_seed(0)
    module = (module_class or ScriptedValidation)(costs)
    trainer = pl.Trainer(max_epochs=len(costs), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                         callbacks=[Snapshot(), watch, *extra])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=torch.utils.data.DataLoader(data, batch_size=8))
    return module, trainer


def fit_plain(tmp_path, module, callbacks, epochs, ckpt=None):
    """Train ``module`` on 8 fixed examples, 4 steps an epoch, validating once an epoch; no logger or checkpoints."""
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=callbacks,
                         enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2),
                val_dataloaders=torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=ckpt)
    return trainer


def test_reporting_only_changes_nothing(tmp_path, capsys):
    snapshots = []
    watch = RelapseWatch(factor=10, floor=1.0)
    module, _trainer = fit_scripted(tmp_path, [5.0, 0.05, 50.0, 0.04], watch, snapshots)
    assert [e["step"] for e in watch.events] == [12]
    assert "relapse at step 12" in capsys.readouterr().out
    assert not torch.equal(module.layer.weight, snapshots[1][0]["layer.weight"])  # trained on after the relapse


def test_restore_best_is_exact_and_lowers_the_lr(tmp_path):
    snapshots = []
    watch = RelapseWatch(factor=10, floor=1.0, restore_best=True, lr_factor=0.5)
    module, trainer = fit_scripted(tmp_path, [5.0, 0.05, 50.0], watch, snapshots)
    best_weights, best_moments, _ = snapshots[1]  # epoch 1 is the best, epoch 2 relapses and is the last
    assert watch.events[0]["step"] == 12
    for name, value in module.state_dict().items():
        assert torch.equal(value, best_weights[name]), name
    state = trainer.optimizers[0].state
    for key, moment in best_moments.items():
        assert torch.equal(state[key]["exp_avg"], moment)
    group = trainer.optimizers[0].param_groups[0]
    assert group["lr"] == pytest.approx(snapshots[2][2] * 0.5)  # the scheduled lr at the relapse, halved
    assert group["max_lr"] == pytest.approx(0.05) and group["initial_lr"] == pytest.approx(0.1 / 25 * 0.5)


def test_relapse_event_reaches_the_logger(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    watch = RelapseWatch()
    data = torch.utils.data.TensorDataset(torch.randn(4, 3))
    trainer = pl.Trainer(max_epochs=3, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[watch], default_root_dir=tmp_path)
    trainer.fit(ScriptedValidation([0.02, 40.0, 0.02]), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2),
                val_dataloaders=torch.utils.data.DataLoader(data, batch_size=4))
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    events = [dict(zip(header, row.split(","))) for row in rows[1:] if row.split(",")[header.index("relapse/event")]]
    # two batches an epoch: the second validation comes after step 4, and Lightning logs its val/* at step 3; the
    # event sits beside them (it was logged at 4, a row of its own on W&B's step axis)
    validations = [row.split(",")[header.index("step")] for row in rows[1:] if row.split(",")[header.index("val/bits_per_seq")]]
    assert validations == ["1", "3", "5"]
    assert [(e["step"], float(e["relapse/value"])) for e in events] == [("3", 40.0)]
    assert watch.events[0]["step"] == 4  # what the message and the checkpoint state say: the global step


def test_history_and_events_survive_a_checkpoint():
    watch = RelapseWatch()
    for step, value in enumerate([3.0, 0.05, 9.0, 0.04]):
        watch.update(value, step=step)
    restored = RelapseWatch()
    restored.load_state_dict(watch.state_dict())
    assert restored.history == [(0, 3.0), (1, 0.05), (2, 9.0), (3, 0.04)]
    assert restored.events == watch.events and restored.best == 0.04 and restored.threshold() == 1.0


# ConvergenceDecay: the recipe's fix, a lower rate and AMSGrad from the first validation at or below a level


class MomentLog(pl.Callback):
    """Adam's v and its running maximum, and the rate, after every training step (before ConvergenceDecay's update)."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        state = optimizer.state[pl_module.layer.weight]
        self.rows.append((trainer.global_step, state["exp_avg_sq"].clone(), optimizer.param_groups[0]["lr"],
                          optimizer.param_groups[0]["amsgrad"]))


def test_convergence_decay_waits_for_the_level_then_acts_once(tmp_path, capsys):
    decay = ConvergenceDecay(threshold=0.1, factor=0.1)
    moments = MomentLog()
    plain = []
    fit_scripted(tmp_path, [5.0, 0.3, 0.3, 0.3], ConvergenceDecay(threshold=0.01), plain)  # never reaches its level
    snapshots = []
    _module, trainer = fit_scripted(tmp_path, [5.0, 0.3, 0.08, 0.05, 0.5], decay, snapshots, extra=[moments])
    assert decay.converged_step == 12  # four steps an epoch: the third validation
    assert "[ConvergenceDecay] val/bits_per_seq = 0.08 <= 0.1 at step 12" in capsys.readouterr().out
    group = trainer.optimizers[0].param_groups[0]
    assert group["amsgrad"] and group["max_lr"] == pytest.approx(0.01)
    assert group["initial_lr"] == pytest.approx(0.1 / 25 * 0.1)
    # the rate: as scheduled up to the decay, a tenth of the schedule after it; AMSGrad from then on
    rates = {step: (lr, amsgrad) for step, _v, lr, amsgrad in moments.rows}
    plain_rates = [row[2] for row in plain]
    assert snapshots[2][2] == plain_rates[2]  # the Snapshot callback runs before the decay
    assert snapshots[3][2] == pytest.approx(plain_rates[3] * 0.1)
    assert not rates[12][1] and rates[13][1]
    # nothing else changed before convergence: the weights at each earlier validation equal the plain run's
    for (weights, _, _), (plain_weights, _, _) in zip(snapshots[:3], plain[:3]):
        assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)


class LoudThenQuiet(ScriptedValidation):
    """Large gradients for the first three steps, tiny ones after: Adam's v peaks early, then shrinks."""

    def training_step(self, batch, batch_idx):
        scale = 100.0 if self.global_step < 3 else 1e-3
        return scale * self.layer(batch[0]).pow(2).mean()


def test_convergence_decay_keeps_the_largest_v_since_the_start(tmp_path):
    decay = ConvergenceDecay(threshold=0.1, factor=1.0)
    moments = MomentLog()
    module, trainer = fit_scripted(tmp_path, [5.0, 0.3, 0.05, 0.05], decay, [], extra=[moments],
                                     module_class=LoudThenQuiet)
    before = torch.stack([v for step, v, _lr, amsgrad in moments.rows if not amsgrad])  # v after each step to the switch
    assert torch.all(before.amax(dim=0) > before[-1])  # v shrank before the switch
    state = trainer.optimizers[0].state[module.layer.weight]
    assert torch.equal(state["max_exp_avg_sq"], torch.stack([v for _s, v, _lr, _a in moments.rows]).amax(dim=0))
    assert torch.equal(state["max_exp_avg_sq"], before.amax(dim=0))  # the early peak, not v at the switch


def test_convergence_decay_resumes_exactly(tmp_path):
    def fit(epochs, ckpt=None):
        pl.seed_everything(0)
        decay, module = ConvergenceDecay(threshold=0.1), ScriptedValidation([5.0, 0.05, 0.3, 0.3])
        return module, fit_plain(tmp_path, module, [decay], epochs, ckpt), decay

    whole, _, _ = fit(4)
    _, half, _ = fit(2)
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed, trainer, decay = fit(4, ckpt=str(tmp_path / "half.ckpt"))
    assert decay.converged_step == 8 and trainer.optimizers[0].param_groups[0]["amsgrad"]
    assert torch.equal(whole.layer.weight, resumed.layer.weight)


def test_two_convergence_decays_make_a_staircase_and_each_resumes_its_own_state(tmp_path):
    def fit(epochs, ckpt=None):
        pl.seed_everything(0)
        first = ConvergenceDecay(threshold=1.0, factor=0.5, amsgrad=False)
        second = ConvergenceDecay(threshold=0.1, factor=0.1)
        module = ScriptedValidation([5.0, 0.5, 0.3, 0.05, 0.3])
        return module, fit_plain(tmp_path, module, [first, second], epochs, ckpt), first, second

    whole, trainer, first, second = fit(5)
    assert (first.converged_step, second.converged_step) == (8, 16)  # four steps an epoch
    group = trainer.optimizers[0].param_groups[0]
    assert group["max_lr"] == pytest.approx(0.1 * 0.5 * 0.1) and group["amsgrad"]
    _, half, first, second = fit(3)
    assert (first.converged_step, second.converged_step) == (8, None)
    half.save_checkpoint(tmp_path / "half.ckpt")
    states = torch.load(tmp_path / "half.ckpt", weights_only=False)["callbacks"]
    assert [states[c.state_key]["converged_step"] for c in (first, second)] == [8, None]
    resumed, trainer, first, second = fit(5, ckpt=str(tmp_path / "half.ckpt"))
    assert (first.converged_step, second.converged_step) == (8, 16)
    assert torch.equal(whole.layer.weight, resumed.layer.weight)


def test_a_checkpoint_from_before_the_keyed_state_still_resumes(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    decay = ConvergenceDecay(threshold=0.1)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[decay],
                         enable_checkpointing=False)
    trainer.fit(ScriptedValidation([5.0, 0.05, 0.05]), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2),
                val_dataloaders=torch.utils.data.DataLoader(data, batch_size=8))
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=False)
    checkpoint["callbacks"] = {"ConvergenceDecay": checkpoint["callbacks"].pop(decay.state_key)}  # the old key
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = ConvergenceDecay(threshold=0.1)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[resumed],
                         enable_checkpointing=False)
    trainer.fit(ScriptedValidation([5.0, 0.05, 0.05]), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2),
                val_dataloaders=torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=str(tmp_path / "old.ckpt"))
    assert resumed.converged_step == 8  # restored, not triggered again at the third validation (step 12)


def test_a_decay_resumed_with_another_threshold_keeps_its_state_and_does_not_decay_again(tmp_path, caplog):
    # the state is keyed by monitor and threshold: resumed with threshold 0.4 the decay found none, acted again at
    # the cost 0.3 and left the rate at a hundredth (max_lr 0.001)
    costs = [5.0, 0.05, 0.3, 0.3]
    pl.seed_everything(0)
    half = fit_plain(tmp_path, ScriptedValidation(costs), [ConvergenceDecay(threshold=0.1, amsgrad=False)], 2)
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed = ConvergenceDecay(threshold=0.4, amsgrad=False)
    with caplog.at_level("WARNING", logger="memnet.callbacks"):
        trainer = fit_plain(tmp_path, ScriptedValidation(costs), [resumed], 4, ckpt=str(tmp_path / "half.ckpt"))
    assert resumed.converged_step == 8
    assert trainer.optimizers[0].param_groups[0]["max_lr"] == pytest.approx(0.01)
    assert "'threshold': 0.1}, this run's ConvergenceDecay{'monitor': 'val/bits_per_seq', 'threshold': 0.4}" \
        in caplog.text and "converged at step 8" in caplog.text
    # two changed decays cannot be told apart: refused, not decayed again
    pair = [ConvergenceDecay(threshold=0.4, amsgrad=False), ConvergenceDecay(threshold=0.2, amsgrad=False)]
    with pytest.raises(MemnetError, match=r"a decay that acted \(ConvergenceDecay\{'monitor': 'val/bits_per_seq', "
                                          r"'threshold': 0.1\}\).*would decay the rate again"):
        fit_plain(tmp_path, ScriptedValidation(costs), pair, 4, ckpt=str(tmp_path / "half.ckpt"))


def test_convergence_decay_needs_adam_for_amsgrad(tmp_path):
    class WithSGD(ScriptedValidation):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(4, 3))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ConvergenceDecay()], default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="needs Adam or AdamW .* got SGD; set amsgrad: false"):
        trainer.fit(WithSGD([1.0]), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2))


@pytest.mark.parametrize(("kwargs", "field"), [({"threshold": 0}, "threshold"), ({"threshold": True}, "threshold"),
                                               ({"factor": 1.5}, "factor"),
                                               ({"factor": 0}, "factor")])
def test_convergence_decay_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=f"ConvergenceDecay {field}"):
        ConvergenceDecay(**kwargs)


def test_convergence_decay_waits_for_a_lower_early_stop(tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping

    decay = ConvergenceDecay(threshold=0.1)
    stop = EarlyStopping(monitor="val/bits_per_seq", mode="min", stopping_threshold=0.05, patience=100)
    fit_scripted(tmp_path, [5.0, 0.08, 0.07, 0.04, 0.5], decay, [], extra=[stop])
    assert decay.level == 0.05 and decay.converged_step == 16  # not at 0.08 (step 8): the run's own level is 0.05


@pytest.mark.parametrize(("threshold", "stop_at"), [(0.1, 0.0625), (0.0625, 0.0625), (0.1, 0.08)])
def test_convergence_decay_at_an_early_stops_level_waits_for_the_stop_at_a_tie(tmp_path, threshold, stop_at):
    """EarlyStopping stops strictly below its stopping_threshold, compared in float32: a validation exactly at
    that level decayed the rate and trained on (the run was no longer unchanged, step for step); it now does
    neither. 0.08 is configs/ntm/copy.yaml's level, which float32 rounds below the Python float 0.08."""
    from pytorch_lightning.callbacks import EarlyStopping

    decay = ConvergenceDecay(threshold=threshold)
    stop = EarlyStopping(monitor="val/bits_per_seq", mode="min", stopping_threshold=stop_at, patience=100)
    _module, trainer = fit_scripted(tmp_path, [5.0, stop_at, 0.04, 0.5], decay, [], extra=[stop])
    assert trainer.global_step == 12  # trained on past the tie (step 8), stopped at 0.04
    assert decay.converged_step == 12


@pytest.mark.parametrize("threshold", [0.125, 0.1])
def test_convergence_decay_at_its_own_threshold_acts_at_a_tie(tmp_path, threshold):
    # the documented rule without a lower early stop: from the first validation at or below the threshold
    # (0.1 logged in float32 is above the Python float 0.1: it was not at or below it)
    decay = ConvergenceDecay(threshold=threshold)
    fit_scripted(tmp_path, [5.0, threshold, 0.5], decay, [])
    assert decay.converged_step == 8


def test_restoring_the_best_keeps_amsgrad_on_after_convergence(tmp_path):
    watch = RelapseWatch(factor=10, floor=1.0, restore_best=True)  # snapshots before the decay switches (runs first)
    decay = ConvergenceDecay(threshold=0.25)
    _module, trainer = fit_scripted(tmp_path, [5.0, 0.3, 0.2, 50.0], watch, [], extra=[decay])
    assert [e["step"] for e in watch.events] == [16] and decay.converged_step == 12
    assert trainer.optimizers[0].param_groups[0]["amsgrad"]  # the moments went back, the setting stayed


def test_restore_best_after_a_resume_goes_back_to_the_same_weights(tmp_path):
    # the best weights are kept in the checkpoint: a run resumed after its best and before a relapse restores
    # them as the unbroken run does (without them it reported the relapse and trained on from it)
    def fit(epochs, ckpt=None):
        pl.seed_everything(0)
        watch, module = RelapseWatch(factor=10, floor=1.0, restore_best=True), ScriptedValidation([5.0, 0.05, 0.06, 50.0])
        return module, fit_plain(tmp_path, module, [watch], epochs, ckpt), watch

    whole, _, watch = fit(4)
    _, half, _ = fit(3)
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed, _, resumed_watch = fit(4, ckpt=str(tmp_path / "half.ckpt"))
    assert [e["step"] for e in watch.events] == [e["step"] for e in resumed_watch.events] == [16]
    assert torch.equal(whole.layer.weight, resumed.layer.weight)
    assert torch.equal(resumed.layer.weight, resumed_watch.best_state["weights"]["layer.weight"])


class ScriptedMemN2N(pl.LightningModule):
    """A linear-start MemN2N trained on four fixed questions, its validation cost scripted per epoch."""

    def __init__(self, costs):
        super().__init__()
        from memnet.models.memn2n import MemN2N

        self.net = MemN2N(20, 6, embedding_size=5, hops=2, memory_size=4, linear_start=True, random_noise=0.0)
        self.costs = costs

    def training_step(self, batch, batch_idx):
        story, query, answer = batch
        return torch.nn.functional.cross_entropy(self.net(story, query), answer)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.costs[self.current_epoch])
        self.log("val/bits_per_seq", self.costs[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


@pytest.mark.parametrize("order", ["watch-first", "switch-first"])
def test_restoring_weights_of_the_linear_phase_keeps_the_softmax_on(tmp_path, order):
    """The best weights were taken in the linear start (epoch 0), the softmax came on after epoch 1, the run relapsed
    at epoch 2: the restore put back the weights and, with them, the buffer that had the softmax off, so the switch
    fired a second time and moved its ``switched_at`` (at once, or after epoch 3 had trained linear again, as the
    callbacks were ordered)."""
    from memnet.callbacks import LinearStartSwitch

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(1, 20, (4, 3, 4), generator=generator),
                                          torch.randint(1, 20, (4, 4), generator=generator), torch.arange(4) % 6)
    softmax_on, weights = [], []

    class Phase(pl.Callback):  # the network's phase and weights as each training epoch starts
        def on_train_epoch_start(self, trainer, pl_module):
            softmax_on.append(bool(pl_module.net.softmax_enabled))
            weights.append({k: v.clone() for k, v in pl_module.named_parameters()})

    torch.manual_seed(0)
    module = ScriptedMemN2N([0.05, 0.3, 50.0, 0.2])
    watch, switch = RelapseWatch(factor=10, floor=1.0, restore_best=True), LinearStartSwitch(patience=5, max_epochs=2)
    callbacks = [watch, switch] if order == "watch-first" else [switch, watch]
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[Phase(), *callbacks],
                         enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert [e["epoch"] for e in watch.events] == [2]
    for name, value in weights[3].items():  # the epoch after the relapse starts from the best (epoch 0) weights
        assert torch.equal(value, watch.best_state["weights"][name]), name
    assert softmax_on == [False, False, True, True] and bool(module.net.softmax_enabled)
    assert switch.switched_at == 1


class EpochLogged(ScriptedValidation):
    """Logs its validation cost in on_validation_epoch_end, as the epoch metrics are (val/mean_task_error, val/nrmse)."""

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/bits_per_seq", self.costs[self.current_epoch])


def test_callbacks_read_a_metric_logged_at_the_end_of_the_epoch_in_the_same_epoch(tmp_path):
    decay, watch = ConvergenceDecay(threshold=0.1, amsgrad=False), RelapseWatch()
    fit_plain(tmp_path, EpochLogged([0.05, 3.0, 0.04]), [decay, watch], 3)
    assert decay.converged_step == 4  # epoch 0 (4 steps) is at 0.05; a callback one epoch late said 8
    assert [(step, round(value, 6)) for step, value in watch.history] == [(4, 0.05), (8, 3.0), (12, 0.04)]
    assert [e["step"] for e in watch.events] == [8]


def test_a_scaled_rate_stays_scaled_through_the_linear_start_and_other_schedules():
    from types import SimpleNamespace

    from memnet.callbacks import scale_learning_rates
    from memnet.optim import LinearStartStepLR

    def rates(make, epochs, scale_at=0):
        layer = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        scheduler = make(optimizer)
        trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
        seen = []
        for epoch in range(epochs):
            if epoch == scale_at + 1:
                scale_learning_rates(trainer, 0.1)
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    linear = rates(lambda o: LinearStartStepLR(o, linear_start_epochs=3, linear_start_lr=0.05, step_size=2), 6)
    assert linear == pytest.approx([0.05, 0.005, 0.005, 0.01, 0.005, 0.005])  # epoch 2 went back to 0.05
    cosine = rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.05), 5)
    assert max(cosine[1:]) <= 0.0101 and cosine[-1] == pytest.approx(0.005)  # the floor scaled with the rate
    cyclic = rates(lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2), 8)
    assert max(cyclic[1:]) <= 0.0101  # the peaks scaled too


def test_callbacks_that_change_training_do_nothing_when_a_checkpoint_is_validated():
    """Under trainer.validate (memnet validate, a notebook's evaluation) the softmax switch, the decay and the relapse
    watch acted: the switch turned a linear-start MemN2N's softmax on, the decay marked the run converged (so a
    later fit with the same callback never decayed), the watch took the validation into its history."""
    from types import SimpleNamespace

    from memnet.callbacks import ConvergenceDecay, LinearStartSwitch, RelapseWatch
    from memnet.models.memn2n import MemN2N

    net = MemN2N(20, 5, memory_size=4, linear_start=True)
    module = SimpleNamespace(net=net, log=lambda *args, **kwargs: None)
    switch, decay, watch = LinearStartSwitch(patience=1), ConvergenceDecay(threshold=1e9), RelapseWatch()
    switch.best = 0.1  # 0.5 is no improvement: the switch's patience is spent at this validation
    for fn, acted in (("validate", False), ("fit", True)):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=10, optimizers=[], lr_scheduler_configs=[],
                                  is_global_zero=True, state=SimpleNamespace(fn=fn), loggers=[],
                                  callback_metrics={"val/loss": torch.tensor(0.5), "val/bits_per_seq": torch.tensor(0.5)})
        for callback in (switch, decay, watch):
            callback.on_validation_end(trainer, module)
        assert bool(net.softmax_enabled) is acted and (decay.converged_step == 10) is acted
        assert (len(watch.history) == 1) is acted



@pytest.mark.parametrize("make", ["switch", "decay", "watch", "curriculum"])
def test_a_callback_monitoring_a_metric_nothing_logs_is_refused_naming_it(make):
    """A monitor that names no logged metric (mistyped, or another module's: ``val/bits_per_seq`` of a bAbI run)
    found no value at every validation and did nothing, exit 0: a linear start never ended (not even at its
    ``max_epochs`` cap), the decay and the relapse never came, the curriculum never stepped up. Refused at the
    first validation, naming the monitor and what the run logs."""
    from types import SimpleNamespace

    from memnet.callbacks import LinearStartSwitch
    from memnet.curriculum import LengthCurriculum
    from memnet.models.memn2n import MemN2N
    from memnet.utils import MemnetError

    net = MemN2N(20, 5, memory_size=4, linear_start=True)
    module = SimpleNamespace(net=net, log=lambda *args, **kwargs: None)
    callback = {"switch": lambda: LinearStartSwitch(monitor="val/los", max_epochs=1),
                "decay": lambda: ConvergenceDecay(monitor="val/los", threshold=1e9, amsgrad=False),
                "watch": lambda: RelapseWatch(monitor="val/los"),
                "curriculum": lambda: LengthCurriculum(monitor="val/los", threshold=1.0)}[make]()
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=10, optimizers=[],
                              lr_scheduler_configs=[], is_global_zero=True, state=SimpleNamespace(fn="fit"), loggers=[],
                              callback_metrics={"val/loss": torch.tensor(0.5), "train/loss": torch.tensor(0.7)})
    with pytest.raises(MemnetError, match=r"monitor 'val/los' is not a metric this run logs after a validation; "
                                          r"it logs: val/loss$"):
        callback.on_validation_end(trainer, module)
    assert not bool(net.softmax_enabled)
    # a train/ metric may have no epoch value yet at a validation inside the first epoch: not refused there
    LinearStartSwitch(monitor="train/error").on_validation_end(trainer, module)

class _Params:
    """An optimiser's param_groups over given gradients, for calling SpikeClip's hook directly."""

    def __init__(self, *grads):
        self.params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        self.param_groups = [{"params": self.params}]

    def norm(self):
        return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.params])))


def _step(clip, *grads):
    optimizer = _Params(*grads)
    clip.on_before_optimizer_step(None, None, optimizer)
    return optimizer


def test_spike_clip_starts_from_the_warmup_then_clips_to_mean_plus_z_sd_by_hand():
    clip = SpikeClip(z=1.0, alpha=0.5, warmup=3)
    for norm in (1.0, 2.0, 3.0):  # never clipped; mean 2, sample variance 1
        assert _step(clip, torch.tensor([norm * 0.6, norm * 0.8])).norm() == pytest.approx(norm)
    grad = torch.tensor([6.0, 8.0])  # norm 10 > 2 + 1 * 1 = 3: scaled to 3, direction kept
    optimizer = _step(clip, grad)
    assert optimizer.norm() == pytest.approx(3.0)
    assert torch.allclose(optimizer.params[0].grad, grad * 0.3)
    # the averages take the clipped norm: d = 3 - 2, mean 2 + 0.5 d = 2.5, variance 0.5 (1 + 0.5 d²) = 0.75
    assert clip.moments.tolist() == pytest.approx([2.5, 0.75])
    quiet = torch.tensor([1.2, 1.6])  # norm 2 < 2.5 + √0.75: left bit for bit
    assert torch.equal(_step(clip, quiet).params[0].grad, quiet)
    assert float(clip.clipped) == 1.0


def test_spike_clip_leaves_a_non_finite_gradient_and_its_averages_alone():
    clip = SpikeClip(z=1.0, alpha=0.5, warmup=2)
    _step(clip, torch.tensor([1.0])), _step(clip, torch.tensor([3.0]))
    before = clip.moments.clone()
    bad = torch.tensor([float("nan"), 1e3])
    assert torch.equal(_step(clip, bad).params[0].grad.nan_to_num(), bad.nan_to_num())  # for nonfinite_grads
    assert torch.equal(clip.moments, before) and float(clip.clipped) == 0.0
    constant = SpikeClip(warmup=2)  # no spread in the warm-up: nothing to call a spike yet
    _step(constant, torch.tensor([1.0])), _step(constant, torch.tensor([1.0]))
    assert _step(constant, torch.tensor([5.0])).norm() == 5.0


def test_spike_clip_state_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    norms = [torch.randn(4, generator=g) * (50 if i in (9, 14) else 1) for i in range(20)]
    whole = SpikeClip(warmup=5)
    expected = [_step(whole, n).params[0].grad for n in norms]
    first = SpikeClip(warmup=5)
    for n in norms[:8]:
        _step(first, n)
    resumed = SpikeClip(warmup=5)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(_step(resumed, n).params[0].grad, e) for n, e in zip(norms[8:], expected[8:]))
    assert float(whole.clipped) == float(resumed.clipped) == 2.0  # the two loud steps


def test_spike_clip_clips_a_finite_gradient_whose_float32_norm_overflows():
    """Entries of ~1e19 are finite (nonfinite_grads does not skip the step), but the float32 norm overflowed to inf:
    the spike was taken for a non-finite one and went through unclipped."""
    clip = SpikeClip(z=1.0, alpha=0.5, warmup=3)
    for norm in (1.0, 2.0, 3.0):  # mean 2, sample variance 1: limit 3
        _step(clip, torch.tensor([norm * 0.6, norm * 0.8]))
    spike = _step(clip, torch.tensor([3e19, 4e19]), torch.tensor([0.0, 0.0, 0.0]))
    assert spike.norm() == pytest.approx(3.0)
    assert torch.allclose(spike.params[0].grad, torch.tensor([1.8, 2.4]))
    assert float(clip.clipped) == 1.0 and clip.moments.tolist() == pytest.approx([2.5, 0.75])


@pytest.mark.parametrize("kwargs, field", [({"z": 0}, "z"), ({"z": True}, "z"), ({"alpha": 1.0}, "alpha"),
                                           ({"warmup": 1}, "warmup"), ({"warmup": 2.5}, "warmup")])
def test_spike_clip_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=f"SpikeClip {field}"):
        SpikeClip(**kwargs)


class _LoudStep(pl.LightningModule):
    """Small gradients, and at training step ``loud`` one a thousand times larger (still below the fixed clip)."""

    def __init__(self, loud):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.loud = loud
        self.seen = []  # the global norm the fixed clip saw at each step

    def training_step(self, batch, batch_idx):
        scale = 1.0 if self.global_step == self.loud else 1e-3
        return self.layer(batch[0]).pow(2).mean() * scale

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.seen.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.parameters()]))))
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_spike_clip_acts_in_training_before_the_fixed_clip_and_logs_its_count(tmp_path):
    class Metrics(pl.loggers.Logger):
        name, version, rows = "m", 0, []

        def log_metrics(self, metrics, step=None):
            self.rows.append(dict(metrics))

        def log_hyperparams(self, *args, **kwargs):
            pass

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(0)
    module, clip, logger = _LoudStep(loud=6), SpikeClip(z=10.0, warmup=4), Metrics()
    trainer = pl.Trainer(max_epochs=3, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, gradient_clip_val=10.0,
                         callbacks=[clip], log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2))
    # step 6 sees the batch of step 2 (4 batches an epoch) with a loss 1000 times larger: unclipped, its norm would be
    # 1000 times step 2's; the fixed clip (norm 10) saw it clipped, below mean + 10 s.d. of the quiet steps
    assert module.seen[2] < module.seen[6] < 100 * module.seen[2]
    assert all(module.seen[i] == module.seen[i % 4] for i in range(12) if i != 6)  # lr 0: quiet steps untouched
    assert [row["spike_clip/clipped"] for row in logger.rows if "spike_clip/clipped" in row] == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("stop", [4, 6])
def test_a_run_trained_by_steps_and_resumed_logs_the_clipped_count_of_each_epoch_as_the_unbroken_run(tmp_path, stop):
    """Trained by steps, a run resumed from the checkpoint of an epoch's end ends that epoch again (it logged a
    count of 0 there, beside the real one), and one stopped by ``max_steps`` part way through an epoch (stop 6 of
    4-batch epochs) had its count reset at that cut end: the resumed epoch logged the clipped steps after the resume
    only (0 where the unbroken run logged 1)."""
    from memnet.callbacks import LastAndBestCheckpoint
    from memnet.utils import ResumableLoader

    class Metrics(pl.loggers.Logger):
        name, version = "m", 0

        def __init__(self):
            super().__init__()
            self.counts = []  # (step, spike_clip/clipped)

        def log_metrics(self, metrics, step=None):
            if "spike_clip/clipped" in metrics:
                self.counts.append((step, metrics["spike_clip/clipped"]))

        def log_hyperparams(self, *args, **kwargs):
            pass

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))

    def fit(folder, max_steps, *, resume=False):
        torch.manual_seed(0)
        logger = Metrics()
        trainer = pl.Trainer(max_steps=max_steps, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                             gradient_clip_val=10.0, log_every_n_steps=1,
                             callbacks=[SpikeClip(z=10.0, warmup=4),
                                        LastAndBestCheckpoint(dirpath=tmp_path / folder, save_last=True)])
        # memnet's loader: resumed at an epoch's end, a plain one gave the replayed epoch one batch more
        trainer.fit(_LoudStep(loud=5), train_dataloaders=ResumableLoader(data, batch_size=2, trainer=trainer),
                    ckpt_path=str(tmp_path / folder / "last.ckpt") if resume else None)
        return logger.counts

    unbroken = fit("unbroken", 12)
    assert unbroken == [(4, 0.0), (8, 1.0), (12, 0.0)]  # the loud step 5 is in the second epoch
    fit("broken", stop)
    assert fit("broken", 12, resume=True) == unbroken[1:]
