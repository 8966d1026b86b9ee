"""memnet.metrics (every score once) and memnet.protocols (the task and result contracts)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from memnet import metrics
from memnet.protocols import ResultSchemaError, SequenceTask, read_evaluation
from tasks.algorithmic import AssociativeRecallTask, CopyTask


def _batch():
    # B=2, T=3, D=4; only steps 1 and 2 are scored
    targets = torch.tensor([[[0, 1, 0, 1]] * 3, [[1, 1, 0, 0]] * 3], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]], dtype=torch.float64)
    return targets, mask


def test_bits_and_bit_errors_per_sequence_count_only_scored_steps():
    targets, mask = _batch()
    logits = torch.zeros_like(targets)  # probability ½ everywhere: one bit of cost per scored bit
    assert metrics.bits_per_sequence(logits, targets, mask).tolist() == pytest.approx([8.0, 8.0])
    assert metrics.binary_loss(logits, targets, mask).item() == pytest.approx(math.log(2))
    perfect = 40 * (2 * targets - 1)
    perfect[0, 2, 0] = 40  # one wrong bit on a scored step of sequence 0
    perfect[1, 0, :] = -perfect[1, 0, :]  # four wrong bits on an unscored step of sequence 1
    assert metrics.bit_errors_per_sequence(perfect, targets, mask).tolist() == [1.0, 0.0]
    assert metrics.step_accuracy(perfect, targets, mask).tolist() == [0.5, 1.0]
    summary = metrics.sequence_metrics(perfect, targets, mask)
    assert summary["bit_errors_per_seq"].item() == 0.5


def test_a_nan_or_inf_output_on_an_unscored_step_costs_nothing():
    """A sequence shorter than its batch runs on through padding, where a network can overflow:
    its cost (and the loss's gradient) must not turn NaN (seen: a feed-forward NTM's repeat copy,
    NaN bits per sequence with 0 bit errors and 100% exact)."""
    targets, mask = _batch()
    logits = torch.zeros_like(targets, requires_grad=True)
    poisoned = logits.clone()
    poisoned.data[0, 0, 1], poisoned.data[1, 0, :] = float("nan"), float("inf")  # step 0 is unscored
    assert metrics.bits_per_sequence(poisoned, targets, mask).tolist() == pytest.approx([8.0, 8.0])
    loss = metrics.binary_loss(poisoned, targets, mask)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2)) and torch.isfinite(logits.grad).all()
    assert logits.grad[:, 0].abs().sum() == 0 and logits.grad[:, 1:].abs().sum() > 0
    scored = poisoned.detach().clone()
    scored[0, 1, 0] = float("nan")  # on a scored step it stays visible
    assert math.isnan(metrics.bits_per_sequence(scored, targets, mask)[0].item())


def test_a_nan_output_on_a_scored_step_is_wrong_whatever_the_target():
    # NaN > 0 is false and arg-max takes NaN for the largest value: an overflowed network was read as
    # answering 0, right on every 0 bit (a sequence of 0 bits exact) and on every question of class 0
    targets, mask = _batch()
    logits = 40 * (2 * targets - 1)
    logits[0, 1, 0] = logits[1, 2, 3] = float("nan")  # on 0 bits of scored steps
    logits[1, 0, :] = float("nan")  # on an unscored step: still costs nothing
    assert metrics.bit_errors_per_sequence(logits, targets, mask).tolist() == [1.0, 1.0]
    assert metrics.step_accuracy(logits, targets, mask).tolist() == [0.5, 0.5]
    answers = torch.tensor([[float("nan")] * 3, [0.0, float("nan"), 1.0], [2.0, 0.0, 1.0]])
    assert metrics.answer_errors(answers, torch.tensor([0, 1, 0])).tolist() == [1.0, 1.0, 0.0]
    # tokens (B = 1, T = 3, V = 3), targets 0, 1, 0 (PAD = 2): the NaN rows (arg-max 0, the target) are wrong
    tokens = torch.tensor([[[float("nan"), 0.0, 0.0], [0.0, 2.0, 0.0], [float("nan")] * 3]])
    assert metrics.token_metrics(tokens, torch.tensor([[0, 1, 0]]), pad_index=2)["token_accuracy"].item() == \
        pytest.approx(1 / 3)
    assert metrics.token_metrics(tokens, torch.tensor([[0, 1, 2]]), pad_index=2)["token_accuracy"].item() == 0.5
    # greedy decodings (B = 3, T' = 3, V = 4; PAD 0, EOS 2), each equal to its target: a NaN logit on a step that
    # gave a token makes the decoding wrong; after the decoding's end (PAD) it was never read and counts not
    target = torch.tensor([[3, 2, 0], [3, 1, 2], [1, 2, 0]])
    decoded_logits = torch.nn.functional.one_hot(target, 4).double() * 5
    decoded_logits[0, 2, :] = float("nan")  # after EOS (generate writes PAD there whatever the arg-max)
    decoded_logits[1, 1, 1] = float("nan")  # the winning logit: arg-max still 1
    decoded_logits[2, 1, 0] = float("nan")  # a losing logit, on the EOS step
    decoded = target.clone()
    assert torch.equal(decoded_logits[1].argmax(-1), target[1])
    assert metrics.sequence_accuracy(decoded, target).tolist() == [1.0, 1.0, 1.0]
    assert metrics.sequence_accuracy(decoded, target, logits=decoded_logits).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"logits \(B, T', V\) must be those of the decoded steps \(3, 3\)"):
        metrics.sequence_accuracy(decoded, target, logits=decoded_logits[:, :2])


def test_task_errors_mean_and_failed_count():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    answer = torch.tensor([0, 0, 1, 0])
    wrong = metrics.answer_errors(logits, answer)
    assert wrong.tolist() == [0.0, 1.0, 1.0, 0.0]
    counts = metrics.task_error_counts(wrong, torch.tensor([1, 1, 3, 3]))
    tasks, errors = metrics.task_errors_from_counts(counts)
    assert tasks == [1, 3] and errors.tolist() == [50.0, 50.0]
    assert metrics.failed_tasks([5.0, 5.01, 0.0]) == 1  # strictly above the 5% line
    assert metrics.FAILED_TASK_ERROR == 5.0
    assert metrics.mean_error([1.0, 3.0]) == 2.0 and math.isnan(metrics.mean_error([]))
    logged = {metrics.task_error_key("test", 10): 1.5, "test/task_2/error": 4.0, "val/task_2/error": 9.0,
              "test/loss": 0.3}
    assert metrics.task_errors(logged) == {2: 4.0, 10: 1.5}
    assert metrics.task_errors(logged, "val") == {2: 9.0}


def test_scores_by_length_read_back_what_was_logged_tensors_included():
    """``trainer.callback_metrics`` holds 0-d tensors: ``by_length`` dropped them silently (a length table
    without its lengths), where ``task_errors`` reads them; a value that is no single number is refused."""
    logged = {metrics.length_key("val", 20, "bits_per_seq"): torch.tensor(0.25), "val/len_3/bits_per_seq": 1.5,
              "val/len_7/bits_per_seq": torch.tensor([2.0], dtype=torch.float64), "val/len_3/bit_errors_per_seq": 0.5,
              "test/len_3/bits_per_seq": 9.0, "val/bits_per_seq": 4.0}
    assert metrics.by_length(logged, "bits_per_seq") == {3: 1.5, 7: 2.0, 20: 0.25}
    assert metrics.by_length(logged, "bits_per_seq", "test") == {3: 9.0}
    for value in (torch.zeros(2), None, "0.3", True):
        with pytest.raises(TypeError, match=r"val/len_5/bits_per_seq is .*, not a number"):
            metrics.by_length({"val/len_5/bits_per_seq": value}, "bits_per_seq")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_counts_are_exact_whatever_the_dtype_of_the_logits(dtype):
    # 1,000 questions of task 3, 100 answered wrongly: bfloat16 counts would stop at 256 (39%, not 10%)
    logits = torch.zeros(1000, 4, dtype=dtype)
    logits[:, 1] = 1.0
    answer = torch.ones(1000, dtype=torch.long)
    answer[:100] = 2
    counts = metrics.task_error_counts(metrics.answer_errors(logits, answer), torch.full((1000,), 3))
    assert counts[:, 3].tolist() == [100.0, 1000.0]
    assert metrics.task_errors_from_counts(counts)[1].tolist() == [10.0]
    # 300 wrong bits in one sequence of 100 steps x 4 bits, and its cost in bits: summed in float32
    targets, mask = torch.zeros(1, 100, 4), torch.ones(1, 100)
    logits = torch.full((1, 100, 4), -1.0, dtype=dtype)
    logits[0, :75] = 1.0
    assert metrics.bit_errors_per_sequence(logits, targets, mask).item() == 300.0
    exact = metrics.bits_per_sequence(logits.float(), targets, mask).item()
    assert metrics.bits_per_sequence(logits, targets, mask).item() == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_loss_per_scored_bit_is_summed_and_counted_in_float32_whatever_the_dtype(dtype):
    # bf16-true / 16-true batches reach the loss in the network's dtype: 17 sequences x 21 scored steps x 8 bits
    # were counted 356 x 8 scored bits in bfloat16 (the loss 0.5% off), and 64 x 121 x 9 bits overflowed
    # float16's sum (65,504) into a NaN loss
    g = torch.Generator().manual_seed(0)
    for batch, steps, bits in ((17, 21, 8), (64, 121, 9)):
        logits = (torch.randn(batch, steps, bits, generator=g) * 2).to(dtype)
        targets = torch.randint(0, 2, (batch, steps, bits), generator=g).float()
        mask = torch.ones(batch, steps)
        exact = metrics.binary_loss(logits.double(), targets.double(), mask.double()).item()
        loss = metrics.binary_loss(logits, targets.to(dtype), mask.to(dtype))
        assert loss.item() == pytest.approx(exact, rel=1e-6)
        summary = metrics.sequence_metrics(logits, targets.to(dtype), mask.to(dtype))
        assert summary["loss"].item() == pytest.approx(summary["bits_per_seq"].item() * metrics.LOG2 / (steps * bits),
                                                       rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mse_and_nrmse_count_the_scored_values_exactly_whatever_the_dtype(dtype):
    # bf16-true batches of 16 NARMA-like series, 950 scored steps each: bfloat16 counted 15,232 values, not
    # 15,200, and the NRMSE's variance, Σy² − (Σy)²/n, came out 1.3% off
    g = torch.Generator().manual_seed(0)
    targets = (0.39 + 0.11 * torch.randn(16, 1000, 1, generator=g)).to(dtype)
    predictions = (targets.double() + 0.03 * torch.randn(16, 1000, 1, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.ones(16, 1000)
    mask[:, :50] = 0.0
    exact = [predictions.double(), targets.double(), mask.double()]
    got = [predictions, targets, mask.to(dtype)]
    assert metrics.nrmse_sums(*got)[3].item() == 15200.0
    assert metrics.nrmse_from_sums(metrics.nrmse_sums(*got)).item() == pytest.approx(
        metrics.nrmse_from_sums(metrics.nrmse_sums(*exact)).item(), rel=1e-6)
    assert metrics.masked_mse(*got).item() == pytest.approx(metrics.masked_mse(*exact).item(), rel=1e-6)


def test_step_accuracy_counts_long_sequences_steps_exactly_in_bfloat16():
    # 301 scored steps, all right: a bfloat16 count of the steps (300) made the share 1.003
    targets, mask = torch.zeros(1, 301, 4), torch.ones(1, 301)
    logits = torch.full((1, 301, 4), -1.0, dtype=torch.bfloat16)
    assert metrics.step_accuracy(logits, targets.bfloat16(), mask.bfloat16()).item() == 1.0


def test_token_loss_is_computed_in_float32_whatever_the_dtype_of_the_logits():
    # bfloat16 logits (bf16-true) gave a mean token cross-entropy up to 0.7% off that of the same logits in float64
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(32, 11, 13, generator=g) * 3).bfloat16()
    target = torch.randint(1, 13, (32, 11), generator=g)
    exact = metrics.token_metrics(logits.double(), target)["loss"].item()
    assert metrics.token_metrics(logits, target)["loss"].item() == pytest.approx(exact, rel=1e-6)


def test_nrmse_sums_of_batches_add_up_to_the_whole():
    g = torch.Generator().manual_seed(0)
    predictions, targets = torch.randn(4, 6, 2, generator=g), torch.randn(4, 6, 2, generator=g)
    mask = torch.ones(4, 6)
    whole = metrics.nrmse_from_sums(metrics.nrmse_sums(predictions, targets, mask))
    halves = metrics.nrmse_sums(predictions[:2], targets[:2], mask[:2]) + metrics.nrmse_sums(
        predictions[2:], targets[2:], mask[2:])
    y = targets.double()  # each output's NRMSE, about its own mean, then their mean
    expected = torch.sqrt(((predictions.double() - y) ** 2).sum((0, 1)) / ((y - y.mean((0, 1))) ** 2).sum((0, 1)))
    assert metrics.nrmse_from_sums(halves).item() == pytest.approx(whole.item())
    assert whole.item() == pytest.approx(expected.mean().item())


def test_nan_and_inf_on_unscored_steps_count_not_in_the_mse_nor_its_gradient_nor_the_nrmse_sums():
    """NaN predictions and targets on unscored steps (mask 0) made masked_mse and nrmse_sums NaN (0 × NaN = NaN).
    They count not: the value and the gradient are those of the same batch with finite values there, and the
    gradient at those steps is 0."""
    g = torch.Generator().manual_seed(0)
    predictions = torch.randn(3, 7, 2, generator=g, dtype=torch.float64)
    targets = torch.randn(3, 7, 2, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 7, generator=g) > 0.4).double()
    mask[0, 0], mask[1, 3], mask[2, 6] = 0.0, 0.0, 0.0
    unscored = ~mask.bool()
    broken_predictions, broken_targets = predictions.clone(), targets.clone()
    broken_predictions[0, 0, 1] = float("nan")
    broken_predictions[1, 3] = float("inf")
    broken_targets[2, 6] = float("nan")
    broken_targets[1, 3, 0] = float("inf")  # inf − inf: NaN

    clean = predictions.clone().requires_grad_()
    broken = broken_predictions.clone().requires_grad_()
    expected = metrics.masked_mse(clean, targets, mask)
    got = metrics.masked_mse(broken, broken_targets, mask)
    expected.backward()
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.isfinite(broken.grad).all()
    assert broken.grad[unscored].abs().sum().item() == 0.0
    assert torch.allclose(broken.grad, clean.grad, rtol=1e-12, atol=0.0)
    assert torch.allclose(metrics.nrmse_sums(broken_predictions, broken_targets, mask),
                          metrics.nrmse_sums(predictions, targets, mask), rtol=1e-12, atol=0.0)


def test_nrmse_of_several_outputs_is_the_mean_of_each_outputs_nrmse():
    """NRMSE = √(mean (y − ŷ)² / var y) of each output, then averaged. The variance was pooled over the outputs
    about their common mean: an output's offset from the others counted as spread (here 0.155, not 0.75)."""
    # (B = 1, T = 5, K = 2); step 4 unscored
    targets = torch.tensor([[[0.0, 10.0], [2.0, 12.0], [0.0, 10.0], [2.0, 12.0], [5.0, 5.0]]])
    predictions = torch.tensor([[[1.0, 10.0], [1.0, 12.0], [1.0, 10.0], [1.0, 11.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    # output 0: Σ(y−ŷ)² = 4, mean 1, Σ(y−ȳ)² = 4 -> 1; output 1: Σ(y−ŷ)² = 1, mean 11, Σ(y−ȳ)² = 4 -> 0.5
    assert metrics.nrmse_from_sums(metrics.nrmse_sums(predictions, targets, mask)).item() == pytest.approx(0.75)
    # one output: as before, √(Σ(y−ŷ)² / Σ(y−ȳ)²)
    assert metrics.nrmse_from_sums(metrics.nrmse_sums(predictions[..., 1:], targets[..., 1:], mask)).item() == \
        pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"output 1 of the targets is constant over the 4 scored values"):
        metrics.nrmse_from_sums(metrics.nrmse_sums(predictions, targets * torch.tensor([1.0, 0.0]), mask))


def test_algorithmic_tasks_satisfy_the_sequence_task_protocol():
    assert isinstance(CopyTask(), SequenceTask) and isinstance(AssociativeRecallTask(), SequenceTask)
    assert not isinstance(object(), SequenceTask)


def test_read_evaluation_names_the_file_and_the_missing_field(tmp_path):
    good = {"checkpoint": "c", "config": [], "task": "CopyTask", "model": "NTM", "train_range": [1, 20],
            "trained_memory_size": 128, "seed": 0, "wall_s": 1.0, "figures": {},
            "lengths": [{"length": 20, "bits_per_seq": 0.1, "bit_errors_per_seq": 0.0, "sequences": 8}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(good))
    assert read_evaluation(path)["lengths"][0]["length"] == 20
    del good["lengths"][0]["bits_per_seq"]
    path.write_text(json.dumps(good))
    with pytest.raises(ResultSchemaError, match=r"results.json: lengths\[0\] lacks bits_per_seq"):
        read_evaluation(path)
    path.write_text("{\n  oops")
    with pytest.raises(ResultSchemaError, match="line 2 is not JSON"):
        read_evaluation(path)


@pytest.mark.parametrize("value", [0.0, 0.7, 1e6])
def test_nrmse_of_constant_targets_is_refused_not_inf(value):
    """Constant targets have no variance to normalise by: the NRMSE was inf (NaN for a perfect prediction)."""
    targets, mask = torch.full((3, 5, 2), value), torch.ones(3, 5)
    for predictions in (targets + 0.1, targets.clone()):
        with pytest.raises(ValueError, match=r"output 0 of the targets is constant over the 15 scored values.*undef"):
            metrics.nrmse_from_sums(metrics.nrmse_sums(predictions, targets, mask))
        with pytest.raises(ValueError, match=r"the targets are constant over the 15 scored values.*undefined"):
            metrics.nrmse_from_sums(metrics.nrmse_sums(predictions[..., :1], targets[..., :1], mask))
    targets[0, 0, :] += 1e-3 * max(value, 1.0)  # a spread of one value in 15 is a variance: scored
    assert torch.isfinite(metrics.nrmse_from_sums(metrics.nrmse_sums(targets + 0.1, targets, mask)))
