"""Every score of memnet, once: pure functions of tensors (and of logged metric dicts).

Used alike by the tasks (``tasks.algorithmic``), the LightningModules, ``memnet
evaluate``, the bAbI table and the suite's report, so a score means one thing
wherever it is printed.

Binary sequence tasks (the NTM paper's algorithmic tasks); ``mask`` (B, T) is 1 on
the scored (output-phase) steps:
    masked_bce               binary cross-entropy of each scored bit, nats (B, T, D)
    binary_loss              its mean per scored bit, the training loss ()
    bits_per_sequence        the paper's cost: cross-entropy summed over a sequence, in bits (B,)
    bit_errors_per_sequence  wrong bits (logit > 0 read as 1) per sequence (B,)
    step_accuracy            share of scored steps whose every bit is right (B,)
    sequence_metrics         the three logged per batch: loss, bits_per_seq, bit_errors_per_seq

Question answering (bAbI):
    answer_errors            1 for a wrong answer, 0 for a right one (B,)
    task_error_counts        wrong answers and questions per task (2, K)
    task_errors_from_counts  error in percent of every task present
    FAILED_TASK_ERROR        a task above 5% test error counts as failed (Weston et al. 2015)
    mean_error, failed_tasks the papers' summary rows of a set of per-task errors
    task_error_key, task_errors   the logged name ``<stage>/task_<k>/error``, and reading it back
    length_key, by_length    the logged name ``<stage>/len_<n>/<score>``, and reading it back
    logged_number            a logged score (a number or a tensor of one value) as a float

Token sequences (seq2seq): ``token_metrics``, ``sequence_accuracy``.
Real-valued series: ``nrmse_from_sums`` (and ``nrmse_sums`` to accumulate them): each output's NRMSE,
averaged over the outputs.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

LOG2 = math.log(2.0)  # nats per bit
FAILED_TASK_ERROR = 5.0  # percent: a bAbI task counts as failed above this test error (Weston et al. 2015)
BABI_TASK_COUNT = 20  # tasks 1..20 of bAbI v1.2
BABI_TASK_KEYS = tuple(str(k) for k in range(1, BABI_TASK_COUNT + 1))  # the tasks as JSON keys "1".."20"


# ----------------------------------------------------------------------------- binary sequences


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every bit, zero off the scored steps.

    Args:
        logits: (B, T, D) output logits.
        targets: (B, T, D) targets in {0, 1}.
        mask: (B, T) 1 on scored steps.

    Returns:
        (B, T, D) nats; exactly 0 on unscored steps, whatever the network output there (a
        sequence shorter than its batch runs on through padding, where a network may overflow
        to NaN: 0 · NaN would be NaN, and one such sequence would turn a mean into NaN).
    """
    weights = rearrange(mask, "b t -> b t 1")
    # Unscored logits are read as 0: their nats are then finite and the weight 0 zeroes them, and no
    # NaN reaches the loss's backward.
    logits = logits.masked_fill(weights == 0, 0.0)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What a loss or a count is computed in: float32, or the dtype itself where it is wider (float64).

    Under ``bf16-true`` / ``16-true`` the logits, targets and masks come in bfloat16 or float16, whose sums
    miscount above 256 scored values (bfloat16) or overflow above 65,504 (float16).
    """
    return torch.promote_types(dtype, torch.float32)


def binary_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked binary cross-entropy, mean nats per scored bit: (B, T, D), (B, T, D), (B, T) -> ().

    Summed and counted in float32 at least (float64 logits stay float64): in bfloat16 the scored bits of a
    batch are miscounted above 256, and a float16 sum overflows to inf above 65,504 nats.
    """
    dtype = accumulation_dtype(logits.dtype)
    mask = mask.to(dtype)
    scored_bits = (mask.sum() * logits.shape[-1]).clamp_min(1)
    return masked_bce(logits.to(dtype), targets.to(dtype), mask).sum() / scored_bits


def bits_per_sequence(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The NTM paper's cost: cross-entropy summed over a sequence's scored bits, in bits. -> (B,).

    Summed in float32 (a no-op for float32 logits): a bfloat16 sum over hundreds of bits loses whole bits.
    """
    return masked_bce(logits.float(), targets.float(), mask.float()).sum(dim=(1, 2)) / LOG2


def wrong_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, D) 1 where the output thresholded at probability ½ (logit > 0) differs from the target, or is NaN.

    A NaN output is wrong whatever the target: read as 0 (NaN > 0 is false), a network that overflowed
    would be right on every 0 bit, and a sequence with no 1 bit exact. In float32 whatever the logits'
    dtype: summed over a sequence, bfloat16 would stop counting at 256.
    """
    return (((logits > 0).to(targets.dtype) != targets) | logits.isnan()).float()


def bit_errors_per_sequence(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wrong bits on the scored steps of each sequence: (B, T, D), (B, T, D), (B, T) -> (B,)."""
    return (wrong_bits(logits, targets) * rearrange(mask, "b t -> b t 1")).sum(dim=(1, 2))


def step_accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of a sequence's scored steps whose every bit is right: -> (B,) (counted in float32)."""
    mask = mask.float()
    right = (wrong_bits(logits, targets).sum(dim=-1) == 0).float() * mask
    return right.sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def sequence_metrics(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Masked binary cross-entropy and the NTM paper's per-sequence metrics.

    Args:
        logits: (B, T, D) output logits.
        targets: (B, T, D) binary targets.
        mask: (B, T) 1 on scored steps.

    Returns:
        ``loss`` (mean nats per scored bit), ``bits_per_seq`` and ``bit_errors_per_seq``
        (sums over a sequence's scored bits, averaged over the batch).
    """
    return {
        "loss": binary_loss(logits, targets, mask),
        "bits_per_seq": bits_per_sequence(logits, targets, mask).mean(),
        "bit_errors_per_seq": bit_errors_per_sequence(logits, targets, mask).mean(),
    }


# ----------------------------------------------------------------------------- question answering


def answer_errors(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """logits (B, A), answer (B,) class -> (B,) 1.0 where the arg-max answer is wrong, else 0.0 (float32 whatever
    the logits' dtype: bfloat16 counts stop at 256, float16 at 2,048).

    A question with a NaN logit is wrong: arg-max takes NaN for the largest value, so a network that
    overflowed would answer class 0 (or the NaN's class) and be right on every question whose answer it is.
    """
    return ((logits.argmax(-1) != answer) | logits.isnan().any(-1)).float()


def task_error_counts(wrong: torch.Tensor, task: torch.Tensor, *, tasks: int | None = None) -> torch.Tensor:
    """Wrong answers and questions of each task: wrong (B,), task (B,) ints -> (2, K).

    Row 0 counts the wrong answers, row 1 the questions; K = ``tasks`` or max(task) + 1.
    """
    size = int(task.max()) + 1 if tasks is None else tasks
    wrong = wrong.float()  # counts in float32, exact to 2**24, whatever dtype the errors came in
    zeros = torch.zeros(size, device=wrong.device, dtype=wrong.dtype)
    return torch.stack([zeros.index_add(0, task, wrong), zeros.index_add(0, task, torch.ones_like(wrong))])


def task_errors_from_counts(counts: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """counts (2, K) as :func:`task_error_counts` -> (tasks present, their error in percent (P,))."""
    present = counts[1] > 0
    return present.nonzero().flatten().tolist(), 100 * counts[0][present] / counts[1][present]


def mean_error(errors: Iterable[float]) -> float:
    """Mean of per-task errors (percent); NaN for none."""
    values = [float(e) for e in errors]
    return sum(values) / len(values) if values else math.nan


def failed_tasks(errors: Iterable[float] | torch.Tensor, *, threshold: float = FAILED_TASK_ERROR) -> int:
    """How many tasks have an error (percent) above ``threshold`` (5%, the papers' failure line)."""
    return int(sum(float(e) > threshold for e in errors))


def task_error_key(stage: str, task: int) -> str:
    """The name under which a LightningModule logs task ``task``'s error: ``test/task_3/error``."""
    return f"{stage}/task_{task}/error"


_TASK_METRIC = re.compile(r"^(?P<stage>\w+)/task_(?P<task>\d+)/error$")


def logged_number(key: str, value: Any) -> float:
    """A logged score as a float: a number, or a tensor of one value (``trainer.callback_metrics`` holds 0-d
    tensors, ``trainer.validate`` returns floats). Anything else is refused (``TypeError``) naming ``key``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise TypeError(f"the logged metric {key} is {type(value).__name__}{shape} {value!r}, not a number "
                    "(a float or a tensor of one value)")


def task_errors(metrics: Mapping[str, Any], stage: str = "test") -> dict[int, float]:
    """{task -> error %} from logged metrics named as :func:`task_error_key` gives, sorted by task.

    Values are numbers or tensors of one value (:func:`logged_number`).
    """
    errors = {}
    for key, value in metrics.items():
        match = _TASK_METRIC.match(str(key))
        if match and match["stage"] == stage:
            errors[int(match["task"])] = logged_number(key, value)
    return dict(sorted(errors.items()))


def length_key(stage: str, length: int, name: str) -> str:
    """The name under which a score at one task length is logged: ``val/len_20/bits_per_seq``."""
    return f"{stage}/len_{length}/{name}"


_LENGTH_METRIC = re.compile(r"^(?P<stage>\w+)/len_(?P<length>\d+)/(?P<name>\w+)$")


def by_length(metrics: Mapping[str, Any], name: str, stage: str = "val") -> dict[int, float]:
    """{length -> value} of the score ``name`` logged per length (:func:`length_key`), sorted by length.

    Values are numbers or tensors of one value (:func:`logged_number`): ``trainer.callback_metrics`` reads
    as well as a run's ``summary.json``.
    """
    values = {}
    for key, value in metrics.items():
        match = _LENGTH_METRIC.match(str(key))
        if match and match["stage"] == stage and match["name"] == name:
            values[int(match["length"])] = logged_number(key, value)
    return dict(sorted(values.items()))


# ----------------------------------------------------------------------------- token sequences


def token_metrics(logits: torch.Tensor, target: torch.Tensor, *, pad_index: int = 0) -> dict[str, torch.Tensor]:
    """Token cross-entropy and accuracy, PAD targets ignored.

    Args:
        logits: (B, T, V).
        target: (B, T) token ids.
        pad_index: the id whose positions are not scored.

    Returns:
        ``loss`` (mean nats per scored token) and ``token_accuracy`` (a token with a NaN logit is wrong:
        arg-max takes NaN for the largest value, as in :func:`answer_errors`).
    """
    scored = target != pad_index
    # in float32 at least: bfloat16 logits' log-softmax and mean were up to 0.7% off
    loss = F.cross_entropy(logits.flatten(0, 1).to(accumulation_dtype(logits.dtype)), target.flatten(),
                           ignore_index=pad_index)
    right = (logits.argmax(-1) == target) & scored & ~logits.isnan().any(-1)
    return {"loss": loss, "token_accuracy": right.sum() / scored.sum().clamp_min(1)}


def sequence_accuracy(
    decoded: torch.Tensor, target: torch.Tensor, *, pad_index: int = 0, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact match of decoded sequences: decoded (B, T'), target (B, T) -> (B,) float 1/0.

    Sequences are compared up to the target's length (EOS included), the shorter
    padded with PAD; a decoding that goes on past the target's end (non-PAD
    tokens there) is wrong.

    ``logits`` (B, T', V), those the decoded tokens are the arg-max of (``Seq2Seq.generate(...,
    return_logits=True)``): a decoding with a NaN logit on a step that gave a token is wrong, as in
    :func:`token_metrics` (arg-max takes NaN for the largest value: a decoder whose winning logit
    overflowed to NaN decoded the target still). Steps after a decoding's end hold PAD and count not: their
    logits were never read. A step that gave PAD before the end differs from a target ending with EOS.
    """
    nan = torch.zeros(decoded.shape[0], dtype=torch.bool, device=decoded.device)
    if logits is not None:
        if logits.shape[:2] != decoded.shape:
            raise ValueError(f"logits (B, T', V) must be those of the decoded steps {tuple(decoded.shape)}, "
                             f"got shape {tuple(logits.shape)}")
        nan = (logits.isnan().any(-1) & (decoded != pad_index)).any(dim=1)
    length = max(decoded.shape[1], target.shape[1])
    decoded = F.pad(decoded, (0, length - decoded.shape[1]), value=pad_index)
    target = F.pad(target, (0, length - target.shape[1]), value=pad_index)
    return ((decoded == target).all(dim=1) & ~nan).to(torch.get_default_dtype())


# ----------------------------------------------------------------------------- real-valued series


def _scored_difference(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """predictions − targets on the scored steps, 0 on the others: (B, T, K), (B, T, K), (B, T, 1) -> (B, T, K).

    Selected with ``torch.where``, not multiplied by the mask: 0 × NaN is NaN, so a NaN or inf on an
    unscored step (padding, a series' undefined start) made a masked sum NaN. The selection comes before the
    square: the gradient of a square at NaN, times the 0 that ``where`` passes back, is NaN again.
    """
    return torch.where(mask != 0, predictions - targets, 0.0)


def masked_mse(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the scored steps: (B, T, K), (B, T, K), (B, T) -> ().

    Summed and counted in float32 at least, as :func:`binary_loss`. A NaN or inf of the predictions or the
    targets on an unscored step (mask 0) counts not, in the value or the gradient (:func:`_scored_difference`).
    """
    dtype = accumulation_dtype(predictions.dtype)
    mask = rearrange(mask, "b t -> b t 1").to(dtype)
    count = mask.sum() * targets.shape[-1]
    return (_scored_difference(predictions.to(dtype), targets.to(dtype), mask) ** 2 * mask).sum() / count.clamp_min(1)


def nrmse_sums(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One batch's [Σ(y−ŷ)², Σy, Σy², n] of each output over the scored steps: (B, T, K), (B, T, K), (B, T) ->
    (4, K), float64; sums of batches add up.

    Computed in float64 whatever the dtype: a bfloat16 mask miscounts n above 256 (the variance, Σy² − (Σy)²/n,
    then off by much more). A NaN or inf of the predictions or the targets on an unscored step counts not.
    """
    mask = rearrange(mask, "b t -> b t 1").double()
    targets = targets.double()
    squared = _scored_difference(predictions.detach().double(), targets, mask) ** 2 * mask
    masked = torch.where(mask != 0, targets, 0.0) * mask
    count = mask.sum().expand(targets.shape[-1])
    return torch.stack([squared.sum((0, 1)), masked.sum((0, 1)), (masked**2).sum((0, 1)), count])


def nrmse_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """[Σ(y−ŷ)², Σy, Σy², n] (4, K) of K outputs, or (4,) of one -> the NRMSE ().

    Each output's NRMSE, √(mean (y−ŷ)² / var y) = √(Σ(y−ŷ)² / (Σy² − (Σy)²/n)), then their mean over the K
    outputs: each is normalised by its own variance about its own mean (pooled over the outputs, an output's
    offset from the others would count as spread).

    Raises ``ValueError`` when an output's targets are constant (their spread is nothing but rounding): the
    score, normalised by it, is undefined; it came out inf, or NaN for a perfect prediction.
    """
    sums = sums if sums.dim() == 2 else rearrange(sums, "s -> s 1")
    squared_error, total, total_squares, count = sums
    spread = total_squares - total**2 / count
    constant = spread <= 64 * torch.finfo(sums.dtype).eps * total_squares
    if bool(constant.any()):
        k = int(constant.nonzero()[0])
        subject = "the targets are" if sums.shape[1] == 1 else f"output {k} of the targets is"
        raise ValueError(f"{subject} constant over the {int(count[k])} scored values (Σy = {float(total[k]):.6g}, "
                         f"Σy² = {float(total_squares[k]):.6g}): the NRMSE, normalised by their variance, is undefined")
    return torch.sqrt(squared_error / spread).mean()
