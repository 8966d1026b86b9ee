"""Encoder–decoder (sequence-to-sequence) models (Cho et al. 2014; Sutskever et al. 2014),
with optional attention (Bahdanau et al. 2015; Luong et al. 2015).

An encoder controller reads the embedded source x(1..S); its outputs are the
encoder states e(1..S) and its last output is the context C. A decoder
controller then writes the answer one token at a time, conditioned on C and on
its previous token y(t−1):

    decoder input(t) = concat(embed(y(t−1)), c_in(t))       y(0) = BOS
    h(t), state = decoder.step(decoder input(t), state)
    logits(t) = output(concat(h(t), c_out(t)))

    attention   c_in(t)                 c_out(t)
    none        C                       C
    luong       C                       read(E, softmax_s(h(t)ᵀ W e(s)))           (Luong "general")
    content     C                       read(E, content_weights(E, k(h(t)), β(h(t))))   (the NTM's content read)
    bahdanau    read(E, a(h(t−1)))      c_in(t)     a = softmax_s vᵀ tanh(W_q h(t−1) + W_k e(s))

The Bahdanau query of step t is the decoder's output before it, h(t−1) (s(i−1) in Bahdanau et
al.). For t = 1 that is the output belonging to the state the decoder starts from: with
``bridge``, the encoder's last output h(0) = C (the decoder continues the encoder, as the paper's
s(0) is computed from the encoder); without it, h(0) = 0, the output of no step.

Attention is a read of a memory whose slots are the encoder states E (B, S, C_e):
the weighting comes from ``memnet.addressing`` (content) or a learned score, and
the read is ``memnet.memory.read``. With ``bridge`` the decoder starts from the
encoder's final state (Sutskever et al.), which needs both states to have the
same shapes (and, with Bahdanau attention, outputs of the same width: C is h(0));
otherwise from its own initial state.

Training uses teacher forcing: with probability ``teacher_forcing_ratio`` (per
sequence and step) the decoder is fed the true y(t−1), otherwise its own
arg-max. Inference decodes greedily until every sequence has emitted EOS.
Any controller of ``memnet.controllers`` can be the encoder or the decoder.
Two echo-state reservoirs given one ``seed`` are not drawn alike: the decoder's W, W_in
and b come from ``mix_seed(seed, 1)`` (its ``seed`` attribute says so), the encoder's
from ``seed``, as a lone reservoir's.
The step loop (teacher forcing below 1, Bahdanau attention, greedy decoding)
runs ``decode_step`` as written (``engine: eager``, the default) or compiled by
``torch.compile`` (``engine: compiled``: target lengths never recompile; a
compiler that is missing or fails is logged and the eager step runs).
All sources of a batch share one length: a source holding PAD is refused.

Token ids: PAD = 0, BOS = 1, EOS = 2 by default (as in ``tasks.sequences``).

Axes:  b - batch, s - source position, t - target position, d - features,
       a - attention units, v - vocabulary
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from memnet import addressing
from memnet import memory as mem
from memnet.controllers import (
    ControllerFactory,
    ControllerState,
    EchoStateController,
    LSTMController,
)
from memnet.models.core import compiled
from memnet.models.recurrent import check_loop_engine
from memnet.utils import check_positive, check_range, check_token_ids, mix_seed

ATTENTIONS = ("none", "luong", "content", "bahdanau")


class Seq2Seq(nn.Module):
    """Encoder–decoder over token sequences.

    Args:
        input_size: V_in, the source vocabulary size.
        output_size: V_out, the target vocabulary size.
        encoder: factory ``input_size -> Controller`` for the encoder (default LSTM, 100 units).
        decoder: factory ``input_size -> Controller`` for the decoder (default LSTM, 100 units).
        embedding_size: E, width of the token embeddings.
        attention: ``none``, ``luong``, ``content`` or ``bahdanau``.
        attention_size: A, hidden units of the Bahdanau score.
        teacher_forcing_ratio: chance, in [0, 1], of feeding the true previous token in training.
        max_decode_length: the most target steps the decoder may produce (greedy decoding's limit).
        bridge: start the decoder from the encoder's final state.
        pad_index: PAD, written after EOS in decoded sequences.
        bos_index: BOS, the decoder's first input.
        eos_index: EOS, the end marker.
        engine: the decoder's step loop: ``eager`` or ``compiled`` (``torch.compile`` of ``decode_step``).
        compile_backend: the ``torch.compile`` backend of the ``compiled`` engine.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        encoder: ControllerFactory | None = None,
        decoder: ControllerFactory | None = None,
        embedding_size: int = 32,
        attention: Literal["none", "luong", "content", "bahdanau"] = "none",
        attention_size: int = 64,
        teacher_forcing_ratio: float = 1.0,
        max_decode_length: int = 100,
        bridge: bool = True,
        pad_index: int = 0,
        bos_index: int = 1,
        eos_index: int = 2,
        engine: Literal["eager", "compiled"] = "eager",
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.engine = check_loop_engine(engine)
        self.compile_backend = compile_backend
        self.compilations = 0  # graphs compiled by the ``compiled`` engine so far
        check_positive(input_size=input_size, output_size=output_size, embedding_size=embedding_size,
                       attention_size=attention_size, max_decode_length=max_decode_length)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {list(ATTENTIONS)}, got {attention!r}")
        check_range("teacher_forcing_ratio", teacher_forcing_ratio, 0.0, 1.0)
        for name, index in {"pad_index": pad_index, "bos_index": bos_index, "eos_index": eos_index}.items():
            if not 0 <= index < output_size:
                raise ValueError(f"{name} must lie in [0, output_size={output_size}), got {index!r}")
        if pad_index == eos_index:  # the loss and the accuracies skip PAD targets: EOS would never be learned
            raise ValueError(f"pad_index and eos_index must differ (PAD targets are not scored), both are {pad_index}")
        self.input_size = input_size
        self.output_size = output_size
        self.attention = attention
        self.teacher_forcing_ratio = teacher_forcing_ratio
        self.max_decode_length = max_decode_length
        self.bridge = bridge
        self.pad_index, self.bos_index, self.eos_index = pad_index, bos_index, eos_index

        self.source_embedding = nn.Embedding(input_size, embedding_size)
        self.target_embedding = nn.Embedding(output_size, embedding_size)
        self.encoder = (encoder or LSTMController)(embedding_size)
        context_size = self.encoder.output_size  # C_e
        self.decoder = (decoder or LSTMController)(embedding_size + context_size)
        if (isinstance(self.encoder, EchoStateController) and isinstance(self.decoder, EchoStateController)
                and self.decoder.seed == self.encoder.seed):
            # one seed drew one W for both (of one size: the decoder's reservoir a copy of the encoder's); the
            # decoder's from a stream of its own. A checkpoint's buffers load over the draw: old ones as trained
            self.decoder.redraw(mix_seed(self.decoder.seed, 1))
        query_size = self.decoder.output_size  # C_d
        if attention == "luong":
            self.score = nn.Linear(query_size, context_size, bias=False)  # W of hᵀ W e
        elif attention == "content":
            self.key = nn.Linear(query_size, context_size)  # k(h)
            self.strength = nn.Linear(query_size, 1)  # β(h) = softplus(·)
        elif attention == "bahdanau":
            self.query_projection = nn.Linear(query_size, attention_size, bias=False)  # W_q
            self.key_projection = nn.Linear(context_size, attention_size)  # W_k
            self.score_vector = nn.Linear(attention_size, 1, bias=False)  # v
        self.output = nn.Linear(query_size + context_size, output_size)
        if bridge:
            encoder_shapes = _shapes(self.encoder.initial_state(1))
            decoder_shapes = _shapes(self.decoder.initial_state(1))
            if encoder_shapes != decoder_shapes:
                raise ValueError(
                    f"bridge=True starts the decoder from the encoder's final state, but their states differ: "
                    f"encoder {encoder_shapes}, decoder {decoder_shapes}; set bridge: false"
                )
            if attention == "bahdanau" and context_size != query_size:  # e.g. an echo-state controller's include_input
                raise ValueError(
                    f"bridge=True with bahdanau attention queries the first step with the encoder's last output "
                    f"(C_e = {context_size} wide), but the decoder's queries are C_d = {query_size} wide; "
                    "make the controllers' outputs equal or set bridge: false"
                )

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ControllerState]:
        """source (B, S) long -> encoder states E (B, S, C_e), context C (B, C_e), decoder's initial state."""
        if source.dim() != 2 or source.shape[1] < 1:
            raise ValueError(f"source must be a (B, S) tensor of token ids with S ≥ 1, got shape {tuple(source.shape)}")
        if bool((source == self.pad_index).any()):  # the encoder and attention read every source step
            row, step = (source == self.pad_index).nonzero()[0].tolist()
            raise ValueError(
                f"source holds PAD (id {self.pad_index}) at sequence {row}, step {step}: the encoder and the attention "
                "read every source step, so all sources of a batch must share one length, unpadded (e.g. batches "
                "grouped by source length, as tasks.sequences draws them)")
        check_token_ids(self.input_size, "input_size", model=type(self).__name__, source=source)
        embedded = self.source_embedding(source)
        states, final = self.encoder(embedded)
        if self.bridge:
            decoder_state = final
        else:
            decoder_state = self.decoder.initial_state(source.shape[0], device=states.device, dtype=states.dtype)
        return states, states[:, -1], decoder_state

    def initial_query(self, context: torch.Tensor) -> torch.Tensor:
        """h(0), the Bahdanau query of the first step: context C (B, C_e) -> (B, C_d).

        With ``bridge`` the decoder starts from the encoder's final state, whose output is C;
        otherwise from its own initial state, and h(0) is zeros.
        """
        if self.bridge:
            return context
        return context.new_zeros(context.shape[0], self.decoder.output_size)

    # -- attention -------------------------------------------------------------------------

    def attend(self, memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Attention weights: memory E (B, S, C_e), queries (B, T, C_d) -> (B, T, S), rows summing to 1."""
        if self.attention == "luong":
            scores = einsum(self.score(queries), memory, "b t d, b s d -> b t s")
            return F.softmax(scores, dim=-1)
        if self.attention == "content":
            strengths = F.softplus(self.strength(queries)).squeeze(-1)  # (B, T)
            return addressing.content_weights(memory, self.key(queries), strengths)  # T plays the heads' axis
        keys = rearrange(self.key_projection(memory), "b s a -> b 1 s a")
        projected = rearrange(self.query_projection(queries), "b t a -> b t 1 a")
        return F.softmax(self.score_vector(torch.tanh(keys + projected)).squeeze(-1), dim=-1)

    # -- decoder ---------------------------------------------------------------------------

    def _check_steps(self, steps: int, name: str) -> None:
        if not 1 <= steps <= self.max_decode_length:
            raise ValueError(f"{name} must lie in [1, max_decode_length={self.max_decode_length}], got {steps}")

    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        teacher_forcing_ratio: float | None = None,
        generator: torch.Generator | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of every target step.

        Args:
            source: (B, S) source token ids.
            target: (B, T) target token ids ending with EOS; None decodes greedily
                (up to ``max_decode_length`` steps).
            teacher_forcing_ratio: override of the module's ratio; in evaluation
                mode the ratio is 1 (the loss of the true answer).
            generator: draws the teacher-forcing coin flips (CPU generator).
            return_attention: also return the attention weights (B, T, S) (None without attention).

        Returns:
            logits (B, T, V_out), and with ``return_attention`` the weights.
        """
        if target is None:
            _, logits, weights = self._greedy(source, self.max_decode_length)
            return (logits, weights) if return_attention else logits
        if target.dim() != 2:
            raise ValueError(f"target must be a (B, T) tensor of token ids, got shape {tuple(target.shape)}")
        self._check_steps(target.shape[1], "target length T")
        check_token_ids(self.output_size, "output_size", model=type(self).__name__, target=target)
        ratio = self.teacher_forcing_ratio if teacher_forcing_ratio is None else teacher_forcing_ratio
        check_range("teacher_forcing_ratio", ratio, 0.0, 1.0)
        if not self.training:
            ratio = 1.0
        if ratio == 1.0 and self.attention != "bahdanau":
            logits, weights = self._teacher_forced(source, target)
        else:
            logits, weights = self._loop(source, target.shape[1], target=target, ratio=ratio, generator=generator)
        return (logits, weights) if return_attention else logits

    def _teacher_forced(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ratio 1 without Bahdanau attention: one fused decoder pass over all steps."""
        memory, context, state = self.encode(source)
        previous = torch.cat([torch.full_like(target[:, :1], self.bos_index), target[:, :-1]], dim=1)  # (B, T)
        steps = target.shape[1]
        inputs = torch.cat([self.target_embedding(previous), context.unsqueeze(1).expand(-1, steps, -1)], dim=-1)
        hidden, _ = self.decoder(inputs, state)  # (B, T, C_d)
        if self.attention == "none":
            return self.output(torch.cat([hidden, context.unsqueeze(1).expand(-1, steps, -1)], dim=-1)), None
        weights = self.attend(memory, hidden)  # (B, T, S)
        return self.output(torch.cat([hidden, mem.read(memory, weights)], dim=-1)), weights

    def decode_step(
        self,
        prev_token: torch.Tensor,
        state: ControllerState,
        prev_hidden: torch.Tensor,
        memory: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, ControllerState, torch.Tensor, torch.Tensor | None]:
        """One decoder step.

        Args:
            prev_token: (B,) y(t−1).
            state: the decoder state.
            prev_hidden: (B, C_d) h(t−1), the Bahdanau query (at t = 1 ``initial_query``).
            memory: (B, S, C_e) encoder states E.
            context: (B, C_e) the context C.

        Returns:
            logits (B, V_out), the new state, h(t) (B, C_d), attention weights (B, S) or None.
        """
        weights = None
        if self.attention == "bahdanau":
            weights = self.attend(memory, prev_hidden.unsqueeze(1))  # (B, 1, S)
            context_in = mem.read(memory, weights).squeeze(1)
        else:
            context_in = context
        hidden, state = self.decoder.step(torch.cat([self.target_embedding(prev_token), context_in], dim=-1), state)
        if self.attention in ("luong", "content"):
            weights = self.attend(memory, hidden.unsqueeze(1))
            context_out = mem.read(memory, weights).squeeze(1)
        else:
            context_out = context_in
        logits = self.output(torch.cat([hidden, context_out], dim=-1))
        return logits, state, hidden, (weights.squeeze(1) if weights is not None else None)

    def _later_step(self):
        """The step of every decoder step after the first (whose state has no history yet)."""
        if self.engine == "compiled":
            return compiled(self, "decode_step", self.decode_step, self.compile_backend)
        return self.decode_step

    def _loop(
        self,
        source: torch.Tensor,
        steps: int,
        *,
        target: torch.Tensor | None = None,
        ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step-by-step decoding; with ``target``, teacher forcing at ``ratio``, else greedy."""
        memory, context, state = self.encode(source)
        batch = source.shape[0]
        token = torch.full((batch,), self.bos_index, dtype=torch.long, device=source.device)
        hidden = self.initial_query(context)  # h(0)
        later_step = self._later_step()
        # y(t) of every step, contiguous: the same strides whatever T is (no recompilation)
        target_steps = target.transpose(0, 1).contiguous() if target is not None else None
        all_logits, all_weights = [], []
        for t in range(steps):
            logits, state, hidden, weights = (later_step if t > 0 else self.decode_step)(
                token, state, hidden, memory, context
            )
            all_logits.append(logits)
            all_weights.append(weights)
            token = logits.argmax(dim=-1)
            if target is not None and ratio > 0:
                if ratio >= 1:
                    token = target_steps[t]
                else:
                    teacher = torch.rand(batch, generator=generator).to(source.device) < ratio
                    token = torch.where(teacher, target_steps[t], token)
        weights = torch.stack(all_weights, dim=1) if self.attention != "none" else None
        return torch.stack(all_logits, dim=1), weights

    @torch.no_grad()
    def generate(
        self, source: torch.Tensor, *, max_length: int | None = None, return_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: source (B, S) -> tokens (B, T'), T' ≤ max_length.

        Stops as soon as every sequence has emitted EOS; positions after a
        sequence's EOS hold PAD. ``max_length`` defaults to ``max_decode_length``
        and may not exceed it. With ``return_logits``, also the logits (B, T', V_out)
        each token was the arg-max of (``memnet.metrics.sequence_accuracy`` counts a
        decoding with a NaN logit wrong: arg-max takes NaN for the largest value).
        """
        tokens, logits, _ = self._greedy(source, self.max_decode_length if max_length is None else max_length)
        return (tokens, logits) if return_logits else tokens

    def _greedy(self, source: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        self._check_steps(max_length, "max_length")
        memory, context, state = self.encode(source)
        batch = source.shape[0]
        token = torch.full((batch,), self.bos_index, dtype=torch.long, device=source.device)
        hidden = self.initial_query(context)  # h(0)
        finished = torch.zeros(batch, dtype=torch.bool, device=source.device)
        later_step = self._later_step()
        tokens, all_logits, all_weights = [], [], []
        for t in range(max_length):
            logits, state, hidden, weights = (later_step if t > 0 else self.decode_step)(
                token, state, hidden, memory, context
            )
            token = logits.argmax(dim=-1)
            tokens.append(torch.where(finished, torch.full_like(token, self.pad_index), token))
            all_logits.append(logits)
            all_weights.append(weights)
            finished = finished | (token == self.eos_index)
            if bool(finished.all()):
                break
        weights = torch.stack(all_weights, dim=1) if self.attention != "none" else None
        return torch.stack(tokens, dim=1), torch.stack(all_logits, dim=1), weights


def _shapes(state: ControllerState) -> object:
    """The nested shapes of a controller state (tensor, tuple or NamedTuple of tensors)."""
    if isinstance(state, torch.Tensor):
        return tuple(state.shape)
    if isinstance(state, (tuple, list)):
        return tuple(_shapes(s) for s in state)
    raise TypeError(f"a controller state must be a tensor or a tuple of tensors, got {type(state).__name__}")
