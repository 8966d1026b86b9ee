"""Sequence models with no external memory: a controller and an output layer.

The baseline of the NTM paper (an LSTM, 3 layers of 256 units on copy) is
``RecurrentModel(input_size, output_size, controller=partial(LSTMController,
hidden_size=256, num_layers=3))``. Whole sequences go through the controller's
``forward``, which uses PyTorch's fused kernel where there is one.

Two options of the textbook's recurrent family live here too:

* **conditional output** (``conditional=True``): the previous output y(t−1)
  is an input of step t, so the model is P(y | x) = Π_t P(y(t) | x(≤t), y(<t)).
  Training feeds the previous *target* (teacher forcing, one fused pass);
  inference feeds back the model's own previous *prediction* (a step loop).
  Given the targets and the mask of scored steps (``forward(inputs,
  targets=, mask=)``, as ``ConditionalSequenceModule`` evaluates and
  predicts), it runs free on the scored steps only: after an unscored step
  (the input phase of copy, padding) it is fed that step's target, the
  value training fed there, not its prediction of a step it was never
  trained to predict.
  Both start from y(−1) = 0 (``initial_state``), the start value: a task
  whose all-zero output is also a real one marks its first step in the input
  (as ``tasks.sequences.MarkovBitsTask`` does). The targets reach ``forward``
  from ``memnet.lightning.ConditionalSequenceModule``; a plain
  ``SequenceModule`` passes none and refuses such a model (it would train
  free-running, on its own predictions).
* **an engine for the step loop** (``engine``): the only step loop here is a
  conditional model's inference, which feeds back its own predictions;
  ``compiled`` runs its step through ``torch.compile`` (as the memory models'
  ``compiled`` engine: sequence lengths never recompile, a compiler that is
  missing or fails is logged and the eager step runs), ``eager`` (default) runs
  it as written. Teacher forcing and non-conditional models are one fused
  controller pass and do not change.
* **closed-form readout** (``ridge_regression``, ``RidgeAccumulator``): for an
  echo-state controller only the linear output layer is trained, and it can be
  fitted in one pass by ridge regression on the collected reservoir states.

Axes:  b - batch, t - time, d - features, k - outputs
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memnet.controllers import ControllerFactory, ControllerState, LSTMController
from memnet.models.core import compiled
from memnet.utils import check_positive, check_sequence_inputs

FEEDBACKS = ("bits", "probabilities", "one_hot")
LOOP_ENGINES = ("eager", "compiled")


def check_loop_engine(engine: str) -> str:
    """Raise ``ValueError`` unless ``engine`` is one of ``LOOP_ENGINES`` (models whose only step loop is inference)."""
    if engine not in LOOP_ENGINES:
        raise ValueError(f"engine must be one of {list(LOOP_ENGINES)}, got {engine!r}")
    return engine


class ConditionalState(NamedTuple):
    """State of a conditional model.

    Attributes:
        controller: the controller's own state.
        prev_output: (B, D_out) y(t−1): the previous target (training) or prediction (inference).
    """

    controller: ControllerState
    prev_output: torch.Tensor


class RecurrentModel(nn.Module):
    """Controller followed by a linear read-out at every step.

    Args:
        input_size: D_in.
        output_size: D_out (logits).
        controller: factory ``input_size -> Controller``; default an LSTM with 100 units.
        conditional: feed the previous output y(t−1) back as an input of step t
            (the controller then reads D_in + D_out features).
        feedback: what a conditional model feeds back at inference: ``bits``
            (its logits thresholded at 0, for binary targets), ``probabilities``
            (their sigmoid) or ``one_hot`` (the arg-max class, for categorical targets).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        controller: ControllerFactory | None = None,
        conditional: bool = False,
        feedback: Literal["bits", "probabilities", "one_hot"] = "bits",
        engine: Literal["eager", "compiled"] = "eager",
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, output_size=output_size)
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {list(FEEDBACKS)}, got {feedback!r}")
        self.engine = check_loop_engine(engine)
        self.compile_backend = compile_backend
        self.compilations = 0  # graphs compiled by the ``compiled`` engine so far
        self.input_size = input_size
        self.output_size = output_size
        self.conditional = conditional
        self.feedback = feedback
        factory = controller if controller is not None else LSTMController
        self.controller = factory(input_size + (output_size if conditional else 0))
        self.output = nn.Linear(self.controller.output_size, output_size)

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> ControllerState:
        """The controller's initial state; for a conditional model with y(−1) = 0.

        ``device`` and ``dtype`` default to those of the model's parameters.
        """
        dtype = dtype if dtype is not None else self.output.weight.dtype
        device = device if device is not None else self.output.weight.device
        state = self.controller.initial_state(batch_size, device=device, dtype=dtype)
        if not self.conditional:
            return state
        return ConditionalState(state, torch.zeros(batch_size, self.output_size, device=device, dtype=dtype))

    def step(self, x: torch.Tensor, state: ControllerState) -> tuple[torch.Tensor, ControllerState]:
        """One step: x (B, D_in) -> logits (B, D_out) and the new state.

        A conditional model reads its previous prediction from the state and
        stores the new one (``feedback``) there.
        """
        if not self.conditional:
            hidden, state = self.controller.step(x, state)
            return self.output(hidden), state
        hidden, controller_state = self.controller.step(torch.cat([x, state.prev_output], dim=-1), state.controller)
        logits = self.output(hidden)
        return logits, ConditionalState(controller_state, self.feed_back(logits))

    def feed_back(self, logits: torch.Tensor) -> torch.Tensor:
        """What inference feeds back: logits (B, D_out) -> y(t) (B, D_out), no gradient."""
        logits = logits.detach()
        if self.feedback == "bits":
            return (logits > 0).to(logits.dtype)
        if self.feedback == "probabilities":
            return torch.sigmoid(logits)
        return F.one_hot(logits.argmax(dim=-1), self.output_size).to(logits.dtype)

    def forward(
        self,
        inputs: torch.Tensor,
        *,
        state: ControllerState | None = None,
        targets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs (B, T, D_in) -> logits (B, T, D_out).

        Args:
            inputs: (B, T, D_in).
            state: a starting state; default ``initial_state``.
            targets: (B, T, D_out), conditional models only: teacher forcing,
                y(t−1) = targets[:, t−1]. Without it a conditional model feeds
                back its own predictions, one step at a time.
            mask: (B, T), 1 on the scored steps, with ``targets``: run free where scored, one step at a time:
                y(t−1) is the model's prediction (``feed_back``) where step t−1 is scored, targets[:, t−1]
                where it is not.
        """
        check_sequence_inputs(inputs, self.input_size, model=type(self).__name__)
        if self.engine not in LOOP_ENGINES:  # set on the built model (``net.engine = ...``), not checked then
            check_loop_engine(self.engine)
        if mask is not None and targets is None:
            raise ValueError("mask is read with targets only: it says where a conditional model runs free on them")
        if not self.conditional:
            if targets is not None:
                raise ValueError("targets are only read by a conditional model (conditional=True)")
            hidden, _ = self.controller(inputs, state)
            return self.output(hidden)
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        if targets is not None and (targets.shape[:2] != inputs.shape[:2] or targets.shape[-1] != self.output_size):
            raise ValueError(
                f"targets must have shape (B, T, {self.output_size}) = "
                f"{(*inputs.shape[:2], self.output_size)}, got {tuple(targets.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(inputs.shape[:2]):
            raise ValueError(f"mask must have shape (B, T) = {tuple(inputs.shape[:2])}, got {tuple(mask.shape)}")
        if targets is None or mask is not None:
            # the teacher's y(t) where step t is unscored (None: none is), time first as the inputs
            teacher = None
            if mask is not None:
                teacher = [(step_mask[:, None] > 0, step_target.to(inputs.dtype)) for step_mask, step_target in
                           zip(mask.transpose(0, 1).unbind(0), targets.transpose(0, 1).unbind(0), strict=True)]
            later_step = self.step
            if self.engine == "compiled":
                later_step = compiled(self, "step", self.step, self.compile_backend)
            outputs = []
            # Time first and contiguous: each step's input has the same strides whatever T is,
            # so that a compiled step is not recompiled for another length.
            for t, x in enumerate(inputs.transpose(0, 1).contiguous().unbind(0)):
                # The first step runs eagerly: its state has no history yet (as in memnet.models.core).
                logits, state = (later_step if t > 0 else self.step)(x, state)
                outputs.append(logits)
                if teacher is not None:
                    scored, target = teacher[t]
                    state = state._replace(prev_output=torch.where(scored, state.prev_output, target))
            return torch.stack(outputs, dim=1)
        previous = torch.cat([state.prev_output.unsqueeze(1), targets[:, :-1].to(inputs.dtype)], dim=1)
        hidden, _ = self.controller(torch.cat([inputs, previous], dim=-1), state.controller)
        return self.output(hidden)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the read-out sees: inputs (B, T, D_in) -> controller outputs (B, T, C)."""
        if self.conditional:
            raise ValueError("features() is defined for non-conditional models only")
        check_sequence_inputs(inputs, self.input_size, model=type(self).__name__)
        return self.controller(inputs)[0]


def ridge_regression(
    features: torch.Tensor, targets: torch.Tensor, *, ridge: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least-squares read-out with an L2 penalty (Tikhonov regularisation).

    Minimises Σ_m ‖y_m − (W f_m + c)‖² + ridge · ‖W‖²; the bias c is not penalised.

    Args:
        features: (M, D) inputs of the read-out, one row per scored step.
        targets: (M, K) targets.
        ridge: the penalty λ ≥ 0.

    Returns:
        weight (K, D) and bias (K,), in the dtype of ``features``.
    """
    accumulator = RidgeAccumulator(features.shape[-1], targets.shape[-1])
    accumulator.update(features, targets)
    return accumulator.solve(ridge=ridge, dtype=features.dtype)


class RidgeAccumulator:
    """Sums Fᵀ F and Fᵀ Y over batches, so a read-out is fitted in one pass over the data.

    Features are augmented with a constant 1 for the bias. Sums are kept in
    float64: the Gram matrix of reservoir states is badly conditioned.

    Args:
        num_features: D.
        num_outputs: K.
    """

    def __init__(self, num_features: int, num_outputs: int) -> None:
        check_positive(num_features=num_features, num_outputs=num_outputs)
        self.gram = torch.zeros(num_features + 1, num_features + 1, dtype=torch.float64)
        self.cross = torch.zeros(num_features + 1, num_outputs, dtype=torch.float64)
        self.count = 0

    def update(self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add rows: features (..., D), targets (..., K), mask (...) of 0/1 (default all 1)."""
        if mask is not None and tuple(mask.shape) != tuple(features.shape[:-1]):
            raise ValueError(f"mask must have the leading shape of features {tuple(features.shape[:-1])}, "
                             f"got {tuple(mask.shape)}")
        features = features.detach().reshape(-1, features.shape[-1]).double().cpu()
        targets = targets.detach().reshape(-1, targets.shape[-1]).double().cpu()
        if features.shape[0] != targets.shape[0] or features.shape[1] + 1 != self.gram.shape[0]:
            raise ValueError(
                f"features (..., {self.gram.shape[0] - 1}) and targets (..., {self.cross.shape[1]}) must "
                f"share their leading axes, got {features.shape[0]} and {targets.shape[0]} rows"
            )
        if mask is not None:
            keep = mask.detach().reshape(-1).cpu() > 0
            features, targets = features[keep], targets[keep]
        augmented = torch.cat([features, torch.ones(features.shape[0], 1, dtype=torch.float64)], dim=1)
        self.gram += augmented.T @ augmented
        self.cross += augmented.T @ targets
        self.count += features.shape[0]

    def solve(self, *, ridge: float = 0.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(FᵀF + λ I') W̃ = FᵀY, I' leaving the bias unpenalised -> weight (K, D), bias (K,)."""
        if not 0 <= ridge < math.inf:  # inf made every weight NaN (inf · 0 in the solve), silently
            raise ValueError(f"ridge must lie in [0, inf), got {ridge!r}")
        if self.count == 0:
            raise ValueError("no rows were accumulated: call update() with at least one scored step")
        penalty = torch.full((self.gram.shape[0],), float(ridge), dtype=torch.float64)
        penalty[-1] = 0.0
        system = self.gram + torch.diag(penalty)
        solution = torch.linalg.lstsq(system, self.cross).solution  # (D + 1, K); lstsq also copes with λ = 0
        return solution[:-1].T.to(dtype).contiguous(), solution[-1].to(dtype).contiguous()
