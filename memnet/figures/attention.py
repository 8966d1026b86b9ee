"""MemN2N attention over a bAbI story, hop by hop: which sentence each hop reads.

    attention = memn2n_attention(net, story, query)            # (K, N), each hop's row sums to 1
    plot_memn2n_attention("attention.png", attention, sentences=[...], question="where is mary",
                          answer="bathroom", predicted="bathroom", supporting=[1])

Axes:  k - hops, n - memory slots (sentences)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from memnet.figures.style import plt, save

LINEAR_START_LABEL = "scores, linear start: no softmax"  # what a model in its linear start attends with


def memn2n_attention(net: nn.Module, story: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The attention of every hop over one story's sentences, and the predicted answer class.

    Args:
        net: a ``MemN2N`` (anything whose forward takes ``return_attention=True``).
        story: (N, J) token ids of one story, slot 0 the most recent sentence, as a bAbI batch holds it.
        query: (Jq,) the question's token ids.

    Returns:
        (K, N) attention p of hop k over slot n, each row summing to 1 over all N slots: empty slots get 0
        when they are masked, and take part when they are nil sentences (``empty_memory: nil``, the
        authors' recipe); and the arg-max answer class. During a linear start (``net.softmax_enabled``
        false) there is no softmax: the rows are the scores u·m_i the model uses, of any size and sign
        (0 on empty slots); draw them with ``plot_memn2n_attention(..., softmax=False)``.
    """
    if story.dim() != 2 or query.dim() != 1:
        raise ValueError(f"expected one story (N, J) and one query (Jq,), got {tuple(story.shape)} and "
                         f"{tuple(query.shape)}")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits, attention = net(story.unsqueeze(0), query.unsqueeze(0), return_attention=True)
    finally:
        net.train(was_training)
    return attention[0], int(logits[0].argmax())


def plot_memn2n_attention(
    path: str | Path,
    attention: torch.Tensor,
    *,
    sentences: Sequence[str],
    question: str,
    answer: str,
    predicted: str,
    supporting: Sequence[int] = (),
    title: str = "",
    softmax: bool = True,
) -> Path:
    """A heat map of the attention: one row per story sentence (oldest on top), one column per hop.

    Attention on the slots past the story (nil sentences of ``empty_memory: nil``), where any hop puts 1% or
    more there, is one more row at the bottom, "(empty slots)", so that every column sums to 1.

    With ``softmax=False`` (a model still in its linear start) the values are scores, not probabilities:
    they are drawn on a scale from −m to m (m their largest size, no clipping at 0 and 1), with a
    colour bar labelled ``LINEAR_START_LABEL`` and the title saying so.

    Args:
        path: the PNG to write.
        attention: (K, N) attention of each hop over the memory slots, slot 0 the most recent sentence.
        sentences: the story's N sentences in slot order (most recent first), as text.
        question: the question, as text.
        answer: the true answer.
        predicted: the predicted answer.
        supporting: slots of the supporting sentences (marked with ★).
        title: figure title (default: the question and the answers).
        softmax: whether ``attention`` is a softmax (False: a linear start's scores, see above).

    Returns:
        The path written.
    """
    attention = attention.detach().float().cpu()
    if attention.dim() != 2 or attention.shape[1] < len(sentences):
        raise ValueError(f"attention must be (K, N) with N ≥ {len(sentences)} sentences, got {tuple(attention.shape)}")
    count = len(sentences)
    image = attention[:, :count].flip(-1).T  # (N, K): oldest sentence on top
    labels = [("★ " if slot in supporting else "") + sentences[slot] for slot in reversed(range(count))]
    empty = attention[:, count:].sum(-1)  # (K,) what each hop puts on the slots past the story
    if bool((empty >= 0.01).any()):
        image = torch.cat([image, empty.unsqueeze(0)])
        labels.append("(empty slots)")
    fig, ax = plt.subplots(figsize=(5.5 + 0.9 * image.shape[1] + (0 if softmax else 1.0), 1.4 + 0.3 * len(labels)))
    if softmax:
        shown = ax.imshow(image, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        smallest = 0.05  # the values written in their cells
    else:  # scores of any size and sign: a scale around 0 that holds them all
        largest = float(image.abs().max()) or 1.0
        shown = ax.imshow(image, cmap="coolwarm", vmin=-largest, vmax=largest, aspect="auto", interpolation="nearest")
        smallest = 0.05 * largest
        fig.colorbar(shown, ax=ax, label=LINEAR_START_LABEL)
    for (row, column), value in zip(torch.cartesian_prod(torch.arange(image.shape[0]), torch.arange(image.shape[1])),
                                    image.flatten()):
        if abs(value) >= smallest:
            ax.text(int(column), int(row), f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if not softmax or value > 0.6 else "white")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(image.shape[1]), [f"hop {k + 1}" for k in range(image.shape[1])])
    heading = title or f"{question}?  answer: {answer}, predicted: {predicted}  (★ supporting fact)"
    ax.set_title(heading if softmax else f"{heading}\n({LINEAR_START_LABEL})", fontsize=9)
    return save(fig, path)
