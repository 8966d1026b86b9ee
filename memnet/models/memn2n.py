"""End-to-End Memory Networks (Sukhbaatar, Szlam, Weston & Fergus 2015).

One hop k = 1..K over a story of sentences x_1..x_N (slot 1 the most recent):

    m_i = Σ_j l_j ∘ A^k x_ij + T_A^k(i)          memory vectors (input embedding)
    c_i = Σ_j l_j ∘ C^k x_ij + T_C^k(i)          output vectors (output embedding)
    p_i = softmax_i(u^kᵀ m_i)                    attention (removed during linear start)
    o^k = Σ_i p_i c_i
    u^{k+1} = u^k + o^k          (adjacent)      or   H u^k + o^k   (layer-wise)

with u^1 = Σ_j l_j ∘ B q_j the question, and the answer logits W u^{K+1}.

Variants of the paper, all options of :class:`MemN2N`:

- ``encoding``: ``bow`` (l_j = 1) or ``position`` (PE, l_kj = (1 − j/J) − (k/d)(1 − 2j/J)).
- ``temporal``: temporal encoding T_A, T_C (TE), one row per memory slot.
- ``random_noise``: RN, during training the time indices get random gaps, as if
  up to this share of empty memories had been inserted (0.1 in the paper).
- ``linear_start``: LS, the softmax of every hop is removed (p_i = u·m_i) until
  :meth:`MemN2N.enable_softmax` is called (by ``memnet.callbacks.LinearStartSwitch``
  when the validation loss stops falling). The state is a buffer, so a
  checkpoint remembers it.
- ``tying``: ``adjacent`` (A^{k+1} = C^k, B = A^1, answer weights Wᵀ = C^K) or
  ``layerwise`` (A^1 = … = A^K, C^1 = … = C^K, separate B and W, plus the linear
  map H between hops). Temporal matrices are tied like the embeddings.

Answers are classes, not words: answer class a is input token
``a + answer_offset`` (the layout of ``tasks.babi.Vocabulary``), so with adjacent
tying W is the rows of C^K for the answer tokens, as the paper's Wᵀ = C^K
restricted to the words that can be answers.

The authors' code (facebookarchive/MemNN, ``MemN2N-babi-matlab``), which produced
the paper's table, differs from the paper's text in four places; each is an option
here, off by default (the paper's text):

- ``position_scale: authors``: l_kj = 1 + 4(k − (d+1)/2)(j − (J+1)/2)/(d·J) with one
  fixed J (``sentence_length``: the longest sentence or question of the training
  data + 1, the last position being the time word's), where the paper's text uses
  each sentence's own length; with temporal encoding the time vectors are scaled by
  l_{·J}, as the authors' time words are. (:func:`authors_position_encoding`.)
- ``empty_memory: nil``: the memory is padded to ``memory_size`` slots with nil
  sentences, whose memory and output vectors are 0 (no time vector either): they
  score 0 and stay in the softmax, a sink the attention can put its mass on.
  ``masked`` (the default) leaves empty slots out of the softmax.
- ``answer_layer: vocabulary`` (adjacent tying): W = C^K over the whole vocabulary
  and, with temporal encoding, T_C^K's rows too (the authors' time words are
  vocabulary words); the softmax runs over all of them. The logits are reordered
  so that the A answer classes come first: column a < A is answer class a, the
  other V + N − A columns are words that are never the right answer (a prediction
  there is simply wrong). The nil (padding) word's logit is always 0.
- per-matrix gradient clipping: :meth:`MemN2N.clip_groups` names the weight
  matrices the authors clip one at a time (an embedding with its time rows is one
  matrix there); ``memnet.lightning.QAModule`` does the clipping.
- ``nil_word: authors`` (with the three options above, ``temporal`` and adjacent
  tying): the nil word is a word of the sentence sum as in the authors' code. Every
  padding position of a sentence, question and nil sentence (the time word's
  position too) adds l_j ∘ E[nil]; the nil rows of every embedding, A^1 … A^K and
  C^K (= W) alike, are 0, set back to 0 after every optimiser step
  (:meth:`MemN2N.after_optimizer_step`), but get a gradient, which counts in their
  matrix's clipping norm (``train.m`` resets the A's, ``Memory.update`` every C, and W is
  the same ``Weight`` object as C^K). ``zero`` (the default): the nil word weighs nothing
  anywhere and its rows stay 0 with no gradient.

Axes:  b - batch, n - memory slots, j - words, d - embedding, v - vocabulary, a - answers
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import einsum, rearrange
from torch import nn
from torch.nn import functional as F

from memnet.models.pretrained import Pretrained
from memnet.utils import SeededDraws, check_positive, check_range, check_token_ids

Encoding = Literal["bow", "position"]
Tying = Literal["adjacent", "layerwise"]
PositionScale = Literal["paper", "authors"]
EmptyMemory = Literal["masked", "nil"]
AnswerLayer = Literal["answers", "vocabulary"]
NilWord = Literal["zero", "authors"]
PAD_ID = 0  # token id of padding: its embedding is zero and gets no gradient (but see nil_word: authors)
DENSE_BAG_MAX_VOCAB = 4096  # up to this V, sentences become dense (..., V) bags: one matmul per embedding


def position_encoding(sentence_length: int, embedding_size: int, *, dtype=None, device=None) -> torch.Tensor:
    """The paper's position encoding for one sentence of J words.

    l_kj = (1 − j/J) − (k/d)(1 − 2j/J), with j = 1..J the word and k = 1..d the
    embedding dimension (1-based, as in the paper).

    Returns:
        (J, d): row j−1 is l_j.
    """
    check_positive(sentence_length=sentence_length, embedding_size=embedding_size)
    j = torch.arange(1, sentence_length + 1, dtype=dtype or torch.get_default_dtype(), device=device)[:, None]
    k = torch.arange(1, embedding_size + 1, dtype=j.dtype, device=device)[None, :]
    J, d = sentence_length, embedding_size
    return (1 - j / J) - (k / d) * (1 - 2 * j / J)


def authors_position_encoding(sentence_length: int, embedding_size: int, *, dtype=None,
                              device=None) -> torch.Tensor:
    """The position encoding of the authors' code, for one fixed J.

    l_kj = 1 + 4(k − (d+1)/2)(j − (J+1)/2)/(d·J), j = 1..J, k = 1..d. With J the
    longest sentence + 1, words use rows 1..J−1 and a time word row J.

    Example (J = 2, d = 2): l = [[1.25, 0.75], [0.75, 1.25]] (row j, column k).

    Returns:
        (J, d): row j−1 is l_j.
    """
    check_positive(sentence_length=sentence_length, embedding_size=embedding_size)
    dtype = dtype or torch.get_default_dtype()
    j = torch.arange(1, sentence_length + 1, dtype=dtype, device=device)[:, None]
    k = torch.arange(1, embedding_size + 1, dtype=dtype, device=device)[None, :]
    J, d = sentence_length, embedding_size
    return 1 + 4 * (k - (d + 1) / 2) * (j - (J + 1) / 2) / (d * J)


def batched_position_encoding(tokens: torch.Tensor, embedding_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Position encoding for padded sentences, each with its own length J.

    Args:
        tokens: (..., J_max) token ids, words left-aligned, PAD_ID after them.

    Returns:
        (..., J_max, d) weights; the rows of padding words are 0.
    """
    present = tokens != PAD_ID
    length = present.sum(-1, keepdim=True).clamp_min(1).to(dtype)[..., None]  # (..., 1, 1) J per sentence
    j = torch.arange(1, tokens.shape[-1] + 1, dtype=dtype, device=tokens.device)[:, None]  # (J_max, 1)
    k = torch.arange(1, embedding_size + 1, dtype=dtype, device=tokens.device)[None, :]  # (1, d)
    weights = (1 - j / length) - (k / embedding_size) * (1 - 2 * j / length)
    return weights * present[..., None].to(dtype)


def random_noise_blanks(random_noise: float, lengths: torch.Tensor) -> torch.Tensor:
    """The most empty memories random noise inserts into each story, ⌈random_noise·S⌉: (B,) long.

    The product is taken in float64, as the authors' ``ceil(size(d,2) * randomize_time)`` in
    MATLAB doubles: in float32 it rounds across an integer for some S, ⌈0.3·50⌉ = 16 where the
    authors' code has 15, ⌈0.07·100⌉ = 7 where it has 8 (for the paper's 0.1 the two agree).

    Args:
        random_noise: the share r of empty memories, in [0, 1).
        lengths: (B,) the sentences S of each story, integers.
    """
    return torch.ceil(lengths.to(torch.float64) * random_noise).long()


class MemN2N(Pretrained, nn.Module):
    """End-to-End Memory Network: ``forward(story, query) -> answer logits``.

    Args:
        input_size: V, vocabulary size (token ids of story and query).
        output_size: A, number of answer classes.
        embedding_size: d (20 per task, 50 joint in the paper).
        hops: K.
        memory_size: largest number of memory slots N; rows of the temporal matrices.
        encoding: ``bow`` or ``position``.
        temporal: use temporal encoding.
        random_noise: RN share of empty memories in training, in [0, 1); 0 turns it off.
        linear_start: start with the softmax removed (LS).
        tying: ``adjacent`` or ``layerwise``.
        answer_offset: answer class a is token ``a + answer_offset`` (tied W only).
        init_std: σ of the Gaussian initialisation (0.1 in the paper).
        seed: seeds the RN generator; None draws from torch's global generator.
        position_scale: ``paper`` (each sentence's own J) or ``authors`` (one fixed J,
            see the module docstring); ``authors`` needs ``encoding: position``.
        sentence_length: J of the authors' scale: the longest sentence or question
            (in words) of the training data + 1 (12 for the 20 bAbI tasks; 5 for task 16
            alone). Longer input is refused.
        empty_memory: ``masked`` (empty slots out of the softmax) or ``nil`` (memory
            padded to ``memory_size`` nil sentences that score 0: a sink).
        answer_layer: ``answers`` (W over the A answer classes) or ``vocabulary``
            (W = C^K over the vocabulary and the time rows; logits (B, V + N) with the
            A answer classes first). ``vocabulary`` needs adjacent tying.
        nil_word: ``zero`` or ``authors`` (the nil word in the sentence sums, its
            gradient in the clipping norm, every nil row 0 after each step; see the module docstring).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        embedding_size: int = 20,
        hops: int = 3,
        memory_size: int = 50,
        encoding: Encoding = "position",
        temporal: bool = True,
        random_noise: float = 0.1,
        linear_start: bool = False,
        tying: Tying = "adjacent",
        answer_offset: int = 4,
        init_std: float = 0.1,
        seed: int | None = None,
        position_scale: PositionScale = "paper",
        sentence_length: int | None = None,
        empty_memory: EmptyMemory = "masked",
        answer_layer: AnswerLayer = "answers",
        nil_word: NilWord = "zero",
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, output_size=output_size, embedding_size=embedding_size,
                       hops=hops, memory_size=memory_size)
        if encoding not in ("bow", "position"):
            raise ValueError(f"encoding must be 'bow' or 'position', got {encoding!r}")
        if tying not in ("adjacent", "layerwise"):
            raise ValueError(f"tying must be 'adjacent' or 'layerwise', got {tying!r}")
        if position_scale not in ("paper", "authors"):
            raise ValueError(f"position_scale must be 'paper' or 'authors', got {position_scale!r}")
        if position_scale == "authors":
            if encoding != "position":
                raise ValueError(f"position_scale 'authors' needs encoding 'position', got encoding {encoding!r}")
            if isinstance(sentence_length, bool) or not isinstance(sentence_length, int) or sentence_length < 2:
                raise ValueError(
                    "position_scale 'authors' needs sentence_length J ≥ 2 (the longest sentence or question "
                    f"of the training data + 1), got {sentence_length!r}"
                )
        if empty_memory not in ("masked", "nil"):
            raise ValueError(f"empty_memory must be 'masked' or 'nil', got {empty_memory!r}")
        if answer_layer not in ("answers", "vocabulary"):
            raise ValueError(f"answer_layer must be 'answers' or 'vocabulary', got {answer_layer!r}")
        if answer_layer == "vocabulary" and tying != "adjacent":
            raise ValueError(f"answer_layer 'vocabulary' ties W to C^K and needs tying 'adjacent', got {tying!r}")
        if nil_word not in ("zero", "authors"):
            raise ValueError(f"nil_word must be 'zero' or 'authors', got {nil_word!r}")
        if nil_word == "authors":
            needs = {"position_scale": (position_scale, "authors"), "empty_memory": (empty_memory, "nil"),
                     "tying": (tying, "adjacent"), "temporal": (temporal, True)}
            wrong = {name: got for name, (got, want) in needs.items() if got != want}
            if wrong:
                raise ValueError(
                    "nil_word 'authors' is the authors' code's nil word and needs position_scale 'authors', "
                    f"empty_memory 'nil', tying 'adjacent' and temporal true; got {wrong}"
                )
        check_range("random_noise", random_noise, 0.0, 1.0, high_open=True)
        check_range("init_std", init_std, 0.0, math.inf, low_open=True, high_open=True)
        if tying == "adjacent" and (answer_offset < 0 or answer_offset + output_size > input_size):
            raise ValueError(
                f"answer_offset must put the {output_size} answer tokens inside the vocabulary of "
                f"{input_size} (0 ≤ answer_offset ≤ {input_size - output_size}), got {answer_offset!r}"
            )
        self.input_size = input_size
        self.output_size = output_size
        self.embedding_size = embedding_size
        self.hops = hops
        self.memory_size = memory_size
        self.encoding = encoding
        self.temporal = temporal
        self.random_noise = random_noise
        self.tying = tying
        self.answer_offset = answer_offset
        self.seed = seed
        self.position_scale = position_scale
        self.sentence_length = sentence_length
        self.empty_memory = empty_memory
        self.answer_layer = answer_layer
        self.nil_word = nil_word
        self._draws = None if seed is None else SeededDraws(seed)  # the RN draws, kept in checkpoints
        self.register_buffer("softmax_enabled", torch.tensor(not linear_start), persistent=True)

        def embedding(rows: int, padding: bool) -> nn.Embedding:
            module = nn.Embedding(rows, embedding_size, padding_idx=PAD_ID if padding else None)
            nn.init.normal_(module.weight, std=init_std)
            if padding:
                with torch.no_grad():
                    module.weight[PAD_ID].zero_()
            return module

        count = hops + 1 if tying == "adjacent" else 2
        # adjacent: embeddings[k] is C^k = A^{k+1} (embeddings[0] = A^1 = B); layer-wise: [A, C]
        self.embeddings = nn.ModuleList([embedding(input_size, True) for _ in range(count)])
        self.temporal_embeddings = (
            nn.ModuleList([embedding(memory_size, False) for _ in range(count)]) if temporal else None
        )
        if tying == "layerwise":
            self.query_embedding_layer = embedding(input_size, True)
            self.linear_map = nn.Linear(embedding_size, embedding_size, bias=False)  # H
            self.answer = nn.Linear(embedding_size, output_size, bias=False)  # W
            nn.init.normal_(self.linear_map.weight, std=init_std)
            nn.init.normal_(self.answer.weight, std=init_std)

    # -- which matrix is which (the tying schemes) -----------------------------------------

    def input_embedding(self, hop: int) -> nn.Embedding:
        """A^hop (hop = 1..K)."""
        return self.embeddings[hop - 1] if self.tying == "adjacent" else self.embeddings[0]

    def output_embedding(self, hop: int) -> nn.Embedding:
        """C^hop (hop = 1..K)."""
        return self.embeddings[hop] if self.tying == "adjacent" else self.embeddings[1]

    def input_temporal(self, hop: int) -> nn.Embedding | None:
        """T_A^hop, or None without temporal encoding."""
        if self.temporal_embeddings is None:
            return None
        return self.temporal_embeddings[hop - 1] if self.tying == "adjacent" else self.temporal_embeddings[0]

    def output_temporal(self, hop: int) -> nn.Embedding | None:
        """T_C^hop, or None without temporal encoding."""
        if self.temporal_embeddings is None:
            return None
        return self.temporal_embeddings[hop] if self.tying == "adjacent" else self.temporal_embeddings[1]

    def query_embedding(self) -> nn.Embedding:
        """B (= A^1 with adjacent tying)."""
        return self.embeddings[0] if self.tying == "adjacent" else self.query_embedding_layer

    @property
    def logits_size(self) -> int:
        """Columns of the logits: A, or V (+ N time rows) with ``answer_layer: vocabulary``."""
        if self.answer_layer == "answers":
            return self.output_size
        return self.input_size + (self.memory_size if self.temporal else 0)

    def answer_weight(self) -> torch.Tensor:
        """W, (A, d): the answer rows of C^K (adjacent) or its own matrix (layer-wise).

        With ``answer_layer: vocabulary``: (V + N, d), every row of C^K and T_C^K with
        the A answer rows first and the nil (padding) row zero.
        """
        offset, answers = self.answer_offset, self.output_size
        if self.answer_layer == "vocabulary":
            weight = self.output_embedding(self.hops).weight
            keep = torch.ones(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
            if self.nil_word == "zero":
                keep[PAD_ID] = 0  # the nil word's logit stays 0 and its row gets no gradient
                weight = weight * keep
            rows = [weight[offset:offset + answers], weight[:offset], weight[offset + answers:]]
            temporal = self.output_temporal(self.hops)
            if temporal is not None:
                rows.append(temporal.weight)
            return torch.cat(rows)
        if self.tying == "adjacent":
            return self.output_embedding(self.hops).weight[offset:offset + answers]
        return self.answer.weight

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The weight matrices that per-matrix clipping treats one at a time.

        Each embedding with its temporal matrix (the authors' code keeps the time
        words as rows of the same lookup table), and B, H and W of layer-wise tying.
        A group's gradient norm is the norm of its parameters' gradients stacked by rows.
        """
        groups = []
        for index, embedding in enumerate(self.embeddings):
            group = [embedding.weight]
            if self.temporal_embeddings is not None:
                group.append(self.temporal_embeddings[index].weight)
            groups.append(group)
        if self.tying == "layerwise":
            groups += [[self.query_embedding_layer.weight], [self.linear_map.weight], [self.answer.weight]]
        return groups

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """With ``nil_word: authors``, set the nil rows of every embedding back to 0, as the authors' code does
        after each update: ``train.m`` resets A^1 … A^K's, ``Memory.update`` each hop's C^k's, C^K's (= W's, the
        same ``Weight`` object) included. Called by ``memnet.lightning.QAModule.optimizer_step`` after every step."""
        if self.nil_word == "authors":
            for embedding in self.embeddings:
                embedding.weight[PAD_ID].zero_()

    def _nil_weights(self, tokens: torch.Tensor, table: torch.Tensor, *, nil_slots: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Σ_j l_kj over the nil positions of each sentence, (..., d): ``nil_word: authors``.

        Words are left-aligned in positions 1..J−1, so a sentence of n words has the nil
        word at positions n+1..J−1; a nil sentence (``nil_slots``) at all of 1..J, the time
        word's included, where the l_kj sum to J whatever k.

        Args:
            tokens: (..., J_max) token ids, words left-aligned.
            table: (J, d) the authors' position encoding (:func:`authors_position_encoding`).
            nil_slots: (...) True where the sentence is a nil sentence.
        """
        J, d = table.shape
        # after[n] = Σ_{j=n+1}^{J−1} l_j for n = 0..J−1 (words beyond J − 1 are refused in _word_weights)
        words_only = table[: J - 1]
        after = torch.cat([words_only.flip(0).cumsum(0).flip(0), table.new_zeros(1, d)])  # (J, d)
        words = (tokens != PAD_ID).sum(-1).clamp_max(J - 1)
        weights = after[words]  # (..., d)
        if nil_slots is not None:
            weights = torch.where(nil_slots[..., None], table.sum(0), weights)
        return weights

    def enable_softmax(self) -> None:
        """End the linear start: every hop's attention is a softmax from now on."""
        self.softmax_enabled.fill_(True)

    # -- the computation ----------------------------------------------------------------

    def _word_weights(self, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-word weights of the sentence sum, computed once per forward and shared by every hop.

        PE is linear in k: l_kj = a_j + (k/d)·b_j with a_j = (1 − j/J) and
        b_j = (2j/J − 1), so Σ_j l_kj e_jk = Σ_j a_j e_jk + (k/d) Σ_j b_j e_jk and no
        (..., J, d) tensor is needed. For small vocabularies the weights are
        scattered into bag-of-words rows (..., V), so that each embedding costs
        one matrix product.

        Args:
            tokens: (..., J) token ids.

        Returns:
            a and b, each (..., V) bags (V ≤ DENSE_BAG_MAX_VOCAB) or (..., J) word
            weights; b is None for bag-of-words, where a is the 0/1 word mask.
        """
        present = (tokens != PAD_ID).to(dtype)
        if self.encoding == "bow":
            a, b = present, None
        elif self.position_scale == "authors":
            # l_kj = 1 + 4(k − c_d)(j − c_J)/(dJ) = [1 − 4 c_d (j − c_J)/(dJ)] + (k/d)·[4 (j − c_J)/J]
            J, d = self.sentence_length, self.embedding_size
            words = int(present.sum(-1).max()) if tokens.shape[-1] > J - 1 else 0
            if words > J - 1:
                raise ValueError(
                    f"a sentence or question of {words} words does not fit sentence_length {J} (J − 1 words and "
                    f"the time word); set model.init_args.net.init_args.sentence_length to at least {words + 1}"
                )
            j = torch.arange(1, tokens.shape[-1] + 1, dtype=dtype, device=tokens.device) - (J + 1) / 2
            a = (1 - 4 * (d + 1) / 2 * j / (d * J)) * present
            b = (4 * j / J) * present
        else:
            length = present.sum(-1, keepdim=True).clamp_min(1)  # J of each sentence
            j = torch.arange(1, tokens.shape[-1] + 1, dtype=dtype, device=tokens.device)
            a, b = (1 - j / length) * present, (2 * j / length - 1) * present
        if self.input_size > DENSE_BAG_MAX_VOCAB:
            return a, b

        def bag(word_weights: torch.Tensor) -> torch.Tensor:
            rows = torch.zeros(*tokens.shape[:-1], self.input_size, dtype=dtype, device=tokens.device)
            return rows.scatter_add_(-1, tokens, word_weights)

        return bag(a), (None if b is None else bag(b))

    def _encode(self, tokens: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor | None],
                embedding: nn.Embedding) -> torch.Tensor:
        """tokens (..., J) -> sentence vectors (..., d): Σ_j l_j ∘ E x_j."""
        a, b = weights
        if a.shape[-1] == self.input_size and self.input_size <= DENSE_BAG_MAX_VOCAB:
            def weighted_sum(bags: torch.Tensor) -> torch.Tensor:  # (..., V) @ (V, d)
                return bags @ embedding.weight
        else:
            flat = rearrange(tokens, "... j -> (...) j")

            def weighted_sum(word_weights: torch.Tensor) -> torch.Tensor:  # one fused gather-and-sum
                summed = F.embedding_bag(flat, embedding.weight, mode="sum",
                                         per_sample_weights=rearrange(word_weights, "... j -> (...) j"))
                return summed.reshape(*tokens.shape[:-1], self.embedding_size)

        encoded = weighted_sum(a)
        if b is not None:
            k = torch.arange(1, self.embedding_size + 1, dtype=encoded.dtype, device=encoded.device)
            encoded = encoded + (k / self.embedding_size) * weighted_sum(b)
        return encoded

    def time_indices(self, present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Row of the temporal matrices for each slot, (B, N) long, on ``present``'s device.

        Slot i uses row i; with random noise in training, each story's rows are a
        sorted random subset of 0..S+E−1 (S its sentences, E ≤ ⌈random_noise·S⌉
        drawn empty memories, :func:`random_noise_blanks`), clipped to ``memory_size − 1``. The random
        numbers are drawn on the CPU (``generator`` is a CPU generator, None: torch's global one) and
        moved to ``present``'s device, so one seed draws the same rows on a CPU and on a GPU.
        """
        batch, slots = present.shape
        device = present.device
        base = torch.arange(slots, device=device).expand(batch, slots)
        if not (self.training and self.random_noise > 0):
            return base
        most_empty = math.ceil(self.random_noise * slots)
        positions = slots + most_empty
        # drawn on the CPU and moved: a host-to-device copy, which does not wait for the device as reading
        # ``present`` back would
        fraction = torch.rand(batch, generator=generator).to(device)
        keys = torch.rand(batch, positions, generator=generator).to(device)
        lengths = present.sum(-1)  # (B,)
        blanks = random_noise_blanks(self.random_noise, torch.arange(slots + 1)).to(device)[lengths]
        empty = (fraction * (blanks + 1)).floor().long()  # 0..⌈r·S⌉
        valid = torch.arange(positions, device=device) < (lengths + empty)[:, None]
        keys = torch.where(valid, keys, torch.full_like(keys, 2.0))  # invalid positions rank last
        rank = keys.argsort(-1).argsort(-1)
        chosen = rank < lengths[:, None]  # S random valid positions per story
        index = torch.arange(positions, device=device).expand(batch, positions)
        ordered = torch.where(chosen, index, torch.full_like(index, positions)).sort(-1).values[:, :slots]
        ordered = torch.where(present, ordered, base)
        return ordered.clamp_max(self.memory_size - 1)

    def _rn_generator(self) -> torch.Generator | None:
        """The RN draws' generator, always on the CPU (see :meth:`time_indices`)."""
        return None if self._draws is None else self._draws.generator(torch.device("cpu"))

    def rng_state(self) -> dict | None:
        """The RN generator's state for a checkpoint (None: no seed, or nothing drawn yet).

        A run resumed from a checkpoint continues the draws where the unbroken run was
        (:meth:`memnet.training.MemnetModule.on_save_checkpoint` keeps it).
        """
        return None if self._draws is None else self._draws.state()

    def set_rng_state(self, state: dict) -> None:
        """Continue the RN draws from ``state`` (what :meth:`rng_state` returned)."""
        if self._draws is not None:
            self._draws.set_state(state)

    def forward(self, story: torch.Tensor, query: torch.Tensor, *, return_attention: bool = False):
        """story (B, N, J) and query (B, Jq) token ids -> answer logits (B, A).

        Slot 0 of ``story`` is the most recent sentence; all-padding slots are
        empty and get no attention (``empty_memory: nil``: the story is padded to
        ``memory_size`` and empty slots stay in the softmax). With
        ``answer_layer: vocabulary`` the logits are (B, V + N), answer classes first.
        With ``return_attention=True`` also returns the attention of every hop, (B, K, N).
        """
        if story.dim() != 3 or query.dim() != 2 or story.shape[0] != query.shape[0]:
            raise ValueError(
                f"expected story (B, N, J) and query (B, Jq) with the same B, got {tuple(story.shape)} and {tuple(query.shape)}"
            )
        check_token_ids(self.input_size, "input_size", model=type(self).__name__, story=story, query=query)
        if story.shape[1] > self.memory_size:
            raise ValueError(
                f"story has {story.shape[1]} memory slots but memory_size is {self.memory_size}; "
                "keep only the most recent sentences (the data module's memory_size)"
            )
        if self.empty_memory == "nil" and story.shape[1] < self.memory_size:  # pad with nil sentences
            story = F.pad(story, (0, 0, 0, self.memory_size - story.shape[1]), value=PAD_ID)
        present = (story != PAD_ID).any(-1)  # (B, N)
        times = self.time_indices(present, self._rn_generator()) if self.temporal else None
        dtype = self.embeddings[0].weight.dtype
        time_scale = 1.0  # the authors' time words are weighted by the last row of their PE
        table = None  # the authors' PE (J, d), once per forward
        if self.position_scale == "authors":
            table = authors_position_encoding(self.sentence_length, self.embedding_size, dtype=dtype,
                                              device=story.device)
            time_scale = table[-1]
        if self.empty_memory == "nil":  # a nil sentence has no time word either: its vectors are 0
            time_scale = time_scale * rearrange(present.to(dtype), "b n -> b n 1")
        # Only the slots that hold a sentence are encoded: an empty slot's sentence vector is 0
        # in every encoding (its words all weigh 0), and a padded story is mostly empty slots
        # (bAbI 1k joint, memory 50: 17.7% of them hold a sentence). In eager mode the
        # present rows are gathered, encoded and scattered back; compiled, all slots are
        # encoded (a data-dependent row count would break the graph).
        batch, slots = present.shape
        compact = not torch.compiler.is_compiling()
        sentences = story
        if compact:
            rows = present.flatten().nonzero().squeeze(1)  # (P,) indices into B·N
            compact = rows.numel() < batch * slots  # a memory without empty slots is encoded whole
        if compact:
            sentences = story.flatten(0, 1).index_select(0, rows)  # (P, J)
        story_weights = self._word_weights(sentences, dtype)
        u = self._encode(query, self._word_weights(query, dtype), self.query_embedding())  # (B, d)
        nil_story = None
        if self.nil_word == "authors":  # the nil word in every sentence sum (0 in value, with a gradient)
            nil_story = self._nil_weights(story, table, nil_slots=~present)  # (B, N, d)
            u = u + self._nil_weights(query, table) * self.query_embedding().weight[PAD_ID]
        encoded: dict[int, torch.Tensor] = {}  # id of an embedding -> its (B, N, d) sentence vectors

        def memory_vectors(embedding: nn.Embedding, temporal: nn.Embedding | None) -> torch.Tensor:
            key = id(embedding)
            if key not in encoded:  # a tied matrix is encoded once
                vectors = self._encode(sentences, story_weights, embedding)  # (B, N, d), or (P, d) compact
                if compact:
                    vectors = vectors.new_zeros(batch * slots, vectors.shape[-1]).index_copy(0, rows, vectors)
                    vectors = vectors.view(batch, slots, -1)
                if nil_story is not None:
                    vectors = vectors + nil_story * embedding.weight[PAD_ID]
                encoded[key] = vectors if temporal is None else vectors + temporal(times) * time_scale
            return encoded[key]

        attentions = []
        for hop in range(1, self.hops + 1):
            memory = memory_vectors(self.input_embedding(hop), self.input_temporal(hop))  # m_i (B, N, d)
            output = memory_vectors(self.output_embedding(hop), self.output_temporal(hop))  # c_i (B, N, d)
            scores = einsum(memory, u, "b n d, b d -> b n")
            if bool(self.softmax_enabled) and self.empty_memory == "nil":
                attention = scores.softmax(-1)  # nil slots score exactly 0 and stay in: the sink
            elif bool(self.softmax_enabled):
                attention = scores.masked_fill(~present, float("-inf")).softmax(-1)
                attention = torch.nan_to_num(attention, nan=0.0)  # a story with no sentence attends to nothing
            else:
                attention = scores * present.to(scores.dtype)
            o = einsum(attention, output, "b n, b n d -> b d")
            u = (self.linear_map(u) if self.tying == "layerwise" else u) + o
            attentions.append(attention)
        logits = einsum(u, self.answer_weight(), "b d, a d -> b a")
        if return_attention:
            return logits, rearrange(torch.stack(attentions), "k b n -> b k n")
        return logits
