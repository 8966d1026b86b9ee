"""Entry checks of the memory operations' argument shapes: a wrong shape is named, not broadcast.

The reference functions of ``memnet.addressing``, ``memnet.allocation`` and ``memnet.memory``
and their fused versions in ``memnet.fused`` check their arguments with these on entry, so
that both paths refuse the same shapes with the same message. Each check compares ``.shape``
inline (plain Python, well under a microsecond, traced by ``torch.compile`` as guards on sizes
it knows already) and words the error only when a comparison fails: they run at every step of
every head.

Shapes in DESIGN.md's letters: B batch, H heads, N memory slots, W slot width, S shift
window, R read heads.
"""

from __future__ import annotations

import torch


def check_shape(
    name: str, tensor: torch.Tensor, letters: str, expected: tuple[int | None, ...], matching: str = ""
) -> None:
    """Raise ``ValueError`` unless ``tensor`` has the shape ``expected`` (None: any size on that axis).

    The entry check of a public function: plain comparisons of ``.shape`` (no tensor op), cheap in
    eager and traced by ``torch.compile`` as guards on sizes it knows already. The message names the
    argument, the shape expected in DESIGN.md's letters and in numbers, what they must match, and
    the shape received, e.g. ``weights: expected (B, H, N) = (4, H, 128) matching memory (B, N, W),
    got (4, 2, 64)``.

    Args:
        name: the argument's name.
        tensor: the argument.
        letters: the expected shape in letters, e.g. ``"(B, H, N)"``.
        expected: one size per axis, None where any size will do.
        matching: where the sizes come from, e.g. ``"memory (B, N, W)"``.
    """
    shape = tensor.shape
    if len(shape) == len(expected):
        for size, want in zip(shape, expected):
            if want is not None and size != want:
                break
        else:
            return
    numbers = ""
    if any(want is not None for want in expected):
        axes = letters.strip("()").split(", ")
        parts = [axis if want is None else str(want) for axis, want in zip(axes, expected)]
        numbers = f" = ({', '.join(parts)})"
    where = f" matching {matching}" if matching else ""
    raise ValueError(f"{name}: expected {letters}{numbers}{where}, got {tuple(shape)}")


def differs(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether ``shape`` differs from ``expected``, compared size by size.

    Not ``shape != expected``: ``torch.compile`` traces a ``torch.Size`` compared whole, at dynamic
    sizes, as comparison nodes left in the graph; sizes compared one by one become guards alone.
    """
    if len(shape) != len(expected):
        return True
    for size, want in zip(shape, expected):  # a loop: any() of a generator costs twice as much in eager
        if size != want:
            return True
    return False


# The checks below compare sizes inline and call ``check_shape`` only to word the error.


def check_memory_and_keys(memory: torch.Tensor, keys: torch.Tensor) -> None:
    """memory (B, N, W) and keys (B, H, W) of its batch and slot width."""
    m, k = memory.shape, keys.shape
    if len(m) != 3 or len(k) != 3 or k[0] != m[0] or k[2] != m[2]:
        check_shape("memory", memory, "(B, N, W)", (None, None, None))
        check_shape("keys", keys, "(B, H, W)", (m[0], None, m[2]), "memory (B, N, W)")


def check_per_head(
    name: str, tensor: torch.Tensor, letters: str, values_name: str, values: torch.Tensor, last: str = ""
) -> None:
    """tensor (B, H, ·) and values (B, H), or (B, H, ·) with ``last`` the letter of their last axis."""
    t, v = tensor.shape, values.shape
    rank = 3 if last else 2
    if len(t) != 3 or len(v) != rank or v[0] != t[0] or v[1] != t[1]:
        check_shape(name, tensor, letters, (None, None, None))
        expected, value_letters = ((t[0], t[1], None), f"(B, H, {last})") if last else ((t[0], t[1]), "(B, H)")
        check_shape(values_name, values, value_letters, expected, f"{name} {letters}")


def check_memory_and_weights(memory: torch.Tensor, weights: torch.Tensor) -> None:
    """memory (B, N, W) and weights (B, H, N) over its slots."""
    m, w = memory.shape, weights.shape
    if len(m) != 3 or len(w) != 3 or w[0] != m[0] or w[2] != m[1]:
        check_shape("memory", memory, "(B, N, W)", (None, None, None))
        check_shape("weights", weights, "(B, H, N)", (m[0], None, m[1]), "memory (B, N, W)")


def check_write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> None:
    """The arguments of a write: memory (B, N, W), weights (B, H, N), erase and add (B, H, W)."""
    check_memory_and_weights(memory, weights)
    expected = (weights.shape[0], weights.shape[1], memory.shape[2])  # (B, H, W)
    for name, vectors in (("erase", erase), ("add", add)):
        if differs(vectors.shape, expected):
            check_shape(name, vectors, "(B, H, W)", expected, "weights (B, H, N) and memory (B, N, W)")


def check_rank(name: str, tensor: torch.Tensor, rank: int, shape: str) -> None:
    """``tensor`` has ``rank`` axes, as ``shape`` (in letters) has."""
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def check_same(name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor, shape: str) -> None:
    """``tensor`` and ``other`` have one shape, ``shape`` in letters."""
    if differs(tensor.shape, other.shape):
        raise ValueError(
            f"{name} {tuple(tensor.shape)} and {other_name} {tuple(other.shape)} must both have shape {shape}"
        )


def check_link_update(prev_link: torch.Tensor, prev_precedence: torch.Tensor, write_weights: torch.Tensor) -> None:
    """The arguments of a dense link update: prev_link (B, N, N), prev_precedence and write_weights (B, N)."""
    check_same("prev_precedence", prev_precedence, "write_weights", write_weights, "(B, N)")
    check_rank("write_weights", write_weights, 2, "(B, N)")
    check_rank("prev_link", prev_link, 3, "(B, N, N)")
    batch, slots = write_weights.shape
    if differs(prev_link.shape, (batch, slots, slots)):
        raise ValueError(
            f"prev_link must have shape (B, N, N) = {(batch, slots, slots)}, got {tuple(prev_link.shape)}"
        )
