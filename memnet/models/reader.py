"""Any sequence model as a question-answering reader.

:class:`SequenceReader` turns a story and a question into one token sequence,
embeds it, runs a sequence model of memnet over it (``RecurrentModel`` with an
LSTM or GRU controller, ``NTM``, ``DNC``, …: anything with
``forward(inputs (B, T, D)) -> logits (B, T, A)``) and reads the answer logits
at the last token, the question delimiter.

The sequence, oldest sentence first::

    s_1 <eos> s_2 <eos> … s_N <eos> q <eoq>

Worked example (tokens as words): the story ``["mary went to the kitchen",
"john went to the garden"]`` (stored with slot 0 = "john …", the most recent)
and the question ``"where is mary"`` give::

    mary went to the kitchen <eos> john went to the garden <eos> where is mary <eoq>

and the answer is read at ``<eoq>``. Padding follows the sequence, so a causal
model's output at ``<eoq>`` does not depend on it.

Axes:  b - batch, n - memory slots, j - words, t - time, d - features, a - answers
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from memnet.utils import check_positive, check_token_ids

SequenceModelFactory = Callable[[int, int], nn.Module]  # (input_size, output_size) -> model


def story_to_sequence(
    story: torch.Tensor,
    query: torch.Tensor,
    *,
    pad_token: int = 0,
    sentence_end: int = 2,
    question_end: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten a story and its question into one token sequence per example.

    Args:
        story: (B, N, J) token ids, slot 0 the most recent sentence, words
            left-aligned, ``pad_token`` after them and in empty slots.
        query: (B, Jq) question token ids, left-aligned.
        pad_token: the id of padding.
        sentence_end: the id of the token appended to each sentence.
        question_end: the id of the token appended to the question.

    Returns:
        tokens (B, T): oldest sentence first, each followed by ``sentence_end``,
        then the question and ``question_end``, then padding; lengths (B,): the
        number of tokens before the padding.
    """
    _, slots, words = story.shape  # (B, N, J)
    device = story.device
    present = story != pad_token  # (B, N, J)
    sentence_length = present.sum(-1)  # (B, N)
    story_length = (sentence_length > 0).sum(-1)  # (B,) sentences; empty slots come last
    # append the sentence delimiter after the last word of each non-empty sentence
    extended = torch.cat([story, torch.full_like(story[..., :1], pad_token)], dim=-1)  # (B, N, J+1)
    position = torch.arange(words + 1, device=device)
    is_end = (position == sentence_length[..., None]) & (sentence_length[..., None] > 0)
    extended = torch.where(is_end, torch.full_like(extended, sentence_end), extended)
    # chronological order: slot i of a story with S sentences is sentence S-1-i
    chronological = story_length[:, None] - 1 - torch.arange(slots, device=device)  # (B, N)
    order_key = chronological[..., None] * (words + 1) + position  # (B, N, J+1)
    valid = extended != pad_token
    story_tokens = rearrange(extended, "b n j -> b (n j)")
    story_key = rearrange(torch.where(valid, order_key, torch.full_like(order_key, -1)), "b n j -> b (n j)")
    # the question and its delimiter
    query_present = query != pad_token
    query_length = query_present.sum(-1)
    query_extended = torch.cat([query, torch.full_like(query[:, :1], pad_token)], dim=-1)  # (B, Jq+1)
    query_position = torch.arange(query.shape[1] + 1, device=device)
    query_extended = torch.where(query_position == query_length[:, None],
                                 torch.full_like(query_extended, question_end), query_extended)
    offset = slots * (words + 1)
    query_key = torch.where(query_extended != pad_token, offset + query_position, torch.full_like(query_extended, -1))
    tokens = torch.cat([story_tokens, query_extended], dim=-1)
    keys = torch.cat([story_key, query_key], dim=-1)
    big = offset + query.shape[1] + 1  # padding sorts after every real token
    keys = torch.where(keys < 0, torch.full_like(keys, big), keys)
    order = keys.argsort(dim=-1, stable=True)
    tokens = tokens.gather(-1, order)
    lengths = (keys < big).sum(-1)
    return tokens[:, : int(lengths.max())], lengths


class SequenceReader(nn.Module):
    """Answer questions with any memnet sequence model reading story and question as one sequence.

    Args:
        input_size: V, vocabulary size.
        output_size: A, number of answer classes.
        model: factory ``(input_size, output_size) -> sequence model``; in YAML a
            ``class_path`` whose ``init_args`` leave both sizes out. Default: an
            LSTM ``RecurrentModel``; not a conditional one (``conditional=True``: refused, it needs a target per token).
        embedding_size: D, width of the token embeddings the model reads.
        pad_token: the id of padding (the layout of ``tasks.babi.Vocabulary``).
        sentence_end: the id of the token that ends a sentence.
        question_end: the id of the token that ends the question.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        model: SequenceModelFactory | None = None,
        embedding_size: int = 32,
        pad_token: int = 0,
        sentence_end: int = 2,
        question_end: int = 3,
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, output_size=output_size, embedding_size=embedding_size)
        for name, value in (("pad_token", pad_token), ("sentence_end", sentence_end), ("question_end", question_end)):
            if not 0 <= value < input_size:
                raise ValueError(f"{name} must be a token id in [0, {input_size}), got {value!r}")
        if len({pad_token, sentence_end, question_end}) != 3:
            raise ValueError("pad_token, sentence_end and question_end must be three different ids, got "
                             f"{pad_token}, {sentence_end}, {question_end}")
        self.input_size = input_size
        self.output_size = output_size
        self.pad_token = pad_token
        self.sentence_end = sentence_end
        self.question_end = question_end
        self.embedding = nn.Embedding(input_size, embedding_size, padding_idx=pad_token)
        if model is None:
            from memnet.models.recurrent import RecurrentModel

            model = RecurrentModel
        self.model = model(embedding_size, output_size)
        if getattr(self.model, "conditional", False):  # it needs the previous target of every step; a reader has none
            raise ValueError(
                f"{type(self).__name__} cannot read with a conditional {type(self.model).__name__} (conditional=True): "
                "it is fed the previous step's target in training, and a question has one answer, no target per "
                "token, so it would train free-running on its own guesses; set conditional: false")

    def sequence(self, story: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The token sequence (B, T) and lengths (B,) the model reads (see :func:`story_to_sequence`)."""
        return story_to_sequence(story, query, pad_token=self.pad_token, sentence_end=self.sentence_end,
                                 question_end=self.question_end)

    def forward(self, story: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """story (B, N, J), query (B, Jq) token ids -> answer logits (B, A), read at ``<eoq>``."""
        check_token_ids(self.input_size, "input_size", model=type(self).__name__, story=story, query=query)
        tokens, lengths = self.sequence(story, query)
        logits = self.model(self.embedding(tokens))  # (B, T, A)
        if isinstance(logits, tuple):  # models that also return a trace
            logits = logits[0]
        last = (lengths - 1).clamp_min(0)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]
