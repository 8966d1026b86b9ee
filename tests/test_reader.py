"""The sequence reader: the token sequence of a known story, reading at the question's end,
padding, batching, any sequence model (LSTM, GRU, NTM), bad input."""

from __future__ import annotations

import pytest
import torch

from memnet.controllers import GRUController, LSTMController
from memnet.models.ntm import NTM
from memnet.models.reader import SequenceReader, story_to_sequence
from memnet.models.recurrent import RecurrentModel

PAD, EOS, EOQ = 0, 2, 3
WORDS = ["<pad>", "<unk>", "<eos>", "<eoq>", "kitchen", "garden", "mary", "went", "to", "the", "john",
         "where", "is", "sandra", "hallway"]
ID = {word: i for i, word in enumerate(WORDS)}
V, A, B = len(WORDS), 5, 3


def _batch(stories: list[list[str]], questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stories given oldest first, stored as the data module does: slot 0 = most recent."""
    slots = max(len(s) for s in stories)
    words = max(len(sentence.split()) for s in stories for sentence in s)
    story = torch.zeros(len(stories), slots, words, dtype=torch.long)
    for b, sentences in enumerate(stories):
        for slot, sentence in enumerate(reversed(sentences)):
            ids = [ID[w] for w in sentence.split()]
            story[b, slot, :len(ids)] = torch.tensor(ids)
    query_words = max(len(q.split()) for q in questions)
    query = torch.zeros(len(questions), query_words, dtype=torch.long)
    for b, question in enumerate(questions):
        ids = [ID[w] for w in question.split()]
        query[b, :len(ids)] = torch.tensor(ids)
    return story, query


def _decode(tokens: torch.Tensor, length: int) -> str:
    return " ".join(WORDS[t] for t in tokens[:length].tolist())


def test_token_sequence_of_a_known_story():
    story, query = _batch(
        [["mary went to the kitchen", "john went to the garden"], ["sandra went to the hallway"]],
        ["where is mary", "where is sandra"],
    )
    tokens, lengths = story_to_sequence(story, query, pad_token=PAD, sentence_end=EOS, question_end=EOQ)
    assert _decode(tokens[0], lengths[0]) == (
        "mary went to the kitchen <eos> john went to the garden <eos> where is mary <eoq>")
    assert _decode(tokens[1], lengths[1]) == "sandra went to the hallway <eos> where is sandra <eoq>"
    assert lengths.tolist() == [16, 10] and tokens.shape == (2, 16)
    assert (tokens[1, 10:] == PAD).all()  # padding after the sequence


def test_token_sequence_with_uneven_sentences_and_padding_slots():
    story, query = _batch([["mary went", "john went to the garden", "the kitchen"]], ["where"])
    wide = torch.cat([story, torch.zeros(1, 2, story.shape[2], dtype=torch.long)], dim=1)  # 2 empty slots
    tokens, lengths = story_to_sequence(wide, query, pad_token=PAD, sentence_end=EOS, question_end=EOQ)
    assert _decode(tokens[0], lengths[0]) == "mary went <eos> john went to the garden <eos> the kitchen <eos> where <eoq>"


def _reader(model=None, seed=0) -> SequenceReader:
    torch.manual_seed(seed)
    return SequenceReader(V, A, model=model, embedding_size=6).double().eval()


def test_reader_reads_the_answer_at_the_question_end():
    reader = _reader()
    story, query = _batch([["mary went to the kitchen"], ["john went to the garden", "mary went to the kitchen"],
                           ["sandra went to the hallway"]], ["where is mary", "where is mary", "where is sandra"])
    logits = reader(story, query)
    assert logits.shape == (B, A)
    tokens, lengths = reader.sequence(story, query)
    for b in range(B):  # the same as running the model on the unpadded sequence and taking the last step
        alone = reader.model(reader.embedding(tokens[b:b + 1, : lengths[b]]))[:, -1]
        torch.testing.assert_close(logits[b:b + 1], alone)


def test_reader_ignores_padding_and_batches_like_single_runs():
    reader = _reader()
    story, query = _batch([["mary went to the kitchen", "john went"], ["sandra went to the hallway"],
                           ["the garden"]], ["where is mary", "where", "where is john"])
    padded = torch.cat([story, torch.zeros(B, 2, story.shape[2], dtype=torch.long)], dim=1)
    padded = torch.cat([padded, torch.zeros(B, padded.shape[1], 3, dtype=torch.long)], dim=2)
    torch.testing.assert_close(reader(padded, query), reader(story, query))
    batched = reader(story, query)
    for b in range(B):
        n = int((story[b] != PAD).any(-1).sum())
        torch.testing.assert_close(batched[b:b + 1], reader(story[b:b + 1, :n], query[b:b + 1]))


@pytest.mark.parametrize(
    "factory",
    [
        lambda d, a: RecurrentModel(d, a, controller=lambda n: GRUController(n, hidden_size=7)),
        lambda d, a: RecurrentModel(d, a, controller=lambda n: LSTMController(n, hidden_size=7)),
        lambda d, a: NTM(d, a, memory_size=7, word_size=5, controller=lambda n: LSTMController(n, hidden_size=8)),
    ],
    ids=["gru", "lstm", "ntm"],
)
def test_any_sequence_model_reads_and_learns(factory):
    reader = SequenceReader(V, A, model=factory, embedding_size=4).train()
    story, query = _batch([["mary went to the kitchen"], ["john went to the garden"], ["sandra went"]],
                          ["where is mary", "where is john", "where is sandra"])
    answer = torch.tensor([0, 1, 2])
    optimizer = torch.optim.Adam(reader.parameters(), lr=0.1)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(reader(story, query), answer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_reader_from_yaml_like_factory():
    """The form jsonargparse builds from ``class_path`` + ``init_args``: a callable of both sizes."""
    from functools import partial

    reader = SequenceReader(V, A, model=partial(RecurrentModel, controller=partial(LSTMController, hidden_size=9)))
    assert reader.model.input_size == 32 and reader.model.output_size == A


def test_a_conditional_sequence_model_is_refused():
    """A conditional RecurrentModel (y(t−1) → h(t)) is fed its previous target in training; the reader has none, so
    it trained free-running on its own answer guesses at every token, fed back as bits, with no error."""
    from functools import partial

    with pytest.raises(ValueError, match=r"SequenceReader cannot read with a conditional RecurrentModel "
                                         r"\(conditional=True\): .* set conditional: false"):
        SequenceReader(V, A, model=partial(RecurrentModel, conditional=True))
    SequenceReader(V, A, model=partial(RecurrentModel, conditional=False))  # fine


def test_a_token_id_outside_the_vocabulary_is_named():
    """An id ≥ input_size was a raw IndexError from the embedding, naming neither the id nor the vocabulary."""
    story, query = _batch([["mary went to the kitchen"]], ["where is mary"])
    with pytest.raises(ValueError, match=rf"SequenceReader: story holds token id {V} .* \(input_size={V}\)"):
        _reader()(story.index_fill(2, torch.tensor([1]), V), query)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sentence_end": 0}, "three different ids"),
        ({"question_end": V}, r"question_end must be a token id in \[0, 15\)"),
        ({"embedding_size": 0}, "embedding_size must be a positive integer"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SequenceReader(V, A, **kwargs)
