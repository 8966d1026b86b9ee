"""The authors' MemN2N optimisation: the restarted schedule by epoch, per-matrix clipping by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from memnet.callbacks import scale_learning_rates
from memnet.lightning import QAModule
from memnet.optim import LinearStartStepLR, clip_per_matrix_


def _rates(epochs: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=kwargs.pop("lr"))
    scheduler = LinearStartStepLR(optimizer, **kwargs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_restarted_schedule_by_epoch_small_case():
    rates = _rates(8, lr=0.01, linear_start_epochs=2, linear_start_lr=0.005, step_size=3, gamma=0.5)
    assert rates == pytest.approx([0.005, 0.005, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025])


def test_restarted_schedule_of_the_authors_single_task_recipe():
    """20 linear epochs at 0.005, then 0.005 again, halved at the phase's epochs 25, 50, 75, 100 (1-based)."""
    rates = _rates(120, lr=0.005, linear_start_epochs=20, linear_start_lr=0.005, step_size=25)
    assert rates[:20] == pytest.approx([0.005] * 20)
    assert rates[20:44] == pytest.approx([0.005] * 24)  # phase epochs 1..24
    assert rates[44] == pytest.approx(0.0025)  # phase epoch 25
    assert rates[69] == pytest.approx(0.00125) and rates[68] == pytest.approx(0.0025)
    assert rates[119] == pytest.approx(0.005 / 16)  # phase epoch 100
    joint = _rates(90, lr=0.005, linear_start_epochs=30, linear_start_lr=0.005, step_size=15)
    assert joint[43] == pytest.approx(0.005) and joint[44] == pytest.approx(0.0025)  # phase epoch 15
    assert joint[89] == pytest.approx(0.005 / 16)  # phase epoch 60


def test_schedule_restarts_above_the_linear_start_rate():
    rates = _rates(4, lr=0.1, linear_start_epochs=1, linear_start_lr=0.001, step_size=100)
    assert rates == pytest.approx([0.001, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("kwargs, message", [
    ({"linear_start_epochs": -1}, "linear_start_epochs must be a non-negative integer"),
    ({"step_size": 0}, "step_size must be a positive integer"),
    ({"linear_start_lr": 0.0}, "linear_start_lr must be positive"),
    ({"gamma": 1.5}, r"gamma must lie in \(0, 1\]"),
])
def test_schedule_bad_options(kwargs, message):
    options = {"linear_start_epochs": 2, "linear_start_lr": 0.01, "step_size": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        LinearStartStepLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), **options)


def test_the_restarted_schedule_stepped_every_batch_is_refused():
    """Stepped per batch (scheduler_interval: step) the linear start of 20 epochs ended after 20 batches, the rate
    went to lr₀ and was halved every step_size batches, while LinearStartSwitch (its check passed: both said 20)
    put the softmax back at epoch 20; the run trained another recipe and exited 0."""
    from memnet.training import scheduler_config

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = LinearStartStepLR(optimizer, linear_start_epochs=20, linear_start_lr=0.005, step_size=25)
    assert scheduler_config(scheduler, "epoch", None)["interval"] == "epoch"
    with pytest.raises(ValueError, match="LinearStartStepLR counts epochs .*scheduler_interval is 'step'"):
        scheduler_config(scheduler, "step", None)


def _with_grad(grad: list[list[float]]) -> torch.nn.Parameter:
    parameter = torch.nn.Parameter(torch.zeros(len(grad), len(grad[0]), dtype=torch.float64))
    parameter.grad = torch.tensor(grad, dtype=torch.float64)
    return parameter


def test_per_matrix_clipping_by_hand():
    """G = diag(3, 4): spectral norm 4, Frobenius 5; clipped at 2 each matrix alone, the small one untouched."""
    big, small = _with_grad([[3, 0], [0, 4]]), _with_grad([[0.6, 0], [0, 0.8]])
    norms = clip_per_matrix_([[big], [small]], 2.0, "spectral")
    assert [float(n) for n in norms] == pytest.approx([4.0, 0.8])
    torch.testing.assert_close(big.grad, torch.tensor([[1.5, 0], [0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(small.grad, torch.tensor([[0.6, 0], [0, 0.8]], dtype=torch.float64))

    big, small = _with_grad([[3, 0], [0, 4]]), _with_grad([[0.6, 0], [0, 0.8]])
    clip_per_matrix_([[big], [small]], 2.0, "frobenius")
    torch.testing.assert_close(big.grad, torch.tensor([[1.2, 0], [0, 1.6]], dtype=torch.float64))
    torch.testing.assert_close(small.grad, torch.tensor([[0.6, 0], [0, 0.8]], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(230, 50), (7, 40), (1, 5)])
def test_spectral_norm_is_the_largest_singular_value(shape):
    """Through the Gram matrix, for tall, wide and one-row gradients alike: σ_max of an SVD."""
    generator = torch.Generator().manual_seed(0)
    parameter = _with_grad(torch.randn(shape, generator=generator, dtype=torch.float64).tolist())
    expected = torch.linalg.matrix_norm(parameter.grad, ord=2)
    (norm,) = clip_per_matrix_([[parameter]], 1e9, "spectral")
    assert float(norm) == pytest.approx(float(expected), rel=1e-10)


def test_a_group_stacks_its_matrices_by_rows():
    """Rows (3, 4) and (0, 0) are one 2 × 2 matrix of spectral norm 5: both scaled by 1/5."""
    words, times = _with_grad([[3, 4]]), _with_grad([[0, 0]])
    times.grad = torch.tensor([[0.0, 5.0]], dtype=torch.float64)  # stacked: [[3, 4], [0, 5]]
    (norm,) = clip_per_matrix_([[words, times]], 1.0, "frobenius")
    assert float(norm) == pytest.approx(50 ** 0.5)
    torch.testing.assert_close(words.grad, torch.tensor([[3, 4]], dtype=torch.float64) / 50 ** 0.5)
    with pytest.raises(ValueError, match="one width"):
        clip_per_matrix_([[_with_grad([[1, 2]]), _with_grad([[1, 2, 3]])]], 1.0)
    with pytest.raises(ValueError, match="norm must be 'spectral' or 'frobenius'"):
        clip_per_matrix_([[words]], 1.0, "max")


def test_qa_module_clips_each_matrix_and_refuses_a_second_clipping():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    module = QAModule(net, clip_per_matrix=1.0, clip_norm="frobenius")
    net[0].weight.grad = torch.full((2, 2), 3.0)  # norm 6: clipped to 1
    net[1].weight.grad = torch.full((2, 2), 0.25)  # norm 0.5: kept (a global clip at 1 would scale it)
    module.on_before_optimizer_step(None)
    assert float(net[0].weight.grad.norm()) == pytest.approx(1.0)
    torch.testing.assert_close(net[1].weight.grad, torch.full((2, 2), 0.25))
    module._trainer = SimpleNamespace(gradient_clip_val=40.0)
    with pytest.raises(ValueError, match="clip_per_matrix \\(1.0\\) and trainer.gradient_clip_val \\(40.0\\)"):
        module.on_fit_start()
    for bad in (0.0, True, "40"):  # True is no norm (it was taken as 1.0); a string failed with Python's words
        with pytest.raises(ValueError, match="clip_per_matrix must be a positive norm"):
            QAModule(net, clip_per_matrix=bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_low_precision_gradients_are_clipped(dtype, norm):
    """bf16-true / 16-true: eigvalsh has no bfloat16 / float16 kernel (NotImplementedError); the norm is taken in float32."""
    parameter = torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))
    parameter.grad = torch.full((3, 4), 10.0, dtype=dtype)  # rank 1: spectral = Frobenius = 10·√12
    (value,) = clip_per_matrix_([[parameter]], 1.0, norm)
    assert float(value) == pytest.approx(12 ** 0.5 * 10, rel=1e-3)
    assert parameter.grad.dtype == dtype
    assert float(parameter.grad.float().norm()) == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("norm, order", [("spectral", 2), ("frobenius", "fro")])
def test_gradients_whose_squares_overflow_are_clipped_to_the_norm_asked(norm, order):
    """float32 gradients of ~1e20 are finite but their squares are not: the Frobenius norm was inf and the
    gradient zeroed, the Gram matrix inf and eigvalsh failed (torch.linalg.LinAlgError)."""
    grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 1e20
    parameter = torch.nn.Parameter(torch.zeros(5, 3))
    parameter.grad = grad.clone()
    expected = float(torch.linalg.matrix_norm(grad.double(), ord=order))
    (value,) = clip_per_matrix_([[parameter]], 2.0, norm)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(parameter.grad.double(), grad.double() * 2.0 / expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("norm, order", [("spectral", 2), ("frobenius", "fro")])
def test_float64_gradients_beyond_the_float32_range_are_clipped_not_made_nan(norm, order):
    """64-true: the largest entry was taken in float32, inf above ~3.4e38, and the gradient divided by it (0), its
    norm 0 and the scale max_norm / inf / 0, NaN: every entry NaN."""
    grad = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e40
    parameter = torch.nn.Parameter(torch.zeros(5, 3, dtype=torch.float64))
    parameter.grad = grad.clone()
    expected = float(torch.linalg.matrix_norm(grad, ord=order))
    (value,) = clip_per_matrix_([[parameter]], 2.0, norm)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(parameter.grad, grad * 2.0 / expected, rtol=1e-6, atol=0)


def _scaled_rates(optimizer, scheduler, epochs, scale_at=1, factor=0.1):
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    rates = []
    for epoch in range(epochs):
        if epoch == scale_at:
            scale_learning_rates(trainer, factor)
        rates.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return rates


def test_a_scaled_rate_stays_scaled_through_a_sequential_schedule():
    """Warm-up then cosine: the schedulers SequentialLR runs kept their base rates, so the rate went back
    to 1.0 at the milestone (0.1 expected) and followed the unscaled cosine after it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[2])
    rates = _scaled_rates(optimizer, scheduler, 6)
    assert rates == pytest.approx([0.5, 0.075, 0.1, 0.1 * (1 + 2 ** -0.5) / 2, 0.05, 0.1 * (1 - 2 ** -0.5) / 2])


def test_a_tensor_learning_rate_is_scaled():
    """``lr=torch.tensor(...)``: a 0-d tensor rate (and the schedule's base rate) was skipped, the scaling ignored."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.01))
    scheduler = LinearStartStepLR(optimizer, linear_start_epochs=1, linear_start_lr=0.005, step_size=10)
    rates = _scaled_rates(optimizer, scheduler, 3, scale_at=0)
    assert rates == pytest.approx([0.0005, 0.001, 0.001])


@pytest.mark.parametrize("config, authors", [
    # config_babi_joint.m / config_babi.m: (ls_nepochs, ls_lrate_decay_step, ls_init_lrate), (nepochs, lrate_decay_step)
    ("babi_joint_1k.yaml", ((30, 31, 0.005), (60, 15))),
    ("babi_joint_10k.yaml", ((30, 31, 0.005), (60, 15))),
    ("babi_task_1k.yaml", ((20, 21, 0.005), (100, 25))),
])
def test_each_recipe_configs_schedule_is_the_authors_epoch_by_epoch(config, authors):
    """train_linear_start.m runs train.m twice, the second time from config.init_lrate (0.005) again; train.m halves
    the rate at the start of each of its epochs ep (1-based) with mod(ep, lrate_decay_step) == 0. The config's
    LinearStartStepLR, its optimiser's rate, LinearStartSwitch and max_epochs give the same rate at every epoch,
    and the softmax back at the second phase's first."""
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[1] / "configs"
    leaf = yaml.safe_load((folder / "memn2n" / config).read_text())
    recipe = yaml.safe_load((folder / "recipes" / "memn2n.yaml").read_text())["model"]["init_args"]
    scheduler = recipe["scheduler"]["init_args"] | leaf["model"]["init_args"]["scheduler"]["init_args"]
    (ls_epochs, ls_decay, ls_rate), (epochs, decay) = authors
    expected = []
    for phase_epochs, step, rate in ((ls_epochs, ls_decay, ls_rate), (epochs, decay, 0.005)):
        for ep in range(1, phase_epochs + 1):
            rate = rate * 0.5 if ep % step == 0 else rate
            expected.append(rate)
    assert leaf["trainer"]["max_epochs"] == len(expected)
    (switch,) = [c for c in leaf["trainer"]["callbacks"] if c["class_path"].endswith("LinearStartSwitch")]
    assert switch["init_args"]["epochs"] == ls_epochs
    rates = _rates(len(expected), lr=recipe["optimizer"]["init_args"]["lr"], **scheduler)
    assert rates == pytest.approx(expected, rel=1e-15)
